"""The decode loop: prefill once, then one cached step per token; greedy and sampling.

Beam search lives in beam.py and shares the prompt preparation and the processors.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from .errors import ConfigError, ContextLengthError, GenerationError
from .fast_sampling import FusedSampler
from .generation_config import GenerationConfig
from .processors import build_chain, make_generator, sample_from_logits

log = logging.getLogger(__name__)


@dataclass
class TopLogprob:
    token_id: int
    token: str
    logprob: float


@dataclass
class Choice:
    index: int
    text: str
    token_ids: list[int]
    logprobs: list[float]
    """log-probability of each chosen token under the raw model (before the processors)"""
    processed_logprobs: list[float]
    """the same under the processed distribution the token was actually chosen from"""
    finish_reason: str  # "length" | "stop" | "eos"
    score: float | None = None  # beam search: length-normalised sum of processed log-probs
    top_logprobs: list[list[TopLogprob]] | None = None  # raw-model top-N per step, on request


@dataclass
class GenerationResult:
    model: str
    prompt: str
    prompt_token_ids: list[int]
    choices: list[Choice]
    chain: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.choices[0].text

    @property
    def token_ids(self) -> list[int]:
        return self.choices[0].token_ids

    @property
    def finish_reason(self) -> str:
        return self.choices[0].finish_reason

    def to_dict(self) -> dict:
        """The documented `--json` shape of `lmgen generate`."""
        choices = []
        for c in self.choices:
            d = {
                "index": c.index,
                "text": c.text,
                "token_ids": c.token_ids,
                "logprobs": c.logprobs,
                "finish_reason": c.finish_reason,
            }
            if c.score is not None:
                d["score"] = c.score
            choices.append(d)
        return {
            "model": self.model,
            "prompt": self.prompt,
            "prompt_token_ids": self.prompt_token_ids,
            "choices": choices,
        }


# -- shared preparation ---------------------------------------------------------------------


def make_config(config: GenerationConfig | None, kwargs: dict) -> tuple[GenerationConfig, list]:
    if config is None:
        config = GenerationConfig.from_kwargs(**kwargs)
    elif kwargs:
        config = config.replace(**kwargs)
    warnings = config.validate()
    for w in warnings:
        log.warning(w)
    return config, warnings


def encode_prompt(lm, prompt: str) -> list[int]:
    if not isinstance(prompt, str):
        raise ConfigError(f"prompt must be a string, got {type(prompt).__name__}", "prompt")
    ids = lm.tokenizer.encode(prompt) if prompt else []
    if not ids:
        start = lm.tokenizer.bos_token_id
        if start is None:
            start = lm.tokenizer.eos_token_id
        if start is None:
            raise ConfigError(
                "the prompt is empty and this tokenizer has no bos/eos token to start from; "
                "give a non-empty prompt",
                "prompt",
            )
        ids = [start]
    return ids


def left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids.to(device), mask.to(device)


def check_context(lm, prompt_len: int, config: GenerationConfig) -> None:
    n_pos = lm.config.n_positions
    if prompt_len + config.max_new_tokens > n_pos and config.context_overflow == "error":
        raise ContextLengthError(
            f"prompt ({prompt_len} tokens) + max_new_tokens ({config.max_new_tokens}) = "
            f"{prompt_len + config.max_new_tokens} exceeds the model's context of {n_pos} "
            "tokens; shorten the prompt, lower max_new_tokens, or set "
            "context_overflow='slide' to keep only the last tokens"
        )
    if prompt_len > n_pos and config.context_overflow == "slide":
        log.info("prompt of %d tokens cut to its last %d", prompt_len, n_pos)


def pad_token_id(lm) -> int:
    eos = lm.eos_token_ids
    return eos[0] if eos else 0


# -- greedy and sampling --------------------------------------------------------------------


@dataclass
class _Row:
    """Per-sequence bookkeeping on the Python side."""

    prompt_index: int
    choice_index: int
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    processed_logprobs: list[float] = field(default_factory=list)
    top: list[list[TopLogprob]] = field(default_factory=list)
    finish_reason: str | None = None
    text: str = ""
    emitted: int = 0  # characters of `text` already streamed


def _decode_loop(
    lm, prompts: list[list[int]], config: GenerationConfig, *, fast: bool = True, decode_step=None
) -> Iterator[list[_Row]]:
    """Runs greedy/sampling decoding for all rows; yields the rows after every step.

    `fast=False` draws through the processor chain even where the fused sampler
    (fast_sampling.py) applies; `decode_step(ids, cache=)` replaces the model for one-token
    steps (a compiled step, see compile.py)."""
    model, tok = lm.model, lm.tokenizer
    device = lm.device
    strategy = config.effective_strategy()
    n = config.num_return_sequences
    rows_ids = [p for p in prompts for _ in range(n)]
    rows = [_Row(i // n, i % n) for i in range(len(rows_ids))]
    # One generator per request, shared by its n choices: a request's draws never depend on
    # what else is in the batch.
    gens = []
    for _ in prompts:
        g = make_generator(config.seed, device) if strategy == "sample" else None
        gens.extend([g] * n)

    n_pos = lm.config.n_positions
    slide = config.context_overflow == "slide"
    rows_ids = [r[-n_pos:] if slide else r for r in rows_ids]
    ids, mask = left_pad(rows_ids, pad_token_id(lm), device)
    B, P = ids.shape
    total = P + config.max_new_tokens
    cache_len = min(total, n_pos)
    eos = torch.tensor(lm.eos_token_ids, dtype=torch.long, device=device)
    chain = build_chain(config, prompt_length=P, eos_token_ids=lm.eos_token_ids)
    seq = torch.empty((B, total), dtype=torch.long, device=device)
    seq[:, :P] = ids
    stop = config.stop or []
    need_text = bool(stop)
    unfinished = torch.ones(B, dtype=torch.bool, device=device)
    all_running = True
    done = [False] * B
    cache = model.new_cache(B, cache_len)
    seq_mask = torch.cat(
        [mask, torch.ones((B, config.max_new_tokens), dtype=mask.dtype, device=device)], dim=1
    )

    fused = FusedSampler.from_chain(chain) if strategy == "sample" and fast else None
    step_fn = decode_step if decode_step is not None else model
    eos0 = eos[0] if len(eos) else None

    with torch.inference_mode():
        logits = model(ids, attention_mask=mask, cache=cache, logits_to_keep=1)[:, -1]
        for step in range(config.max_new_tokens):
            cur = P + step
            logits = logits.float()
            # one fused pass (log_softmax) rather than logsumexp's several reductions
            raw_logp = logits.log_softmax(dim=-1)
            picked = fused(logits, gens) if fused is not None else None
            if picked is not None:
                nxt, proc_lp = picked
            else:
                scores = chain(seq[:, :cur], logits) if chain else logits
                if strategy == "sample":
                    nxt = sample_from_logits(scores, gens)
                else:
                    nxt = scores.argmax(dim=-1)
            raw_lp = raw_logp.gather(1, nxt[:, None])[:, 0]
            if picked is None:
                proc_lp = (
                    raw_lp
                    if not chain
                    else scores.log_softmax(dim=-1).gather(1, nxt[:, None])[:, 0]
                )
            if eos0 is not None and not all_running:
                nxt = torch.where(unfinished, nxt, eos0)
            seq[:, cur] = nxt
            is_eos = torch.isin(nxt, eos) if (len(eos) and not config.ignore_eos) else None

            top = None
            if config.logprobs:
                top_v, top_i = raw_logp.topk(config.logprobs, dim=-1)
                top = (top_v.tolist(), top_i.tolist())
            nxt_l, raw_l, proc_l = nxt.tolist(), raw_lp.tolist(), proc_lp.tolist()
            eos_l = is_eos.tolist() if is_eos is not None else [False] * B
            for b, row in enumerate(rows):
                if row.finish_reason is not None:
                    continue
                if eos_l[b]:
                    row.finish_reason = "eos"
                    continue
                row.token_ids.append(nxt_l[b])
                row.logprobs.append(raw_l[b])
                row.processed_logprobs.append(proc_l[b])
                if top is not None:
                    row.top.append(
                        [
                            TopLogprob(i, tok.token_to_str(i), v)
                            for v, i in zip(top[0][b], top[1][b], strict=True)
                        ]
                    )
                if need_text:
                    _check_stop(row, tok, stop)
            n_running = 0
            for b, row in enumerate(rows):
                if row.finish_reason is not None:
                    if not done[b]:
                        done[b] = True
                        unfinished[b] = False
                else:
                    n_running += 1
            all_running = n_running == B
            last = step == config.max_new_tokens - 1
            if not last and n_running:
                if cache.length >= cache_len:  # context full: re-prefill the last window
                    cache = model.new_cache(B, cache_len)
                    window = seq[:, cur + 1 - (cache_len - 1) : cur + 1]
                    wmask = seq_mask[:, cur + 1 - (cache_len - 1) : cur + 1]
                    logits = model(window, attention_mask=wmask, cache=cache, logits_to_keep=1)[
                        :, -1
                    ]
                else:
                    # generated tokens are never padding: no attention mask to append
                    logits = step_fn(nxt[:, None], cache=cache)[:, -1]
            for row in rows:
                if row.finish_reason is None and last:
                    row.finish_reason = "length"
            yield rows
            if not n_running:
                break
    for row in rows:
        if row.finish_reason is None:
            row.finish_reason = "length"


def stop_cut(tok, token_ids: list[int], text: str, stop: list[str]) -> tuple[str, int] | None:
    """Where `text` (the decoding of `token_ids`) meets its first stop string: the text before
    it and how many tokens produced that text (the last may straddle the stop string); None
    when no stop string occurs."""
    first = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    if first < 0:
        return None
    kept = text[:first]
    k = 0
    while k < len(token_ids) and len(tok.decode(token_ids[:k])) < len(kept):
        k += 1
    return kept, k


def _check_stop(row: _Row, tok, stop: list[str]) -> None:
    """Ends a row whose decoded text contains a stop string; the stop string is cut off."""
    row.text = tok.decode(row.token_ids)
    cut = stop_cut(tok, row.token_ids, row.text, stop)
    if cut is None:
        return
    row.text, k = cut
    row.finish_reason = "stop"
    for name in ("token_ids", "logprobs", "processed_logprobs", "top"):
        setattr(row, name, getattr(row, name)[:k])


def _finish_text(row: _Row, tok) -> str:
    if row.finish_reason != "stop":
        row.text = tok.decode(row.token_ids)
    return row.text


def _to_result(lm, prompt: str, prompt_ids: list[int], rows: list[_Row], chain, warnings):
    choices = [
        Choice(
            index=r.choice_index,
            text=_finish_text(r, lm.tokenizer),
            token_ids=r.token_ids,
            logprobs=r.logprobs,
            processed_logprobs=r.processed_logprobs,
            finish_reason=r.finish_reason,
            top_logprobs=r.top or None,
        )
        for r in rows
    ]
    return GenerationResult(lm.name, prompt, prompt_ids, choices, chain, warnings)


def _prepare(lm, prompt, config, kwargs):
    config, warnings = make_config(config, kwargs)
    single = isinstance(prompt, str)
    prompts = [prompt] if single else list(prompt)
    if not prompts:
        raise ConfigError("no prompts given", "prompt")
    ids = [encode_prompt(lm, p) for p in prompts]
    check_context(lm, max(len(i) for i in ids), config)
    return config, warnings, single, prompts, ids


def generate(
    lm,
    prompt: str | list[str],
    config: GenerationConfig | None = None,
    *,
    draft=None,
    speculative_k: int = 4,
    spec_stats=None,
    compile=False,
    **kwargs,
):
    """Generates continuations; a list of prompts returns a list of results.

    `draft=` a smaller `LM` sharing the tokenizer: speculative decoding (speculative.py) with
    `speculative_k` proposals per target pass; the output follows the target's distribution
    (greedy: the same tokens). `spec_stats=` a `SpeculativeStats` to count acceptances.
    `compile=True` runs the one-token steps through a torch.compile'd step (compile.py; the
    first call compiles); a callable from `lmgen.compile.compile_decode_step` is used as is.
    """
    config, warnings, single, prompts, ids = _prepare(lm, prompt, config, kwargs)
    if draft is not None:
        from .speculative import check_draft, speculative_tokens

        check_draft(lm, draft, config)
        results = []
        chain = build_chain(
            config, prompt_length=max(map(len, ids)), eos_token_ids=lm.eos_token_ids
        ).describe()
        for p, i in zip(prompts, ids, strict=True):
            row = _Row(0, 0)
            row.finish_reason = "length"
            for t, raw_lp, proc_lp in speculative_tokens(
                lm, draft, i, config, speculative_k, spec_stats
            ):
                if t in lm.eos_token_ids and not config.ignore_eos:
                    row.finish_reason = "eos"
                    break
                row.token_ids.append(t)
                row.logprobs.append(raw_lp)
                row.processed_logprobs.append(proc_lp)
            results.append(_to_result(lm, p, i, [row], chain, warnings))
        return results[0] if single else results
    if config.effective_strategy() == "beam":
        from .beam import beam_search

        results = beam_search(lm, prompts, ids, config, warnings)
    else:
        step = None
        if compile:
            from .compile import compile_decode_step

            step = compile if callable(compile) else compile_decode_step(lm.model)
        *_, rows = _decode_loop(lm, ids, config, decode_step=step)  # as the loop left them
        chain = build_chain(
            config, prompt_length=max(map(len, ids)), eos_token_ids=lm.eos_token_ids
        ).describe()
        n = config.num_return_sequences
        results = [
            _to_result(lm, p, i, rows[k * n : (k + 1) * n], chain, warnings)
            for k, (p, i) in enumerate(zip(prompts, ids, strict=True))
        ]
    return results[0] if single else results


def stream(lm, prompt: str, config: GenerationConfig | None = None, **kwargs) -> Iterator[str]:
    """Yields text deltas of one continuation as they are decided; their concatenation equals
    `generate(...).text` for the same arguments."""
    config, _, single, _, ids = _prepare(lm, prompt, config, kwargs)
    if not single:
        raise ConfigError("stream() takes one prompt", "prompt")
    if config.effective_strategy() == "beam" or config.num_return_sequences != 1:
        raise ConfigError("streaming needs strategy greedy or sample with one sequence", "strategy")
    tok = lm.tokenizer
    holdback = max((len(s) for s in config.stop or []), default=1) - 1
    row = None
    for rows in _decode_loop(lm, ids, config):
        row = rows[0]
        if row.finish_reason is None:
            text = row.text if config.stop else tok.decode(row.token_ids)
            # Hold back an unfinished UTF-8 sequence and a possible stop-string prefix.
            safe = len(text.rstrip("\ufffd")) - holdback
            if safe > row.emitted:
                yield text[row.emitted : safe]
                row.emitted = safe
    if row is not None:
        final = _finish_text(row, tok)
        if len(final) > row.emitted:
            yield final[row.emitted :]


# -- the next-token distribution --------------------------------------------------------------


@dataclass
class Candidate:
    token_id: int
    token: str
    logit: float
    prob: float
    processed_prob: float
    kept: bool


@dataclass
class NextToken:
    prompt: str
    prompt_token_ids: list[int]
    chain: list[str]
    candidates: list[Candidate]
    greedy_token_id: int
    logits: torch.Tensor  # the raw logits over the whole vocabulary
    processed_logits: torch.Tensor

    def to_dict(self) -> dict:
        """The documented `--json` shape of `lmgen next`."""
        return {
            "prompt_token_ids": self.prompt_token_ids,
            "chain": self.chain,
            "greedy_token_id": self.greedy_token_id,
            "candidates": [vars(c).copy() for c in self.candidates],
        }


def next_token(
    lm, prompt: str, top: int = 10, config: GenerationConfig | None = None, **kwargs
) -> NextToken:
    """The distribution over the next token, raw and after the processor chain.

    The chain is the sampling chain (temperature, top-k, top-p, …) unless another strategy is
    named, since showing what those rules keep is the point of looking."""
    if config is None:
        kwargs.setdefault("strategy", "sample")
    config, _ = make_config(config, kwargs)
    if not isinstance(top, int) or top < 0:
        raise ConfigError(f"top must be an int >= 0 (0 = whole vocabulary), got {top!r}", "top")
    ids = encode_prompt(lm, prompt)
    check_context(lm, len(ids), config.replace(max_new_tokens=1))
    ids = ids[-lm.config.n_positions :]
    chain = build_chain(config, prompt_length=len(ids), eos_token_ids=lm.eos_token_ids)
    x = torch.tensor([ids], device=lm.device)
    with torch.inference_mode():
        logits = lm.model(x, logits_to_keep=1)[:, -1].float()
        processed = chain(x, logits) if chain else logits
    kept = torch.isfinite(processed[0])
    if not bool(kept.any()):
        raise GenerationError(
            f"the processors {chain.describe()} leave no token with a finite score; loosen them"
        )
    probs = logits.softmax(-1)[0]
    pprobs = processed.softmax(-1)[0]
    n = lm.tokenizer.vocab_size if top == 0 else min(top, logits.shape[-1])
    order = logits[0].argsort(descending=True)[:n].tolist()
    lg, pr, pp, kp = logits[0].tolist(), probs.tolist(), pprobs.tolist(), kept.tolist()
    candidates = [
        Candidate(i, lm.tokenizer.token_to_str(i), lg[i], pr[i], pp[i], kp[i]) for i in order
    ]
    greedy = int(processed[0].argmax())
    return NextToken(prompt, ids, chain.describe(), candidates, greedy, logits[0], processed[0])
