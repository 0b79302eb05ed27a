"""The training loop: a TOML recipe, AdamW + warmup/cosine, checkpoints and resume, DDP.

A run directory holds:

    recipe.toml              the resolved recipe (after --set overrides)
    metrics.jsonl            one JSON object per log / eval event
    checkpoints/step-NNNNNN/ model/ (a model directory) + state.pt (optimizer, scheduler,
                             RNG, data position); the newest complete one is resumed
    final/                   the trained model directory
    loss_curve.png           the loss curve, drawn at the end

Under `torchrun` (env WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel
(`distributed.Distributed`: gloo on CPU, nccl on GPU) and rank 0 alone writes files.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
import os
import random
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, LmgenError
from .data import BatchSampler, Dataset, check_writable
from .distributed import Distributed

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)


@dataclass
class ModelRecipe:
    family: str = "gpt2"  # "gpt2" | "llama" (RoPE, RMSNorm, SwiGLU, GQA): model.families.SCRATCH
    n_layer: int = 6
    n_embd: int = 256
    n_head: int = 4
    n_kv_head: int = 0  # grouped-query attention (llama); 0 = n_head
    n_inner: int = 0  # the MLP's width; 0 = the family's (4 C; Llama ~8/3 C)
    n_positions: int = 256  # the context, and the training window
    rope_theta: float = 10000.0  # llama
    dropout: float = 0.1
    activation_function: str = ""  # "" = the family's (gelu_new; llama silu)
    tie_word_embeddings: bool = True


@dataclass
class TrainRecipe:
    seed: int = 1337
    batch_size: int = 16  # windows per micro-step per process
    grad_accum: int = 1  # micro-steps per optimizer step per process
    max_steps: int = 1000
    max_time: float = 0.0  # minutes; 0 = no limit. The run stops (and saves) when reached
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 = no clipping
    bf16: bool = False  # bf16 autocast
    eval_interval: int = 200  # 0 = never evaluate
    eval_tokens: int = 0  # validation tokens per evaluation; 0 = the whole validation split
    checkpoint_interval: int = 200
    keep_checkpoints: int = 2
    log_interval: int = 10
    sample_prompt: str = "ROMEO:"
    sample_tokens: int = 64
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch CPU threads; 0 = torch's default


@dataclass
class Recipe:
    model: ModelRecipe = field(default_factory=ModelRecipe)
    train: TrainRecipe = field(default_factory=TrainRecipe)

    def to_toml(self) -> str:
        lines = []
        for section in ("model", "train"):
            lines.append(f"[{section}]")
            for k, v in dataclasses.asdict(getattr(self, section)).items():
                lines.append(f"{k} = {_toml_value(v)}")
            lines.append("")
        return "\n".join(lines)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return _toml_string(v)
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if v != v else ("inf" if v > 0 else "-inf")
    return repr(v)


def _toml_string(text: str) -> str:
    """A TOML basic string: non-ASCII kept as is (json.dumps would write an emoji as a
    surrogate pair, which TOML refuses), control characters and DEL escaped."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch < " " or ch == "\x7f":
            out.append({"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(ch, f"\\u{ord(ch):04x}"))
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _valid_keys() -> list[str]:
    return [
        f"{s}.{f.name}"
        for s, cls in (("model", ModelRecipe), ("train", TrainRecipe))
        for f in dataclasses.fields(cls)
    ]


def _unknown(key: str) -> ConfigError:
    keys = _valid_keys()
    bare = {k.split(".")[1]: k for k in keys}
    close = difflib.get_close_matches(key, keys + list(bare), n=1, cutoff=0.5)
    hint = f"; did you mean {bare.get(close[0], close[0])!r}?" if close else ""
    return ConfigError(f"unknown recipe key {key!r}{hint}", key)


def _resolve_key(key: str) -> tuple[str, str]:
    """`model.n_layer`, or a bare `n_layer` (the names do not clash) → (section, name)."""
    if "." in key:
        section, name = key.split(".", 1)
        if f"{section}.{name}" in _valid_keys():
            return section, name
        raise _unknown(key)
    matches = [k for k in _valid_keys() if k.split(".")[1] == key]
    if len(matches) == 1:
        return tuple(matches[0].split("."))  # type: ignore[return-value]
    raise _unknown(key)


def _coerce(section: str, name: str, value):
    cls = ModelRecipe if section == "model" else TrainRecipe
    default = getattr(cls(), name)
    key = f"{section}.{name}"
    if isinstance(value, str) and not isinstance(default, str):
        text = value.strip()
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}", key)
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ConfigError(f"{key} must be an integer, got {value!r}", key)
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}", key)
        value = float(value)
    elif isinstance(default, str) and not isinstance(value, str):
        value = str(value)
    return value


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> Recipe:
    """A recipe from TOML ([model] and [train] tables) with `key=value` overrides on top."""
    recipe = Recipe()
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the recipe ({e.strerror or e})") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML ({e})") from e
        for section, table in data.items():
            if section not in ("model", "train") or not isinstance(table, dict):
                if isinstance(table, dict):
                    raise _unknown(section)
                section, name = _resolve_key(section)
                table = {name: data[section if section in data else name]}
            for name, value in table.items():
                sec, nm = _resolve_key(f"{section}.{name}")
                setattr(getattr(recipe, sec), nm, _coerce(sec, nm, value))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        sec, nm = _resolve_key(key.strip())
        setattr(getattr(recipe, sec), nm, _coerce(sec, nm, value))
    _validate(recipe)
    return recipe


