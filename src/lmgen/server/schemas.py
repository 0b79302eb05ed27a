"""Request bodies. Pydantic checks types and size limits (strictly: "0.5" is not a number);
the decoding values themselves are checked by `GenerationConfig`, exactly as on the CLI.

A field set to null means "not given". Unknown fields are refused with a suggestion, except in
chat messages, where clients echo back fields of earlier responses.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_TOKENS = 2048  # the cap on max_tokens; the model's context is checked per request
MAX_PROMPTS = 32  # prompts in one completions request
MAX_N = 16  # choices per prompt
MAX_BEAMS = 16
MAX_BEAM_TRACE_TOKENS = 128  # /v1/lmgen/beam records every candidate of every step
MAX_STOP = 16
MAX_TOP = 1000  # candidates in /v1/lmgen/next (0 = the whole vocabulary)
MAX_LENGTH_PENALTY = 10.0  # beyond it, generated_length ** length_penalty overflows
MAX_STRING = 64 * 1024  # characters in a stop string, a name, ...

Stop = str | Annotated[list[str], Field(max_length=MAX_STOP)] | None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None  # vLLM's; accepted and ignored


class Decoding(_Strict):
    """Knobs shared by completions and chat: OpenAI's, then lmgen's extensions (sent by the
    `openai` client through `extra_body`)."""

    model: str | None = Field(None, max_length=1024)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = Field(None, ge=1, le=MAX_N)
    stop: Stop = None
    seed: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = Field(None, max_length=1024)
    user: str | None = Field(None, max_length=MAX_STRING)
    # extensions
    top_k: int | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    num_beams: int | None = Field(None, ge=1, le=MAX_BEAMS)
    length_penalty: float | None = Field(None, ge=-MAX_LENGTH_PENALTY, le=MAX_LENGTH_PENALTY)
    early_stopping: bool | Literal["never"] | None = None
    min_tokens: int | None = Field(None, ge=0, le=MAX_TOKENS)
    ignore_eos: bool | None = None
    context_overflow: Literal["error", "slide"] | None = None


class CompletionRequest(Decoding):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)]
    logprobs: int | None = Field(None, ge=0)
    echo: bool | None = None
    best_of: int | None = None  # only None or equal to n
    suffix: str | None = None  # only None or ""


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(None, max_length=MAX_STRING)


class ChatRequest(Decoding):
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=1024)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0)
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
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    response_format: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    web_search_options: Any = None


class _Processors(_Strict):
    """The flags of `lmgen next` (the processor chain), by their GenerationConfig names."""

    model: str | None = Field(None, max_length=1024)
    prompt: str
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    min_tokens_to_keep: int | None = None
    temperature_last: bool | None = None
    logit_bias: dict[str, float] | None = Field(None, max_length=1024)


class NextRequest(_Processors):
    """`POST /v1/lmgen/next`: `lmgen next --json`, plus an optional choice of the next token."""

    strategy: Literal["greedy", "sample"] | None = None
    top: int = Field(10, ge=0, le=MAX_TOP)
    choose: bool = False
    seed: int | None = None


class BeamRequest(_Strict):
    """`POST /v1/lmgen/beam`: beam search with every candidate of every step recorded."""

    model: str | None = Field(None, max_length=1024)
    prompt: str
    max_tokens: int = Field(16, ge=1, le=MAX_BEAM_TRACE_TOKENS)
    num_beams: int = Field(4, ge=1, le=MAX_BEAMS)
    n: int | None = Field(None, ge=1, le=MAX_BEAMS)
    length_penalty: float | None = Field(None, ge=-MAX_LENGTH_PENALTY, le=MAX_LENGTH_PENALTY)
    early_stopping: bool | Literal["never"] | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    logit_bias: dict[str, float] | None = Field(None, max_length=1024)
    min_tokens: int | None = Field(None, ge=0, le=MAX_BEAM_TRACE_TOKENS)
    ignore_eos: bool | None = None


def known_params() -> list[str]:
    """Every field of every request body: the candidates of "did you mean"."""
    names: set[str] = set()
    for model in (CompletionRequest, ChatRequest, NextRequest, BeamRequest):
        names.update(model.model_fields)
    return sorted(names)
