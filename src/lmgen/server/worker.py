"""Model work off the event loop: one worker thread per model, requests advanced in turns.

Every request becomes a job. The worker thread admits waiting jobs first come, first served
(up to `max_active` at once) and then, each round, runs one step of the running batch and one
step of each job that runs on its own, so a short request is never stuck behind a long one and
the event loop never runs the model.

With `batching=True` (the server's default) greedy and sampling requests join the running batch
of `engine.Engine` (continuous batching: one forward pass a step for every such request, each
with its own settings and generator, bitwise the same tokens as alone). Beam search, contrastive
search, a sliding context window and the playground's calls run as jobs of their own: a
generator that does one decoding step of model work per `next()` and returns its result. With
`batching=False` every request is such a job (batch = its own prompts x n).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from lmgen.chat import replying
from lmgen.decoding.session import Session
from lmgen.generation_config import GenerationConfig

from .engine import Engine

log = logging.getLogger(__name__)

Steps = Generator[None, None, Any]


class Overloaded(Exception):
    """The worker's waiting line is full."""


class Cancelled(Exception):
    """The client went away; the job was dropped."""


# -- jobs ---------------------------------------------------------------------------------------


class Job:
    """One request's model work and the way its results get back to the event loop.

    `events` (streaming jobs only) receives tuples: ("delta", index, text),
    ("finish", index, reason) and finally ("end",); the result or the error is then in
    `future`.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None, stream: bool = False):
        self.future: concurrent.futures.Future = concurrent.futures.Future()
        self.cancelled = threading.Event()
        self.loop = loop
        self.events: asyncio.Queue | None = asyncio.Queue() if stream else None

    def emit(self, *item: Any) -> None:
        if self.events is None or self.loop is None:
            return
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancelled.set()

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


class GenerateJob(Job):
    """Greedy, sampling or beam decoding of one or more prompts, n choices each: a `Session`
    advanced one step per turn (beam search too, so a long search never holds the worker)."""

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

    def steps(self, lm) -> Steps:
        on_delta = self.emit if self.events is not None else None
        results = yield from session_steps(
            replying(lm, self.end_ids), self.prompts, self.config, on_delta
        )
        scored = None
        if self.prompt_logprobs is not None:
            scored = [score_prompt(lm, r.prompt_token_ids, self.prompt_logprobs) for r in results]
        return results, scored


# -- stepwise decoding ------------------------------------------------------------------------


def session_steps(
    lm, prompts: list, config: GenerationConfig, on_delta: Callable[..., None] | None = None
) -> Steps:
    """A `Session` over `prompts`, one step per `next()`; returns its results.

    `on_delta` gets ("delta", choice, text) as each choice's text is decided (the session's
    hold-back rules: unfinished UTF-8, possible stop-string prefixes), then ("finish", choice,
    reason). Closing the generator (a cancelled job) closes the session, which frees its
    cache at once.
    """
    session = Session(lm, prompts, config, record=("text",) if on_delta else ())
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


# -- the worker ---------------------------------------------------------------------------------


@dataclass
class _Running:
    jobs: list[Job]
    steps: Iterator


@dataclass
class Stats:
    completed: int = 0
    cancelled: int = 0
    failed: int = 0
    merged_jobs: int = 0  # requests completed in the running batch (batching mode)
    steps: int = 0
    max_active_seen: int = 0


class ModelWorker:
    """A thread that owns one model: only it runs the model, one step at a time (of the
    running batch, or of a job that runs on its own). `max_batch`: rows in the running batch."""

    def __init__(
        self,
        lm,
        max_active: int = 16,
        max_waiting: int = 256,
        batching: bool = False,
        max_batch: int = 64,
    ):
        self.lm = lm
        self.max_active = max_active
        self.max_waiting = max_waiting
        self.batching = batching
        self.max_batch = max_batch
        self.stats = Stats()
        self.engine = Engine(lm, self.stats, max_rows=max_batch) if batching else None
        self._inbox: collections.deque[Job] = collections.deque()
        self._active: list[_Running] = []
        self._cv = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(
            target=self._run, name=f"lmgen-worker[{lm.name}]", daemon=True
        )
        self._thread.start()

    # -- called from the event loop --

    def submit(self, job: Job) -> Job:
        with self._cv:
            if self._stopping:
                raise Overloaded("the server is shutting down")
            if len(self._inbox) >= self.max_waiting:
                raise Overloaded(f"{len(self._inbox)} requests are already waiting for this model")
            self._inbox.append(job)
            self._cv.notify()
        return job

    def load(self) -> dict[str, int]:
        with self._cv:
            return {"active": self._n_active(), "waiting": len(self._inbox)}

    def _n_active(self) -> int:
        return len(self._active) + (self.engine.jobs if self.engine is not None else 0)

    def close(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout)

    # -- the thread --

    def _run(self) -> None:
        # One inference mode around everything: the jobs' own `inference_mode` blocks are
        # entered and left in interleaved order, which must not switch autograd back on.
        with torch.inference_mode():
            while True:
                with self._cv:
                    while not (self._stopping or self._inbox or self._active or self._batch()):
                        self._cv.wait()
                    if self._stopping:
                        break
                    self._admit()
                    self.stats.max_active_seen = max(self.stats.max_active_seen, self._n_active())
                if self._batch():
                    self.engine.step()
                for run in list(self._active):
                    self._advance(run)
        for run in self._active:
            self._drop(run, Cancelled("the server is shutting down"))
        if self.engine is not None:
            self.engine.close(Cancelled("the server is shutting down"))
        for job in self._inbox:
            fail_job(job, Cancelled("the server is shutting down"))

    def _batch(self) -> bool:
        return self.engine is not None and self.engine.busy

    def _admit(self) -> None:
        while self._inbox and self._n_active() < self.max_active:
            job = self._inbox.popleft()
            if job.cancelled.is_set():
                self.stats.cancelled += 1
                fail_job(job, Cancelled("the client went away"))
                continue
            if self.engine is not None and isinstance(job, GenerateJob):
                try:
                    batched = self.engine.prepare(job)
                except Exception as e:  # bad settings surface here (ConfigError, ...)
                    if not isinstance(e, ValueError | LookupError):
                        log.debug("job failed", exc_info=True)
                    self.stats.failed += 1
                    fail_job(job, e)
                    continue
                if batched is not None:
                    self.engine.add(batched)
                    continue
            self._active.append(_Running([job], job.steps(self.lm)))

    def _advance(self, run: _Running) -> None:
        if all(j.cancelled.is_set() for j in run.jobs):
            self.stats.cancelled += len(run.jobs)
            self._drop(run, Cancelled("the client went away"))
            return
        try:
            next(run.steps)
            self.stats.steps += 1
        except StopIteration as stop:
            self._active.remove(run)
            for job, result in zip(run.jobs, [stop.value], strict=True):
                self.stats.completed += 1
                if not job.future.done():
                    job.future.set_result(result)
                job.emit("end")
        except Exception as e:  # bad input surfaces here (ConfigError, GenerationError, ...)
            if not isinstance(e, ValueError | LookupError):
                log.debug("job failed", exc_info=True)
            self.stats.failed += len(run.jobs)
            self._active.remove(run)
            for job in run.jobs:
                fail_job(job, e)

    def _drop(self, run: _Running, error: Exception) -> None:
        if run in self._active:
            self._active.remove(run)
        close = getattr(run.steps, "close", None)
        if close is not None:
            close()
        for job in run.jobs:
            fail_job(job, error)


def fail_job(job: Job, error: BaseException) -> None:
    """Ends `job` with `error` (its handler raises it) and ends its event stream."""
    if not job.future.done():
        job.future.set_exception(error)
    job.emit("end")
