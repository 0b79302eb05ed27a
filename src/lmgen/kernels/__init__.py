"""lmgen's own CPU kernel for decode-step products (decode.cpp), compiled on first use.

`decode_gemv(x, w, scale, bias)` is `x @ (w * scale[:, None]).T + bias`, accumulated in float32
and returned in x's dtype, for any number of rows of x (each row's bits the same in any batch),
with w float32, float16, bfloat16 or int8; decode.cpp says why it exists.
`decode_attention(q, k, v)` is a decode step's attention (one query, no mask), which torch's
CPU kernel runs at 20-100 us a layer, 3x slower in half precision. Both are built once per
machine and torch version with the C++ compiler torch's extensions use (g++), through
`torch.utils.cpp_extension` and ninja, into `$LMGEN_CACHE`
(default `~/.cache/lmgen`)/kernels; the first build takes 20-60 s and says so on stderr. Where
it cannot be built (no compiler, not an x86 CPU with AVX2, FMA and F16C) or `LMGEN_KERNELS=0` is
set, `available()` is False and the callers keep torch's own products: results differ only by
float rounding.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("decode.cpp")
# -ffp-contract=off: no multiply-add fused but the written ones, so a product's arithmetic is
# the same in every tile (batch invariance). With torch's AVX512 level (AVX512F/BW/VL/DQ),
# AVX512VL gives the same 256-bit code 32 registers: bigger tiles, the same bits.
BASE_FLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-ffp-contract=off"]
AVX512_FLAGS = ["-mavx512f", "-mavx512vl"]
_FLAGS = [*BASE_FLAGS]
if torch.backends.cpu.get_cpu_capability() == "AVX512":
    _FLAGS += AVX512_FLAGS


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def integer_dot_flags(flags: set[str] | None = None) -> list[str]:
    """Compiler flags for the ggml block products' integer dot (quant_dot.h, in quant.cpp and
    decode.cpp): AVX512-VNNI or AVX-VNNI where the CPU lists them, else none (AVX2)."""
    flags = cpu_flags() if flags is None else flags
    if {"avx512_vnni", "avx512vl"} <= flags:
        return ["-mavx512vnni", "-mavx512vl", "-DLMGEN_VNNI512"]
    if "avx_vnni" in flags:
        return ["-mavxvnni", "-DLMGEN_AVXVNNI"]
    return []


def bf16_dot_flags(flags: set[str] | None = None) -> list[str]:
    """Compiler flags for bfloat16 weights' pair products (decode.cpp): AVX512-BF16's
    vdpbf16ps where the CPU lists it (with torch's AVX512 level), else none (two FMAs a pair,
    the same bits at half the rate)."""
    flags = cpu_flags() if flags is None else flags
    if torch.backends.cpu.get_cpu_capability() == "AVX512" and {"avx512_bf16", "avx512vl"} <= flags:
        return ["-mavx512bf16", "-DLMGEN_BF16DOT"]
    return []


_FLAGS += integer_dot_flags() + bf16_dot_flags()
MAX_ROWS = 4  # rows up to which callers take the kernel for a batch (decode_linear, the plan)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # activations (and float weights)
_state: dict = {"ok": None, "why": ""}
_lock = threading.Lock()


def _cpu_ok() -> str:
    """'' when this CPU runs the kernel, else why not. torch's AVX2 level (and above) means
    AVX2 and FMA; every such CPU also has F16C."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX2", "AVX512"):
        return f"it needs an x86-64 CPU with AVX2, FMA and F16C (torch reports {capability})"
    return ""


def cache_dir() -> Path:
    root = os.environ.get("LMGEN_CACHE") or Path.home() / ".cache" / "lmgen"
    return Path(root) / "kernels"


def _build_name(source: Path = _SOURCE, flags=_FLAGS, prefix: str = "lmgen_kernels") -> str:
    h = hashlib.sha256(source.read_bytes())
    for header in sorted(source.parent.glob("*.h")):  # what the sources include
        h.update(header.read_bytes())
    # sys.prefix: each virtual environment its own build (their include paths differ)
    h.update(" ".join([torch.__version__, sys.version, sys.prefix, *flags]).encode())
    return f"{prefix}_{h.hexdigest()[:12]}"


