"""Continuous batching: one running batch over the model that requests join and leave at
every step (iteration-level scheduling, as in Orca, vLLM and llama.cpp's server).

The worker thread (worker.py) owns the engine. A request's greedy or sampling work becomes one
*group* per prompt: a `Session` of its own (n choices, its own processor chain and generator,
its own text tracker), whose n rows each hold a KV cache of their own. Each `step()`:

1. drops cancelled requests (their caches are freed at once) and admits waiting ones while
   rows are free, first come, first served;
2. builds one batch of *segments*: one token for each row that is decoding, then prompt chunks
   of the groups still prefilling, while the step's token budget (`step_tokens`) allows — a
   long prompt is prefilled a chunk per step, so it never freezes the streaming rows;
3. runs one forward pass (`BatchForward`): the decoding rows together in the fused step,
   each prompt chunk on its own through the model's prefill path, and the head over the
   last positions of them all;
4. chooses the next token of every row whose chain uses only penalties, logit bias,
   temperature, top-k, top-p and min-p in one vectorised pass (row_sampler.py: per-row
   settings as tensors, each row drawing from its own request's `torch.Generator`), then hands
   each group whose logits are ready its rows' logits: its `Session.step()` applies that
   request's own processor chain where the pass did not choose for it, and decides EOS, stop
   strings, `max_tokens` and the text to stream;
5. finished groups leave the batch; their rows are free for the next step.

Batch invariance, on the CPU: a request's tokens and log-probabilities are bitwise the same
whoever else shares its steps, because no row's arithmetic depends on the batch:

- the decoding rows (one token each) run the fused decode step, all rows in one call
  (`lmgen.kernels.decode_step_rows` / `decode_step_rope_rows`): every weight streams once for
  the whole batch, and each row's sums and attention are its own, so its bits do not depend on
  the other rows or its place (tested in tests/test_kernels_rows.py);
- a prompt is cut into chunks at fixed offsets (`prefill_chunk`), so a chunk's tokens, its
  start and its length depend on the request alone; the budget decides only *when* a chunk
  runs. Each chunk runs on its own, fed as a tensor of its own, through the model's prefill
  path (`GPT.run_blocks`: the inference plan's products for a prompt, oneDNN's float32 GEMM,
  the integer GEMM of ggml blocks or widened float16, and causal attention over the row's own
  cache), the path `lmgen.generate` takes for a prompt. A deterministic kernel given the same
  shapes, the same thread count and freshly allocated operands gives the same bits, so the
  chunk's keys, values and last position do not depend on who shares the step. oneDNN and MKL
  choose kernels by shape and alignment, which is why chunks are never concatenated (tested
  bitwise for float GPT-2, rotary and ggml-block models in tests/test_server_engine_prefill.py);
- the last positions of all segments share the final norm and the head. torch's CPU matrix
  product gives a row different bits with 1, 2-3 and 4+ rows, so the batch never chooses:
  `lmgen.kernels.decode_head` (`InferencePlan.head_rows`: the norm and the product in one
  call, a row's result the same for any number of rows at any place; the call `lmgen.generate`
  makes for a prompt's last position), or where that kernel does not run, the model's norm and
  `RowLinear`: `lmgen.kernels.decode_gemv` (row-invariant too), the row kernel of ggml blocks
  (`QuantLinear.row_product`), or blocks of exactly `BLOCK` rows (zero-padded);
- where the fused step does not run (lmgen.kernels not built, a block it does not know), the
  decoding rows go op by op through `RowLinear` products, attention row by row over each row's
  own cache;
- norms, activations and embeddings work on each token on its own.

So the only oracle a test needs is the same request run alone through the engine. Against
`lmgen.generate`: a prompt of one chunk (two tokens or more; a one-token chunk goes with the
decoding rows) takes generate's own prefill and its head (`decode_head`, with lmgen.kernels
built), so the first token's logits are bitwise generate's; a longer prompt is cut where
generate runs it whole (products of other shapes), and later tokens come from the rows step
where generate takes its one-row step, so there the logits may differ by float rounding
(~1e-6).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from lmgen import kernels
from lmgen.chat import replying
from lmgen.decoding.session import Session
from lmgen.decoding.steppers import Pick, SampleStepper
from lmgen.errors import ConfigError
from lmgen.kernels import quant
from lmgen.model.kv_cache import KVCache
from lmgen.model.network import block_forward, layer_shape, repeat_kv
from lmgen.quantize import QuantLinear

from .row_sampler import RowPart, RowRule, RowSampler, row_blocks

if TYPE_CHECKING:
    from .work import GenerateJob, Stats

log = logging.getLogger(__name__)

BLOCK = 8  # rows per product when lmgen.kernels is not available
MiB = 1 << 20
# The step's choices (each row's processors, draw, text) run on one thread: their operations
# go over one row of logits at a time, too little to share, and every operation that torch
# splits across threads is a fork and join that stalls for milliseconds whenever another
# thread has the core (the event loop and the clients of a server on a small machine).
SERIAL_CHOICE = True


@contextmanager
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    if not SERIAL_CHOICE or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def kv_bytes_per_position(lm) -> int:
    """Bytes of KV cache one row holds per position: keys and values of every layer (a
    grouped-query model stores its key/value heads only), in the model's dtype."""
    cfg = lm.config
    element = lm.model.wte.weight.element_size()  # the cache's dtype (GPT.new_cache)
    return 2 * cfg.n_layer * cfg.kv_heads * cfg.head_dim * element


