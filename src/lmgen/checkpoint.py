"""Model directories: config.json + model.safetensors + tokenizer.json, in Hugging Face
GPT-2's names and layouts, so `transformers` loads ours and we load theirs."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import uuid
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import ConfigError, ModelLoadError
from .json_files import check_torch_dtype, clip, first_line, json_type, read_json_file, show
from .model import GPT, GPTConfig

log = logging.getLogger(__name__)

BUNDLED_DIR = Path(__file__).parent / "models"
DEFAULT_MODEL = "shakespeare"
# Hugging Face GPT-2 stores these as Conv1D, weight (in, out): the transpose of nn.Linear's.
CONV1D_SUFFIXES = (
    "attn.c_attn.weight",
    "attn.c_proj.weight",
    "mlp.c_fc.weight",
    "mlp.c_proj.weight",
)
HF_ONLY_BUFFERS = (".attn.bias", ".attn.masked_bias")


def config_to_hf(config: GPTConfig, dtype: torch.dtype = torch.float32) -> dict:
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": config.vocab_size,
        "n_positions": config.n_positions,
        "n_ctx": config.n_positions,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": config.n_inner,
        "activation_function": config.activation_function,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": config.tie_word_embeddings,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "torch_dtype": str(dtype).removeprefix("torch."),
        **config.extra,
    }


# --- reading a model directory ---------------------------------------------------------------
# Every value read from a file is checked for type and range here, and the weights file's
# header is checked against config.json before anything is allocated: a corrupt or hostile
# directory ends in one ModelLoadError naming the file and the field, never a traceback.

MAX_DIM = 2**31 - 1  # any size in config.json; real GPT-2s are far below
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
_REQUIRED = object()


class _Fields:
    """Typed, range-checked reads from one JSON object; errors name the file and the key."""

    def __init__(self, d: dict, source: str):
        self.d, self.source = d, source

    def _fail(self, message: str):
        raise ModelLoadError(f"{self.source}: {message}")

    def integer(self, key, default=_REQUIRED, lo=1, hi=MAX_DIM, nullable=False):
        if key not in self.d:
            if default is _REQUIRED:
                self._fail(f"missing key {key!r}")
            return default
        v = self.d[key]
        if v is None and nullable:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            self._fail(f"{key} must be an integer{' or null' if nullable else ''}, got {show(v)}")
        if not lo <= v <= hi:
            self._fail(f"{key} must be in [{lo}, {hi}], got {show(v)}")
        return v

    def number(self, key, default, lo, hi, lo_open=False, hi_open=False):
        v = self.d.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self._fail(f"{key} must be a number, got {show(v)}")
        v = float(v)
        inside = math.isfinite(v) and (lo < v if lo_open else lo <= v)
        inside = inside and (v < hi if hi_open else v <= hi)
        if not inside:
            interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
            self._fail(f"{key} must be in {interval}, got {show(v)}")
        return v

    def boolean(self, key, default):
        v = self.d.get(key, default)
        if not isinstance(v, bool):
            self._fail(f"{key} must be true or false, got {show(v)}")
        return v

    def string(self, key, default):
        v = self.d.get(key, default)
        if not isinstance(v, str):
            self._fail(f"{key} must be a string, got {show(v)}")
        return v


def config_from_hf(d: dict, source: str = "config.json") -> GPTConfig:
    if not isinstance(d, dict):
        raise ModelLoadError(f"{source}: expected a JSON object, found {json_type(d)}")
    if d.get("model_type") != "gpt2":
        raise ModelLoadError(
            f"{source}: model_type is {show(d.get('model_type'))}; lmgen loads GPT-2 models "
            "(model_type 'gpt2')"
        )
    check_torch_dtype(d, source)
    f = _Fields(d, source)
    for key in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if f.boolean(key, False):
            raise ModelLoadError(f"{source}: {key}=true is not supported")
    if not f.boolean("scale_attn_weights", True):
        raise ModelLoadError(f"{source}: scale_attn_weights=false is not supported")
    vocab_size = f.integer("vocab_size")
    n_ctx = f.integer("n_ctx", None, nullable=True)
    for key in ("embd_pdrop", "attn_pdrop"):  # not used here, but they must make sense
        f.number(key, 0.1, 0, 1, hi_open=True)
    token_ids = {}
    for key in ("bos_token_id", "eos_token_id"):
        # transformers' GPT2Config defaults both to 50256 whatever the vocabulary, so small
        # models often carry an id they do not have: it is dropped (it could never be
        # generated), not refused. A value that is not an integer is refused.
        value = f.integer(key, None, lo=-math.inf, hi=math.inf, nullable=True)
        if value is not None and not 0 <= value < vocab_size:
            log.warning(
                "%s: %s=%s is outside the vocabulary (vocab_size %d); ignored",
                source,
                key,
                show(value),
                vocab_size,
            )
            value = None
        token_ids[key] = value
    try:
        return GPTConfig(
            vocab_size=vocab_size,
            n_positions=f.integer("n_positions", n_ctx if n_ctx is not None else 1024),
            n_embd=f.integer("n_embd"),
            n_layer=f.integer("n_layer"),
            n_head=f.integer("n_head"),
            n_inner=f.integer("n_inner", None, nullable=True),
            layer_norm_epsilon=f.number("layer_norm_epsilon", 1e-5, 0, 1, lo_open=True),
            activation_function=f.string("activation_function", "gelu_new"),
            tie_word_embeddings=f.boolean("tie_word_embeddings", True),
            dropout=f.number("resid_pdrop", 0.1, 0, 1, hi_open=True),
            **token_ids,
        )
    except ConfigError as e:
        raise ModelLoadError(f"{source}: {e}") from e


def hf_tensor_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """The tensors a GPT-2 weights file holds for `config`: transformers' names (without the
    `transformer.` prefix) and layouts (Conv1D weights are (in, out)), in file order."""
    E, V, P, inner = config.n_embd, config.vocab_size, config.n_positions, config.inner_dim
    shapes = {"wte.weight": (V, E), "wpe.weight": (P, E)}
    layer = {
        "ln_1.weight": (E,),
        "ln_1.bias": (E,),
        "attn.c_attn.weight": (E, 3 * E),
        "attn.c_attn.bias": (3 * E,),
        "attn.c_proj.weight": (E, E),
        "attn.c_proj.bias": (E,),
        "ln_2.weight": (E,),
        "ln_2.bias": (E,),
        "mlp.c_fc.weight": (E, inner),
        "mlp.c_fc.bias": (inner,),
        "mlp.c_proj.weight": (inner, E),
        "mlp.c_proj.bias": (E,),
    }
    for i in range(config.n_layer):
        shapes.update({f"h.{i}.{name}": shape for name, shape in layer.items()})
    shapes.update({"ln_f.weight": (E,), "ln_f.bias": (E,)})
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, E)
    return shapes


def state_dict_to_hf(model: GPT, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight":
            if model.config.tie_word_embeddings:
                continue  # transformers re-ties it from transformer.wte.weight
            hf_name = name
        else:
            hf_name = "transformer." + name
        if name.endswith(CONV1D_SUFFIXES):
            t = t.t()
        t = t.detach().to(dtype or t.dtype).contiguous()
        out[hf_name] = t
    return out


def state_dict_from_hf(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in tensors.items():
        if name.endswith(HF_ONLY_BUFFERS):
            continue
        ours = name.removeprefix("transformer.")
        if ours.endswith(CONV1D_SUFFIXES):
            t = t.t()
        out[ours] = t
    return out


def load_weights(model: GPT, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copies HF-named tensors into `model`, naming any missing, extra or mis-shaped tensor."""
    ours = state_dict_from_hf(tensors)
    expected = model.state_dict()
    if model.config.tie_word_embeddings:
        expected.pop("lm_head.weight")
        ours.pop("lm_head.weight", None)
    _check_names(set(expected), set(ours), source)
    for name, t in ours.items():
        want = expected[name].shape
        if t.shape != want:
            hf = _hf_names([name])[0]
            got = tuple(t.t().shape if name.endswith(CONV1D_SUFFIXES) else t.shape)
            exp = tuple(want[::-1] if name.endswith(CONV1D_SUFFIXES) else want)
            raise ModelLoadError(
                f"{source}: tensor {hf} has shape {got}, but config.json implies {exp}"
            )
    with torch.no_grad():
        for name, param in model.state_dict(keep_vars=True).items():
            if name in ours:
                param.copy_(ours[name].to(param.dtype))


