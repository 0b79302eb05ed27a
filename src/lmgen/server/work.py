"""The units of work a model worker runs (worker.py) and the running batch takes (engine.py):
jobs, the way one ends in failure, the prompt scoring they share, and the worker's counters.
A module of its own so that the worker and the engine both build on it without importing each
other."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import torch

from lmgen.chat import replying
from lmgen.decoding.session import Session
from lmgen.generation_config import GenerationConfig

log = logging.getLogger(__name__)

Steps = Generator[None, None, Any]


class Overloaded(Exception):
    """The worker's waiting line is full."""


class Cancelled(Exception):
    """The client went away; the job was dropped."""


# -- jobs ---------------------------------------------------------------------------------------


class Job:
    """One request's model work and the way its results get back to the event loop.

    `events` (streaming jobs only) receives lists of tuples, a list per hand-off:
    ("delta", index, text), ("finish", index, reason) and finally ("end",); the result or the
    error is then in `future`. A job submitted to a worker has the worker's `outbox`: its
    events wait there until the worker hands a step's events over (`Outbox.hand_off`).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None, stream: bool = False):
        self.future: concurrent.futures.Future = concurrent.futures.Future()
        self.cancelled = threading.Event()
        self.loop = loop
        self.events: asyncio.Queue | None = asyncio.Queue() if stream else None
        self.outbox: Outbox | None = None
        self.created = time.monotonic()  # time-to-first-token counts from here
        self.first_token_at: float | None = None  # set by the server's metrics

    def emit(self, *item: Any) -> None:
        if self.events is None or self.loop is None:
            return
        if self.outbox is not None:
            self.outbox.put(self, item)
        else:
            _hand_over(self.loop, [(self, [item])])

    def cancel(self) -> None:
        self.cancelled.set()

    def steps(self, lm) -> Steps:
        raise NotImplementedError


class CallJob(Job):
    """Model work done in one piece (next-token distributions)."""

    def __init__(self, fn: Callable[[Any], Any], loop=None):
        super().__init__(loop)
        self.fn = fn

    def steps(self, lm) -> Steps:
        return self.fn(lm)
        yield  # a generator that finishes on its first step


class StepsJob(Job):
    """Model work that is itself a generator of steps (`fn(lm)` yields between model steps
    and returns the result), e.g. beam search with a trace: one step per turn, and a dropped
    job stops within a step."""

    def __init__(self, fn: Callable[[Any], Steps], loop=None):
        super().__init__(loop)
        self.fn = fn

    def steps(self, lm) -> Steps:
        return self.fn(lm)


class PromptsJob(Job):
    """A job decoding prompts under one `GenerationConfig`: what `GenerateJob` and the
    server's speculative job share (the engine batches only `GenerateJob`s)."""

    def __init__(
        self,
        prompts: list,
        config: GenerationConfig,
        loop=None,
        stream: bool = False,
        prompt_logprobs: int | None = None,
        end_ids: tuple[int, ...] = (),
    ):
        super().__init__(loop, stream)
        self.prompts = prompts
        self.config = config
        self.end_ids = end_ids  # a chat template's end-of-turn tokens, which also end a reply
        self.prompt_logprobs = prompt_logprobs  # echo with logprobs: score the prompt too


class GenerateJob(PromptsJob):
    """Greedy, sampling or beam decoding of one or more prompts, n choices each: a `Session`
    advanced one step per turn (beam search too, so a long search never holds the worker)."""

    def steps(self, lm) -> Steps:
        on_delta = self.emit if self.events is not None else None
        results = yield from session_steps(
            replying(lm, self.end_ids), self.prompts, self.config, on_delta
        )
        scored = None
        if self.prompt_logprobs is not None:
            scored = [score_prompt(lm, r.prompt_token_ids, self.prompt_logprobs) for r in results]
        return results, scored