def _validate(r: Recipe) -> None:
    t = r.train
    for key in (
        "batch_size",
        "grad_accum",
        "max_steps",
        "checkpoint_interval",
        "log_interval",
        "keep_checkpoints",
    ):
        if getattr(t, key) < 1:
            raise ConfigError(f"train.{key} must be at least 1, got {getattr(t, key)}", key)
    if t.eval_interval < 0:
        raise ConfigError(
            f"train.eval_interval must be >= 0 (0 = never evaluate), got {t.eval_interval}",
            "eval_interval",
        )
    if t.lr <= 0 or t.min_lr < 0 or t.min_lr > t.lr:
        raise ConfigError(f"need 0 <= min_lr <= lr and lr > 0 (lr={t.lr}, min_lr={t.min_lr})")
    if t.warmup_steps < 0:
        raise ConfigError("train.warmup_steps must be >= 0", "warmup_steps")
    for key in ("sample_prompt", "device"):
        try:
            getattr(t, key).encode("utf-8")
        except UnicodeEncodeError as e:
            raise ConfigError(f"train.{key} is not valid UTF-8 text (at {e.start})", key) from e


def lr_factor(step: int, recipe: TrainRecipe) -> float:
    """Multiplier of `lr` at optimizer step `step` (0-based): linear warmup, cosine to min_lr."""
    if step < recipe.warmup_steps:
        return (step + 1) / recipe.warmup_steps
    span = max(1, recipe.max_steps - recipe.warmup_steps)
    progress = min(1.0, (step - recipe.warmup_steps) / span)
    floor = recipe.min_lr / recipe.lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------- checkpoints
# A checkpoint appears and disappears by rename only: built in `.tmp-*`, renamed to
# `step-NNNNNN`; removed by renaming it to `.trash-*` first and deleting that. So a kill at any
# moment leaves every `step-*` directory complete; what it can leave behind is `.tmp-*` and
# `.trash-*`, which the next start removes.

CHECKPOINT_FILES = (
    "state.pt",
    "model/config.json",
    "model/model.safetensors",
    "model/tokenizer.json",
)
_STEP = re.compile(r"step-(\d+)")


