"""The server's memory budget: what a job may take, reserved before it starts.

A decoding job's memory grows with rows x positions: rows = prompts x n (x beams), positions
= prompt + new tokens, capped at the context. Per row and position it holds the KV cache of
every layer (2 x n_layer x n_embd values) and, while the prompts are read, one layer's
activations (about 16 x n_embd values: measured on the bundled model, the prefill of 128 rows
x 200 positions peaks at 3.1 times its KV cache). The estimate is an upper bound of both.

Each job reserves its estimate before it is submitted and gives it back when it ends
(finished, failed or dropped). A request larger than the per-request limit is refused (413); one
that fits but finds too little free waits its turn (first come, first served) for up to
`wait_s` seconds, then gets a 429.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures

from .engine import kv_bytes_per_position
from .errors import APIError

GiB = 1 << 30
DEFAULT_TOTAL = 3 * GiB  # the bundled model's largest request (512 rows x 256) is 3 GiB
DEFAULT_WAIT_S = 30.0
ACTIVATION_VALUES_PER_EMBD = 16


def bytes_per_position(lm) -> int:
    """Estimated bytes one row needs per position: its KV cache plus the prefill's working
    set."""
    element = lm.model.wte.weight.element_size()
    return kv_bytes_per_position(lm) + ACTIVATION_VALUES_PER_EMBD * lm.config.n_embd * element


def job_bytes(lm, rows: int, positions: int) -> int:
    return rows * min(positions, lm.config.n_positions) * bytes_per_position(lm)


def human(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} bytes"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            break
    return f"{n:.1f} {unit}"


class MemoryBudget:
    """Reservations against `total` bytes, each at most `per_request`; lives on the event
    loop (its methods are called there only)."""

    def __init__(
        self,
        total: int = DEFAULT_TOTAL,
        per_request: int | None = None,
        wait_s: float = DEFAULT_WAIT_S,
    ):
        if total <= 0:
            raise ValueError("the memory budget must be > 0")
        self.total = total
        self.per_request = min(per_request or total, total)
        self.wait_s = wait_s
        self.used = 0
        self._waiting: collections.deque[tuple[int, asyncio.Future]] = collections.deque()

    @property
    def free(self) -> int:
        return self.total - self.used

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def stats(self) -> dict:
        return {
            "budget_bytes": self.total,
            "per_request_bytes": self.per_request,
            "used_bytes": self.used,
            "waiting": self.waiting,
        }

    def check(self, nbytes: int, what: str) -> None:
        """413 for a request that could never fit."""
        if nbytes > self.per_request:
            raise APIError(
                413,
                f"this request needs about {human(nbytes)} of memory ({what}), more than the "
                f"server's limit of {human(self.per_request)} per request (`lmgen serve "
                "--max-request-memory`); ask for fewer prompts, choices, beams or tokens",
                code="request_too_large",
            )

    async def reserve(self, nbytes: int, what: str) -> int:
        """Takes `nbytes`, waiting for them if they are not free now; returns them (for
        `release`)."""
        self.check(nbytes, what)
        if not self._waiting and nbytes <= self.free:
            self.used += nbytes
            return nbytes
        fut = asyncio.get_running_loop().create_future()
        entry = (nbytes, fut)
        self._waiting.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.wait_s)
        except BaseException as e:
            if fut.done() and not fut.cancelled():  # granted just as we gave up
                self.release(nbytes)
            else:
                fut.cancel()
                self._waiting.remove(entry)
                self._grant()
            if not isinstance(e, asyncio.TimeoutError):
                raise
            raise APIError(
                429,
                f"the server's memory budget ({human(self.total)}) is in use: this request "
                f"needs about {human(nbytes)} ({what}) and waited {self.wait_s:g} s for it; "
                "retry shortly",
                type="server_error",
                code="overloaded",
                headers={"Retry-After": "1"},
            ) from None
        return nbytes

    def release(self, nbytes: int) -> None:
        self.used -= nbytes
        self._grant()

    def release_when_done(self, future: concurrent.futures.Future, nbytes: int) -> None:
        """Gives `nbytes` back when the worker sets `future` (from its thread)."""
        loop = asyncio.get_running_loop()

        def done(_):
            try:
                loop.call_soon_threadsafe(self.release, nbytes)
            except RuntimeError:  # the loop is closed: the server is gone
                pass

        future.add_done_callback(done)

    def _grant(self) -> None:
        while self._waiting:
            nbytes, fut = self._waiting[0]
            if fut.done():
                self._waiting.popleft()
                continue
            if nbytes > self.free:
                return  # first come, first served: the head waits, and so do the rest
            self._waiting.popleft()
            self.used += nbytes
            fut.set_result(None)


def decode_cost(lm, config, n_prompts: int, prompt_len: int, scored: bool = False):
    """(bytes, what) for decoding `n_prompts` prompts of up to `prompt_len` tokens with
    `config`; `scored`: the prompts' own log-probabilities are computed too (echo), one
    (positions x vocabulary) table at a time."""
    beams = config.num_beams if config.effective_strategy() == "beam" else 1
    rows = n_prompts * max(config.num_return_sequences, beams)
    positions = min(prompt_len + config.max_new_tokens, lm.config.n_positions)
    per = bytes_per_position(lm)
    nbytes = rows * positions * per
    if scored:
        nbytes += min(prompt_len, lm.config.n_positions) * lm.config.vocab_size * 4
    return nbytes, f"{rows} rows x {positions} positions x {human(per)}"