def build_extension(source: Path, flags: list[str], prefix: str) -> None:
    """Compiles and loads another kernel source (e.g. quant.cpp) the way decode.cpp is built:
    cached under `cache_dir()`, keyed by its source, flags, torch and the environment."""
    _load(source, flags, prefix)


@contextmanager
def build_lock(build: Path) -> Iterator[None]:
    """Holds the build directory's lock: one process builds or loads there at a time (pytest's
    workers, a server and a CLI started together), and the others wait. An OS file lock
    (flock), which the system releases when its process ends however it ends: torch's own
    lock file (`lock`, its FileBaton) stays behind when a build is killed (Ctrl-C during the
    first compile), and every later load would wait on it for good. Holding this lock, nobody
    else is building, so such a file is a dead build's and is removed."""
    import fcntl

    with open(build / "build.flock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            baton = build / "lock"
            if baton.exists():
                log.warning("removing a killed kernel build's lock (%s)", baton)
                baton.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _load(source: Path = _SOURCE, flags=_FLAGS, prefix: str = "lmgen_kernels") -> None:
    from torch.utils import cpp_extension

    name = _build_name(source, flags, prefix)
    build = cache_dir() / name
    build.mkdir(parents=True, exist_ok=True)
    try:  # the ninja wheel's binary, which may not be on PATH outside an activated venv
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    except ImportError:
        pass
    with build_lock(build):
        if not (build / f"{name}.so").exists():
            print(
                f"lmgen: compiling its CPU kernel {source.name} (once per machine, 20-60 s; "
                "LMGEN_KERNELS=0 skips it)...",
                file=sys.stderr,
                flush=True,
            )
        cpp_extension.load(
            name=name,
            sources=[str(source)],
            extra_cflags=flags,
            extra_ldflags=["-fopenmp"],
            build_directory=str(build),
            is_python_module=False,
            verbose=False,
        )


TURNED_OFF = "LMGEN_KERNELS=0"


def turned_off() -> bool:
    """Whether the user turned lmgen's kernels off (`LMGEN_KERNELS=0`)."""
    return os.environ.get("LMGEN_KERNELS") == "0"


def say_not_used(kernel: str, why: str) -> None:
    """Logs why `kernel` is not used: a warning, unless the user asked for it (`TURNED_OFF`),
    which is said at info level."""
    level = logging.INFO if why == TURNED_OFF else logging.WARNING
    log.log(level, "%s is not used: %s", kernel, why)


def available() -> bool:
    """Whether `decode_gemv` runs here (builds and loads the kernel on the first call)."""
    ok = _state["ok"]
    if ok is not None:
        return ok
    with _lock:
        if _state["ok"] is None:
            why = TURNED_OFF if turned_off() else _cpu_ok()
            if not why:
                try:
                    _load()
                except Exception as e:  # no compiler, no ninja, a failed build: torch's path
                    why = f"building it failed ({type(e).__name__}: {str(e).strip()[-300:]})"
            if why:
                say_not_used("lmgen's CPU decode kernel", why)
            _state["ok"], _state["why"] = not why, why
    return _state["ok"]


def why_not() -> str:
    """Why the kernel is not used ('' when it is, or before `available()` was asked)."""
    return _state["why"]


def decode_gemv(
    x: torch.Tensor,
    w: torch.Tensor,
    scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """(rows, out) = x (rows, in) @ (w * scale[:, None]).T + bias, in x's dtype; any rows >= 1,
    each row's result the same bits whatever the other rows."""
    return torch.ops.lmgen_kernels.decode_gemv(x, w, scale, bias)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v for one query per row and head, no mask: (B, H, 1, D) from
    q (B, H, 1, D) and the cached k, v (B, H, L, D), softmax in float32."""
    return torch.ops.lmgen_kernels.decode_attention(q, k, v)


def decode_step(
    x: torch.Tensor,
    params: list,
    k_all: torch.Tensor,
    v_all: torch.Tensor,
    pos: int,
    n_head: int,
    eps: float,
    activation: int,
    blocks: tuple = ((), ()),
) -> torch.Tensor:
    """Every block of a one-token decode step in one call: `x` (rows, n_embd) the step's
    embeddings, `params` 16 tensors (or None) per layer (decode.cpp lists them), the KV cache
    `k_all`, `v_all` (n_layer, rows, n_head, max_length, head_dim), written at `pos`;
    `activation` 0 tanh GELU, 1 exact GELU, 2 ReLU. Returns the residual stream after the last
    block (rows, n_embd), activations computed in float32. `blocks` = (tensors, parts): the
    linear layers held as ggml blocks, whose weight is None in `params` (decode.cpp's
    BlockReader; lmgen.model.plan gathers them)."""
    op = torch.ops.lmgen_kernels.decode_step
    return op(x, params, k_all, v_all, pos, n_head, eps, activation, *blocks)


def decode_step_rope(
    x: torch.Tensor,
    params: list,
    k_all: torch.Tensor,
    v_all: torch.Tensor,
    pos: int,
    shape: tuple[int, int, int],
    eps: float,
    activation: int,
    cos: torch.Tensor,
    sin: torch.Tensor,
    windows: list[int],
    scale: float,
    unit_offset: bool,
    blocks: tuple = ((), ()),
) -> torch.Tensor:
    """`decode_step` for the rotary families (Llama, Mistral, Qwen2/3, Gemma 3): RMSNorm
    (`unit_offset`: Gemma's 1 + w), grouped-query attention with `shape` = (n_head, n_kv_head,
    head_dim), optional QK-norm, RoPE from `cos`, `sin` (n_layer, rot) float32 for this
    position, a sliding window per layer (0: none), the gated MLP (`activation` 0 tanh GELU,
    3 SiLU) and Gemma's norms after attention and MLP; 18 tensors (or None) per layer."""
    op = torch.ops.lmgen_kernels.decode_step_rope
    H, KV, D = shape
    return op(x, params, k_all, v_all, pos, H, KV, D, eps, activation, cos, sin, windows, scale,
              unit_offset, *blocks)  # fmt: skip


def decode_step_rows(
    x: torch.Tensor,
    params: list,
    k: list[torch.Tensor],
    v: list[torch.Tensor],
    positions: list[int],
    n_head: int,
    eps: float,
    activation: int,
    blocks: tuple = ((), ()),
) -> torch.Tensor:
    """`decode_step` for rows that each have a KV cache of their own (the server's running
    batch): row b's `k[b]`, `v[b]` are (n_layer, 1, n_head, max_length, head_dim), written at
    `positions[b]`, and the row attends to its keys up to there. Any number of rows: every
    weight streams once for all of them, and a row's result has the same bits whatever the
    other rows are and wherever it sits (its sums and its attention are its own)."""
    op = torch.ops.lmgen_kernels.decode_step_rows
    return op(x, params, k, v, positions, n_head, eps, activation, *blocks)


def decode_step_rope_rows(
    x: torch.Tensor,
    params: list,
    k: list[torch.Tensor],
    v: list[torch.Tensor],
    positions: list[int],
    shape: tuple[int, int, int],
    eps: float,
    activation: int,
    cos: torch.Tensor,
    sin: torch.Tensor,
    windows: list[int],
    scale: float,
    unit_offset: bool,
    blocks: tuple = ((), ()),
) -> torch.Tensor:
    """`decode_step_rope` for rows with a KV cache each (`decode_step_rows`); `cos`, `sin`
    (rows, n_layer, rot) float32 at each row's own position."""
    op = torch.ops.lmgen_kernels.decode_step_rope_rows
    H, KV, D = shape
    return op(x, params, k, v, positions, H, KV, D, eps, activation, cos, sin, windows, scale,
              unit_offset, *blocks)  # fmt: skip


def decode_head(
    x: torch.Tensor, params: list, eps: float, norm: int, blocks: tuple = ((), ())
) -> torch.Tensor:
    """The logits (rows, vocab) of `x` (rows, n_embd) in one call: the final norm (`norm` 0
    LayerNorm, 1 RMSNorm, 2 Gemma's RMSNorm scaled by 1 + w) and the head's product shared
    among the threads. `params`: the norm's weight and bias (None for RMSNorm), the head's
    weight (None: ggml parts in `blocks`, as `decode_step` takes them), scale (int8) and bias.
    In x's dtype; each row's bits the same whatever the other rows."""
    return torch.ops.lmgen_kernels.decode_head(x, params, eps, norm, *blocks)
