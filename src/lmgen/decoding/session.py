"""`Session`: one decoding run, stepwise — prepare, prefill, step, ..., results.

Every path (`generate`, `stream`, `next_token`, the server's worker, the plots) drives a
Session, so each rule lives here once: the config is validated once and the processor chain
built once; prompts are encoded and checked against the context; EOS, stop strings,
`max_new_tokens` and the text each choice may emit are decided per choice in `step()`,
whichever stepper (sample/greedy, beam, speculative) chose the tokens.

    session = lmgen.Session(lm, ["ROMEO:", "JULIET:"], strategy="sample", seed=1)
    for out in session:                 # one model step each
        for i, delta in enumerate(out.deltas):
            print(i, repr(delta))
    results = session.results()         # one GenerationResult per prompt
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from lmgen.errors import ConfigError, ContextLengthError, GenerationError
from lmgen.generation_config import PROMPT_LOOKUP_STRATEGIES, GenerationConfig

from .beam import BeamStepper
from .contrastive import ContrastiveStepper
from .dola import DolaStepper
from .group_beam import GroupBeamStepper
from .processors import ProcessorChain, build_chain
from .results import BeamStep, Choice, GenerationResult, TopLogprob
from .sampling import make_generator
from .speculative import SpeculativeStats, SpeculativeStepper, check_draft, same_tokenizer
from .state import Tokens
from .steppers import SampleStepper, Stepper
from .text import TextTracker

log = logging.getLogger(__name__)

RECORDABLE = ("text", "logits", "candidates")


@dataclass
class StepOutput:
    """What one `Session.step()` decided, per choice (prompt-major: choice `i` is prompt
    `i // n`, sample `i % n`, with n = num_return_sequences)."""

    step: int
    tokens: list[list[int]]
    """the tokens each choice gained (none for beam search until the search ends; several
    for speculative decoding)"""
    deltas: list[str]
    """the text each choice may emit now (empty without "text" in `record`)"""
    finished: dict[int, str] = field(default_factory=dict)
    """choices that finished at this step -> finish reason"""
    logits: torch.Tensor | None = None
    """with "logits" in `record`: the raw logits this step chose from (rows x vocab; rows are
    the choices, or the running beams; log-probabilities for beam search)"""
    processed_logits: torch.Tensor | None = None
    """the same after the processor chain (what was sampled from / argmaxed / searched)"""
    candidates: list[BeamStep] | None = None
    """beam search with "candidates" in `record`: each prompt's scored continuations"""


# -- preparation ---------------------------------------------------------------------------


def make_config(config: GenerationConfig | None, kwargs: dict) -> tuple[GenerationConfig, list]:
    """The run's config, validated once, and its warnings (logged)."""
    if config is None:
        config = GenerationConfig.from_kwargs(**kwargs)
    elif kwargs:
        config = config.replace(**kwargs)
    elif not isinstance(config, GenerationConfig):
        raise ConfigError(
            f"config must be a GenerationConfig, got {type(config).__name__}", "config"
        )
    return config, config.log_warnings()


def encode_prompt(lm, prompt: str | Sequence[int]) -> list[int]:
    """Token ids of a prompt given as text or as ids; an empty prompt starts from BOS/EOS."""
    if isinstance(prompt, str):
        ids = lm.tokenizer.encode(prompt) if prompt else []
    elif isinstance(prompt, Sequence) and all(_is_int(t) for t in prompt):
        ids = list(prompt)
        vocab = lm.config.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ConfigError(f"prompt token ids must be in [0, {vocab}), got {bad[0]}", "prompt")
    else:
        raise ConfigError(
            f"prompt must be a string or a list of token ids, got {type(prompt).__name__}",
            "prompt",
        )
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


