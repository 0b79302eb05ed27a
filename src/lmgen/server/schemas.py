"""Request bodies: the one description of what a request may hold.

Pydantic checks them, and FastAPI writes `/openapi.json` from the same fields, so every range
the server enforces on a single field is in the published schema (the ranges come from
GenerationConfig's own constants). Types are strict ("0.5" is not a number, `true` is not an
int), except that a JSON number with no fraction (`6.0`) is an integer, as JSON Schema says.
Text must be valid Unicode: a lone surrogate (`"\\udcff"`) is refused with its position.
What one field cannot say — a prompt that does not fit the context, `min_tokens` above
`max_tokens`, a token id beyond the model's vocabulary — is checked when the request is run,
by the same `GenerationConfig.validate` as on the CLI.

A field set to null means "not given". Unknown fields are refused with a suggestion, except in
chat messages, where clients echo back fields of earlier responses.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from lmgen.settings import (
    MAX_LENGTH_PENALTY,
    MAX_LOGIT_BIAS,
    MAX_LOGPROBS,
    MAX_PENALTY,
    MIN_TEMPERATURE,
)
from lmgen.server.structured import ResponseFormat

MAX_TOKENS = 2048  # the cap on max_tokens; the model's context is checked per request
MAX_PROMPTS = 32  # prompts in one completions request
MAX_PROMPT_TOKENS = 1 << 16  # ids in one token-id prompt (the context is checked per model)
MAX_N = 16  # choices per prompt
MAX_BEAMS = 16
MAX_DIVERSITY_PENALTY = 100.0  # diverse beam search; log-probs are rarely more than ~30 apart
MAX_BEAM_TRACE_TOKENS = 128  # /v1/lmgen/beam records every candidate of every step
MAX_STOP = 16
MAX_CHOICES = 256  # guided_choice / choice strings
MAX_TOP = 1000  # candidates in /v1/lmgen/next (0 = the whole vocabulary)
MAX_STRING = 64 * 1024  # characters in a stop string, a name, ...
MAX_LOGIT_BIAS_ENTRIES = 1024
MAX_MESSAGES = 1024
# The largest integer every JSON client sends exactly (JavaScript's Number, and clients that
# write big integers as doubles: 2**64 - 1 arrives as 18446744073709551616, beyond the range)
MAX_SEED = 2**53
# logits are divided or multiplied by these: beyond the bounds float32 overflows into NaN
REPETITION_PENALTY_RANGE = (1e-3, 1e3)
MAX_TEMPERATURE = 1e4  # the distribution is uniform long before; 1e39 is float32's infinity


# -- field types ------------------------------------------------------------------------------


def _integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**64:
        return int(value)
    return value


def Int(ge: int | None = None, le: int | None = None) -> Any:
    """An int in [ge, le]; `6.0` counts as 6 (JSON Schema's integers), `true` does not."""
    return Annotated[int, Field(ge=ge, le=le), BeforeValidator(_integral)]


def Float(**bounds: float) -> Any:
    """A finite number within `bounds` (ge, gt, le, lt)."""
    return Annotated[float, Field(allow_inf_nan=False, **bounds)]


def _valid_unicode(value: Any) -> Any:
    if not isinstance(value, str):
        return value  # the str check says what is wrong
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise PydanticCustomError(
            "invalid_unicode",
            "text is not valid Unicode: a lone surrogate {code} at character {position}",
            {"code": f"U+{ord(value[e.start]):04X}", "position": e.start},
        ) from None
    return value


def Text(min_length: int | None = None, max_length: int | None = None) -> Any:
    """A string of valid Unicode (no lone surrogates: checked first, so that the message
    names the character)."""
    return Annotated[
        str, Field(min_length=min_length, max_length=max_length), BeforeValidator(_valid_unicode)
    ]


def _zero_or_at_least_min_temperature(value: float) -> float:
    if 0 < value < MIN_TEMPERATURE:
        raise PydanticCustomError(
            "temperature",
            "temperature must be 0 (greedy) or >= {low}",
            {"low": MIN_TEMPERATURE},
        )
    return value


Temperature = Annotated[
    float,
    Field(ge=0, le=MAX_TEMPERATURE, allow_inf_nan=False),
    AfterValidator(_zero_or_at_least_min_temperature),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "const": 0},
                {"type": "number", "minimum": MIN_TEMPERATURE, "maximum": MAX_TEMPERATURE},
            ],
            "description": f"0 (greedy) or in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}]",
        }
    ),
]

