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

import collections
import ctypes
import logging
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from .engine import Engine
from .work import (  # noqa: F401  (the job types, where they were)
    CallJob,
    Cancelled,
    GenerateJob,
    Job,
    Outbox,
    Overloaded,
    Stats,
    StepsJob,
    fail_job,
    score_prompt,
    session_steps,
)

log = logging.getLogger(__name__)

Steps = Generator[None, None, Any]


# -- the worker ---------------------------------------------------------------------------------


def release_openmp_pool() -> bool:
    """Ends the calling thread's OpenMP worker threads (`omp_pause_resource_all`), where torch
    runs on GNU OpenMP; True where it did.

    The model runs on the worker thread, which gets an OpenMP team of its own. GNU OpenMP
    counts every team's threads, and once they outnumber the CPUs, each team's threads sleep
    after ~100 spins instead of ~300,000, so every parallel region wakes them with a futex: a
    16-token prefill of SmolLM2 Q4_1 took 38 ms on the worker thread against 25 ms on the main
    thread, a parallel product 0.56 against 0.30 ms (2 cores, one voluntary context switch a
    region). Loading a model leaves such a team on the thread that loaded it; ending it before
    the worker starts keeps the worker's team spinning between regions, as `lmgen generate`'s
    does. A later parallel operation on this thread would bring a team back."""
    try:
        gomp = ctypes.CDLL("libgomp.so.1")  # the copy torch loaded (matched by its soname)
        pause = gomp.omp_pause_resource_all
    except (OSError, AttributeError):  # another OpenMP (or none): nothing to do
        return False
    pause.argtypes = [ctypes.c_int]
    return pause(1) == 0  # omp_pause_soft


@dataclass
class _Running:
    jobs: list[Job]
    steps: Iterator


class ModelWorker:
    """A thread that owns one model: only it runs the model, one step at a time (of the
    running batch, or of a job that runs on its own). `max_batch`: rows in the running batch;
    `kv_cache_bytes`: the KV cache they may hold together (engine.py)."""

    def __init__(
        self,
        lm,
        max_active: int = 16,
        max_waiting: int = 256,
        batching: bool = False,
        max_batch: int = 64,
        kv_cache_bytes: int | None = None,
    ):
        self.lm = lm
        self.max_active = max_active
        self.max_waiting = max_waiting
        self.batching = batching
        self.max_batch = max_batch
        self.stats = Stats()
        self.engine = (
            Engine(lm, self.stats, max_rows=max_batch, kv_cache_bytes=kv_cache_bytes)
            if batching
            else None
        )
        self._inbox: collections.deque[Job] = collections.deque()
        self.outbox = Outbox()  # streaming events, handed to the event loop once a step
        self._active: list[_Running] = []
        self._cv = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(
            target=self._run, name=f"lmgen-worker[{lm.name}]", daemon=True
        )
        release_openmp_pool()
        self._thread.start()

    # -- called from the event loop --

    def submit(self, job: Job) -> Job:
        with self._cv:
            if self._stopping:
                raise Overloaded("the server is shutting down")
            if len(self._inbox) >= self.max_waiting:
                raise Overloaded(f"{len(self._inbox)} requests are already waiting for this model")
            job.outbox = self.outbox
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
                self.outbox.hand_off()  # jobs that failed on admission
                if self._batch():
                    self.engine.step()
                    self.outbox.hand_off()
                for run in list(self._active):
                    self._advance(run)
                    self.outbox.hand_off()
        for run in self._active:
            self._drop(run, Cancelled("the server is shutting down"))
        if self.engine is not None:
            self.engine.close(Cancelled("the server is shutting down"))
        for job in self._inbox:
            fail_job(job, Cancelled("the server is shutting down"))
        self.outbox.hand_off()

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
