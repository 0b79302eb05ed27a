"""`/openapi.json` tells the truth: schemathesis generates requests from it (valid ones, and
invalid ones), sends them to a real server, and checks every answer against it — no 5xx,
only documented statuses and content types, every invalid request refused with a 4xx, and
every valid one accepted unless it asks for what one field cannot express (a prompt beyond
the context, `min_tokens` above `max_tokens`, a token id beyond the vocabulary...).

The default run is bounded (a few dozen examples per operation and mode); `make test-slow`
runs the long one."""

from __future__ import annotations

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    negative_data_rejection,
    positive_data_acceptance,
)

import lmgen  # noqa: E402
from conftest import save_peaky_model  # noqa: E402
from lmgen.server import create_app, serve_in_thread  # noqa: E402

TEXTS = ["To be, or not to be: that is the question."] * 12
OPERATIONS = [
    ("/v1/completions", "POST"),
    ("/v1/chat/completions", "POST"),
    ("/v1/lmgen/next", "POST"),
    ("/v1/lmgen/beam", "POST"),
    ("/tokenize", "POST"),
    ("/detokenize", "POST"),
    ("/tokenizer_info", "GET"),
    ("/v1/models", "GET"),
    ("/v1/models/{model_id}", "GET"),
    ("/health", "GET"),
]
NO_BODY = {
    "/v1/models",
    "/v1/models/{model_id}",
    "/health",
    "/tokenizer_info",
}  # nothing to make invalid
STRUCTURED_FIELDS = (
    *("guided_regex", "guided_json", "guided_choice", "guided_grammar", "response_format"),
    *("regex", "json_schema", "choice", "grammar", "ignore_eos"),
)
# A schema-valid request may still be refused for what no single field can say; these are
# the (code, param) of such refusals, each documented in the 400's description.
RUN_TIME_REFUSALS = {
    ("context_length_exceeded", "prompt"),
    ("context_length_exceeded", "messages"),
    ("invalid_value", "min_tokens"),  # above max_tokens
    ("invalid_value", "n"),  # above num_beams, or n > 1 with greedy beams
    ("invalid_value", "best_of"),  # only equal to n
    ("invalid_value", "top_logprobs"),  # needs logprobs: true
    ("invalid_value", "logit_bias"),  # a token id beyond the model's vocabulary
    ("invalid_value", "prompt"),  # a token id beyond the vocabulary; prompt or messages
    ("invalid_value", "tokens"),  # a token id beyond the vocabulary
    ("invalid_value", "max_tokens"),  # 0 without echo
    ("invalid_value", "num_beam_groups"),  # needs beam search, and must divide num_beams
    ("invalid_value", "diversity_penalty"),  # needs num_beam_groups > 1
    ("invalid_value", "penalty_alpha"),  # contrastive search
    ("invalid_value", "top_k"),  # contrastive search needs top_k >= 1
    ("invalid_value", "sequence_bias"),  # a token id beyond the model's vocabulary
    ("invalid_value", "samplers"),  # leaves out an active sampler; with mirostat
    ("invalid_value", "adaptive_target"),  # with mirostat (each chooses the token)
    ("invalid_value", "dola_layers"),  # no layer below the model's depth; beams; speculation
    # speculative decoding: a draft_model not served (or the model itself), speculative_k
    # without one, settings a draft cannot serve (n, beams, contrastive, prompt lookup)
    ("model_not_found", "draft_model"),
    ("invalid_value", "draft_model"),
    ("invalid_value", "speculative_k"),
    ("invalid_value", "prompt_lookup_num_tokens"),
    # structured output: a regex, schema or grammar that does not compile, or that no token
    # can start; two constraints at once; ignore_eos with one
    *(("invalid_value", p) for p in STRUCTURED_FIELDS),
    ("unsupported", None),  # tools, functions, ...: documented as refused
    # chat templates: one that fails on the messages or cannot continue the last one; both
    # add_generation_prompt and continue_final_message; template keywords that name a field
    ("invalid_value", "messages"),
    ("invalid_value", "continue_final_message"),
    ("invalid_value", "chat_template_kwargs"),
}