# -- the forward pass ---------------------------------------------------------------------------


class RowLinear:
    """`x (N, in) -> (N, out)` for a linear layer, each row's bits independent of N and of
    the other rows (see the module's docstring)."""

    def __init__(self, module: nn.Module):
        self.module = module
        # the parameters themselves (`.to()` and `load_state_dict` change them in place):
        # nn.Module's attribute lookup costs more than a small product
        self.weight = w = getattr(module, "weight", None)
        self.bias = getattr(module, "bias", None)
        self.kernel = (
            type(module) is nn.Linear
            and w is not None
            and w.device.type == "cpu"
            and w.dtype in kernels.DTYPES
            and kernels.available()
        )
        # ggml blocks throughout (a GGUF's head, say): their row kernel keeps each row's bits
        # whatever the other rows (the module's forward would send many rows to the prompt
        # GEMM, whose bits are its own)
        self.blocks = isinstance(module, QuantLinear) and all(module.kinds)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel and x.dtype in kernels.DTYPES:
            return kernels.decode_gemv(x.contiguous(), self.weight, None, self.bias)
        if self.blocks and x.device.type == "cpu" and quant.available():
            return self.module.row_product(x)
        n = x.shape[0]
        pad = (-n) % BLOCK
        if pad:
            x = torch.cat([x, x.new_zeros(pad, x.shape[1])])
        return torch.cat([self.module(c) for c in x.split(BLOCK)])[:n]


@dataclass
class Segment:
    """Tokens of one row fed in one step: `tokens` at positions `start..`, written into
    `cache` (which holds `start` positions so far); `logits` says whether the step needs the
    logits of its last token."""

    cache: KVCache
    tokens: list[int]
    start: int
    logits: bool


class RowAttend:
    """One layer's attention for `block_forward` over one-token segments: writes each row's key
    and value into its own cache at its own position, then attends over that row's keys."""

    def __init__(self, layer: int, rows: list[Segment], window: int | None, scale):
        self.layer, self.rows, self.window, self.scale = layer, rows, window, scale

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q (1, H, N, D); k, v (1, KV, N, D): one token for each of the N rows
        H = q.shape[1]
        out = torch.empty_like(q)
        for i, s in enumerate(self.rows):
            kk, vv = s.cache.update(self.layer, s.start, k[:, :, i : i + 1], v[:, :, i : i + 1])
            S = s.start + 1  # (1, KV, S, D) this row's keys so far
            qq = q[:, :, i : i + 1]  # (1, H, 1, D)
            windowed = self.window is not None and S > self.window
            if not windowed and self.scale is None and kk.shape[1] == H and _kernel_attention(qq):
                y = kernels.decode_attention(qq.contiguous(), kk, vv)  # (no GQA there)
            else:
                near = None  # or (1, S) the keys within the window: start - j < window
                if windowed:
                    near = (torch.arange(S, device=q.device) > s.start - self.window)[None]
                y = F.scaled_dot_product_attention(qq, repeat_kv(kk, H), repeat_kv(vv, H),
                                                   attn_mask=near, scale=self.scale)  # fmt: skip
            out[:, :, i : i + 1] = y
        return out