def checkpoint_dirs(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every `checkpoints/step-N` directory, complete or not, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP.fullmatch(p.name))]
    return sorted(found)


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint directory is not complete (a look at its files, nothing loaded)."""
    missing = [f for f in CHECKPOINT_FILES if not (path / f).is_file()]
    return f"{', '.join(missing)} missing" if missing else None


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    for _, p in reversed(checkpoint_dirs(run_dir)):
        if checkpoint_problem(p) is None:
            return p
    return None


def remove_tree(path: Path) -> None:
    """Deletes a directory so that no kill leaves half of it under its name: rename, then rm."""
    trash = path.with_name(f".trash-{path.name}-{uuid.uuid4().hex[:8]}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def set_aside(path: Path, reason: str) -> Path:
    """Renames a broken checkpoint to `broken-step-N` (kept for inspection, never resumed)."""
    target = path.with_name(f"broken-{path.name}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"broken-{path.name}.{n}")
    os.replace(path, target)
    log.warning("checkpoint %s is broken (%s): skipped, moved to %s", path, reason, target.name)
    return target


def clean_run_dir(run_dir: Path) -> list[str]:
    """Removes the temporaries a killed run leaves (`checkpoints/.tmp-*` and `.trash-*`, a
    half-written `final/`). Returns one line per thing done; the writing process alone calls
    it, before it writes anything."""
    from ..checkpoint import recover_model_dir

    done = recover_model_dir(run_dir / "final")
    root = run_dir / "checkpoints"
    if root.is_dir():
        for p in sorted(root.iterdir()):
            if p.name.startswith((".tmp-", ".trash-")):
                shutil.rmtree(p, ignore_errors=True)
                done.append(f"removed {p}")
    for line in done:
        log.info("%s", line)
    return done


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, state: dict, keep: int) -> Path:
    """Builds `checkpoints/.tmp-*` (model dir + state.pt, fsynced), renames it into place,
    then removes all but the newest `keep` checkpoints up to `step`."""
    from ..checkpoint import write_model_dir

    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        write_model_dir(model, tokenizer, tmp / "model", dtype=torch.float32)
        with open(tmp / "state.pt", "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():  # the same step saved again (a resumed run)
            remove_tree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    older = [p for s, p in checkpoint_dirs(run_dir) if s < step]
    for p in older[: max(0, len(older) - (keep - 1))]:
        remove_tree(p)
    return final


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _resumable(run_dir: Path, procs: Distributed):
    """The newest checkpoint that loads: (path, model, state, skipped). One that does not (a
    file missing, its model or state.pt unreadable) is reported, set aside and skipped."""
    from ..checkpoint import read_model_dir
    from ..json_files import first_line

    skipped = []
    for _, path in reversed(checkpoint_dirs(run_dir)):
        try:
            problem = checkpoint_problem(path)
            if problem is not None:
                raise LmgenError(problem)
            _, model, _ = read_model_dir(path / "model")
            try:
                state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
            except Exception as e:  # a torn or foreign file fails in many ways
                raise LmgenError(f"state.pt does not load ({first_line(e)})") from e
            if not isinstance(state, dict):
                raise LmgenError(f"state.pt holds {type(state).__name__}, not a training state")
            missing = [k for k in STATE_KEYS if k not in state]
            if missing:
                raise LmgenError(f"state.pt lacks {', '.join(missing)}")
        except LmgenError as e:
            reason = first_line(e)
            skipped.append(f"{path.name}: {reason}")
            if procs.main:
                set_aside(path, reason)
            continue
        return path, model, state, skipped
    return None, None, None, skipped


STATE_KEYS = ("step", "optimizer", "scheduler", "rng")


# --------------------------------------------------------------------------- the loop


def make_optimizer(model: torch.nn.Module, t: TrainRecipe, device: torch.device):
    """AdamW; weight decay on matrices (dim >= 2) only, not on biases, LayerNorms."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": t.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    kwargs = {"lr": t.lr, "betas": (t.beta1, t.beta2)}
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, **kwargs)


