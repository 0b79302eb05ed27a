"""`generate`, `stream` and `next_token`: a few lines each over `Session`."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from lmgen.errors import ConfigError, GenerationError
from lmgen.generation_config import GenerationConfig

from .results import BeamTrace, Candidate, GenerationResult, NextToken
from .session import Session, make_config, split_prompts


def generate(lm, prompt, config: GenerationConfig | None = None, *, draft=None,
             speculative_k: int = 4, spec_stats=None, compile=False, **kwargs):  # fmt: skip
    """Generates continuations; a list of prompts returns a list of results.

    `draft=` a smaller `LM`: speculative decoding with `speculative_k` proposals per target
    pass; the output follows the target's distribution (greedy: the same tokens). A draft with
    a tokenizer of its own is universal assisted decoding (the same tokens as without it,
    greedy or seeded). `prompt_lookup_num_tokens=N` proposes from the text itself.
    `spec_stats=` a `SpeculativeStats` to count acceptances. `compile=True` runs the
    one-token steps through a torch.compile'd step (lmgen.compile; the first call compiles).
    """
    options = dict(draft=draft, speculative_k=speculative_k, spec_stats=spec_stats,
                   compile=compile, record=())  # fmt: skip
    lookup = kwargs.get("prompt_lookup_num_tokens", getattr(config, "prompt_lookup_num_tokens", 0))
    if draft is None and not lookup:
        session = Session(lm, prompt, config, **options, **kwargs)
        results = session.results()
        return results[0] if session.single else results
    # Speculative decoding (a draft, prompt lookup) runs one sequence at a time: a session
    # per prompt.
    config, _ = make_config(config, kwargs)
    single, prompts = split_prompts(prompt)
    if not prompts:
        raise ConfigError("no prompts given", "prompt")
    results: list[GenerationResult] = []
    for p in prompts:
        results += Session(lm, [p], config, **options).results()
    return results[0] if single else results


def stream(lm, prompt: str, config: GenerationConfig | None = None, **kwargs) -> Iterator[str]:
    """Yields text deltas of one continuation as they are decided; their concatenation equals
    `generate(...).text` for the same arguments."""
    session = Session(lm, prompt, config, **kwargs)
    if not session.single or session.config.num_return_sequences != 1:
        raise ConfigError("stream() takes one prompt and makes one sequence", "prompt")
    if session.strategy == "beam":
        raise ConfigError(
            "streaming needs strategy greedy or sample: beam search decides its text only at "
            "the end",
            "strategy",
        )
    return _deltas(session)


def _deltas(session: Session) -> Iterator[str]:
    try:
        for out in session:
            if out.deltas[0]:
                yield out.deltas[0]
    finally:
        session.close()


def next_token(lm, prompt: str, top: int = 10, config: GenerationConfig | None = None,
               **kwargs) -> NextToken:  # fmt: skip
    """The distribution over the next token, raw and after the processor chain.

    The chain is the sampling chain (temperature, top-k, top-p, …) unless another strategy is
    named, since showing what those rules keep is the point of looking. Under strategy "beam"
    the `logit` column holds the log-probabilities beam search scores with."""
    if config is None:
        kwargs.setdefault("strategy", "sample")
    if not isinstance(top, int) or isinstance(top, bool) or top < 0:
        raise ConfigError(f"top must be an int >= 0 (0 = whole vocabulary), got {top!r}", "top")
    kwargs["max_new_tokens"] = 1
    session = Session(lm, prompt, config, record=(), **kwargs)
    if not session.single:
        raise ConfigError("next_token() takes one prompt", "prompt")
    logits, processed = session.next_logits()
    session.close()
    logits, processed = logits[0], processed[0]
    kept = torch.isfinite(processed)
    if not bool(kept.any()):
        raise GenerationError(
            f"the processors {session.chain.describe()} leave no token with a finite score; "
            "loosen them"
        )
    probs = logits.softmax(-1)
    pprobs = processed.softmax(-1)
    n = lm.tokenizer.vocab_size if top == 0 else min(top, logits.shape[-1])
    order = logits.argsort(descending=True)[:n].tolist()
    lg, pr, pp, kp = logits.tolist(), probs.tolist(), pprobs.tolist(), kept.tolist()
    tok = lm.tokenizer
    candidates = [Candidate(i, tok.token_to_str(i), lg[i], pr[i], pp[i], kp[i]) for i in order]
    greedy = int(processed.argmax())
    ids = session.prompt_token_ids[0]
    return NextToken(session.prompts[0], ids, session.chain.describe(), candidates, greedy,
                     logits, processed)  # fmt: skip


def beam_trace(lm, prompt: str, config: GenerationConfig | None = None, **kwargs):
    """Beam search over one prompt with every step's candidates recorded: (the result, its
    `BeamTrace`), for the beam-tree plot and the playground."""
    steps = beam_trace_steps(lm, prompt, config, **kwargs)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def beam_trace_steps(lm, prompt: str, config: GenerationConfig | None = None, **kwargs):
    """`beam_trace` as a generator that yields after each step of the search (a server runs
    one per turn) and returns (the result, its `BeamTrace`)."""
    session = Session(lm, prompt, config, record=("candidates",), **kwargs)
    if session.strategy != "beam" or not session.single:
        raise ConfigError("beam_trace() takes one prompt and strategy 'beam'", "strategy")
    trace = BeamTrace(session.prompt_token_ids[0])
    try:
        while not session.done:
            out = session.step()
            if out.candidates:
                trace.steps.append(out.candidates[0])
            yield
    finally:
        session.close()
    (result,) = session.results()
    trace.finished = [{"token_ids": c.token_ids, "score": c.score} for c in result.choices]
    return result, trace
