"""Model directories: config.json + model.safetensors + tokenizer.json, in Hugging Face
GPT-2's names and layouts, so `transformers` loads ours and we load theirs."""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import ConfigError, ModelLoadError
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


def config_from_hf(d: dict, source: str = "config.json") -> GPTConfig:
    if not isinstance(d, dict):
        raise ModelLoadError(f"{source}: expected a JSON object, found {type(d).__name__}")
    if d.get("model_type") != "gpt2":
        raise ModelLoadError(
            f"{source}: model_type is {d.get('model_type')!r}; lmgen loads GPT-2 models "
            "(model_type 'gpt2')"
        )
    for key in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if d.get(key):
            raise ModelLoadError(f"{source}: {key}=true is not supported")
    if d.get("scale_attn_weights") is False:
        raise ModelLoadError(f"{source}: scale_attn_weights=false is not supported")
    try:
        return GPTConfig(
            vocab_size=d["vocab_size"],
            n_positions=d.get("n_positions", d.get("n_ctx", 1024)),
            n_embd=d["n_embd"],
            n_layer=d["n_layer"],
            n_head=d["n_head"],
            n_inner=d.get("n_inner"),
            layer_norm_epsilon=d.get("layer_norm_epsilon", 1e-5),
            activation_function=d.get("activation_function", "gelu_new"),
            tie_word_embeddings=d.get("tie_word_embeddings", True),
            dropout=d.get("resid_pdrop", 0.1),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
        )
    except KeyError as e:
        raise ModelLoadError(f"{source}: missing key {e.args[0]!r}") from e
    except ConfigError as e:
        raise ModelLoadError(f"{source}: {e}") from e


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
    missing = sorted(set(expected) - set(ours))
    extra = sorted(set(ours) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing tensors {_hf_names(missing[:5])}")
        if extra:
            parts.append(f"unexpected tensors {_hf_names(extra[:5])}")
        raise ModelLoadError(f"{source}: {'; '.join(parts)} for the config in config.json")
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


def _hf_names(names: list[str]) -> list[str]:
    return [n if n == "lm_head.weight" else "transformer." + n for n in names]


def read_tensors(directory: Path) -> dict[str, torch.Tensor]:
    st = directory / "model.safetensors"
    if st.is_file():
        try:
            with safe_open(str(st), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise ModelLoadError(
                f"{st}: not a readable safetensors file (truncated or corrupted?): {e}"
            ) from e
    pt = directory / "pytorch_model.bin"
    if pt.is_file():
        try:
            return torch.load(pt, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ModelLoadError(
                f"{pt}: could not be read as a plain tensor file (weights_only=True refuses "
                f"pickled code): {e}"
            ) from e
    raise ModelLoadError(
        f"{directory}: no weights found (expected model.safetensors or pytorch_model.bin)"
    )


def read_model_dir(directory: str | Path):
    """(GPTConfig, GPT in eval mode with fp32 weights, tokenizer) from a model directory."""
    from .tokenizers import load_tokenizer

    directory = Path(directory)
    if not directory.is_dir():
        raise ModelLoadError(f"{directory}: no such model directory")
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise ModelLoadError(f"{directory}: config.json is missing")
    try:
        raw = json.loads(cfg_path.read_text())
    except ValueError as e:
        raise ModelLoadError(f"{cfg_path}: invalid JSON ({e})") from e
    config = config_from_hf(raw, str(cfg_path))
    tokenizer = load_tokenizer(directory)
    if tokenizer.vocab_size > config.vocab_size:
        raise ModelLoadError(
            f"{directory}: the tokenizer has {tokenizer.vocab_size} tokens but the model's "
            f"vocab_size is {config.vocab_size}"
        )
    tensors = read_tensors(directory)
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


def bundled_models() -> list[str]:
    if not BUNDLED_DIR.is_dir():
        return []
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / "config.json").is_file())


def resolve_model(name_or_dir: str | os.PathLike | None) -> Path:
    """A directory path, a bundled model's name, or `hf:owner/name` (downloaded and cached)."""
    name = str(name_or_dir) if name_or_dir is not None else DEFAULT_MODEL
    if name.startswith("hf:"):
        return download_from_hub(name[3:])
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if os.sep in name or (os.altsep and os.altsep in name):  # a path, not a bundled name
        raise ModelLoadError(f"{path}: no such model directory")
    if name in bundled_models():
        return BUNDLED_DIR / name
    known = ", ".join(bundled_models()) or "none installed"
    raise ModelLoadError(
        f"{name!r} is neither a model directory nor a bundled model (bundled: {known}); "
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
            f"hf:{repo_id}: could not download or find it in the cache ({e})"
        ) from e
    log.info("hf:%s -> %s", repo_id, path)
    return Path(path)
