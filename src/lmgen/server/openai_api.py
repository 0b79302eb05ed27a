"""OpenAI's completions and chat completions over lmgen: request -> job -> response, with
OpenAI's response shapes (choices, logprobs in both of its shapes, usage, stream chunks)."""

from __future__ import annotations

import time
import uuid

import anyio
from fastapi import Request

from lmgen.chat import chat_format, chat_kwargs
from lmgen.decoding.session import check_context, encode_prompt
from lmgen.errors import GenerationError, LmgenError
from lmgen.generation_config import infer_strategy
from lmgen.tokenizers import text_offsets, token_utf8

from . import jobs, schemas, speculative
from .budget import decode_cost, job_bytes
from .chat_prompt import render_prompt
from .errors import APIError, api_text, from_lmgen
from .mapping import config_kwargs, make_config
from .registry import Registry
from .structured import check_start
from .worker import CallJob, score_prompt

FINISH = {"eos": "stop", "stop": "stop", "length": "length"}


def usage(results) -> dict:
    prompt = sum(len(r.prompt_token_ids) for r in results)
    completion = sum(len(c.token_ids) for r in results for c in r.choices)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def warnings_field(results) -> dict:
    warnings = results[0].warnings if results else []
    return {"warnings": [api_text(w) for w in warnings]} if warnings else {}


def sampling_kwargs(body: schemas.Decoding, lm) -> dict:
    """Sampling is the default, as in OpenAI's API; temperature 0 is greedy; num_beams > 1 is
    beam search; penalty_alpha > 0 is contrastive search (with top_k candidates). The settings
    `lmgen serve` was given (lm.decoding_defaults) fill in what the request does not set."""
    kw = {**lm.decoding_defaults, **config_kwargs(body, lm.config.vocab_size)}
    kw["strategy"] = infer_strategy(kw, default="sample")
    check_start(body, kw, lm)  # a constraint no token can start: a 400 before queueing
    return kw


async def prompt_lengths(lm, prompts: list, param: str) -> list[int]:
    """Tokens in each prompt (text is encoded off the event loop; token ids are counted and
    checked against the vocabulary)."""
    vocab = lm.config.vocab_size
    for k, p in enumerate(prompts):
        if isinstance(p, list):
            bad = next((i for i, t in enumerate(p) if not 0 <= t < vocab), None)
            if bad is not None:
                where = f"prompt {k}, position {bad}" if len(prompts) > 1 else f"position {bad}"
                raise APIError(
                    400,
                    f"token id {p[bad]} ({where}) is not in this model's vocabulary: ids are "
                    f"in [0, {vocab})",
                    param=param,
                    code="invalid_value",
                )

    def lengths():
        return [len(p) if isinstance(p, list) else len(encode_prompt(lm, p)) for p in prompts]

    try:
        return await anyio.to_thread.run_sync(lengths)
    except LmgenError as e:
        raise from_lmgen(e, param) from None


# A client that cuts long texts into windows must use the model's context as its window:
# lm-eval's local-completions does not read max_model_len and assumes 2048 tokens.
WINDOW_HINT = (
    " (the context is max_model_len in GET /v1/models; lm-eval needs it as max_length in "
    "--model_args: docs/EVALUATION.md)"
)


def fits_context(lm, length: int, config, param: str) -> None:
    try:
        check_context(lm, length, config)
    except GenerationError as e:
        error = from_lmgen(e, param)
        if error.code == "context_length_exceeded":
            error.message += WINDOW_HINT
        raise error from None


def prompt_list(prompt) -> list:
    """The request's prompts, each a string or a list of token ids."""
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(t, int) for t in prompt):
        return [list(prompt)]  # one prompt as token ids
    return list(prompt)


# -- completions ----------------------------------------------------------------------------