def _check_names(expected: set[str], found: set[str], source: str) -> None:
    missing, extra = sorted(expected - found), sorted(found - expected)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing tensors {_hf_names(missing[:5])}")
        if extra:
            parts.append(f"unexpected tensors {_hf_names(extra[:5])}")
        raise ModelLoadError(f"{source}: {'; '.join(parts)} for the config in config.json")


def _hf_names(names: list[str]) -> list[str]:
    return [n if n == "lm_head.weight" else "transformer." + n for n in names]


_TORCH_DTYPES = {
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.float64: "F64",
}


class WeightsFile:
    """model.safetensors (or a legacy pytorch_model.bin): the header's names, shapes and dtypes
    first, from which the config is checked, then the tensors."""

    def __init__(self, directory: Path):
        self.path = directory / "model.safetensors"
        self._loaded = None
        if self.path.is_file():
            try:
                with safe_open(str(self.path), framework="pt") as f:
                    self.header = {}
                    for k in f.keys():
                        s = f.get_slice(k)
                        self.header[k] = (tuple(s.get_shape()), s.get_dtype())
            except (SafetensorError, OSError, ValueError, RuntimeError) as e:
                raise self._unreadable(e) from e
            return
        self.path = directory / "pytorch_model.bin"
        if not self.path.is_file():
            raise ModelLoadError(
                f"{directory}: no weights found (expected model.safetensors or pytorch_model.bin)"
            )
        self._loaded = _load_bin(self.path)  # memory-mapped where the format allows
        self.header = {
            k: (tuple(t.shape), _TORCH_DTYPES.get(t.dtype, str(t.dtype).removeprefix("torch.")))
            for k, t in self._loaded.items()
        }

    def _unreadable(self, e: Exception) -> ModelLoadError:
        return ModelLoadError(
            f"{self.path}: not a readable safetensors file (truncated or corrupted?): "
            f"{first_line(e)}"
        )

    def check(self, config: GPTConfig) -> None:
        """Names, shapes and dtypes against `config`, from the header alone: a config that
        claims more than the file holds is refused before anything that size is allocated."""
        src = str(self.path)
        found = {}
        for name, (shape, dtype) in self.header.items():
            if name.endswith(HF_ONLY_BUFFERS):
                continue
            name = name.removeprefix("transformer.")
            if name == "lm_head.weight" and config.tie_word_embeddings:
                continue  # some files store the tied head too; it is the embedding
            found[name] = (shape, dtype)
        layers = {int(m.group(1)) for n in found if (m := re.match(r"h\.(\d+)\.", n))}
        held = max(layers) + 1 if layers else 0
        if held != config.n_layer:
            raise ModelLoadError(
                f"{src}: config.json says n_layer={config.n_layer}, but the file holds "
                f"{held} layer{'' if held == 1 else 's'}"
            )
        expected = hf_tensor_shapes(config)
        _check_names(set(expected), set(found), src)
        for name, want in expected.items():
            shape, dtype = found[name]
            hf = _hf_names([name])[0]
            if shape != want:
                raise ModelLoadError(
                    f"{src}: tensor {hf} has shape {shape}, but config.json implies {want}"
                )
            if dtype not in FLOAT_DTYPES:
                raise ModelLoadError(
                    f"{src}: tensor {hf} has dtype {dtype}; expected one of {FLOAT_DTYPES}"
                )

    def tensors(self) -> dict[str, torch.Tensor]:
        if self._loaded is not None:
            return self._loaded
        try:
            with safe_open(str(self.path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise self._unreadable(e) from e


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            loaded = torch.load(path, map_location="cpu", weights_only=True)  # legacy format
    except Exception as e:
        raise ModelLoadError(
            f"{path}: could not be read as a plain tensor file (weights_only=True refuses "
            f"pickled code): {first_line(e)}"
        ) from e
    if not isinstance(loaded, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise ModelLoadError(f"{path}: expected a dict of tensors, found {type(loaded).__name__}")
    return loaded


def read_tensors(directory: Path) -> dict[str, torch.Tensor]:
    return WeightsFile(directory).tensors()


def _check_finite(tensors: dict[str, torch.Tensor], source: Path) -> None:
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            hf = _hf_names([name.removeprefix("transformer.")])[0]
            raise ModelLoadError(f"{source}: tensor {hf} holds NaN or infinite values")


def read_model_dir(directory: str | Path):
    """(GPTConfig, GPT in eval mode with fp32 weights, tokenizer) from a model directory.

    Checked in this order, each before anything larger is read or allocated: config.json's
    fields, the tokenizer files, the tokenizer's ids against vocab_size, the weights header
    against the config; then the tensors are read, checked finite, and copied in."""
    from .tokenizers import check_token_ids, load_tokenizer

    directory = Path(directory)
    if not directory.is_dir():
        raise ModelLoadError(f"{directory}: no such model directory")
    cfg_path = directory / "config.json"
    if not (cfg_path.exists() or cfg_path.is_symlink()):  # a directory, a loop: read_json_file
        raise ModelLoadError(f"{directory}: config.json is missing")
    config = config_from_hf(read_json_file(cfg_path), str(cfg_path))
    tokenizer = load_tokenizer(directory)
    check_token_ids(tokenizer, config.vocab_size, str(directory))
    weights = WeightsFile(directory)
    weights.check(config)
    tensors = weights.tensors()
    _check_finite(tensors, weights.path)
    model = GPT(config)
    load_weights(model, tensors, str(directory))
    model.eval()
    return config, model, tokenizer


def write_model_dir(
    model: GPT,
    tokenizer,
    directory: str | Path,
    dtype: torch.dtype | None = None,
    extra_files: dict | None = None,
) -> Path:
    """Writes a model directory atomically: built in a temporary sibling, then renamed in."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: its 0o700 would make the saved model private; mkdir honours umask.
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    old = None
    try:
        dtype = dtype or model.wte.weight.dtype
        (tmp / "config.json").write_text(
            json.dumps(config_to_hf(model.config, dtype), indent=2) + "\n"
        )
        save_file(
            state_dict_to_hf(model, dtype),
            str(tmp / "model.safetensors"),
            metadata={"format": "pt"},
        )
        tokenizer.save(tmp)
        gen = {"bos_token_id": model.config.bos_token_id, "eos_token_id": model.config.eos_token_id}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        for f in tmp.iterdir():
            f.chmod(0o644)  # safetensors writes owner-only files; a model is for sharing
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            os.replace(directory, old)
        os.replace(tmp, directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        if old is not None and old.exists() and not directory.exists():
            os.replace(old, directory)  # the swap failed halfway: put the previous one back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def recover_model_dir(directory: str | Path) -> list[str]:
    """Tidies what an interrupted `write_model_dir(directory)` can leave beside it: a
    `.NAME.tmp-*` build (removed) and, from a kill between its two renames, the previous
    `.NAME.old-*` (renamed back when `directory` is missing, else removed). Returns what it
    did, one line each; only the process that writes `directory` may call it."""
    directory = Path(directory)
    done = []
    if not directory.parent.is_dir():
        return done
    for p in sorted(directory.parent.glob(f".{directory.name}.old-*")):
        if not directory.exists():
            os.replace(p, directory)
            done.append(f"restored {directory} from {p.name}")
        else:
            shutil.rmtree(p, ignore_errors=True)
            done.append(f"removed {p}")
    for p in sorted(directory.parent.glob(f".{directory.name}.tmp-*")):
        shutil.rmtree(p, ignore_errors=True)
        done.append(f"removed {p}")
    return done


def bundled_models() -> list[str]:
    if not BUNDLED_DIR.is_dir():
        return []
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / "config.json").is_file())


def resolve_model(name_or_dir: str | os.PathLike | None) -> Path:
    """A directory path, a bundled model's name, or `hf:owner/name` (downloaded and cached)."""
    name = str(name_or_dir) if name_or_dir is not None else DEFAULT_MODEL
    if name.startswith("hf:"):
        return download_from_hub(name[3:])
    try:
        path = Path(name).expanduser()
        if path.is_dir():
            return path
    except (OSError, RuntimeError, ValueError) as e:  # a name too long, ~nosuchuser, a NUL
        reason = getattr(e, "strerror", None) or first_line(e)
        raise ModelLoadError(f"{clip(repr(name))}: not a usable model path ({reason})") from e
    if os.sep in name or (os.altsep and os.altsep in name):  # a path, not a bundled name
        raise ModelLoadError(f"{clip(str(path))}: no such model directory")
    if name in bundled_models():
        return BUNDLED_DIR / name
    known = ", ".join(bundled_models()) or "none installed"
    raise ModelLoadError(
        f"{clip(repr(name))} is neither a model directory nor a bundled model (bundled: {known}); "
        "use a directory with config.json, model.safetensors and tokenizer.json, or hf:NAME"
    )


HUB_FILES = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
]


def download_from_hub(repo_id: str, revision: str | None = None) -> Path:
    """Fetches a GPT-2 model from the Hugging Face Hub (or its local cache when offline)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - huggingface_hub is a dependency
        raise ModelLoadError("hf: models need the huggingface_hub package") from e
    if not repo_id:
        raise ModelLoadError("hf: needs a repository name, e.g. hf:gpt2")
    try:
        path = snapshot_download(repo_id, revision=revision, allow_patterns=HUB_FILES)
    except Exception as e:
        raise ModelLoadError(
            f"hf:{repo_id}: could not download or find it in the cache ({first_line(e)})"
        ) from e
    log.info("hf:%s -> %s", repo_id, path)
    return Path(path)