def check_context(lm, prompt_len: int, config: GenerationConfig) -> None:
    """Refuses, up front, a run that cannot fit the context under context_overflow='error'."""
    n_pos = lm.config.n_positions
    if prompt_len + config.max_new_tokens > n_pos and config.context_overflow == "error":
        raise ContextLengthError(
            f"prompt ({prompt_len} tokens) + max_new_tokens ({config.max_new_tokens}) = "
            f"{prompt_len + config.max_new_tokens} exceeds the model's context of {n_pos} "
            "tokens; shorten the prompt, lower max_new_tokens, or set "
            "context_overflow='slide' (CLI: --context-overflow slide) to keep only the last "
            "tokens",
            prompt_tokens=prompt_len,
            new_tokens=config.max_new_tokens,
            context=n_pos,
        )
    if prompt_len > n_pos and config.context_overflow == "slide":
        log.info("prompt of %d tokens: the model sees its last %d", prompt_len, n_pos)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def split_prompts(prompts) -> tuple[bool, list]:
    if isinstance(prompts, str):
        return True, [prompts]
    if isinstance(prompts, Sequence) and prompts and all(_is_int(t) for t in prompts):
        return True, [list(prompts)]  # one prompt given as token ids
    if isinstance(prompts, Sequence) and not isinstance(prompts, bytes | bytearray):
        for k, p in enumerate(prompts):  # each a string or a list of token ids, never a bare id
            if not isinstance(p, str) and not (
                isinstance(p, Sequence) and not isinstance(p, bytes | bytearray)
            ):
                raise ConfigError(
                    f"prompt {k} of the list must be a string or a list of token ids, got "
                    f"{type(p).__name__} {p!r} (a token-id prompt is a list of its own: "
                    f"[[id, ...], ...])",
                    "prompt",
                )
        return False, list(prompts)
    raise ConfigError(
        f"prompt must be a string, a list of strings or token-id lists, got "
        f"{type(prompts).__name__}",
        "prompt",
    )


# -- the session -----------------------------------------------------------------------------


@dataclass
class _Row:
    """One choice's bookkeeping."""

    prompt_index: int
    choice_index: int
    tracker: TextTracker
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    processed_logprobs: list[float] = field(default_factory=list)
    top: list[list[TopLogprob]] = field(default_factory=list)
    finish_reason: str | None = None
    score: float | None = None

    def keep(self, k: int) -> None:
        for name in ("token_ids", "logprobs", "processed_logprobs", "top"):
            setattr(self, name, getattr(self, name)[:k])