@torch.no_grad()
def evaluate_loss(
    model,
    tokens: np.ndarray,
    block_size: int,
    batch_size: int,
    device,
    max_tokens: int = 0,
    autocast=nullcontext,
) -> tuple[float, int]:
    """Mean next-token loss over consecutive non-overlapping windows of the validation tokens
    (each window starts cold); returns (mean loss in nats, tokens scored)."""
    n = len(tokens) - 1
    if max_tokens:
        n = min(n, max_tokens)
    total, count = 0.0, 0
    starts = list(range(0, n, block_size))
    for i in range(0, len(starts), batch_size):
        chunk = starts[i : i + batch_size]
        length = min(block_size, n - chunk[-1])
        if length < block_size:  # a short last window: score it on its own
            xs = [tokens[s : s + block_size + 1] for s in chunk[:-1]]
            tail = [tokens[chunk[-1] : chunk[-1] + length + 1]]
            groups = [xs, tail] if xs else [tail]
        else:
            groups = [[tokens[s : s + block_size + 1] for s in chunk]]
        for rows in groups:
            t = torch.from_numpy(np.stack([np.asarray(r, dtype=np.int64) for r in rows]))
            t = t.to(device)
            with autocast():
                logits = model(t[:, :-1])
            loss = F.cross_entropy(
                logits.float().reshape(-1, logits.size(-1)), t[:, 1:].reshape(-1), reduction="sum"
            )
            total += float(loss)
            count += t[:, 1:].numel()
    return total / max(1, count), count


def _sample(model, tokenizer, t: TrainRecipe, step: int) -> str | None:
    """A sampled continuation of `sample_prompt`, or None when generation is unavailable."""
    if not t.sample_tokens or not t.sample_prompt:
        return None
    try:
        from ..decoding.api import generate
    except ImportError as e:
        log.warning("no sample at step %d: lmgen.decoding is not available (%s)", step, e)
        return None
    from ..lm import LM

    try:
        out = generate(
            LM(model, tokenizer),
            t.sample_prompt,
            strategy="sample",
            max_new_tokens=t.sample_tokens,
            temperature=0.8,
            top_k=50,
            seed=step,
        )
        return out.text
    except Exception as e:  # a sample must never end a training run
        log.warning("no sample at step %d: %s: %s", step, type(e).__name__, e)
        return None


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available", "device")
    return torch.device(name)


def train(
    data_dir: str | Path,
    run_dir: str | Path,
    recipe: Recipe,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    on_event: Callable[[dict], None] | None = None,
) -> Path | None:
    """Trains per `recipe`; returns the final model directory (None on ranks other than 0).

    `on_event(record)` is called with every record written to metrics.jsonl (rank 0 only).
    `progress`: show the run as it goes (`TrainingReport`: a bar on a terminal, a line per log
    interval elsewhere, and each evaluation); the CLI passes its own report as `on_event`.
    `stop_after` ends the run after that many optimizer steps *in this call* without the final
    save (tests use it to simulate a kill)."""
    t = recipe.train
    listeners = [on_event] if on_event is not None else []
    if progress:
        from .progress import TrainingReport

        listeners.append(TrainingReport(t.max_steps, t.sample_prompt))
    run = _Run(Path(data_dir), Path(run_dir), recipe, resume, listeners)
    step, last_checkpoint = run.start_step, run.start_step if run.resumed else -1
    throughput = _Throughput()
    stopped_by_time = False
    try:
        while step < t.max_steps:
            with throughput.measure(run.tokens_per_step):
                loss, grad_norm, lr = run.optimizer_step(step)
            step += 1
            if step % t.log_interval == 0 or step == t.max_steps:
                run.log(step, loss, lr, grad_norm, throughput.reading())
            out_of_time = run.out_of_time()
            if run.evaluating and (
                step % t.eval_interval == 0 or step == t.max_steps or out_of_time
            ):
                run.evaluate(step)
            if step % t.checkpoint_interval == 0 or step == t.max_steps or out_of_time:
                run.checkpoint(step)
                last_checkpoint = step
            if out_of_time:
                stopped_by_time = True
                log.warning("max_time of %.1f min reached at step %d", t.max_time, step)
                break
            if stop_after is not None and step - run.start_step >= stop_after:
                return None
        if last_checkpoint != step and step > 0:
            run.checkpoint(step)
        return run.finish(step, stopped_by_time)
    finally:
        run.close()