def _kernel_attention(q: torch.Tensor) -> bool:
    return q.device.type == "cpu" and q.dtype in kernels.DTYPES and kernels.available()


class BatchForward:
    """One step's forward pass over a list of segments: the model's own embeddings, blocks,
    final norm and head, each row's arithmetic its own (see the module's docstring)."""

    def __init__(self, model):
        self.model = model
        c = model.config
        self.shape = layer_shape(c)
        self.windows = [c.window(i) for i in range(c.n_layer)]
        self.scale = model.attn_scale

        self.layers = [b.plain_ops(RowLinear) for b in model.h]
        self.ln_f = model.ln_f.forward
        self.head = RowLinear(model.lm_head)

    def __call__(self, segments: list[Segment]) -> torch.Tensor:
        """Logits (segments asking for them, vocab) of each such segment's last token; every
        cache advances by the tokens written into it. The model's own forward hooks and
        pre-hooks fire once a step, with the step's tokens (1, N) as input and these logits as
        output: a step is one forward pass.

        The one-token segments (the decoding rows) run together (`_rows`); each prompt chunk
        runs on its own through the model's prefill path (`GPT.run_blocks`, as `forward` runs
        a prompt for `lmgen.generate`); the last positions of all of them then share the final
        norm and the head, row-invariant (`InferencePlan.head_rows`, or `RowLinear`)."""
        model = self.model
        device = model.wte.weight.device
        input_ids = torch.tensor([[t for s in segments for t in s.tokens]], device=device)
        self._fire(self.model._forward_pre_hooks, (input_ids,))
        rows = [s for s in segments if len(s.tokens) == 1]
        ends = dict(zip(map(id, rows), self._rows(rows), strict=True)) if rows else {}  # (C,)
        for s in segments:
            if len(s.tokens) > 1:
                chunk = torch.tensor([s.tokens], device=device)  # (1, t) a tensor of its own
                ends[id(s)] = model.run_blocks(chunk, s.cache)[0, -1]  # (C,) its last token
        last = [ends[id(s)] for s in segments if s.logits]
        if last:
            h = torch.stack(last)  # (segments asking for logits, C)
            plan = model.inference_plan()
            logits = plan.head_rows(h) if plan.fuses_head(h) else self.head(self.ln_f(h))
            logits = model.cap_logits(logits)  # (rows, V)
        else:  # prompt chunks only: no logits needed yet
            logits = torch.empty(0, model.config.vocab_size, device=device)
        self._fire(self.model._forward_hooks, (input_ids,), logits)
        return logits

    def _rows(self, rows: list[Segment]) -> torch.Tensor:
        """(rows, C) the residual stream after the last block for one token per row, each at
        its own position in its own cache (which advances): the fused step for all rows in one
        call (`InferencePlan.rows_step`: each weight streams once for all of them); where that
        step does not run (no lmgen.kernels, a block it does not know), op by op with the
        row-invariant products and attention row by row."""
        model = self.model
        device = model.wte.weight.device
        n = len(rows)
        position_ids = torch.tensor([[s.start for s in rows]], device=device)  # (1, n)
        ids = torch.tensor([[s.tokens[0] for s in rows]], device=device)  # (1, n)
        x = model.embed(ids, position_ids).view(n, -1)  # (n, C)
        plan = model.inference_plan()
        if plan.fuses_rows(x):
            x = plan.rows_step(x, [s.cache for s in rows], [s.start for s in rows])
        else:
            cos_sin = model.rope_cos_sin(position_ids, x.dtype)
            for i, ops in enumerate(self.layers):
                attend = RowAttend(i, rows, self.windows[i], self.scale)
                x = block_forward(x, ops, self.shape, 1, n, cos_sin[i], attend)  # (n, C)
        for s in rows:
            s.cache.advance(1)
        return x

    def _fire(self, hooks: dict, args: tuple, *output) -> None:
        kwargs_ids = (
            self.model._forward_hooks_with_kwargs
            if output
            else self.model._forward_pre_hooks_with_kwargs
        )
        for key, hook in list(hooks.items()):
            if key in kwargs_ids:
                hook(self.model, args, {}, *output)
            else:
                hook(self.model, args, *output)


# -- requests in the batch ----------------------------------------------------------------------