class Session:
    """One decoding run over one or more prompts, a step at a time.

    `prompts`: a string, a list of strings, or token ids (a list of ints, or a list of such
    lists). `config` and/or keyword arguments: `GenerationConfig` fields. `draft=` a smaller
    `LM` sharing the tokenizer makes it speculative decoding (`speculative_k` proposals per
    target pass, counted in `spec_stats`); `compile=True` runs one-token steps through a
    torch.compile'd step. `record` names what each `StepOutput` carries beyond the tokens:
    "text" (the deltas; on by default), "logits" (raw and processed logits of the step),
    "candidates" (beam search's scored continuations).
    """

    def __init__(self, lm, prompts, config: GenerationConfig | None = None, *, draft=None,
                 speculative_k: int = 4, spec_stats: SpeculativeStats | None = None,
                 compile=False, record: Sequence[str] = ("text",), **kwargs):  # fmt: skip
        self.lm = lm
        self.config, self.warnings = make_config(config, kwargs)
        config = self.config
        bad = [r for r in record if r not in RECORDABLE]
        if isinstance(record, str) or bad:
            raise ConfigError(
                f"record must be a list drawn from {', '.join(RECORDABLE)}, got {record!r}",
                "record",
            )
        self.record = frozenset(record)
        self.single, prompts = split_prompts(prompts)
        if not prompts:
            raise ConfigError("no prompts given", "prompt")
        self.prompt_token_ids = [encode_prompt(lm, p) for p in prompts]
        self.prompts = [p if isinstance(p, str) else lm.tokenizer.decode(p) for p in prompts]
        width = max(len(i) for i in self.prompt_token_ids)
        check_context(lm, width, config)
        self.chain: ProcessorChain = build_chain(
            config, prompt_length=width, eos_token_ids=lm.eos_token_ids, tokenizer=lm.tokenizer
        )
        self.strategy = config.effective_strategy()
        if draft is not None:  # check_draft refuses what a draft cannot serve (DoLa, ...)
            self.strategy = "speculative"
        elif config.dola_layers is not None:
            if config.prompt_lookup_num_tokens:
                raise ConfigError(
                    "dola_layers cannot be combined with speculative decoding "
                    "(prompt_lookup_num_tokens)",
                    "dola_layers",
                )
            self.strategy = "dola"
        elif self._prompt_lookup(len(prompts)):
            self.strategy = "speculative"
        self.n = n = config.num_return_sequences
        track = bool(config.stop) or "text" in self.record
        self._rows = [
            _Row(i // n, i % n, TextTracker(lm.tokenizer, config.stop))
            for i in range(len(prompts) * n)
        ]
        self._track = track
        self._eos = frozenset([] if config.ignore_eos else lm.eos_token_ids)
        options = {"draft": draft, "speculative_k": speculative_k, "spec_stats": spec_stats,
                   "compile": compile}  # fmt: skip
        self._stepper: Stepper = STEPPERS[self.strategy](self, **options)
        self._started = False
        self._steps = 0
        self._closed = False
        self._running = len(self._rows)  # choices without a finish reason

    def _prompt_lookup(self, n_prompts: int) -> bool:
        """Prompt lookup runs on one sequence; for more, plain decoding makes the same
        tokens."""
        config = self.config
        if config.prompt_lookup_num_tokens == 0:
            return False
        one = n_prompts == 1 and config.num_return_sequences == 1
        if not one or config.effective_strategy() not in PROMPT_LOOKUP_STRATEGIES:
            log.info("prompt lookup works on one greedy or sampled sequence: decoding plainly")
            return False
        return True

    # -- stepping -------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self._closed or self._running == 0

    def __iter__(self) -> Iterator[StepOutput]:
        while not self.done:
            yield self.step()

    def _start(self) -> None:
        if not self._started:
            self._started = True
            with torch.inference_mode():
                self._stepper.prefill()

    def next_logits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw, processed) logits of the pending step, rows x vocab, without choosing a
        token (prefills first if needed): what the next `step()` will choose from."""
        if self.done:
            raise GenerationError("the session is finished")
        self._start()
        with torch.inference_mode():
            return self._stepper.distributions()

    def step(self) -> StepOutput:
        """Chooses the next token(s) of every running choice and runs the model for the step
        after; raises GenerationError once the session is done."""
        if self.done:
            raise GenerationError("the session is finished: no step left")
        self._start()
        with torch.inference_mode():
            picks = self._stepper.select()
        out = StepOutput(self._steps, [[] for _ in self._rows], ["" for _ in self._rows])
        if self.strategy == "beam":
            if self._stepper.done:  # the search decides its beams only at its end
                self._take_beams(picks, out)
        else:
            for i, row in enumerate(self._rows):
                if row.finish_reason is None:
                    self._take(row, picks[i], out, i)
        self._running -= len(out.finished)
        if "text" in self.record:
            for i, row in enumerate(self._rows):
                out.deltas[i] = row.tracker.delta(final=row.finish_reason is not None)
        st = self._stepper
        if "logits" in self.record:
            out.logits, out.processed_logits = st.raw_logits, st.processed_logits
        if "candidates" in self.record:
            out.candidates = getattr(st, "candidates", None)
        self._steps += 1
        if not self.done:
            with torch.inference_mode():
                st.advance([r.finish_reason is not None for r in self._rows])
        else:
            self._release()
        return out

    def _take(self, row: _Row, picks, out: StepOutput, i: int) -> None:
        """Adds a choice's picks up to the first that ends it: EOS (not kept), a stop string
        (cut before it), or max_new_tokens."""
        before = len(row.token_ids)
        for p in picks:
            if p.token_id in self._eos:
                row.finish_reason = "eos"
                break
            row.token_ids.append(p.token_id)
            row.logprobs.append(p.logprob)
            row.processed_logprobs.append(p.processed_logprob)
            if p.top is not None:
                row.top.append(p.top)
            if self._track:
                k = row.tracker.update(row.token_ids)
                if k is not None:
                    row.keep(k)
                    row.finish_reason = "stop"
                    break
            if len(row.token_ids) >= self.config.max_new_tokens:
                row.finish_reason = "length"
                break
        out.tokens[i] = row.token_ids[before:]
        if row.finish_reason is not None:
            out.finished[i] = row.finish_reason

    def _take_beams(self, beams: list[dict], out: StepOutput) -> None:
        for i, (row, beam) in enumerate(zip(self._rows, beams, strict=True)):
            row.token_ids = beam["token_ids"]
            row.logprobs = beam["logprobs"]
            row.processed_logprobs = beam["processed_logprobs"]
            row.top = beam["top"] or []
            row.finish_reason = beam["finish_reason"]
            row.score = beam["score"]
            k = row.tracker.update(row.token_ids) if self._track else None
            if k is not None:
                row.keep(k)
                row.finish_reason = "stop"
            out.tokens[i] = list(row.token_ids)
            out.finished[i] = row.finish_reason

    def close(self) -> None:
        """Cancels the run: unfinished choices end with finish_reason "cancelled" and the KV
        cache is released; `results()` then returns what was made."""
        if self._closed:
            return
        for row in self._rows:
            if row.finish_reason is None:
                row.finish_reason = "cancelled"
        self._closed = True
        self._release()

    def _release(self) -> None:
        for name in ("state", "target", "draft"):
            if hasattr(self._stepper, name):
                setattr(self._stepper, name, None)

    # -- results --------------------------------------------------------------------------

    def results(self) -> list[GenerationResult]:
        """One result per prompt, after running any steps left."""
        for _ in self:
            pass
        tok = self.lm.tokenizer
        chain = self.chain.describe()
        results = []
        for k, (prompt, ids) in enumerate(zip(self.prompts, self.prompt_token_ids, strict=True)):
            choices = []
            for row in self._rows[k * self.n : (k + 1) * self.n]:
                text = row.tracker.text if row.tracker.cut else tok.decode(row.token_ids)
                choices.append(
                    Choice(
                        index=row.choice_index, text=text, token_ids=row.token_ids,
                        logprobs=row.logprobs, processed_logprobs=row.processed_logprobs,
                        finish_reason=row.finish_reason, score=row.score,
                        top_logprobs=row.top or None,
                    )
                )  # fmt: skip
            results.append(
                GenerationResult(self.lm.name, prompt, ids, choices, chain, list(self.warnings))
            )
        return results


# -- the steppers, by strategy ----------------------------------------------------------------


def _tokens(s: Session, rows: list[list[int]]) -> Tokens:
    pad = s.lm.eos_token_ids[0] if s.lm.eos_token_ids else 0
    return Tokens(rows, s.config.max_new_tokens, pad, s.lm.device)


def _sample_stepper(s: Session, *, compile, **_) -> Stepper:
    """Greedy or sampling. One generator per request, shared by its n choices: a request's
    draws never depend on what else is in the batch."""
    config, n = s.config, s.n
    gens = []
    for _prompt in s.prompt_token_ids:
        g = make_generator(config.seed, s.lm.device) if s.strategy == "sample" else None
        gens.extend([g] * n)
    step_fn = None
    if compile:
        from lmgen.compile import compile_decode_step

        step_fn = compile if callable(compile) else compile_decode_step(s.lm.model)
    rows = [ids for ids in s.prompt_token_ids for _ in range(n)]
    return SampleStepper(s.lm, _tokens(s, rows), config, s.chain, gens,
                         record_logits="logits" in s.record, step_fn=step_fn)  # fmt: skip


def _beam_stepper(s: Session, **_) -> Stepper:
    """Beam search; diverse beam search with num_beam_groups > 1."""
    tokens = _tokens(s, s.prompt_token_ids)
    if s.config.num_beam_groups > 1:
        return GroupBeamStepper(s.lm, tokens, s.config, s.chain, record_logits="logits" in s.record)
    return BeamStepper(s.lm, tokens, s.config, s.chain, record_logits="logits" in s.record,
                       record_candidates="candidates" in s.record)  # fmt: skip


def _contrastive_stepper(s: Session, **_) -> Stepper:
    tokens = _tokens(s, s.prompt_token_ids)
    return ContrastiveStepper(s.lm, tokens, s.config, s.chain, record_logits="logits" in s.record)


def _speculative_stepper(s: Session, *, draft, speculative_k, spec_stats, **_) -> Stepper:
    """A draft model (its own tokenizer: universal assisted decoding), or prompt lookup."""
    config = s.config
    if draft is None:
        k, proposer = config.prompt_lookup_num_tokens, "prompt_lookup"
    else:
        k = speculative_k
        shared = same_tokenizer(s.lm.tokenizer, draft.tokenizer)
        proposer = "draft" if shared else "cross_tokenizer"
    check_draft(s.lm, draft, config, k)
    if len(s.prompt_token_ids) != 1:
        raise ConfigError("speculative decoding (draft) takes one prompt per session", "prompt")
    sample = config.effective_strategy() == "sample"
    gens = [make_generator(config.seed, s.lm.device) if sample else None]
    tokens = _tokens(s, s.prompt_token_ids)
    return SpeculativeStepper(s.lm, tokens, config, s.chain, gens, k, spec_stats, draft=draft,
                              proposer=proposer)  # fmt: skip


def _dola_stepper(s: Session, **_) -> Stepper:
    """DoLa: greedy or sampling over the contrast of the final and an early layer."""
    config, n = s.config, s.n
    sample = config.effective_strategy() == "sample"
    gens = []
    for _prompt in s.prompt_token_ids:
        gens.extend([make_generator(config.seed, s.lm.device) if sample else None] * n)
    rows = [ids for ids in s.prompt_token_ids for _ in range(n)]
    return DolaStepper(s.lm, _tokens(s, rows), config, s.chain, gens)


# The stepper of each strategy ("speculative": a draft model or prompt lookup; "dola": DoLa).
STEPPERS: dict[str, Callable[..., Stepper]] = {
    "greedy": _sample_stepper,
    "sample": _sample_stepper,
    "beam": _beam_stepper,
    "contrastive": _contrastive_stepper,
    "speculative": _speculative_stepper,
    "dola": _dola_stepper,
}