async def completions(models: Registry, body: schemas.CompletionRequest, request: Request):
    name, s = models.pick(body.model)
    lm = s.lm
    draft = speculative.request_draft(models, name, body)
    n = body.n or 1
    if body.best_of is not None and body.best_of != n:
        raise APIError(
            400,
            "best_of is not supported (only best_of == n)",
            param="best_of",
            code="invalid_value",
        )
    if body.suffix:
        raise APIError(400, "suffix is not supported by these models", param="suffix")
    prompts = prompt_list(body.prompt)
    kw = sampling_kwargs(body, lm)
    if body.logprobs:
        kw["logprobs"] = body.logprobs
    kw.setdefault("max_new_tokens", schemas.COMPLETION_MAX_TOKENS)
    scoring_only = kw["max_new_tokens"] == 0
    if scoring_only:
        if not body.echo:
            raise APIError(
                400,
                "max_tokens 0 generates nothing: it is allowed only with echo: true, which "
                "returns the prompt (with its logprobs when logprobs is set)",
                param="max_tokens",
                code="invalid_value",
            )
        kw["max_new_tokens"] = 1  # the other knobs are checked as for any request
    config = make_config(kw)
    if draft is not None:
        speculative.check_settings(lm, draft, config)
    lengths = await prompt_lengths(lm, prompts, "prompt")
    echo = bool(body.echo)
    want_lp = body.logprobs is not None
    rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    head = {"id": rid, "object": "text_completion", "created": created, "model": name}
    if scoring_only:
        return await score_prompts(request, s, body, prompts, lengths, config, head)
    fits_context(lm, max(lengths), config, "prompt")

    def choices(out) -> list[dict]:
        results, scored = out
        return [
            {
                "index": k * n + c.index,
                "text": (r.prompt if echo else "") + c.text,
                "logprobs": completion_logprobs(
                    lm.tokenizer, r, c, body.logprobs or 0, scored[k] if scored else None
                )
                if want_lp
                else None,
                "finish_reason": FINISH[c.finish_reason],
            }
            for k, r in enumerate(results)
            for c in r.choices
        ]

    prompt_lp = (body.logprobs or 0) if (echo and want_lp) else None
    cost = decode_cost(lm, config, len(prompts), max(lengths), scored=prompt_lp is not None)
    if draft is not None:
        cost = speculative.with_draft_cost(cost, draft, max(lengths) + config.max_new_tokens)
    incremental = not want_lp and config.effective_strategy() != "beam"
    if not body.stream:
        job = speculative.generate_job(draft, prompts, config, prompt_logprobs=prompt_lp)
        out = await jobs.run(request, s, job, cost)
        return {
            **head,
            "choices": choices(out),
            "usage": usage(out[0]),
            "system_fingerprint": None,
            **warnings_field(out[0]),
        }

    def chunk(index: int, text: str, reason: str | None = None, logprobs=None) -> dict:
        return sse_chunk(head, index, "text", text, reason, logprobs)

    def on_whole(out) -> list[dict]:  # non-incremental streams: one chunk per choice
        return [
            chunk(c["index"], c["text"], c["finish_reason"], c["logprobs"]) for c in choices(out)
        ]

    echoed = [chunk(k * n + j, p) for k, p in enumerate(prompts) for j in range(n)]
    job = speculative.generate_job(
        draft, prompts, config, stream=incremental, prompt_logprobs=prompt_lp
    )
    return await stream_choices(
        s, job, cost, body, head, chunk, lambda text: text or "",
        start=echoed if echo else [], whole=on_whole, incremental=incremental,
    )  # fmt: skip


async def score_prompts(request, s, body, prompts: list, lengths: list[int], config, head):
    """`max_tokens: 0` with `echo`: each prompt back with the model's log-probability of each
    of its tokens, nothing generated (as OpenAI's legacy API and scoring scripts use it)."""
    lm = s.lm
    n_pos = lm.config.n_positions
    longest = max(lengths)
    if longest > n_pos and config.context_overflow == "error":
        raise APIError(
            400,
            f"a prompt of {longest} tokens exceeds the model's context of {n_pos} tokens; "
            "shorten it, or set context_overflow='slide' to score its last tokens only"
            + WINDOW_HINT,
            param="prompt",
            code="context_length_exceeded",
        )
    top = body.logprobs or 0
    want_lp = body.logprobs is not None

    def work(lm) -> list:
        out = []
        for p in prompts:
            ids = p if isinstance(p, list) else encode_prompt(lm, p)
            text = lm.tokenizer.decode(ids) if isinstance(p, list) else p
            out.append((text, ids, score_prompt(lm, ids, top) if want_lp else None))
        return out

    n = body.n or 1
    nbytes = job_bytes(lm, 1, longest) + min(longest, n_pos) * lm.config.vocab_size * 4
    cost = (nbytes, f"1 row x {min(longest, n_pos)} positions, and its logits")

    def choices(out) -> list[dict]:
        return [
            {
                "index": k * n + j,
                "text": text,
                "logprobs": prompt_logprobs(lm.tokenizer, ids, scored, top) if want_lp else None,
                "finish_reason": "length",
            }
            for k, (text, ids, scored) in enumerate(out)
            for j in range(n)
        ]

    prompt_tokens = sum(lengths)
    counts = {"prompt_tokens": prompt_tokens, "completion_tokens": 0, "total_tokens": prompt_tokens}
    if not body.stream:
        out = await jobs.run(request, s, CallJob(work), cost)
        return {**head, "choices": choices(out), "usage": counts, "system_fingerprint": None}
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await jobs.stream(
        s,
        CallJob(work),
        cost,
        on_start=lambda: [],
        on_event=lambda item: [],
        on_whole=lambda out: [{**head, "choices": [c]} for c in choices(out)],
        on_usage=(lambda out: {**head, "choices": [], "usage": counts}) if include_usage else None,
        incremental=False,
    )