class Outbox:
    """The streaming jobs' events of a worker's step, handed to their event loops in one call
    per loop (`hand_off`, after each step).

    An event handed over on its own costs a wake-up of the event loop (a write to its
    self-pipe) and, as the loop then takes the GIL to turn it into a chunk, a wait of the
    model's thread for the GIL: per token of each client. Handed over once a step, a step's
    events of every client cost one wake-up, and each client's events of the step (a token's
    text and its finish) go out as one write. Only the worker's thread uses it."""

    def __init__(self):
        self._items: list[tuple[Job, tuple]] = []

    def put(self, job: Job, item: tuple) -> None:
        self._items.append((job, item))

    def hand_off(self) -> None:
        if not self._items:
            return
        items, self._items = self._items, []
        by_loop: dict[asyncio.AbstractEventLoop, dict[Job, list[tuple]]] = {}
        for job, item in items:
            by_loop.setdefault(job.loop, {}).setdefault(job, []).append(item)
        for loop, by_job in by_loop.items():
            _hand_over(loop, list(by_job.items()))


def _hand_over(loop: asyncio.AbstractEventLoop, batch: list[tuple[Job, list[tuple]]]) -> None:
    try:
        loop.call_soon_threadsafe(_deliver, batch)
    except RuntimeError:  # the loop is closed: nobody is listening any more
        for job, _ in batch:
            job.cancelled.set()


def _deliver(batch: list[tuple[Job, list[tuple]]]) -> None:
    """On the event loop: each job's events of the hand-off, as one item of its queue."""
    for job, events in batch:
        job.events.put_nowait(events)


# -- stepwise decoding ------------------------------------------------------------------------


def session_steps(
    lm,
    prompts: list,
    config: GenerationConfig,
    on_delta: Callable[..., None] | None = None,
    **options: Any,
) -> Steps:
    """A `Session` over `prompts`, one step per `next()`; returns its results. `options`: the
    session's own (a draft model: `draft=`, `speculative_k=`).

    `on_delta` gets ("delta", choice, text) as each choice's text is decided (the session's
    hold-back rules: unfinished UTF-8, possible stop-string prefixes), then ("finish", choice,
    reason). Closing the generator (a cancelled job) closes the session, which frees its
    cache at once.
    """
    session = Session(lm, prompts, config, record=("text",) if on_delta else (), **options)
    yield  # admission and the first model step are separate turns
    try:
        while not session.done:
            out = session.step()
            if on_delta is not None:
                for i, delta in enumerate(out.deltas):
                    if delta:
                        on_delta("delta", i, delta)
                for i, reason in out.finished.items():
                    on_delta("finish", i, reason)
            if not session.done:
                yield
    finally:
        session.close()
    return session.results()


def score_prompt(lm, ids: list[int], top: int) -> tuple[list[float | None], list[dict | None]]:
    """Raw log-probabilities of each prompt token given the ones before it (None for the
    first), and the top-`top` alternatives at each position (None for the first), as OpenAI's
    `echo` reports."""
    ids = ids[-lm.config.n_positions :]
    x = torch.tensor([ids], device=lm.device)
    logp = torch.log_softmax(lm.model(x)[0].float(), dim=-1)  # (T, V)
    lps: list[float | None] = [None]
    tops: list[dict | None] = [None]
    if len(ids) > 1:
        lps += logp[:-1].gather(1, x[0, 1:, None])[:, 0].tolist()
        if top:
            v, i = logp[:-1].topk(top, dim=-1)
            for vs, js in zip(v.tolist(), i.tolist(), strict=True):
                tops.append({lm.tokenizer.token_to_str(j): s for j, s in zip(js, vs, strict=True)})
        else:
            tops += [{} for _ in ids[1:]]
    return lps, tops


@dataclass
class Stats:
    completed: int = 0
    cancelled: int = 0
    failed: int = 0
    merged_jobs: int = 0  # requests completed in the running batch (batching mode)
    preempted: int = 0  # times a request left the batch for lack of KV cache (recomputed later)
    steps: int = 0
    max_active_seen: int = 0


def fail_job(job: Job, error: BaseException) -> None:
    """Ends `job` with `error` (its handler raises it) and ends its event stream."""
    if not job.future.done():
        job.future.set_exception(error)
    job.emit("end")