class EngineStepper(SampleStepper):
    """A `SampleStepper` whose model work the engine does: `logits` is set by the engine
    before each `select()`; `prefill()` and `advance()` run nothing."""

    def __init__(self, stepper: SampleStepper):
        self.__dict__.update(stepper.__dict__)
        self.state = None  # the session's own cache is never used
        self.logits = None
        self.picked: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def select(self) -> list[list[Pick]]:
        """The step's picks: those the engine's vectorised pass made for these rows (token,
        raw and processed log-probability per row), or the stepper's own selection."""
        if self.picked is None:
            return super().select()
        nxt, raw, proc = self.picked
        self.picked = None
        nxt = self.finished.fill(nxt)
        self.tokens.append(nxt)
        ids, raw, proc = nxt.tolist(), raw.tolist(), proc.tolist()
        return [[Pick(ids[b], raw[b], proc[b])] for b in range(len(ids))]

    def prefill(self) -> None:
        pass

    def advance(self, finished: list[bool]) -> None:
        self.finished.update(finished)
        self.logits = None


class BatchSession(Session):
    """A `Session` of one prompt (n choices) whose model work the engine does."""

    def __init__(self, lm, prompt, config, record):
        super().__init__(lm, [prompt], config, record=record)
        if isinstance(self._stepper, SampleStepper):
            self._stepper = EngineStepper(self._stepper)

    @property
    def batchable(self) -> bool:
        return isinstance(self._stepper, EngineStepper)

    @property
    def tokens(self):
        """The rows' tokens so far (`decoding.state.Tokens`)."""
        return self._stepper.tokens

    @property
    def started(self) -> bool:
        return self._steps > 0

    def set_logits(self, logits: torch.Tensor) -> None:
        """The rows' logits (rows, vocab) for the next `step()`."""
        self._stepper.logits = logits

    @property
    def logits(self) -> torch.Tensor | None:
        return self._stepper.logits

    @property
    def keeps_logits(self) -> bool:
        """Whether the session records its logits (they outlive the step)."""
        return self._stepper.record_logits

    @property
    def generators(self) -> list:
        return self._stepper.generators

    def set_picked(self, nxt: torch.Tensor, raw: torch.Tensor, proc: torch.Tensor) -> None:
        """The next `step()`'s tokens, raw and processed log-probabilities, one per row."""
        self._stepper.picked = (nxt, raw, proc)

    def row_part(self) -> RowPart | None:
        """This session's rows for the engine's vectorised pass (row_sampler.py), or None when
        it chooses in its own `step()`: a chain the pass does not make, a chain the fused
        candidate sampler takes, top alternatives or recorded logits."""
        st = self._stepper
        if not isinstance(st, EngineStepper) or st.record_logits or self.config.logprobs:
            return None
        if st.fused is not None:
            return None
        rule = RowRule.of(st.chain, st.sample, st.logits.shape[-1])
        if rule is None:
            return None
        return RowPart(rule, st.tokens.seq[:, : st.tokens.length], st.generators)


@dataclass
class Group:
    """One prompt of a request, its n choices: a Session and one cache per row."""

    job: GenerateJob
    index: int  # the prompt's place in the request
    session: BatchSession
    prompt: list[int]
    caches: list[KVCache] = field(default_factory=list)
    fed: int = 0  # prompt tokens prefilled so far
    # After a preemption: positions prompt..replay_to of each row are fed again, one a step
    # (as they were first computed, so the cache gets the same bits); `replayed` so far.
    replay_to: int = 0
    replayed: int = 0
    last_token_at: float | None = None  # for the inter-token latency (metrics.py)

    @property
    def rows(self) -> int:
        return self.session.n

    @property
    def prefilling(self) -> bool:
        return self.fed < len(self.prompt)

    @property
    def replaying(self) -> bool:
        return not self.prefilling and self.replayed < self.replay_to

    def spread_prompt(self) -> None:
        """Copies the prompt, prefilled once into the first row's cache, to the other rows."""
        first, L = self.caches[0], len(self.prompt)
        for c in self.caches[1:]:
            c.k[:, :, :, :L] = first.k[:, :, :, :L]
            c.v[:, :, :, :L] = first.v[:, :, :, :L]
            c.truncate(0)
            c.advance(L)

    @property
    def positions(self) -> int:
        """Positions each row's cache needs by the end: the prompt and every new token."""
        return len(self.prompt) + self.job.config.max_new_tokens

    def positions_now(self) -> int:
        """Positions each row's cache must hold for the next step."""
        return max(len(self.prompt), self.replay_to, self.session.tokens.length) + 1