_TOKEN_ID_KEY = re.compile(r"[0-9]{1,18}")


def _logit_bias_keys(bias: dict[str, float]) -> dict[str, float]:
    for key in bias:
        if not _TOKEN_ID_KEY.fullmatch(key):
            raise PydanticCustomError(
                "token_id_key",
                "logit_bias keys must be token ids written in ASCII digits, got {key!r}",
                {"key": key},
            )
    return bias


LogitBias = Annotated[
    dict[str, Float(ge=-MAX_LOGIT_BIAS, le=MAX_LOGIT_BIAS)],
    Field(max_length=MAX_LOGIT_BIAS_ENTRIES),
    AfterValidator(_logit_bias_keys),
    WithJsonSchema(
        {
            "type": "object",
            "description": '{"token id": bias}; the ids must be in the model\'s vocabulary',
            "propertyNames": {"pattern": f"^{_TOKEN_ID_KEY.pattern}$"},
            "additionalProperties": {
                "type": "number",
                "minimum": -MAX_LOGIT_BIAS,
                "maximum": MAX_LOGIT_BIAS,
            },
            "maxProperties": MAX_LOGIT_BIAS_ENTRIES,
        }
    ),
]

Stop = Text(1, MAX_STRING) | Annotated[list[Text(1, MAX_STRING)], Field(max_length=MAX_STOP)]
Penalty = Float(ge=-MAX_PENALTY, le=MAX_PENALTY)
LengthPenalty = Float(ge=-MAX_LENGTH_PENALTY, le=MAX_LENGTH_PENALTY)
ModelName = Text(max_length=1024)
Seed = Int(0, MAX_SEED)
RepetitionPenalty = Float(ge=REPETITION_PENALTY_RANGE[0], le=REPETITION_PENALTY_RANGE[1])
Cutoff = Float(ge=0, lt=1)  # epsilon and eta sampling (0 = off)
MAX_SAMPLER_VALUE = 1e4  # top-nσ, DRY, Mirostat: far past any useful value, short of overflow
Breakers = Annotated[list[Text(1, MAX_STRING)], Field(max_length=MAX_STOP)]
Choices = Annotated[list[Text(1, MAX_STRING)], Field(min_length=1, max_length=MAX_CHOICES)]
GUIDED_NOTE = (
    "structured output (at most one constraint); checked when the request is run: a regex, "
    "JSON schema or grammar that does not compile, or that no token can start, is a 400"
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None  # vLLM's; accepted and ignored


class Decoding(_Strict):
    """Knobs shared by completions and chat: OpenAI's, then lmgen's extensions (sent by the
    `openai` client through `extra_body`)."""

    model: ModelName | None = None
    max_tokens: Int(1, MAX_TOKENS) | None = None
    temperature: Temperature | None = None
    top_p: Float(gt=0, le=1) | None = None
    n: Int(1, MAX_N) | None = None
    stop: Stop | None = None
    seed: Seed | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: LogitBias | None = None
    user: Text(max_length=MAX_STRING) | None = None
    # extensions
    top_k: Int(0) | None = None
    min_p: Float(ge=0, le=1) | None = None
    typical_p: Float(gt=0, le=1) | None = None
    repetition_penalty: RepetitionPenalty | None = None
    no_repeat_ngram_size: Int(0) | None = None
    num_beams: Int(1, MAX_BEAMS) | None = None
    length_penalty: LengthPenalty | None = None
    early_stopping: bool | Literal["never"] | None = None
    penalty_alpha: Float(ge=0, le=1) | None = None  # contrastive search (with top_k)
    num_beam_groups: Int(1, MAX_BEAMS) | None = None  # diverse beam search
    diversity_penalty: Float(ge=0, le=MAX_DIVERSITY_PENALTY) | None = None
    min_tokens: Int(0, MAX_TOKENS) | None = None
    ignore_eos: bool | None = None
    context_overflow: Literal["error", "slide"] | None = None
    # llama.cpp's and transformers' samplers (GenerationConfig's names), and vLLM's guided_*
    # structured output (server/structured.py)
    epsilon_cutoff: Cutoff | None = None
    eta_cutoff: Cutoff | None = None
    top_n_sigma: Float(ge=0, le=MAX_SAMPLER_VALUE) | None = None
    xtc_probability: Float(ge=0, le=1) | None = None
    xtc_threshold: Float(gt=0, le=0.5) | None = None
    dry_multiplier: Float(ge=0, le=MAX_SAMPLER_VALUE) | None = None
    dry_base: Float(ge=1, le=MAX_SAMPLER_VALUE) | None = None
    dry_allowed_length: Int(1, MAX_PROMPT_TOKENS) | None = None
    dry_penalty_last_n: Int(-1, MAX_PROMPT_TOKENS) | None = None
    dry_sequence_breakers: Breakers | None = None
    dynatemp_range: Float(ge=0, le=MAX_TEMPERATURE) | None = None
    dynatemp_exponent: Float(gt=0, le=MAX_SAMPLER_VALUE) | None = None
    mirostat: Literal[0, 2] | None = None
    mirostat_tau: Float(gt=0, le=MAX_SAMPLER_VALUE) | None = None
    mirostat_eta: Float(gt=0, le=MAX_SAMPLER_VALUE) | None = None
    guided_regex: Text(1, MAX_STRING) | None = Field(None, description=GUIDED_NOTE)
    guided_json: dict[str, Any] | Text(1, MAX_STRING) | None = Field(None, description=GUIDED_NOTE)
    guided_choice: Choices | None = Field(None, description=GUIDED_NOTE)
    guided_grammar: Text(1, MAX_STRING) | None = Field(None, description=GUIDED_NOTE)


TokenId = Int(0)  # and below the model's vocabulary size, checked per model
TokenIds = Annotated[list[TokenId], Field(min_length=1, max_length=MAX_PROMPT_TOKENS)]


def _prompt_kind(value: Any) -> str | None:
    """Which of the four prompt shapes a value has, judged by its first element, so that an
    error is reported against the shape the client meant."""
    if isinstance(value, str):
        return "as-text"
    if not isinstance(value, list):
        return None
    first = value[0] if value else ""
    if isinstance(first, list):
        return "as-id-lists"
    if isinstance(first, int | float) and not isinstance(first, bool):
        return "as-ids"
    return "as-texts"


Prompt = Annotated[
    Annotated[Text(), Tag("as-text")]
    | Annotated[list[Text()], Field(min_length=1, max_length=MAX_PROMPTS), Tag("as-texts")]
    | Annotated[TokenIds, Tag("as-ids")]
    | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_PROMPTS), Tag("as-id-lists")],
    Discriminator(
        _prompt_kind,
        custom_error_type="prompt_type",
        custom_error_message="prompt must be a string, a list of strings, a list of token ids "
        "or a list of lists of token ids",
    ),
]


