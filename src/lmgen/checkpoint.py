"""Model directories: config.json + model.safetensors (or shards) + tokenizer.json, in each
family's Hugging Face names and layouts (model/families.py), so `transformers` loads ours and
we load theirs; and `.gguf` files (model/gguf.py)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import ModelLoadError
from .json_files import first_line, read_json_file, show
from .model import GPT, GPTConfig, families
from .model_files import (  # noqa: F401  (re-exported: where they were)
    BUNDLED_DIR,
    DEFAULT_MODEL,
    bundled_models,
    download_from_hub,
    read_tokenizer,
    resolve_model,
)
from .settings import HF_GENERATION_DEFAULTS

log = logging.getLogger(__name__)


def config_to_hf(config: GPTConfig, dtype: torch.dtype = torch.float32) -> dict:
    """config.json for `config`, as transformers writes it for the model's family."""
    return families.config_to_hf(config, dtype)


# --- reading a model directory ---------------------------------------------------------------
# Every value read from a file is checked for type and range (model/families.py), and the
# weights file's header is checked against config.json before anything is allocated: a corrupt
# or hostile directory ends in one ModelLoadError naming the file and the field, never a
# traceback.

FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


def config_from_hf(d: dict, source: str = "config.json") -> GPTConfig:
    """A GPTConfig from any supported family's config.json (families.config_from_hf)."""
    return families.config_from_hf(d, source)


def hf_tensor_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """The tensors a checkpoint of `config`'s family holds: their names and layouts."""
    return families.expected_shapes(families.family_of(config), config)