class EngineJob:
    """A request in the engine: its groups, in prompt order."""

    def __init__(self, job: GenerateJob, groups: list[Group]):
        self.job = job
        self.groups = groups
        self.rows = sum(g.rows for g in groups)
        self.admitted_at: float | None = None  # when it first ran (time-to-first-token)


# -- the engine ---------------------------------------------------------------------------------


class Engine:
    """The running batch of one model (see the module's docstring). Only the worker thread
    calls it.

    `kv_cache_bytes` bounds the KV cache its rows hold together (None: no bound). A row's
    cache grows `kv_block` positions at a time as it decodes, so the bound is on what is in
    use, not on what requests might need. A request is admitted when its rows' first blocks fit;
    when a growing row finds the cache full, the newest running request is preempted: its
    caches are freed and it waits at the head of the queue, to be prefilled again (recompute,
    as vLLM does) and replayed to where it was, then it goes on with the same tokens.
    `metrics` (metrics.py's `ServerMetrics`, or None) hears of tokens and latencies."""

    def __init__(self, lm, stats: Stats, max_rows: int = 64, step_tokens: int = 256,
                 prefill_chunk: int = 64, kv_cache_bytes: int | None = None,
                 kv_block: int = 64, metrics=None, vector_pass: bool = True):  # fmt: skip
        if prefill_chunk < 1 or step_tokens < 1 or max_rows < 1 or kv_block < 1:
            raise ValueError("max_rows, step_tokens, prefill_chunk, kv_block must be positive")
        if kv_cache_bytes is not None and kv_cache_bytes <= 0:
            raise ValueError("kv_cache_bytes must be positive")
        self.lm = lm
        self.stats = stats
        self.max_rows = max_rows
        self.step_tokens = step_tokens
        self.prefill_chunk = prefill_chunk
        self.kv_cache_bytes = kv_cache_bytes
        self.kv_block = kv_block
        self.kv_position_bytes = kv_bytes_per_position(lm)
        self.metrics = metrics
        self.forward = BatchForward(lm.model)
        self.waiting: collections.deque[EngineJob] = collections.deque()
        self.running: list[EngineJob] = []
        self.steps = 0
        self.max_rows_seen = 0
        # the vectorised choice (row_sampler.py): off, every group runs its own chain (the
        # oracle tests compare against); rows it has chosen so far
        self.vector_pass = vector_pass
        self.vector_rows = 0

    # -- requests in and out --

    def prepare(self, job: GenerateJob) -> EngineJob | None:
        """The job as groups, or None when it is not for the engine: strategies other than
        greedy and sampling (beam search, contrastive search) and a prompt that with its new
        tokens outgrows the context (the session's sliding window) run as jobs of their own.
        Invalid settings raise here, as `Session` raises them; so does a request whose rows
        could never fit the KV cache."""
        if job.config.effective_strategy() not in ("greedy", "sample"):
            return None
        lm = replying(self.lm, job.end_ids)
        record = ("text",) if job.events is not None else ()
        groups = []
        for k, prompt in enumerate(job.prompts):
            session = BatchSession(lm, prompt, job.config, record)
            ids = session.prompt_token_ids[0]
            too_long = len(ids) + job.config.max_new_tokens > self.lm.config.n_positions
            if too_long or not session.batchable:
                session.close()
                for g in groups:
                    g.session.close()
                return None
            groups.append(Group(job, k, session, ids))
        ejob = EngineJob(job, groups)
        need = sum(g.rows * g.positions for g in groups) * self.kv_position_bytes
        if self.kv_cache_bytes is not None and need > self.kv_cache_bytes:
            self.discard(ejob)
            raise ConfigError(
                f"this request's KV cache needs {need / MiB:.1f} MiB, more than the server's "
                f"{self.kv_cache_bytes / MiB:.1f} MiB (`lmgen serve --kv-cache-mb`); ask for fewer "
                "tokens, prompts or choices",
                "max_tokens",
            )
        return ejob

    def add(self, ejob: EngineJob) -> None:
        self.waiting.append(ejob)

    @property
    def jobs(self) -> int:
        return len(self.waiting) + len(self.running)

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running)

    def rows_in_use(self) -> int:
        return sum(j.rows for j in self.running)

    def kv_bytes_in_use(self) -> int:
        """Bytes of KV cache the running rows hold (their allocated positions)."""
        positions = sum(c.max_length for j in self.running for g in j.groups for c in g.caches)
        return positions * self.kv_position_bytes

    def _kv_free(self) -> float:
        if self.kv_cache_bytes is None:
            return float("inf")
        return self.kv_cache_bytes - self.kv_bytes_in_use()

    def _capacity(self, g: Group) -> int:
        """Positions to allocate for a row of `g` now: what the next step needs, in whole
        blocks, never more than it needs by the end, and all it needs by the end when that is
        less than a block more: growing copies the row's whole cache, which for the last few
        positions costs more than it saves (a 16-token prompt and 64 new tokens: 80 positions
        at once, not 64 then a copy into 80)."""
        need = -(-g.positions_now() // self.kv_block) * self.kv_block
        return g.positions if g.positions - need < self.kv_block else need

    def _admit(self) -> None:
        free_rows = self.max_rows - self.rows_in_use()
        while self.waiting and (self.waiting[0].rows <= free_rows or not self.running):
            ejob = self.waiting[0]
            first = sum(g.rows * self._capacity(g) for g in ejob.groups) * self.kv_position_bytes
            if first > self._kv_free() and self.running:
                break  # first come, first served: the head waits for memory, the rest too
            self.waiting.popleft()
            for g in ejob.groups:
                cap = self._capacity(g)
                g.caches = [self.lm.model.new_cache(1, cap) for _ in range(g.rows)]
            if ejob.admitted_at is None:
                ejob.admitted_at = time.monotonic()
            self.running.append(ejob)
            free_rows -= ejob.rows

    def _grow(self) -> None:
        """Gives every row whose cache is full for the next step another block, preempting
        the newest requests while the KV budget has no room."""
        for ejob in list(self.running):
            for g in ejob.groups:
                if g.session.done or g.prefilling or not g.caches:
                    continue
                need = g.positions_now() - 1  # positions written once the next step is done
                for r, c in enumerate(g.caches):
                    if c.max_length >= need:
                        continue
                    cap = self._capacity(g)
                    extra = (cap - c.max_length) * self.kv_position_bytes
                    while extra > self._kv_free() and ejob in self.running:
                        self._preempt(self.running[-1])
                    if ejob not in self.running:
                        break  # it was the newest: it waits for its turn again
                    g.caches[r] = c.repeat_rows(1, cap)
                if ejob not in self.running:
                    break

    def _preempt(self, ejob: EngineJob) -> None:
        """Frees the request's caches and puts it at the head of the queue; when admitted
        again its prompts are prefilled anew and its rows replayed to where they were."""
        self.running.remove(ejob)
        for g in ejob.groups:
            g.caches = []
            if g.session.done:
                continue
            if g.session.started:
                g.replay_to = g.session.tokens.length - 1  # positions the cache held
            g.fed, g.replayed = 0, len(g.prompt)
        self.waiting.appendleft(ejob)
        self.stats.preempted += 1
        if self.metrics is not None:
            self.metrics.preempted()
        log.debug("preempted a request (KV cache full); it will be recomputed")

    def _drop_cancelled(self) -> None:
        from .work import Cancelled, fail_job

        for queue in (self.waiting, self.running):
            for ejob in [j for j in queue if j.job.cancelled.is_set()]:
                queue.remove(ejob)
                self.discard(ejob)
                self.stats.cancelled += 1
                fail_job(ejob.job, Cancelled("the client went away"))

    def discard(self, ejob: EngineJob) -> None:
        """Closes the request's sessions and frees its caches (it is in no queue any more)."""
        for g in ejob.groups:
            g.session.close()
            g.caches = []

    def close(self, error: Exception) -> None:
        from .work import fail_job

        for ejob in [*self.running, *self.waiting]:
            self.discard(ejob)
            fail_job(ejob.job, error)
        self.running, self.waiting = [], collections.deque()

    # -- one step --

    def step(self) -> None:
        """Drops, admits, runs one forward pass over the batch and advances every group whose
        logits it computed."""
        with torch.inference_mode():
            self._step()

    def _step(self) -> None:
        self._drop_cancelled()
        self._admit()
        self._grow()
        if not self.running:
            return
        segments, owners, spread = self._schedule()
        self.max_rows_seen = max(self.max_rows_seen, len(segments))
        try:
            logits = self.forward(segments)  # (segments asking for logits, V)
        except Exception as e:  # nothing a request can cause: every request in it fails
            log.exception("the engine's forward pass failed")
            for ejob in list(self.running):
                self._fail_request(ejob, e)
            return
        self.steps += 1
        self.stats.steps += 1
        for g in spread:  # the prompt was prefilled once, into the first row's cache
            g.spread_prompt()
        k = 0
        ready = []
        for g, n_logits in owners:
            if n_logits == 0:
                continue
            mine = logits[k : k + n_logits]  # a view: neither the pass nor a chain writes to it
            if n_logits != g.rows:
                mine = mine.repeat(g.rows, 1)
            elif g.session.keeps_logits:  # not a view that holds every row's logits
                mine = mine.clone()
            g.session.set_logits(mine)
            k += n_logits
            ready.append(g)
        with _one_thread():
            self._choose(ready)
        self._finish()

    def _choose(self, ready: list[Group]) -> None:
        """Each ready group's next tokens: the vectorised pass, then its session's step."""
        self._vector_pass(ready)
        owner = {ejob.job: ejob for ejob in self.running}
        for g in ready:
            ejob = owner.get(g.job)
            if ejob is None:
                continue  # its request failed at an earlier group of this step
            try:
                self._advance(g)
            except Exception as e:  # a chain that leaves nothing to sample, ...
                if not isinstance(e, ValueError | LookupError):
                    log.debug("engine job failed", exc_info=True)
                self._fail_request(ejob, e)
                del owner[g.job]

    def _vector_pass(self, groups: list[Group]) -> None:
        """One pass (row_sampler.py) for the rows of every group whose chain uses only
        penalties, logit bias, temperature, top-k, top-p and min-p, each row with its own
        settings and its own request's generator; its picks are handed to the groups, whose
        `step()` then only applies stop rules and text. Other groups choose in their own
        `step()`: their processors run only on their rows."""
        if not self.vector_pass:
            return
        chosen, parts = [], []
        for g in groups:
            part = g.session.row_part()
            if part is not None:
                chosen.append(g)
                parts.append(part)
        if not chosen:
            return
        V = chosen[0].session.logits.shape[-1]
        for a, b in row_blocks(parts, V, chosen[0].session.logits.device):
            block = [g.session.logits for g in chosen[a:b]]
            logits = block[0] if len(block) == 1 else torch.cat(block)  # (rows, V)
            try:
                nxt, raw, proc = RowSampler(parts[a:b]).choose(logits)
            except Exception:  # e.g. nothing to sample in a row: each group finds out alone
                # (no row of the block has drawn: its generators are as they were)
                log.debug("vectorised choice failed; the groups choose alone", exc_info=True)
                continue
            self.vector_rows += len(nxt)
            r = 0
            for g in chosen[a:b]:
                g.session.set_picked(nxt[r : r + g.rows], raw[r : r + g.rows], proc[r : r + g.rows])
                r += g.rows

    def _schedule(self) -> tuple[list[Segment], list[tuple[Group, int]], list[Group]]:
        """This step's segments: every decoding row's next token (and the next position of
        rows being replayed after a preemption), then prompt chunks in arrival order while the
        token budget lasts (at least one chunk a step); who owns them and how many logits each
        gets; the groups whose prompt this step completes."""
        segments: list[Segment] = []
        owners: list[tuple[Group, int]] = []
        prefilling, spread = [], []
        for ejob in self.running:
            for g in ejob.groups:
                if g.session.done:
                    continue
                if g.prefilling:
                    prefilling.append(g)
                    continue
                seq = g.session.tokens.seq
                if g.replaying:  # as first computed: one position a step, no logits
                    p = g.replayed
                    for cache, row in zip(g.caches, seq, strict=True):
                        segments.append(Segment(cache, [int(row[p])], p, False))
                    g.replayed += 1
                    owners.append((g, 0))
                    continue
                col = g.session.tokens.length - 1
                for r, cache in enumerate(g.caches):
                    segments.append(Segment(cache, [int(seq[r, col])], col, True))
                owners.append((g, g.rows))
        budget = self.step_tokens - len(segments)
        chunks = 0
        for g in prefilling:
            while g.prefilling:
                end = min(len(g.prompt), (g.fed // self.prefill_chunk + 1) * self.prefill_chunk)
                n = end - g.fed
                if n > budget and (chunks or segments):
                    break
                last = end == len(g.prompt)
                logits = last and not g.session.started  # a recomputed prompt needs none
                segments.append(Segment(g.caches[0], g.prompt[g.fed : end], g.fed, logits))
                budget -= n
                chunks += 1
                g.fed = end
                owners.append((g, 1 if logits else 0))
                if last and g.rows > 1:
                    spread.append(g)
            if budget <= 0:
                break
        return segments, owners, spread

    def _advance(self, g: Group) -> None:
        """The group's session step: its processors, draws, stop rules and text."""
        job = g.job
        out = g.session.step()
        if self.metrics is not None:
            self.metrics.tokens(g, out)
        if job.events is not None:
            base = g.index * g.rows
            for i, delta in enumerate(out.deltas):
                if delta:
                    job.emit("delta", base + i, delta)
            for i, reason in out.finished.items():
                job.emit("finish", base + i, reason)
        if g.session.done:
            g.caches = []  # the rows leave the batch: their memory goes at once

    def _finish(self) -> None:
        from .work import score_prompt

        for ejob in [j for j in self.running if all(g.session.done for g in j.groups)]:
            self.running.remove(ejob)
            job = ejob.job
            results = [g.session.results()[0] for g in ejob.groups]
            scored = None
            if job.prompt_logprobs is not None:
                scored = [
                    score_prompt(self.lm, r.prompt_token_ids, job.prompt_logprobs) for r in results
                ]
            self.stats.completed += 1
            self.stats.merged_jobs += 1
            if not job.future.done():
                job.future.set_result((results, scored))
            job.emit("end")

    def _fail_request(self, ejob: EngineJob, error: Exception) -> None:
        from .work import fail_job

        if ejob in self.running:
            self.running.remove(ejob)
        self.discard(ejob)
        self.stats.failed += 1
        fail_job(ejob.job, error)


# -- offline batches ----------------------------------------------------------------------------


SPECULATIVE_OPTIONS = ("draft", "speculative_k", "spec_stats", "compile")


def generate_many(lm, prompt, config, kwargs: dict) -> list | None:
    """`LM.generate` of several prompts, greedy or sampling, through the running batch
    (`generate_offline`); None where that does not apply (one prompt, another strategy,
    speculative decoding, a compiled step, a prompt the engine does not take): the caller then
    decodes them as one batch `Session`."""
    from lmgen.decoding.session import make_config, split_prompts

    if any(kwargs.get(k) for k in SPECULATIVE_OPTIONS):
        return None
    single, prompts = split_prompts(prompt)
    if single or len(prompts) < 2:
        return None
    config, _ = make_config(
        config, {k: v for k, v in kwargs.items() if k not in SPECULATIVE_OPTIONS}
    )
    if config.effective_strategy() not in ("greedy", "sample") or config.prompt_lookup_num_tokens:
        return None
    return generate_offline(lm, prompts, config)


def generate_offline(lm, prompts: list, config, max_rows: int = 64) -> list | None:
    """`lm.generate([...many prompts...])` through the running batch: one request per prompt,
    at most `max_rows` rows at once, so a prompt that finishes early makes room for the next
    (first come, first served). Each prompt's result is the one it gets alone (its own
    session and generator, as in a batch `Session`). None when some prompt is not for the
    engine (see `Engine.prepare`): the caller decodes them as one batch instead."""
    from .work import GenerateJob, Stats

    engine = Engine(lm, Stats(), max_rows=max_rows)
    jobs, prepared = [], []
    for p in prompts:
        job = GenerateJob([p], config)
        ejob = engine.prepare(job)
        if ejob is None:
            for e in prepared:
                engine.discard(e)
            return None
        jobs.append(job)
        prepared.append(ejob)
    for ejob in prepared:
        engine.add(ejob)
    while not all(j.future.done() for j in jobs):
        engine.step()
    return [j.future.result()[0][0] for j in jobs]