class _Run:
    """One call of `train()`: the steps it takes, and what they share (processes, device,
    data, model, optimizer, metrics)."""

    def __init__(self, data_dir: Path, run_dir: Path, recipe: Recipe, resume: bool, listeners):
        self.recipe, self.t, self.m, self.run_dir = recipe, recipe.train, recipe.model, run_dir
        if self.t.threads:
            torch.set_num_threads(self.t.threads)
        self._place()
        self._open_data(data_dir, resume)
        checkpoint, loaded, state, skipped = self._resume_point(resume)
        self.resumed = checkpoint is not None
        self._build_model(checkpoint, loaded)
        self._restore(checkpoint, state)
        if self.procs.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "recipe.toml").write_text(recipe.to_toml())
        self.metrics = _Metrics(run_dir / "metrics.jsonl", self.procs.main, listeners)
        self.autocast = (
            (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16))
            if self.t.bf16
            else nullcontext
        )
        self.tokens_per_step = self.t.batch_size * self.t.grad_accum * self.procs.world
        self.tokens_per_step *= self.m.n_positions
        self.clock_start = time.time()
        self.metrics.write(
            {
                "event": "start",
                "step": self.start_step,
                "params": self.raw_model.num_parameters(),
                "tokens_per_step": self.tokens_per_step,
                "world": self.procs.world,
                "device": str(self.device),
                "resumed_from": str(checkpoint) if checkpoint else None,
                "skipped_checkpoints": skipped,
                "max_steps": self.t.max_steps,
            }
        )

    # -- setting up

    def _place(self) -> None:
        """The device, and the processes (several under torchrun, one GPU each)."""
        self.device = _pick_device(self.t.device)
        self.procs = Distributed.from_env(str(self.device))
        if self.device.type == "cuda" and self.procs.world > 1:
            self.device = torch.device("cuda", self.procs.local_rank)
            torch.cuda.set_device(self.device)

    def _open_data(self, data_dir: Path, resume: bool) -> None:
        """The data, and the run directory checked before any work, so that no training is
        lost to it."""
        t, run_dir = self.t, self.run_dir
        self.data = data = Dataset(data_dir)
        if run_dir.is_dir() and not resume:
            if checkpoint_dirs(run_dir) or (run_dir / "final").exists():
                raise ConfigError(
                    f"{run_dir}: holds a previous run; pass --resume to continue it "
                    "or choose another --out"
                )
        if self.procs.main:  # rank 0 alone writes there
            check_writable(run_dir)
        self.tokenizer = data.tokenizer()
        self.sampler = BatchSampler(data.shards("train"), self.m.n_positions, t.seed)
        has_val = data.has_validation()
        self.val_tokens = data.tokens("val") if has_val else None
        self.bytes_per_token = data.bytes_per_token("val") if has_val else 0.0
        self.evaluating = has_val and t.eval_interval > 0
        if not has_val and t.eval_interval > 0 and self.procs.main:
            log.warning("%s has no validation split; training without evaluation", data.path)

    def _resume_point(self, resume: bool):
        """(checkpoint, its model, its state, skipped checkpoints) to resume from, or Nones."""
        if self.procs.main and self.run_dir.is_dir():
            clean_run_dir(self.run_dir)  # the temporaries a kill left
        self.procs.barrier()
        if not resume:
            return None, None, None, []
        checkpoint, loaded, state, skipped = _resumable(self.run_dir, self.procs)
        if checkpoint is None:
            log.warning(
                "--resume: no %scheckpoint in %s; starting from scratch",
                "usable " if skipped else "",
                self.run_dir,
            )
        return checkpoint, loaded, state, skipped

    def _build_model(self, checkpoint: Path | None, loaded) -> None:
        """The recipe's model (the checkpoint's weights when resuming), DDP-wrapped when
        several processes train it; `raw_model` is the model itself."""
        from ..model import GPT
        from ..model.families import scratch_config

        m = self.m
        torch.manual_seed(self.t.seed)
        config = scratch_config(
            m.family,
            vocab_size=self.data.vocab_size,
            n_positions=m.n_positions,
            n_embd=m.n_embd,
            n_layer=m.n_layer,
            n_head=m.n_head,
            n_kv_head=m.n_kv_head,
            n_inner=m.n_inner,
            rope_theta=m.rope_theta if m.family == "llama" else None,
            dropout=m.dropout,
            activation_function=m.activation_function,
            tie_word_embeddings=m.tie_word_embeddings,
            bos_token_id=self.tokenizer.eos_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        model = GPT(config)
        if checkpoint is not None:
            if loaded.config.to_dict() != config.to_dict():
                raise ConfigError(
                    f"{checkpoint}: the checkpoint's model differs from the recipe's; "
                    "resume with the same recipe"
                )
            model.load_state_dict(loaded.state_dict())
        model.to(self.device)
        model.train()
        self.raw_model = self.model = model
        if self.procs.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DDP(model, device_ids=ids)

    def _restore(self, checkpoint: Path | None, state: dict | None) -> None:
        """The optimizer and schedule, at the checkpoint's step when resuming."""
        t = self.t
        self.optimizer = make_optimizer(self.raw_model, t, self.device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, t)
        )
        self.start_step, self.elapsed_before = 0, 0.0
        if state is None:
            torch.manual_seed(t.seed + self.procs.rank)  # dropout streams differ between ranks
            return
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.start_step = state["step"]
        self.elapsed_before = state.get("elapsed", 0.0)
        rng = state["rng"]
        _set_rng_state(rng[self.procs.rank] if isinstance(rng, list) else rng)
        if state.get("data", {}).get("seed", t.seed) != t.seed:
            raise ConfigError(
                f"{checkpoint}: trained with seed {state['data']['seed']}, recipe says {t.seed}"
            )
        log.info("resuming from %s (step %d)", checkpoint, self.start_step)

    # -- the steps

    def elapsed(self) -> float:
        """Seconds of training, the runs this one resumes included."""
        return self.elapsed_before + time.time() - self.clock_start

    def optimizer_step(self, step: int) -> tuple[float, float | None, float]:
        """One optimizer step over `grad_accum` micro-batches: (mean loss over the
        processes, gradient norm before clipping, the learning rate it used)."""
        t, procs = self.t, self.procs
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for micro in range(t.grad_accum):
            x, y = self.sampler.batch(
                step, micro, t.grad_accum, t.batch_size, procs.rank, procs.world
            )
            x, y = x.to(self.device), y.to(self.device)
            sync = micro == t.grad_accum - 1 or procs.world == 1
            with nullcontext() if sync else self.model.no_sync():
                with self.autocast():
                    logits = self.model(x)
                loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
                (loss / t.grad_accum).backward()
            loss_sum += float(loss.detach())
        grad_norm = None
        if t.grad_clip > 0:
            params = self.raw_model.parameters()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, t.grad_clip))
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        loss = procs.mean(loss_sum / t.grad_accum, self.device)
        if not math.isfinite(loss):
            raise LmgenError(f"the loss became {loss} at step {step + 1}; lower train.lr")
        return loss, grad_norm, lr

    def log(self, step: int, loss: float, lr: float, grad_norm, tokens_per_s: float) -> None:
        self.metrics.write(
            {
                "event": "train",
                "step": step,
                "tokens": step * self.tokens_per_step,
                "loss": loss,
                "lr": lr,
                "grad_norm": grad_norm,
                "tokens_per_s": tokens_per_s,
                "elapsed_s": self.elapsed(),
            }
        )

    def out_of_time(self) -> bool:
        out = bool(self.t.max_time) and self.elapsed() >= self.t.max_time * 60
        if self.procs.world > 1:  # every rank must agree to stop
            out = self.procs.mean(float(out), self.device) > 0
        return out

    def evaluate(self, step: int) -> None:
        """Validation loss (and a sample, on rank 0), without touching the training RNG."""
        t, device, model = self.t, self.device, self.raw_model
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            model.eval()
            loss, n = evaluate_loss(
                model,
                self.val_tokens,
                self.m.n_positions,
                t.batch_size,
                device,
                t.eval_tokens,
                self.autocast,
            )
            sample = _sample(model, self.tokenizer, t, step) if self.procs.main else None
            model.train()
        bpb = loss / math.log(2) / self.bytes_per_token
        record = {
            "event": "eval",
            "step": step,
            "tokens": step * self.tokens_per_step,
            "val_loss": loss,
            "val_ppl": math.exp(min(loss, 50)),
            "val_bpb": bpb,
            "val_tokens": n,
        }
        if sample is not None:
            record["sample"] = sample
        self.metrics.write(record)
        log.info(
            "step %d: val loss %.4f, ppl %.2f, %.3f bits/byte", step, loss, record["val_ppl"], bpb
        )

    def checkpoint(self, step: int) -> None:
        """Saves the model and everything a resume needs (rank 0 writes; every rank's RNG)."""
        state = {
            "step": step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": self.procs.gather(_rng_state()),
            "elapsed": self.elapsed(),
            "data": {"seed": self.t.seed, "next_step": step, "world": self.procs.world},
            "recipe": dataclasses.asdict(self.recipe),
        }
        if self.procs.main:
            keep = self.t.keep_checkpoints
            save_checkpoint(self.run_dir, step, self.raw_model, self.tokenizer, state, keep)

    def finish(self, step: int, stopped_by_time: bool) -> Path | None:
        """The final model directory, the end record and the loss curve (rank 0)."""
        if not self.procs.main:
            self.procs.barrier()
            return None
        from ..checkpoint import write_model_dir

        final = write_model_dir(
            self.raw_model, self.tokenizer, self.run_dir / "final", dtype=torch.float32
        )
        self.metrics.write(
            {
                "event": "end",
                "step": step,
                "stopped_by_time": stopped_by_time,
                "elapsed_s": self.elapsed(),
            }
        )
        try:
            plot_loss_curve(self.run_dir / "metrics.jsonl", self.run_dir / "loss_curve.png")
        except Exception as e:  # the picture is a bonus; the model is saved already
            log.warning("could not draw the loss curve: %s", e)
        self.procs.barrier()
        return final

    def close(self) -> None:
        self.metrics.close()


