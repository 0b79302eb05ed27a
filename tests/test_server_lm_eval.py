"""EleutherAI's lm-evaluation-harness against `lmgen serve`, with its defaults but for
`max_length` (the served model's context): the `local-completions` backend sends token ids
(`tokenized_requests=True`), finds our tokenizer through `/tokenizer_info`
(`tokenizer_backend=auto`), and scores with `echo` + `logprobs`.
Its per-item log-likelihoods must equal those of its `hf` backend (transformers) on the same
model directory, on the example tasks under examples/lm_eval (multiple choice and
loglikelihood_rolling, local data only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

lm_eval = pytest.importorskip("lm_eval")

import lmgen  # noqa: E402
from lmgen.server import create_app, serve_in_thread  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TASKS = ["lmgen_shakespeare_agreement", "lmgen_shakespeare_mc", "lmgen_shakespeare_rolling"]
CONTEXT = 256  # the bundled model's: local-completions' max_length
# local-completions asks for one generated token after each scored text, and its rolling
# windows hold max_length - 2 tokens of text; the hf backend's hold max_length
HF_MAX_LENGTH = CONTEXT - 2


def _evaluate(model: str, model_args: str) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(REPO / "examples" / "lm_eval"))
    return simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=TASKS,
        task_manager=manager,
        batch_size=1,
        log_samples=True,
        device="cpu",
    )


def _logliks(out: dict, task: str) -> dict[int, list[float]]:
    """doc id -> the log-likelihood of each request of that document (lm-eval keeps each
    response as a list of one item: a (loglikelihood, is_greedy) pair or a float)."""

    def value(resp) -> float:
        while isinstance(resp, list | tuple):
            resp = resp[0]
        return float(resp)

    return {s["doc_id"]: [value(r) for r in s["resps"]] for s in out["samples"][task]}


@pytest.mark.slow
def test_lm_eval_through_the_server_equals_its_hf_backend(monkeypatch):
    monkeypatch.chdir(REPO)  # the tasks name their data files from the repository root
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    lm = lmgen.load("shakespeare")
    with serve_in_thread(create_app({"shakespeare": lm}, allowed_hosts=[])) as url:
        served = _evaluate(
            "local-completions",
            f"base_url={url}/v1/completions,model=shakespeare,max_length={CONTEXT},"
            "num_concurrent=1,max_retries=1",
        )
    hf = _evaluate("hf", f"pretrained={lm.path},dtype=float32,max_length={HF_MAX_LENGTH}")
    for task in TASKS:
        ours, theirs = _logliks(served, task), _logliks(hf, task)
        assert ours.keys() == theirs.keys() and ours
        for doc, values in ours.items():
            for got, want in zip(values, theirs[doc], strict=True):
                # 1e-4, or what a float32 of that size can resolve (hf sums in float32: a
                # log-likelihood of -2101 has an ulp of 2.4e-4)
                tolerance = max(1e-4, abs(float(np.spacing(np.float32(want)))))
                assert got == pytest.approx(want, abs=tolerance), (task, doc)
    mc = served["results"]["lmgen_shakespeare_mc"]
    assert mc["acc,none"] == hf["results"]["lmgen_shakespeare_mc"]["acc,none"]
    rolling = served["results"]["lmgen_shakespeare_rolling"]["bits_per_byte,none"]
    assert rolling == pytest.approx(
        hf["results"]["lmgen_shakespeare_rolling"]["bits_per_byte,none"], rel=1e-5
    )
