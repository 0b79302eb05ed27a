"""lmgen.kernels.decode_step_rope, the fused decode step of the rotary families, against the
same steps run block by block (FUSED_DECODE_STEP off): every family shape of test_families
(GQA, MQA, head_dim of its own, windows shorter than the cache, QK-norm, Gemma's norms and
bases, each rope scaling), 1-4 rows, float32, bfloat16 and int8 weights."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

import lmgen  # noqa: E402
import lmgen.model as M  # noqa: E402
from lmgen import kernels  # noqa: E402
from lmgen.tokenizers import BPETokenizer  # noqa: E402
from test_families import CASES, _hf_model  # noqa: E402

transformers.logging.set_verbosity_error()
pytestmark = pytest.mark.skipif(not kernels.available(), reason="lmgen.kernels not built here")
ROPE_CASES = [name for name in CASES if not name.startswith("neox")]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    tok = BPETokenizer.train(texts=["to be or not to be, that is the question. " * 40],
                             vocab_size=300)  # fmt: skip
    out = {}
    for name in ROPE_CASES:
        d = tmp_path_factory.mktemp(name)
        _hf_model(name, tok).save_pretrained(d)
        tok.save(d)
        out[name] = d
    return out


def _steps(lm, ids, fused: bool, monkeypatch) -> torch.Tensor:
    monkeypatch.setattr(M.plan, "FUSED_DECODE_STEP", fused)
    with torch.no_grad():
        cache = lm.model.new_cache(ids.shape[0], ids.shape[1])
        lm.model(ids[:, :3], cache=cache)
        k_before = cache.k.clone()
        logits = [lm.model(ids[:, i : i + 1], cache=cache)[:, -1] for i in range(3, ids.shape[1])]
    assert torch.equal(cache.k[:, :, :, :3], k_before[:, :, :, :3])  # the prefix untouched
    return torch.stack(logits).float(), cache.k.float(), cache.v.float()


@pytest.mark.parametrize("name", ROPE_CASES)
@pytest.mark.parametrize("rows", [1, 3])
def test_fused_rope_step_equals_block_by_block_float32(dirs, name, rows, monkeypatch):
    lm = lmgen.load(dirs[name])
    assert lm.model.inference_plan().rope_params is not None
    ids = torch.randint(0, 290, (rows, 14), generator=torch.Generator().manual_seed(rows))
    fused, k1, v1 = _steps(lm, ids, True, monkeypatch)
    plain, k2, v2 = _steps(lm, ids, False, monkeypatch)
    assert (fused - plain).abs().max().item() < 1e-4
    assert (k1 - k2).abs().max().item() < 1e-5 and (v1 - v2).abs().max().item() < 1e-5


@pytest.mark.parametrize("name", ["gemma3-local-global", "qwen2-bias-tied-mixed-window"])
@pytest.mark.parametrize("how", ["bf16", "int8"])
def test_fused_rope_step_in_low_precision(dirs, name, how, monkeypatch):
    """bf16: the fused step keeps activations in float32 where the block-by-block path rounds
    each to bfloat16, so they agree to bf16's precision; int8 weights: to float rounding."""
    kw = {"dtype": torch.bfloat16} if how == "bf16" else {"quantize": "int8"}
    lm = lmgen.load(dirs[name], **kw)
    assert lm.model.inference_plan().rope_params is not None
    ids = torch.randint(0, 290, (2, 12), generator=torch.Generator().manual_seed(5))
    fused, *_ = _steps(lm, ids, True, monkeypatch)
    plain, *_ = _steps(lm, ids, False, monkeypatch)
    tol = 0.05 * plain.abs().max().item() if how == "bf16" else 1e-4
    assert (fused - plain).abs().max().item() < tol


def test_neox_keeps_the_block_by_block_path(tmp_path):
    tok = BPETokenizer.train(texts=["to be or not to be"], vocab_size=300)
    _hf_model("neox-parallel-partial-rotary", tok).save_pretrained(tmp_path)
    tok.save(tmp_path)
    plan = lmgen.load(tmp_path).model.inference_plan()
    assert plan.rope_params is None and plan.step_params is None