# -- chat -----------------------------------------------------------------------------------


async def chat(models: Registry, body: schemas.ChatRequest, request: Request):
    name, s = models.pick(body.model)
    lm = s.lm
    refuse_unsupported(body)
    draft = speculative.request_draft(models, name, body)
    n = body.n or 1
    fmt = chat_format(lm)  # the model's template, or lmgen's default transcript
    _, prompt = await render_prompt(lm, fmt, body)  # token ids: the template's specials only
    kw = chat_kwargs(fmt, sampling_kwargs(body, lm))
    if body.logprobs:
        kw["logprobs"] = body.top_logprobs or 0
    elif body.top_logprobs:
        raise APIError(
            400, "top_logprobs needs logprobs: true", param="top_logprobs", code="invalid_value"
        )
    (length,) = await prompt_lengths(lm, [prompt], "messages")
    room = lm.config.n_positions - length
    max_tokens = body.max_completion_tokens or body.max_tokens
    if max_tokens is None:  # `lmgen serve --max-new-tokens`, or what the context leaves
        if room < 1:
            raise APIError(
                400,
                f"the conversation ({length} tokens) fills the model's "
                f"context of {lm.config.n_positions} tokens",
                param="messages",
                code="context_length_exceeded",
            )
        max_tokens = min(room, lm.decoding_defaults.get("max_new_tokens") or schemas.MAX_TOKENS)
    kw["max_new_tokens"] = max_tokens
    config = make_config(kw)
    fits_context(lm, length, config, "messages")
    cost = decode_cost(lm, config, 1, length)
    if draft is not None:
        speculative.check_settings(lm, draft, config)
        cost = speculative.with_draft_cost(cost, draft, length + config.max_new_tokens)
    rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    head = {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": name,
        "system_fingerprint": None,
    }
    want_lp = bool(body.logprobs)

    def choices(out) -> list[dict]:
        results, _ = out
        return [
            {
                "index": c.index,
                "message": {"role": "assistant", "content": c.text, "refusal": None},
                "logprobs": chat_logprobs(lm.tokenizer, c) if want_lp else None,
                "finish_reason": FINISH[c.finish_reason],
            }
            for c in results[0].choices
        ]

    if not body.stream:
        job = speculative.generate_job(draft, [prompt], config, end_ids=fmt.end_ids)
        out = await jobs.run(request, s, job, cost)
        return {**head, "choices": choices(out), "usage": usage(out[0]), **warnings_field(out[0])}

    chead = {**head, "object": "chat.completion.chunk"}

    def chunk(index: int, delta: dict, reason: str | None = None, logprobs=None) -> dict:
        return sse_chunk(chead, index, "delta", delta, reason, logprobs)

    incremental = not want_lp and config.effective_strategy() != "beam"

    def on_whole(out) -> list[dict]:
        return [
            item
            for c in choices(out)
            for item in (
                chunk(
                    c["index"],
                    {"role": "assistant", "content": c["message"]["content"]},
                    None,
                    c["logprobs"],
                ),
                chunk(c["index"], {}, c["finish_reason"]),
            )
        ]

    roles = [chunk(j, {"role": "assistant", "content": ""}) for j in range(n)]
    job = speculative.generate_job(draft, [prompt], config, stream=incremental, end_ids=fmt.end_ids)
    return await stream_choices(
        s, job, cost, body, chead, chunk, lambda text: {} if text is None else {"content": text},
        start=roles, whole=on_whole, incremental=incremental, prompt_param="messages",
    )  # fmt: skip


# -- streaming: the tail completions and chat share -----------------------------------------


def sse_chunk(head: dict, index: int, key: str, value, reason=None, logprobs=None) -> dict:
    """One streamed chunk of one choice: its `text` (completions) or `delta` (chat)."""
    choice = {"index": index, key: value, "logprobs": logprobs, "finish_reason": reason}
    return {**head, "choices": [choice]}