class _Throughput:
    """Tokens per second over the training steps since the last reading. The time between
    steps (evaluations, samples, checkpoints) is not counted: it once made one reading in a
    hundred a thousandth of its neighbours'."""

    def __init__(self):
        self.tokens, self.seconds = 0, 0.0

    @contextmanager
    def measure(self, tokens: int):
        start = time.perf_counter()
        yield
        self.seconds += time.perf_counter() - start
        self.tokens += tokens

    def reading(self) -> float:
        rate = self.tokens / max(1e-9, self.seconds)
        self.tokens, self.seconds = 0, 0.0
        return rate


class _Metrics:
    """metrics.jsonl (rank 0), each record also handed to the listeners."""

    def __init__(self, path: Path, enabled: bool, listeners=()):
        self.path, self.enabled, self.listeners = path, enabled, list(listeners)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for listener in self.listeners:
            listener(record)

    def close(self) -> None:
        """Ends the listeners' displays (a progress bar) however the run ended."""
        for listener in self.listeners:
            getattr(listener, "close", lambda: None)()


def read_metrics(path: str | Path) -> list[dict]:
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a kill
    return out


def plot_loss_curve(
    metrics_path: str | Path, out_png: str | Path, title: str = "training loss"
) -> Path:
    """Train loss (light, and a running mean) and validation loss against tokens seen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    # A resumed run repeats steps after its checkpoint: keep the last record per step.
    train = {r["step"]: r for r in rows if r.get("event") == "train"}
    evals = {r["step"]: r for r in rows if r.get("event") == "eval"}
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    if train:
        steps = sorted(train)
        tok = np.array([train[s]["tokens"] for s in steps]) / 1e6
        loss = np.array([train[s]["loss"] for s in steps])
        ax.plot(tok, loss, color="tab:blue", alpha=0.25, lw=0.8)
        k = max(1, len(loss) // 30)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(tok[k - 1 :], smooth, color="tab:blue", label="train")
    if evals:
        steps = sorted(evals)
        ax.plot(
            [evals[s]["tokens"] / 1e6 for s in steps],
            [evals[s]["val_loss"] for s in steps],
            "o-",
            color="tab:red",
            ms=3,
            label="validation",
        )
    ax.set_xlabel("tokens seen (millions)")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png