@pytest.fixture(scope="module")
def url(tmp_path_factory, one_thread):
    path = save_peaky_model(tmp_path_factory.mktemp("schema") / "tiny", TEXTS)
    with serve_in_thread(create_app({"tiny": lmgen.load(path)}, allowed_hosts=[])) as u:
        yield u


def _accepted_or_explained(response, case) -> str | None:
    """None when a schema-valid request got an acceptable answer; else what was wrong."""
    status = response.status_code
    if 200 <= status < 300 or status in (404, 429):
        return None
    if status == 400:
        err = response.json()["error"]
        code, param = err["code"], err["param"]
        if (code, param) in RUN_TIME_REFUSALS or (code == "unsupported" and param):
            return None
        return f"schema-valid request refused: {err} for {case.body!r}"[:2000]
    return f"schema-valid request answered {status}: {response.text[:500]}"


def refused(ctx, response, case):
    """schemathesis' own check that invalid requests are refused, which does not count 413
    (a body over the server's limit) as a refusal."""
    if response.status_code == 413:
        return None
    return negative_data_rejection(ctx, response, case)


def run_schemathesis(url: str, path: str, method: str, mode, examples: int) -> list[str]:
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    operation = schema[path][method]
    failures: list[str] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def check(case):
        try:
            response = case.call_and_validate(
                excluded_checks=[positive_data_acceptance, negative_data_rejection],
                additional_checks=[refused],
                timeout=60,
            )
        except Exception as e:  # a failed check: collected, so one run reports them all
            failures.append(f"{type(e).__name__}: {e} for {case.body!r}"[:2000])
            return
        if mode == GenerationMode.POSITIVE:
            problem = _accepted_or_explained(response, case)
            if problem:
                failures.append(problem)

    check()
    return failures


def _cases():
    for path, method in OPERATIONS:
        yield path, method, GenerationMode.POSITIVE
        if path not in NO_BODY:
            yield path, method, GenerationMode.NEGATIVE


@pytest.mark.parametrize("path, method, mode", list(_cases()))
def test_schemathesis(url, path, method, mode):
    failures = run_schemathesis(url, path, method, mode, examples=15)
    assert not failures, "\n\n".join(dict.fromkeys(failures))


@pytest.mark.slow
@pytest.mark.parametrize("path, method, mode", list(_cases()))
def test_schemathesis_long(url, path, method, mode):
    failures = run_schemathesis(url, path, method, mode, examples=400)
    assert not failures, "\n\n".join(dict.fromkeys(failures))


def test_the_document_lists_the_errors_and_the_limits(url):
    doc = httpx.get(url + "/openapi.json").json()
    completions = doc["paths"]["/v1/completions"]["post"]
    assert {"200", "400", "401", "404", "413", "429"} <= set(completions["responses"])
    assert "422" not in completions["responses"]
    assert "text/event-stream" in completions["responses"]["200"]["content"]
    error = completions["responses"]["400"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/ErrorResponse"}

    def field(model, name):
        spec = doc["components"]["schemas"][model]["properties"][name]
        return next((s for s in spec.get("anyOf", [spec]) if s.get("type") != "null"), spec)

    def has(model, name, **expected):
        got = field(model, name)
        assert {k: got.get(k) for k in expected} == expected, got

    has("NextRequest", "top", type="integer", minimum=0, maximum=1000)
    has("CompletionRequest", "logprobs", type="integer", minimum=0, maximum=20)
    has("CompletionRequest", "top_p", type="number", exclusiveMinimum=0, maximum=1)
    has("CompletionRequest", "presence_penalty", minimum=-2, maximum=2)
    has("ChatRequest", "n", minimum=1, maximum=16)
    has("BeamRequest", "max_tokens", minimum=1, maximum=128)