def state_dict_to_hf(model: GPT, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The model's tensors under its family's checkpoint names and layouts."""
    state = {k: v.detach() for k, v in model.state_dict().items()}
    out = families.to_theirs(families.family_of(model.config), model.config, state)
    return {k: t.to(dtype or t.dtype).contiguous() for k, t in out.items()}


def state_dict_from_hf(tensors: dict[str, torch.Tensor], config: GPTConfig, source="weights"):
    """Checkpoint-named tensors -> our state dict, naming any missing, extra or mis-shaped
    tensor."""
    return families.to_ours(families.family_of(config), config, tensors, source)


def empty_model(config: GPTConfig) -> GPT:
    """A GPT of `config` whose every tensor is about to be overwritten: built on the meta
    device and given uninitialised memory (no random init of weights that load_weights
    replaces: 8 s of the 17 s a 135M model took to load), the head tied again where it is."""
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device="cpu")
    if config.tie_word_embeddings:  # to_empty gives the two names two tensors
        model.lm_head.weight = model.wte.weight
    return model


def load_weights(model: GPT, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copies checkpoint-named tensors into `model`, naming any missing, extra or mis-shaped
    tensor."""
    ours = state_dict_from_hf(tensors, model.config, source)
    with torch.no_grad():
        for name, param in model.state_dict(keep_vars=True).items():
            if name in ours:
                param.copy_(ours[name].to(param.dtype))


_TORCH_DTYPES = {
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.float64: "F64",
}


class WeightsFile:
    """model.safetensors, the shards a model.safetensors.index.json lists, or a legacy
    pytorch_model.bin: the headers' names, shapes and dtypes first, from which the config is
    checked, then the tensors."""

    def __init__(self, directory: Path):
        self.path = directory / "model.safetensors"
        self._loaded = None
        self.files: dict[str, Path] = {}  # tensor name -> its file
        self.header: dict[str, tuple] = {}
        index = directory / "model.safetensors.index.json"
        if self.path.is_file():
            self._read_header(self.path)
            return
        if index.is_file():
            self.path = index
            for shard in _shards(index, directory):
                self._read_header(shard)
            return
        self.path = directory / "pytorch_model.bin"
        if not self.path.is_file():
            raise ModelLoadError(
                f"{directory}: no weights found (expected model.safetensors or pytorch_model.bin, "
                "or model.safetensors.index.json with its shards)"
            )
        self._loaded = _load_bin(self.path)  # memory-mapped where the format allows
        self.header = {
            k: (tuple(t.shape), _TORCH_DTYPES.get(t.dtype, str(t.dtype).removeprefix("torch.")))
            for k, t in self._loaded.items()
        }

    def _read_header(self, path: Path) -> None:
        try:
            with safe_open(str(path), framework="pt") as f:
                for k in f.keys():
                    sl = f.get_slice(k)
                    self.header[k] = (tuple(sl.get_shape()), sl.get_dtype())
                    self.files[k] = path
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise _unreadable(path, e) from e

    def check(self, config: GPTConfig) -> None:
        """Names, shapes and dtypes against `config`, from the headers alone: a config that
        claims more than the file holds is refused before anything that size is allocated."""
        src = str(self.path)
        family = families.family_of(config)
        own = families.own_tensors(family, self.header)
        names = {families.strip_alias(family, n): n for n in own}
        prefix = re.escape(family.layers)
        layers = {int(m.group(1)) for n in names if (m := re.match(prefix + r"(\d+)\.", n))}
        held = max(layers) + 1 if layers else 0
        if held != config.n_layer:
            raise ModelLoadError(
                f"{src}: config.json says n_layer={config.n_layer}, but the file holds "
                f"{held} layer{'' if held == 1 else 's'}"
            )
        expected = families.expected_shapes(family, config)
        found = {n for n in names if not n.endswith(family.ignored)}
        if config.tie_word_embeddings:
            found.discard(family.top["lm_head"] + ".weight")
        families.check_names(set(expected), found, src)
        for name, want in expected.items():
            shape, dtype = self.header[names[name]]
            if shape != want:
                raise ModelLoadError(
                    f"{src}: tensor {name} has shape {shape}, but config.json implies {want}"
                )
            if dtype not in FLOAT_DTYPES:
                raise ModelLoadError(
                    f"{src}: tensor {name} has dtype {dtype}; expected one of {FLOAT_DTYPES}"
                )

    def tensors(self) -> dict[str, torch.Tensor]:
        if self._loaded is not None:
            return self._loaded
        out = {}
        for path in dict.fromkeys(self.files.values()):
            try:
                with safe_open(str(path), framework="pt") as f:
                    out.update({k: f.get_tensor(k) for k in f.keys()})
            except (SafetensorError, OSError, ValueError, RuntimeError) as e:
                raise _unreadable(path, e) from e
        return out


def _unreadable(path: Path, e: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"{path}: not a readable safetensors file (truncated or corrupted?): {first_line(e)}"
    )


def _shards(index: Path, directory: Path) -> list[Path]:
    """The shard files model.safetensors.index.json names (each inside `directory`)."""
    d = read_json_file(index, 64 << 20)
    weight_map = d.get("weight_map") if isinstance(d, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelLoadError(f"{index}: expected an object with a non-empty 'weight_map'")
    shards = []
    for name in dict.fromkeys(weight_map.values()):
        if not isinstance(name, str) or Path(name).name != name or name in (".", ".."):
            raise ModelLoadError(f"{index}: shard names must be file names, got {show(name)}")
        path = directory / name
        if not path.is_file():
            raise ModelLoadError(f"{index}: shard {name} is missing")
        shards.append(path)
    return shards


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
            raise ModelLoadError(f"{source}: tensor {name} holds NaN or infinite values")


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
    model = empty_model(config)
    load_weights(model, tensors, str(directory))
    model.eval()
    return config, model, tokenizer


def read_gguf_model(path: str | Path, keep: tuple[str, ...] = ()):
    """(GPTConfig, GPT in eval mode, tokenizer, GGUFModel) from a .gguf file: its metadata read
    and checked first (model/gguf.py), then the tensors dequantized to float, except the
    linear layers' weights of the block types in `keep` (lmgen.ggml_blocks.KEPT), which become
    QuantLinear layers holding the file's bytes (`load_blocks`)."""
    from .model.gguf import read_gguf
    from .tokenizers import check_token_ids

    path = Path(path)
    checked = {}

    def check(hf_config: dict, tokenizer) -> None:  # before anything is dequantized
        checked["config"] = config_from_hf(hf_config, str(path))
        check_token_ids(tokenizer, checked["config"].vocab_size, str(path))

    contents = read_gguf(path, check=check, keep=keep)
    config = checked["config"]
    model = empty_model(config)
    load_blocks(model, contents.tensors, str(path))  # names and shapes checked there
    model.eval()
    return config, model, contents.tokenizer, contents


def load_blocks(model: GPT, tensors: dict, source: str) -> None:
    """`load_weights` for tensors of which some are QuantTensors (ggml blocks): every linear
    layer whose weight holds one becomes a QuantLinear of those blocks (its parts in the order
    our fused weight stacks them), float tensors are copied in as usual. A quantized token
    embedding is dequantized into `wte` (a step reads one row of it) and its blocks kept as
    `model.ggml_embedding` (a tied head multiplies by them; export writes them back)."""
    from .ggml_blocks import QuantTensor
    from .quantize import QuantLinear

    quant = {k for k, v in tensors.items() if isinstance(v, QuantTensor)}
    family = families.family_of(model.config)
    if not quant or family.transposed or family.per_head_qkv:  # (read_gguf keeps none there)
        tensors = {k: v.dequantize() if k in quant else v for k, v in tensors.items()}
        load_weights(model, tensors, source)
        return
    shapes = {k: torch.empty(v.shape, device="meta") for k, v in tensors.items()}
    state_dict_from_hf(shapes, model.config, source)  # names and shapes checked, on meta
    params = model.state_dict(keep_vars=True)
    canonical = {families.strip_alias(family, k): v for k, v in tensors.items()}
    groups = {
        name: [canonical[t] for t, _ in theirs]
        for name, theirs in families.tensor_map(family, model.config).items()
    }
    blocked = [n for n, parts in groups.items() if any(isinstance(p, QuantTensor) for p in parts)]
    with torch.no_grad():
        for name, parts in groups.items():  # floats first: the biases the layers keep
            if name not in blocked:
                params[name].copy_(torch.cat(parts) if len(parts) > 1 else parts[0])
        for name in blocked:
            parts = groups[name]
            if name == "wte.weight":
                (embedding,) = parts
                params[name].copy_(embedding.dequantize())
                model.ggml_embedding = embedding
                if model.config.tie_word_embeddings:
                    model.lm_head = QuantLinear([embedding], None)
            else:
                module_name = name.removesuffix(".weight")
                module = model.get_submodule(module_name)
                bias = module.bias.detach() if module.bias is not None else None
                model.set_submodule(module_name, QuantLinear(_merged(parts), bias))
    model.reset_plan()


def _merged(parts: list) -> list:
    """Adjacent parts of one block type as one (their rows stacked): one kernel call."""
    from .ggml_blocks import QuantTensor

    out = []
    for p in parts:
        last = out[-1] if out else None
        if isinstance(p, QuantTensor) and isinstance(last, QuantTensor) and last.kind == p.kind:
            out[-1] = QuantTensor(p.kind, torch.cat([last.blocks, p.blocks]), p.in_features)
        else:
            out.append(p if isinstance(p, QuantTensor) else p.float())
    return out


def read_generation_config(directory: Path, vocab_size: int) -> dict:
    """generation_config.json, checked: `eos_token_id` as a list of ids in the vocabulary, and
    the sampling defaults lmgen honours (`do_sample` and settings.HF_GENERATION_DEFAULTS), as
    transformers takes them for `generate()`. Missing file: {}."""
    path = directory / "generation_config.json"
    if not path.is_file():
        return {}
    d = read_json_file(path, 1 << 20)
    if not isinstance(d, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    f = families.Fields(d, str(path))
    out = {}
    eos = d.get("eos_token_id")
    ids = eos if isinstance(eos, list) else [] if eos is None else [eos]
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int):
            raise ModelLoadError(
                f"{path}: eos_token_id must be an integer or a list of them, got {show(eos)}"
            )
    # as in config.json (families._token_ids): an id the vocabulary lacks could never be
    # generated; transformers' GPT-2 defaults carry 50256 whatever the vocabulary
    out["eos_token_id"] = [i for i in ids if 0 <= i < vocab_size]
    if len(out["eos_token_id"]) < len(ids):
        log.warning("%s: eos_token_id %s is outside the vocabulary (%d); ignored", path,
                    show(eos), vocab_size)  # fmt: skip
    out["do_sample"] = f.boolean("do_sample", False)
    for key in HF_GENERATION_DEFAULTS:
        if d.get(key) is not None:
            out[key] = f.number(key, None, 0, 1e9)
            if key == "top_k":
                out[key] = int(out[key])
    return out


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