async def stream_choices(s, job, cost, body, head: dict, chunk, payload, *, start: list,
                         whole, incremental: bool, prompt_param: str = "prompt"):  # fmt: skip
    """The server-sent events of a streamed request: `start` first (echoed prompts, the
    assistant role), then a chunk per text delta and per finish (`payload(text)` is what a
    choice carries: None at its finish), or `whole(out)` at the end when the job does not
    stream incrementally (beam search, logprobs); the usage last when the client asks."""

    def on_event(item) -> list[dict]:
        if item[0] == "delta":
            return [chunk(item[1], payload(item[2]))]
        return [chunk(item[1], payload(None), FINISH[item[2]])]

    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await jobs.stream(
        s,
        job,
        cost,
        on_start=lambda: start if incremental else [],
        on_event=on_event,
        on_whole=whole,
        on_usage=(lambda out: {**head, "choices": [], "usage": usage(out[0])})
        if include_usage
        else None,
        incremental=incremental,
        prompt_param=prompt_param,
    )


def refuse_unsupported(body: schemas.ChatRequest) -> None:
    harmless = {
        "tool_choice": ("none", "auto"),
        "modalities": (["text"],),
    }
    for name in (  # tools go to the chat template (chat_prompt.py); no tool-call parsing
        "tool_choice",
        "functions",
        "function_call",
        "audio",
        "modalities",
        "prediction",
        "web_search_options",
    ):
        value = getattr(body, name)
        if value is None or value == [] or value in harmless.get(name, ()):
            continue
        raise APIError(
            400,
            f"{name} is not supported: lmgen passes tools to the chat template and returns "
            "the reply as text, without parsing tool calls",
            param=name,
            code="unsupported",
        )


# -- logprobs in OpenAI's two shapes ----------------------------------------------------------


def completion_logprobs(tok, result, choice, top: int, scored) -> dict:
    ids = choice.token_ids
    entries = {
        "tokens": [tok.token_to_str(t) for t in ids],
        "token_logprobs": list(choice.logprobs),
        "top_logprobs": [{t.token: t.logprob for t in step} for step in choice.top_logprobs]
        if top and choice.top_logprobs
        else None,
    }
    if scored is not None:  # echo: the prompt first
        echo = prompt_entries(tok, result.prompt_token_ids, scored, top)
        tops = None
        if top:
            tops = echo["top_logprobs"] + (entries["top_logprobs"] or [{} for _ in ids])
        entries = {
            "tokens": echo["tokens"] + entries["tokens"],
            "token_logprobs": echo["token_logprobs"] + entries["token_logprobs"],
            "top_logprobs": tops,
        }
        ids = [*result.prompt_token_ids, *ids]
    return with_offsets(entries, tok, ids)


def prompt_logprobs(tok, ids: list[int], scored, top: int) -> dict:
    return with_offsets(prompt_entries(tok, ids, scored, top), tok, ids)


def prompt_entries(tok, ids: list[int], scored, top: int) -> dict:
    """OpenAI's logprobs of the prompt's tokens, less `text_offset`: the first has none
    (null), as has any token cut off by context_overflow='slide'."""
    lps, tops = scored
    missing = len(ids) - len(lps)  # the prompt's start, beyond the context
    lps = [None] * missing + list(lps)
    tops = [None] * missing + list(tops)
    tops[0] = None
    return {
        "tokens": [tok.token_to_str(t) for t in ids],
        "token_logprobs": lps,
        "top_logprobs": tops if top else None,
    }


def with_offsets(logprobs: dict, tok, ids: list[int]) -> dict:
    """`text_offset`: where each token starts in the text, in characters (a token inside a
    multi-byte character: where that character starts)."""
    return {**logprobs, "text_offset": text_offsets(tok, ids)}


def chat_logprobs(tok, choice) -> dict:
    content = []
    for k, t in enumerate(choice.token_ids):  # bytes: the token's own (token_utf8)
        alts = choice.top_logprobs[k] if choice.top_logprobs else []
        content.append(
            {
                "token": tok.token_to_str(t),
                "logprob": choice.logprobs[k],
                "bytes": list(token_utf8(tok, t)),
                "top_logprobs": [
                    {
                        "token": a.token,
                        "logprob": a.logprob,
                        "bytes": list(token_utf8(tok, a.token_id)),
                    }
                    for a in alts
                ],
            }
        )
    return {"content": content, "refusal": None}
