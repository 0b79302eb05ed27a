"""Request bodies: the one description of what a request may hold.

Pydantic checks them, and FastAPI writes `/openapi.json` from the same fields, so every range
the server enforces on a single field is in the published schema. The decoding settings'
fields are built from their declarations in lmgen.settings: the same ranges, defaults and
help as the library and the command line, checked by the same check with the same message.
Types are strict ("0.5" is not a number, `true` is not an int), except that a JSON number with
no fraction (`6.0`) is an integer, as JSON Schema says.
Text must be valid Unicode: a lone surrogate (`"\\udcff"`) is refused with its position.
What one field cannot say — a prompt that does not fit the context, `min_tokens` above
`max_tokens`, a token id beyond the model's vocabulary — is checked when the request is run,
by the same `GenerationConfig.validate` as on the CLI.

A field set to null means "not given". Unknown fields are refused with a suggestion, except in
chat messages, where clients echo back fields of earlier responses.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    WithJsonSchema,
    create_model,
)
from pydantic_core import PydanticCustomError

from lmgen.decoding.processor_base import MAX_TOKEN_ID
from lmgen.errors import ConfigError
from lmgen.server.structured import ResponseFormat
from lmgen.settings import (
    BY_NAME,
    MAX_LOGIT_BIAS,
    MAX_LOGPROBS,
    SAMPLER_NAMES,
    SERVE_COMPLETION_TOKENS,
    SERVE_MAX_BEAMS,
    SERVE_MAX_N,
    SERVE_MAX_PROMPT_TOKENS,
    SERVE_MAX_TOKENS,
    SETTINGS,
    Range,
    Setting,
    at_least,
    check_early_stopping,
)

MAX_TOKENS = SERVE_MAX_TOKENS  # the cap on max_tokens; the context is checked per request
COMPLETION_MAX_TOKENS = SERVE_COMPLETION_TOKENS
MAX_PROMPTS = 32  # prompts in one completions request
MAX_PROMPT_TOKENS = SERVE_MAX_PROMPT_TOKENS  # ids in one token-id prompt
MAX_N = SERVE_MAX_N  # choices per prompt
MAX_BEAMS = SERVE_MAX_BEAMS
MAX_BEAM_TRACE_TOKENS = 128  # /v1/lmgen/beam records every candidate of every step
MAX_STOP = 16
MAX_CHOICES = 256  # guided_choice / choice strings
MAX_TOP = 1000  # candidates in /v1/lmgen/next (0 = the whole vocabulary)
MAX_STRING = 64 * 1024  # characters in a stop string, a name, ...
MAX_LOGIT_BIAS_ENTRIES = 1024
MAX_MESSAGES = 1024
MAX_SPECULATIVE_K = 64  # draft proposals per pass of the model


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


_TOKEN_ID_KEY = re.compile(rf"[0-9]{{1,{len(str(MAX_TOKEN_ID))}}}")


def _logit_bias_keys(bias: dict[str, float]) -> dict[str, float]:
    for key in bias:
        if not _TOKEN_ID_KEY.fullmatch(key):
            raise PydanticCustomError(
                "token_id_key",
                "logit_bias keys must be token ids (1 to 18 ASCII digits), got '{key}'",
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


def _integral_ids(pairs: Any) -> Any:
    """[[ids, bias], ...] with integral floats among the ids as ints (JSON Schema's integers);
    everything else is GenerationConfig's to check, its message naming the setting."""
    if not isinstance(pairs, list):
        return pairs
    return [
        [[_integral(i) for i in p[0]], *p[1:]]
        if isinstance(p, list) and p and isinstance(p[0], list)
        else p
        for p in pairs
    ]


# transformers' list form of a sequence bias: [[token ids, bias], ...]
SequenceBiasPairs = Annotated[
    list[Annotated[list[Any], Field(min_length=2, max_length=2)]],
    Field(min_length=1, max_length=MAX_LOGIT_BIAS_ENTRIES),
    BeforeValidator(_integral_ids),
    WithJsonSchema(
        {
            "type": "array",
            "description": "[[token ids, bias], ...]: the bias goes to the last id when the "
            "text ends with the others; the ids must be in the model's vocabulary",
            "items": {
                "type": "array",
                "prefixItems": [
                    {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
                    {"type": "number", "minimum": -MAX_LOGIT_BIAS, "maximum": MAX_LOGIT_BIAS},
                ],
                "items": False,
                "minItems": 2,
                "maxItems": 2,
            },
            "minItems": 1,
            "maxItems": MAX_LOGIT_BIAS_ENTRIES,
        }
    ),
]
SamplerNames = Annotated[
    list[Literal[SAMPLER_NAMES]],
    Field(min_length=1, max_length=len(SAMPLER_NAMES)),
    WithJsonSchema(
        {
            "type": "array",
            "description": "llama.cpp's sampler order; each name at most once",
            "items": {"enum": list(SAMPLER_NAMES)},
            "uniqueItems": True,
            "minItems": 1,
        }
    ),
]

Stop = Text(1, MAX_STRING) | Annotated[list[Text(1, MAX_STRING)], Field(max_length=MAX_STOP)]
ModelName = Text(max_length=1024)
Texts = Annotated[list[Text(1, MAX_STRING)], Field(max_length=MAX_STOP)]
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


# -- the decoding settings, from lmgen.settings ------------------------------------------------


def _library(check) -> Callable[[Any], Any]:
    """The library's own check of a setting: its message is the one Python and the command
    line give (errors.py passes a "setting" error on as it is)."""

    def run(value: Any) -> Any:
        try:
            return check(value)
        except ConfigError as e:
            raise PydanticCustomError("setting", str(e)) from None

    return run


def _checked(check) -> AfterValidator:
    return AfterValidator(_library(check))


def _number(library: Range, cap: float | None, name: str, doc: dict[str, Any]) -> Any:
    """A number checked by the library's range (its message, under the name the client sent),
    then by the server's cap; the capped range in the schema."""
    r = library.capped(cap)
    pre = (BeforeValidator(_integral),) if r.integer else ()
    check = _checked(lambda v: r.check(name, library.check(name, v)))
    return Annotated[
        (int if r.integer else float, *pre, check, WithJsonSchema({**r.json_schema(), **doc}))
    ]


_WIRE_TYPES = {  # a setting's shape on the wire, where a range or choices do not say it
    "bool": bool,
    # checked before the union, whose own message would name one of its branches only
    "early_stopping": Annotated[
        bool | Literal["never"], BeforeValidator(_library(check_early_stopping))
    ],
    "text": Text(1, MAX_STRING),
    "texts": Texts,
    "choices": Choices,
    "one_or_more_texts": Stop,
    "json": dict[str, Any] | Text(1, MAX_STRING),
    "token_bias": LogitBias,
    "bias_pairs": SequenceBiasPairs,
    "sampler_order": SamplerNames,
    "dola": Literal["low", "high"] | Annotated[list[Int(0)], Field(min_length=1, max_length=256)],
}


def setting_type(s: Setting, name: str) -> Any:
    """The request field of setting `s`, sent as `name`: its range (with the server's cap) and
    default in the schema, checked by the library's own check."""
    doc: dict[str, Any] = {"description": s.help}
    if s.serve_default is not None:
        doc["default"] = s.serve_default
    if s.group == "structured":
        doc["description"] = f"{s.help}; {GUIDED_NOTE}"
    if s.range is not None:
        return _number(s.range, s.serve_max, name, doc)
    if s.choices:
        kind = "string" if isinstance(s.choices[0], str) else "integer"
        schema = {"type": kind, "enum": list(s.choices), **doc}
        return Annotated[(type(s.choices[0]), _checked(s.check), WithJsonSchema(schema))]
    extra = {"default": doc["default"]} if "default" in doc else None
    return Annotated[
        (
            _WIRE_TYPES[s.wire or s.kind],
            Field(description=doc["description"], json_schema_extra=extra),
        )
    ]


def setting_fields(naming: str, keep=lambda s: True) -> dict[str, Any]:
    """Request fields for the settings `keep` picks: by their API names ("api": completions and
    chat) or by GenerationConfig's ("own": the lmgen endpoints). Each is optional (null: not
    given)."""
    fields = {}
    for s in SETTINGS:
        name = s.api_name if naming == "api" else s.name
        if name is not None and keep(s):
            fields[name] = (setting_type(s, name) | None, None)
    return fields


class _Request(_Strict):
    model: ModelName | None = None
    # how its fields name the settings: "api" (max_tokens, n, ...) or "own" (GenerationConfig's)
    setting_names: ClassVar[str] = "api"


class _OwnNames(_Request):
    setting_names: ClassVar[str] = "own"


class _Streamed(_Request):
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: Text(max_length=MAX_STRING) | None = None


class _Speculative(_Streamed):
    """The draft model of speculative decoding (server/speculative.py): not a decoding setting
    (Python passes the model itself, `draft=`), so declared here, once for completions and
    chat."""

    draft_model: ModelName | None = Field(
        None,
        description="another model this server serves (GET /v1/models), as the draft of "
        "speculative decoding: the same tokens as without it (greedy; seeded sampling too when "
        "the draft has a tokenizer of its own: universal assisted decoding), one sequence, "
        "run outside the shared batch (llama-server: --model-draft; transformers: "
        "assistant_model)",
    )
    speculative_k: Int(1, MAX_SPECULATIVE_K) | None = Field(
        None,
        description="tokens the draft proposes per pass of the model; needs draft_model "
        "(default: lmgen.generate's, 4; llama-server: speculative.n_max; vLLM: "
        "num_speculative_tokens)",
    )


Decoding = create_model(
    "Decoding",
    __base__=_Speculative,
    __doc__="Knobs shared by completions and chat: OpenAI's and lmgen's extensions (sent by "
    "the `openai` client through `extra_body`), one per setting in lmgen.settings.",
    **setting_fields("api"),
)


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
    max_tokens: (
        _number(at_least(0), MAX_TOKENS, "max_tokens", {"default": COMPLETION_MAX_TOKENS}) | None
    ) = None
    logprobs: Int(0, MAX_LOGPROBS) | None = None
    echo: bool | None = None
    best_of: Int(1, MAX_N) | None = None  # only None or equal to n
    suffix: Text(max_length=0) | None = None  # only None or ""


class TextPart(_Strict):
    type: Literal["text"]
    text: Text()


class ChatMessage(BaseModel):
    # other fields (tool_calls, tool_call_id, reasoning_content, ...) go to the chat template
    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text() | list[TextPart] | None = None
    name: Text(max_length=MAX_STRING) | None = None


class ChatRequest(Decoding):
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: Int(1, MAX_TOKENS) | None = None
    logprobs: bool | None = None
    top_logprobs: Int(0, MAX_LOGPROBS) | None = None
    # the chat template's options, by vLLM's names (see lmgen.server.chat_prompt)
    add_generation_prompt: bool | None = Field(None, description="default true")
    continue_final_message: bool | None = Field(None, description="default false")
    chat_template_kwargs: dict[str, Any] | None = None
    documents: list[dict[str, Any]] | None = None
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
    tools: list[dict[str, Any]] | None = Field(
        None, description="passed to the chat template; tool calls are not parsed"
    )
    tool_choice: Any = Field(None, description='refused unless null, "none" or "auto"')
    functions: Any = Field(None, description="refused unless null or []")
    function_call: Any = Field(None, description="refused unless null")
    response_format: ResponseFormat | None = None  # text, json_object or json_schema
    audio: Any = Field(None, description="refused unless null")
    modalities: Any = Field(None, description='refused unless null or ["text"]')
    prediction: Any = Field(None, description="refused unless null")
    web_search_options: Any = Field(None, description="refused unless null")


_Processors = create_model(
    "_Processors",
    __base__=_OwnNames,
    __doc__="The flags of `lmgen next` (the processor chain), by their GenerationConfig names.",
    prompt=(Text(), ...),
    **setting_fields("own", lambda s: s.chain),
)


class NextRequest(_Processors):
    """`POST /v1/lmgen/next`: `lmgen next --json`, plus an optional choice of the next token."""

    strategy: Literal["greedy", "sample"] | None = None
    top: Int(0, MAX_TOP) = 10
    choose: bool = False
    seed: setting_type(BY_NAME["seed"], "seed") | None = None


# the penalties and search knobs beam search uses, by their API names
BEAM_SETTINGS = (
    "length_penalty", "early_stopping", "repetition_penalty", "presence_penalty",
    "frequency_penalty", "no_repeat_ngram_size", "logit_bias", "ignore_eos",
)  # fmt: skip
BeamRequest = create_model(
    "BeamRequest",
    __base__=_Request,
    __doc__="`POST /v1/lmgen/beam`: beam search with every candidate of every step recorded.",
    prompt=(Text(), ...),
    max_tokens=(Int(1, MAX_BEAM_TRACE_TOKENS), 16),
    num_beams=(Int(1, MAX_BEAMS), 4),
    n=(Int(1, MAX_BEAMS) | None, None),
    min_tokens=(Int(0, MAX_BEAM_TRACE_TOKENS) | None, None),
    **setting_fields("api", lambda s: s.name in BEAM_SETTINGS),
)


class TokenizeRequest(_Strict):
    """`POST /tokenize` (vLLM's): text, or chat messages through the chat template."""

    model: ModelName | None = None
    prompt: Text() | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1, max_length=MAX_MESSAGES)
    add_special_tokens: bool | None = None  # default: a prompt's as generate, messages' as chat
    add_generation_prompt: bool | None = None  # with messages; default true
    continue_final_message: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
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