class CompletionRequest(Decoding):
    # a string, a list of strings, token ids, or a list of lists of token ids (as OpenAI)
    prompt: Prompt
    # 0 with echo: score the prompt only (its logprobs), generate nothing
    max_tokens: Int(0, MAX_TOKENS) | None = None
    logprobs: Int(0, MAX_LOGPROBS) | None = None
    echo: bool | None = None
    best_of: Int(1, MAX_N) | None = None  # only None or equal to n
    suffix: Text(max_length=0) | None = None  # only None or ""


class TextPart(_Strict):
    type: Literal["text"]
    text: Text()


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text() | list[TextPart] | None = None
    name: Text(max_length=MAX_STRING) | None = None


class ChatRequest(Decoding):
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: Int(1, MAX_TOKENS) | None = None
    logprobs: bool | None = None
    top_logprobs: Int(0, MAX_LOGPROBS) | None = None
    # OpenAI fields without an effect here: accepted and ignored
    metadata: Any = None
    store: Any = None
    service_tier: Any = None
    parallel_tool_calls: Any = None
    prompt_cache_key: Any = None
    safety_identifier: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    # OpenAI features these models do not have: refused unless null or a no-op value
    tools: Any = Field(None, description="refused unless null or []")
    tool_choice: Any = Field(None, description='refused unless null or "none"')
    functions: Any = Field(None, description="refused unless null or []")
    function_call: Any = Field(None, description="refused unless null")
    response_format: ResponseFormat | None = None  # text, json_object or json_schema
    audio: Any = Field(None, description="refused unless null")
    modalities: Any = Field(None, description='refused unless null or ["text"]')
    prediction: Any = Field(None, description="refused unless null")
    web_search_options: Any = Field(None, description="refused unless null")


class _Processors(_Strict):
    """The flags of `lmgen next` (the processor chain), by their GenerationConfig names."""

    model: ModelName | None = None
    prompt: Text()
    temperature: Temperature | None = None
    top_k: Int(0) | None = None
    top_p: Float(gt=0, le=1) | None = None
    min_p: Float(ge=0, le=1) | None = None
    typical_p: Float(gt=0, le=1) | None = None
    repetition_penalty: RepetitionPenalty | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    no_repeat_ngram_size: Int(0) | None = None
    min_tokens_to_keep: Int(1) | None = None
    temperature_last: bool | None = None
    logit_bias: LogitBias | None = None
    epsilon_cutoff: Cutoff | None = None
    eta_cutoff: Cutoff | None = None
    top_n_sigma: Float(ge=0, le=MAX_SAMPLER_VALUE) | None = None
    xtc_probability: Float(ge=0, le=1) | None = None
    xtc_threshold: Float(gt=0, le=0.5) | None = None
    dry_multiplier: Float(ge=0, le=MAX_SAMPLER_VALUE) | None = None
    dry_base: Float(ge=1, le=MAX_SAMPLER_VALUE) | None = None
    dry_allowed_length: Int(1, MAX_PROMPT_TOKENS) | None = None
    dry_penalty_last_n: Int(-1, MAX_PROMPT_TOKENS) | None = None
    dry_sequence_breakers: Breakers | None = None
    dynatemp_range: Float(ge=0, le=MAX_TEMPERATURE) | None = None
    dynatemp_exponent: Float(gt=0, le=MAX_SAMPLER_VALUE) | None = None
    mirostat: Literal[0, 2] | None = None
    mirostat_tau: Float(gt=0, le=MAX_SAMPLER_VALUE) | None = None
    mirostat_eta: Float(gt=0, le=MAX_SAMPLER_VALUE) | None = None
    # structured output, by GenerationConfig's names
    regex: Text(1, MAX_STRING) | None = Field(None, description=GUIDED_NOTE)
    json_schema: dict[str, Any] | Text(1, MAX_STRING) | None = Field(None, description=GUIDED_NOTE)
    choice: Choices | None = Field(None, description=GUIDED_NOTE)
    grammar: Text(1, MAX_STRING) | None = Field(None, description=GUIDED_NOTE)


class NextRequest(_Processors):
    """`POST /v1/lmgen/next`: `lmgen next --json`, plus an optional choice of the next token."""

    strategy: Literal["greedy", "sample"] | None = None
    top: Int(0, MAX_TOP) = 10
    choose: bool = False
    seed: Seed | None = None


class BeamRequest(_Strict):
    """`POST /v1/lmgen/beam`: beam search with every candidate of every step recorded."""

    model: ModelName | None = None
    prompt: Text()
    max_tokens: Int(1, MAX_BEAM_TRACE_TOKENS) = 16
    num_beams: Int(1, MAX_BEAMS) = 4
    n: Int(1, MAX_BEAMS) | None = None
    length_penalty: LengthPenalty | None = None
    early_stopping: bool | Literal["never"] | None = None
    repetition_penalty: RepetitionPenalty | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    no_repeat_ngram_size: Int(0) | None = None
    logit_bias: LogitBias | None = None
    min_tokens: Int(0, MAX_BEAM_TRACE_TOKENS) | None = None
    ignore_eos: bool | None = None


class TokenizeRequest(_Strict):
    """`POST /tokenize` (vLLM's): text, or chat messages through the chat template."""

    model: ModelName | None = None
    prompt: Text() | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1, max_length=MAX_MESSAGES)
    add_special_tokens: bool | None = None  # accepted; these tokenizers add none
    add_generation_prompt: bool | None = None  # accepted; the template always ends with it
    return_token_strs: bool | None = None


class DetokenizeRequest(_Strict):
    """`POST /detokenize` (vLLM's)."""

    model: ModelName | None = None
    tokens: Annotated[list[TokenId], Field(max_length=MAX_PROMPT_TOKENS)]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every error: OpenAI's shape."""

    error: ErrorDetail


def known_params() -> list[str]:
    """Every field of every request body: the candidates of "did you mean"."""
    names: set[str] = set()
    for model in (
        CompletionRequest,
        ChatRequest,
        NextRequest,
        BeamRequest,
        TokenizeRequest,
        DetokenizeRequest,
    ):
        names.update(model.model_fields)
    return sorted(names)
