"""Model families as data: how a Hugging Face config.json becomes a GPTConfig and back, and
how checkpoint tensor names map to ours. Adding a family means a reader, a writer and a name
map here (and a parity test against transformers), never a new network.

Our tensor names are GPT-2's (`h.{i}.attn.c_attn.weight`, ...). A family's name map sends each
of our modules to one or more of its own: `attn.c_attn` is Llama's q_proj, k_proj and v_proj
stacked along the output dimension, `mlp.c_fc` its gate_proj and up_proj. GPT-2 stores its
projections transposed (Conv1D); GPT-NeoX interleaves q, k and v per head.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import ConfigError, ModelLoadError
from ..json_files import check_torch_dtype, json_type, show
from .config import ACTIVATIONS, LAYER_TYPES, ROPE_TYPES, GPTConfig

log = logging.getLogger(__name__)

MAX_DIM = 2**31 - 1
_REQUIRED = object()


class Fields:
    """Typed, range-checked reads from one JSON object; errors name the file and the key."""

    def __init__(self, d: dict, source: str):
        self.d, self.source = d, source

    def fail(self, message: str):
        raise ModelLoadError(f"{self.source}: {message}")

    def integer(self, key, default=_REQUIRED, lo=1, hi=MAX_DIM, nullable=False):
        if key not in self.d:
            if default is _REQUIRED:
                self.fail(f"missing key {key!r}")
            return default
        v = self.d[key]
        if v is None and nullable:
            return default if default is not _REQUIRED else None
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(f"{key} must be an integer{' or null' if nullable else ''}, got {show(v)}")
        if not lo <= v <= hi:
            self.fail(f"{key} must be in [{lo}, {hi}], got {show(v)}")
        return v

    def number(self, key, default, lo, hi, lo_open=False, hi_open=False, nullable=False):
        v = self.d.get(key, default)
        if v is None and nullable:
            return None
        return check_number(v, key, lo, hi, lo_open, hi_open, self.source)

    def boolean(self, key, default):
        v = self.d.get(key, default)
        if not isinstance(v, bool):
            self.fail(f"{key} must be true or false, got {show(v)}")
        return v

    def string(self, key, default):
        v = self.d.get(key, default)
        if not isinstance(v, str):
            self.fail(f"{key} must be a string, got {show(v)}")
        return v


def check_number(v, key, lo, hi, lo_open=False, hi_open=False, source="config.json") -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ModelLoadError(f"{source}: {key} must be a number, got {show(v)}")
    v = float(v)
    inside = math.isfinite(v) and (lo < v if lo_open else lo <= v)
    inside = inside and (v < hi if hi_open else v <= hi)
    if not inside:
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ModelLoadError(f"{source}: {key} must be in {interval}, got {show(v)}")
    return v


# --- name maps ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    model_types: tuple[str, ...]
    architecture: str  # config.json's "architectures" when we write one
    top: dict[str, str]  # our module -> its full name (embeddings, final norm, head)
    layers: str  # the blocks' prefix, e.g. "model.layers."
    layer: dict[str, tuple[str, ...]]  # our module in a block -> its module(s), stacked on dim 0
    read: Callable[[Fields], dict]  # config.json -> GPTConfig fields
    write: Callable[[GPTConfig], dict]  # GPTConfig -> config.json
    transposed: tuple[str, ...] = ()  # our modules stored (in, out): GPT-2's Conv1D
    per_head_qkv: bool = False  # q, k, v interleaved per head (GPT-NeoX)
    ignored: tuple[str, ...] = ()  # buffers some checkpoints carry (causal masks, inv_freq)
    aliases: dict[str, str] = field(default_factory=dict)  # other prefixes for the same names
    foreign: tuple[str, ...] = ()  # prefixes of another model in the same file (a vision tower)


LLAMA_LAYER = {
    "ln_1": ("input_layernorm",),
    "attn.c_attn": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "attn.c_proj": ("self_attn.o_proj",),
    "attn.q_norm": ("self_attn.q_norm",),
    "attn.k_norm": ("self_attn.k_norm",),
    "ln_2": ("post_attention_layernorm",),
    "mlp.c_fc": ("mlp.gate_proj", "mlp.up_proj"),
    "mlp.c_proj": ("mlp.down_proj",),
}
GEMMA3_LAYER = {
    **LLAMA_LAYER,
    "ln_post_attn": ("post_attention_layernorm",),
    "ln_2": ("pre_feedforward_layernorm",),
    "ln_post_mlp": ("post_feedforward_layernorm",),
}
LLAMA_TOP = {"wte": "model.embed_tokens", "ln_f": "model.norm", "lm_head": "lm_head"}


def split_sizes(config: GPTConfig, module: str, n: int, rows: int) -> list[int]:
    """How our stacked tensor of `rows` rows divides among the family's `n` tensors."""
    if n == 1:
        return [rows]
    if module == "attn.c_attn":
        D = config.head_dim
        return [config.n_head * D, config.kv_heads * D, config.kv_heads * D]
    return [rows // n] * n  # gate and up


def state_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Our state dict's names and shapes for `config`, by arithmetic (a config claiming 10**9
    dimensions is checked against a file without allocating anything); tests check it against
    the network's own state dict."""
    C, V, D, H, KV = (
        config.n_embd,
        config.vocab_size,
        config.head_dim,
        config.n_head,
        config.kv_heads,
    )
    inner = config.inner_dim
    bias_norm = config.norm == "layernorm" and config.norm_bias

    def norm(name, dim=C):
        return {f"{name}.weight": (dim,), **({f"{name}.bias": (dim,)} if bias_norm else {})}

    def linear(name, out, inp, bias):
        return {f"{name}.weight": (out, inp), **({f"{name}.bias": (out,)} if bias else {})}

    shapes = {"wte.weight": (V, C)}
    if config.positions == "learned":
        shapes["wpe.weight"] = (config.n_positions, C)
    for i in range(config.n_layer):
        p = f"h.{i}."
        shapes.update(norm(p + "ln_1"))
        shapes.update(linear(p + "attn.c_attn", (H + 2 * KV) * D, C, config.qkv_bias))
        shapes.update(linear(p + "attn.c_proj", C, H * D, config.attn_out_bias))
        if config.qk_norm:
            shapes.update({p + "attn.q_norm.weight": (D,), p + "attn.k_norm.weight": (D,)})
        shapes.update(norm(p + "ln_2"))
        gated = 2 if config.mlp == "gated" else 1
        shapes.update(linear(p + "mlp.c_fc", gated * inner, C, config.mlp_bias))
        shapes.update(linear(p + "mlp.c_proj", C, inner, config.mlp_bias))
        if config.post_norms:
            shapes.update(norm(p + "ln_post_attn"))
            shapes.update(norm(p + "ln_post_mlp"))
    shapes.update(norm("ln_f"))
    shapes["lm_head.weight"] = (V, C)
    return shapes


def tensor_map(family: Family, config: GPTConfig) -> dict[str, list[tuple[str, int]]]:
    """Our parameter name -> [(the family's name, rows)], for every tensor the model holds."""
    out = {}
    for name, shape in state_shapes(config).items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        module, _, kind = name.rpartition(".")
        if module in family.top:
            out[name] = [(f"{family.top[module]}.{kind}", shape[0])]
            continue
        _, i, rest = module.split(".", 2)  # h.{i}.{rest}
        theirs = family.layer[rest]
        sizes = split_sizes(config, rest, len(theirs), shape[0])
        out[name] = [
            (f"{family.layers}{i}.{t}.{kind}", s) for t, s in zip(theirs, sizes, strict=True)
        ]
    return out


def expected_shapes(family: Family, config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """The family's tensor names and shapes for `config` (what a weights header must hold)."""
    ours = state_shapes(config)
    out = {}
    for name, parts in tensor_map(family, config).items():
        shape = ours[name]
        for theirs, rows in parts:
            s = (rows, *shape[1:])
            if name.rpartition(".")[0].split(".", 2)[-1] in family.transposed and len(s) == 2:
                s = s[::-1]
            out[theirs] = s
    return out


def _neox_qkv(t: torch.Tensor, config: GPTConfig, to_ours: bool) -> torch.Tensor:
    """GPT-NeoX's query_key_value holds [q_h, k_h, v_h] per head; ours [q; k; v]."""
    H, D = config.n_head, config.head_dim
    rest = t.shape[1:]
    if to_ours:
        return t.reshape(H, 3, D, *rest).transpose(0, 1).reshape(3 * H * D, *rest)
    return t.reshape(3, H, D, *rest).transpose(0, 1).reshape(3 * H * D, *rest)


def to_ours(family: Family, config: GPTConfig, tensors: dict, source: str) -> dict:
    """Their named tensors -> our state dict (stacked, transposed, reordered), naming any
    missing, unexpected or mis-shaped tensor."""
    tensors = {strip_alias(family, k): v for k, v in own_tensors(family, tensors).items()}
    expected = expected_shapes(family, config)
    found = {k for k in tensors if not k.endswith(family.ignored)}
    if config.tie_word_embeddings:
        found.discard(family.top["lm_head"] + ".weight")  # some files store the tied head too
    check_names(set(expected), found, source)
    for name, want in expected.items():
        if tuple(tensors[name].shape) != want:
            raise ModelLoadError(
                f"{source}: tensor {name} has shape {tuple(tensors[name].shape)}, but "
                f"config.json implies {want}"
            )
    out = {}
    for ours, parts in tensor_map(family, config).items():
        module = ours.rpartition(".")[0].split(".", 2)[-1]
        ts = [tensors[theirs] for theirs, _ in parts]
        if module in family.transposed and ts[0].dim() == 2:
            ts = [t.t() for t in ts]
        t = ts[0] if len(ts) == 1 else torch.cat(ts, dim=0)
        if family.per_head_qkv and module == "attn.c_attn":
            t = _neox_qkv(t, config, to_ours=True)
        out[ours] = t
    return out


def to_theirs(family: Family, config: GPTConfig, state: dict) -> dict:
    """Our state dict -> the family's names and layouts (what transformers loads)."""
    out = {}
    for ours, parts in tensor_map(family, config).items():
        module = ours.rpartition(".")[0].split(".", 2)[-1]
        t = state[ours]
        if family.per_head_qkv and module == "attn.c_attn":
            t = _neox_qkv(t, config, to_ours=False)
        pieces = t.split([rows for _, rows in parts], dim=0) if len(parts) > 1 else [t]
        for (theirs, _), piece in zip(parts, pieces, strict=True):
            if module in family.transposed and piece.dim() == 2:
                piece = piece.t()
            out[theirs] = piece
    return out


def own_tensors(family: Family, tensors: dict) -> dict:
    """The tensors of the language model itself (a multimodal checkpoint carries others)."""
    if not family.foreign:
        return tensors
    return {k: v for k, v in tensors.items() if not k.startswith(family.foreign)}


def strip_alias(family: Family, name: str) -> str:
    for alias, canonical in family.aliases.items():
        if name.startswith(alias):
            return canonical + name[len(alias) :]
    return name


def check_names(expected: set[str], found: set[str], source: str) -> None:
    missing, extra = sorted(expected - found), sorted(found - expected)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:5]}")
        if extra:
            parts.append(f"unexpected tensors {extra[:5]}")
        raise ModelLoadError(f"{source}: {'; '.join(parts)} for the config in config.json")


# --- config.json readers ------------------------------------------------------------------


def _token_ids(f: Fields, vocab_size: int) -> dict:
    """bos/eos ids; an id outside the vocabulary is dropped with a warning (transformers'
    GPT2Config defaults both to 50256 whatever the vocabulary), a non-integer refused."""
    out = {}
    for key in ("bos_token_id", "eos_token_id"):
        value = f.d.get(key)
        values = value if isinstance(value, list) and key == "eos_token_id" else [value]
        kept = []
        for v in values:
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int):
                f.fail(
                    f"{key} must be an integer{' or a list of them' if key[0] == 'e' else ''}"
                    f", got {show(value)}"
                )
            if not 0 <= v < vocab_size:
                log.warning(
                    "%s: %s=%s is outside the vocabulary (vocab_size %d); ignored",
                    f.source,
                    key,
                    show(v),
                    vocab_size,
                )
                continue
            kept.append(v)
        out[key] = (kept or [None])[0] if not isinstance(value, list) else (kept or None)
    return out


def _read_gpt2(f: Fields) -> dict:
    for key in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if f.boolean(key, False):
            f.fail(f"{key}=true is not supported")
    if not f.boolean("scale_attn_weights", True):
        f.fail("scale_attn_weights=false is not supported")
    n_ctx = f.integer("n_ctx", None, nullable=True)
    for key in ("embd_pdrop", "attn_pdrop"):  # not used here, but they must make sense
        f.number(key, 0.1, 0, 1, hi_open=True)
    return dict(
        n_positions=f.integer("n_positions", n_ctx if n_ctx is not None else 1024),
        n_embd=f.integer("n_embd"),
        n_layer=f.integer("n_layer"),
        n_head=f.integer("n_head"),
        n_inner=f.integer("n_inner", None, nullable=True),
        layer_norm_epsilon=f.number("layer_norm_epsilon", 1e-5, 0, 1, lo_open=True),
        activation_function=f.string("activation_function", "gelu_new"),
        tie_word_embeddings=f.boolean("tie_word_embeddings", True),
        dropout=f.number("resid_pdrop", 0.1, 0, 1, hi_open=True),
    )


def _rope(f: Fields, default_theta: float, partial_key: str | None = None) -> dict:
    """rope_theta, rope_scaling, rotary_pct and the local base, from transformers 5's
    `rope_parameters` (flat, or one per layer type) or 4's rope_theta + rope_scaling."""
    d = f.d
    params = d.get("rope_parameters")
    local = None
    if params is not None and not isinstance(params, dict):
        f.fail(f"rope_parameters must be an object, got {json_type(params)}")
    if params and set(params) <= set(LAYER_TYPES):
        full, local = params.get("full_attention") or {}, params.get("sliding_attention")
    elif params:
        full = dict(params)
    else:
        scaling = d.get("rope_scaling")
        if scaling is not None and not isinstance(scaling, dict):
            f.fail(f"rope_scaling must be an object or null, got {json_type(scaling)}")
        full = dict(scaling or {})
        full["rope_theta"] = d.get("rope_theta", d.get("rotary_emb_base", default_theta))
    for part in (full, local or {}):
        if not isinstance(part, dict):
            f.fail(f"rope_parameters must hold objects, got {show(part)}")
    theta = check_number(
        full.get("rope_theta", d.get("rope_theta", default_theta)),
        "rope_theta",
        0,
        math.inf,
        lo_open=True,
        source=f.source,
    )
    partial = full.get("partial_rotary_factor", d.get("partial_rotary_factor"))
    if partial is None and partial_key:
        partial = d.get(partial_key, 0.25)
    kind = full.get("rope_type", full.get("type", "default"))
    if kind not in ROPE_TYPES:
        f.fail(f"rope type {show(kind)} is not supported; supported: {', '.join(ROPE_TYPES)}")
    scaling = None
    if kind != "default":
        scaling = {
            k: v for k, v in full.items() if k not in ("rope_theta", "partial_rotary_factor")
        }
        scaling["rope_type"] = kind
        for key, value in scaling.items():
            if key not in ("rope_type", "type", "truncate") and value is not None:
                check_number(value, f"rope {key}", 0, math.inf, lo_open=True, source=f.source)
        need = {
            "linear": ("factor",),
            "dynamic": ("factor",),
            "llama3": (
                "factor",
                "low_freq_factor",
                "high_freq_factor",
                "original_max_position_embeddings",
            ),
        }.get(kind, ())
        for key in need:
            if scaling.get(key) is None:
                f.fail(f"rope type {kind!r} needs {key}")
    out = {"positions": "rope", "rope_theta": theta, "rope_scaling": scaling}
    if partial is not None:
        out["rotary_pct"] = check_number(
            partial, "partial_rotary_factor", 0, 1, lo_open=True, source=f.source
        )
    local_theta = (local or {}).get("rope_theta", d.get("rope_local_base_freq"))
    if local is not None and local.get("rope_type", "default") != "default":
        f.fail("a scaled rope on sliding layers is not supported")
    if local_theta is not None:
        out["rope_local_theta"] = check_number(
            local_theta, "rope_local_base_freq", 0, math.inf, lo_open=True, source=f.source
        )
    return out


def _layer_types(f: Fields, n_layer: int, default: list[str] | None) -> list[str] | None:
    value = f.d.get("layer_types")
    if value is None:
        return default
    if (
        not isinstance(value, list)
        or len(value) != n_layer
        or any(v not in LAYER_TYPES for v in value)
    ):
        f.fail(
            f"layer_types must list one of {list(LAYER_TYPES)} for each of the {n_layer} "
            f"layers, got {show(value)}"
        )
    return value


def _read_llama_like(f: Fields, kind: str) -> dict:
    H = f.integer("num_attention_heads")
    n_layer = f.integer("num_hidden_layers")
    act_key = "hidden_activation" if kind == "gemma3_text" else "hidden_act"
    act = f.string(act_key, "gelu_pytorch_tanh" if kind == "gemma3_text" else "silu")
    if act not in ACTIVATIONS:
        f.fail(f"{act_key} {act!r} is not supported; supported: {', '.join(sorted(ACTIVATIONS))}")
    bias = f.boolean("attention_bias", False)
    out = dict(
        n_embd=f.integer("hidden_size"),
        n_layer=n_layer,
        n_head=H,
        n_kv_head=f.integer("num_key_value_heads", H, nullable=True),
        head_size=f.integer("head_dim", None, nullable=True),
        n_inner=f.integer("intermediate_size"),
        n_positions=f.integer("max_position_embeddings", 2048),
        layer_norm_epsilon=f.number("rms_norm_eps", 1e-6, 0, 1, lo_open=True),
        activation_function=act,
        tie_word_embeddings=f.boolean("tie_word_embeddings", kind == "gemma3_text"),
        dropout=f.number("attention_dropout", 0.0, 0, 1, hi_open=True),
        norm="rmsnorm",
        mlp="gated",
        mlp_bias=f.boolean("mlp_bias", False),
        qkv_bias=bias or kind == "qwen2",
        attn_out_bias=bias and kind != "qwen2",
        **_rope(f, 1_000_000.0 if kind == "gemma3_text" else 10000.0),
    )
    window = f.integer("sliding_window", None, nullable=True)
    if kind == "mistral":
        out["sliding_window"] = window
        out["layer_types"] = _layer_types(f, n_layer, None)
    elif kind in ("qwen2", "qwen3"):
        if f.boolean("use_sliding_window", False):
            first = f.integer("max_window_layers", n_layer, lo=0)
            default = [
                "full_attention" if i < first else "sliding_attention" for i in range(n_layer)
            ]
            out["sliding_window"] = window
            out["layer_types"] = _layer_types(f, n_layer, default)
        out["qk_norm"] = kind == "qwen3"
    elif kind == "gemma3_text":
        pattern = f.integer("sliding_window_pattern", f.d.get("_sliding_window_pattern", 6))
        default = [
            "full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
            for i in range(n_layer)
        ]
        for key in ("attn_logit_softcapping",):
            if f.d.get(key) is not None:
                f.fail(f"{key} is not supported")
        if f.boolean("use_bidirectional_attention", False):
            f.fail("use_bidirectional_attention=true is not supported")
        out.update(
            sliding_window=window if window is not None else 4096,
            layer_types=_layer_types(f, n_layer, default),
            query_pre_attn_scalar=f.number("query_pre_attn_scalar", 256, 0, math.inf, lo_open=True),
            final_logit_softcapping=f.number(
                "final_logit_softcapping", None, 0, math.inf, lo_open=True, nullable=True
            ),
            norm_unit_offset=True,
            post_norms=True,
            qk_norm=True,
            scale_embeddings=True,
        )
    return out


def _read_neox(f: Fields) -> dict:
    bias = f.boolean("attention_bias", True)
    return dict(
        n_embd=f.integer("hidden_size"),
        n_layer=f.integer("num_hidden_layers"),
        n_head=f.integer("num_attention_heads"),
        n_inner=f.integer("intermediate_size"),
        n_positions=f.integer("max_position_embeddings", 2048),
        layer_norm_epsilon=f.number("layer_norm_eps", 1e-5, 0, 1, lo_open=True),
        activation_function=f.string("hidden_act", "gelu"),
        tie_word_embeddings=f.boolean("tie_word_embeddings", False),
        dropout=f.number("hidden_dropout", 0.0, 0, 1, hi_open=True),
        parallel_residual=f.boolean("use_parallel_residual", True),
        qkv_bias=bias,
        attn_out_bias=bias,
        **_rope(f, 10000.0, partial_key="rotary_pct"),
    )


# --- config.json writers ------------------------------------------------------------------


def _common_out(c: GPTConfig) -> dict:
    return {
        "vocab_size": c.vocab_size,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "tie_word_embeddings": c.tie_word_embeddings,
    }


def _write_gpt2(c: GPTConfig) -> dict:
    return {
        "n_positions": c.n_positions,
        "n_ctx": c.n_positions,
        "n_embd": c.n_embd,
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_inner": c.n_inner,
        "activation_function": c.activation_function,
        "resid_pdrop": c.dropout,
        "embd_pdrop": c.dropout,
        "attn_pdrop": c.dropout,
        "layer_norm_epsilon": c.layer_norm_epsilon,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
    }


def _rope_out(c: GPTConfig) -> dict:
    full = {"rope_type": "default", **(c.rope_scaling or {}), "rope_theta": c.rope_theta}
    full.pop("type", None)
    if c.rotary_pct != 1.0:
        full["partial_rotary_factor"] = c.rotary_pct
    if c.rope_local_theta is not None:
        local = {"rope_type": "default", "rope_theta": c.rope_local_theta}
        return {"rope_parameters": {"full_attention": full, "sliding_attention": local}}
    return {"rope_parameters": full, "rope_theta": c.rope_theta}


def _write_llama_like(c: GPTConfig) -> dict:
    out = {
        "hidden_size": c.n_embd,
        "intermediate_size": c.inner_dim,
        "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head,
        "num_key_value_heads": c.kv_heads,
        "head_dim": c.head_dim,
        "max_position_embeddings": c.n_positions,
        "rms_norm_eps": c.layer_norm_epsilon,
        "attention_dropout": c.dropout,
        "mlp_bias": c.mlp_bias,
        **_rope_out(c),
    }
    act_key = "hidden_activation" if c.model_type == "gemma3_text" else "hidden_act"
    out[act_key] = c.activation_function
    if c.model_type == "qwen2":
        out["use_sliding_window"] = c.sliding_window is not None
    elif c.model_type in ("llama", "mistral", "qwen3", "gemma3_text"):
        out["attention_bias"] = c.qkv_bias
    if c.model_type == "qwen3":
        out["use_sliding_window"] = c.sliding_window is not None
    if c.sliding_window is not None or c.model_type in ("mistral", "gemma3_text"):
        out["sliding_window"] = c.sliding_window
    if c.layer_types is not None:
        out["layer_types"] = c.layer_types
        if c.model_type in ("qwen2", "qwen3"):
            out["max_window_layers"] = c.layer_types.count("full_attention")
    if c.model_type == "gemma3_text":
        q = c.query_pre_attn_scalar  # transformers wants an int where it is one
        out["query_pre_attn_scalar"] = int(q) if q is not None and float(q).is_integer() else q
        out["final_logit_softcapping"] = c.final_logit_softcapping
        out["attn_logit_softcapping"] = None
    return out


def _write_neox(c: GPTConfig) -> dict:
    return {
        "hidden_size": c.n_embd,
        "intermediate_size": c.inner_dim,
        "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head,
        "max_position_embeddings": c.n_positions,
        "layer_norm_eps": c.layer_norm_epsilon,
        "hidden_act": c.activation_function,
        "use_parallel_residual": c.parallel_residual,
        "attention_bias": c.qkv_bias,
        "hidden_dropout": c.dropout,
        "attention_dropout": c.dropout,
        "rotary_pct": c.rotary_pct,
        "rotary_emb_base": c.rope_theta,
        **_rope_out(c),
    }


# --- the families -------------------------------------------------------------------------


def _llama_like(kind: str, arch: str, layer=LLAMA_LAYER, **kw) -> Family:
    return Family(
        (kind,),
        arch,
        LLAMA_TOP,
        "model.layers.",
        layer,
        lambda f: _read_llama_like(f, kind),
        _write_llama_like,
        ignored=(".rotary_emb.inv_freq",),
        **kw,
    )


FAMILIES: dict[str, Family] = {
    "gpt2": Family(
        ("gpt2",),
        "GPT2LMHeadModel",
        {
            "wte": "transformer.wte",
            "wpe": "transformer.wpe",
            "ln_f": "transformer.ln_f",
            "lm_head": "lm_head",
        },
        "transformer.h.",
        {k: (k,) for k in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")},
        _read_gpt2,
        _write_gpt2,
        transposed=("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
        ignored=(".attn.bias", ".attn.masked_bias"),
        aliases={
            "h.": "transformer.h.",
            "wte.": "transformer.wte.",
            "wpe.": "transformer.wpe.",
            "ln_f.": "transformer.ln_f.",
        },
    ),
    "llama": _llama_like("llama", "LlamaForCausalLM"),
    "mistral": _llama_like("mistral", "MistralForCausalLM"),
    "qwen2": _llama_like("qwen2", "Qwen2ForCausalLM"),
    "qwen3": _llama_like("qwen3", "Qwen3ForCausalLM"),
    "gemma3_text": _llama_like(
        "gemma3_text",
        "Gemma3ForCausalLM",
        GEMMA3_LAYER,
        aliases={
            "model.language_model.": "model.",
            "language_model.model.": "model.",
            "language_model.lm_head.": "lm_head.",
        },
        foreign=(
            "vision_tower.",
            "multi_modal_projector.",
            "model.vision_tower.",
            "model.multi_modal_projector.",
        ),
    ),
    "gpt_neox": Family(
        ("gpt_neox",),
        "GPTNeoXForCausalLM",
        {"wte": "gpt_neox.embed_in", "ln_f": "gpt_neox.final_layer_norm", "lm_head": "embed_out"},
        "gpt_neox.layers.",
        {
            "ln_1": ("input_layernorm",),
            "attn.c_attn": ("attention.query_key_value",),
            "attn.c_proj": ("attention.dense",),
            "ln_2": ("post_attention_layernorm",),
            "mlp.c_fc": ("mlp.dense_h_to_4h",),
            "mlp.c_proj": ("mlp.dense_4h_to_h",),
        },
        lambda f: _read_neox(f),
        _write_neox,
        per_head_qkv=True,
        ignored=(".attention.bias", ".attention.masked_bias", ".rotary_emb.inv_freq"),
    ),
}
SUPPORTED = sorted(FAMILIES) + ["gemma3 (its text weights)"]


# What a model trained from scratch in a family's style is, beyond its sizes: `lmgen train`'s
# `model.family` (GPT-2's block, or Llama's: RoPE, RMSNorm, SwiGLU, grouped-query attention).
SCRATCH = {
    "gpt2": dict(activation_function="gelu_new"),
    "llama": dict(model_type="llama", positions="rope", norm="rmsnorm", mlp="gated",
                  activation_function="silu", qkv_bias=False, attn_out_bias=False,
                  mlp_bias=False, layer_norm_epsilon=1e-5),
}  # fmt: skip


def scratch_config(family: str, **fields) -> GPTConfig:
    """A new model of `family`'s style; `fields` (sizes, dropout, ...) override its preset.
    n_kv_head, n_inner, activation_function and rope_theta given as 0, "" or None mean the
    family's default."""
    if family not in SCRATCH:
        raise ConfigError(
            f"model.family must be one of {sorted(SCRATCH)}, got {family!r}", "model.family"
        )
    optional = ("n_kv_head", "n_inner", "activation_function", "rope_theta")
    given = {k: v for k, v in fields.items() if v or k not in optional}
    if family == "llama" and "n_inner" not in given and "n_embd" in given:
        given["n_inner"] = 64 * -(-8 * given["n_embd"] // 3 // 64)  # ~8/3 C, as Llama rounds
    return GPTConfig(**{**SCRATCH[family], **given})


def family_of(config: GPTConfig) -> Family:
    return FAMILIES[config.model_type]


def config_from_hf(d, source: str = "config.json") -> GPTConfig:
    """A GPTConfig from a transformers config.json (any supported family); errors name the file
    and the field, and come before anything is allocated."""
    if not isinstance(d, dict):
        raise ModelLoadError(f"{source}: expected a JSON object, found {json_type(d)}")
    check_torch_dtype(d, source)
    kind = d.get("model_type")
    if not isinstance(kind, str):
        kind = show(kind)
    if kind == "gemma3":  # the multimodal checkpoint: its text model
        text = d.get("text_config")
        if not isinstance(text, dict):
            raise ModelLoadError(f"{source}: model_type 'gemma3' needs a text_config object")
        d = {"model_type": "gemma3_text", **text}
        kind = "gemma3_text"
    if kind not in FAMILIES:
        raise ModelLoadError(
            f"{source}: model_type is {show(d.get('model_type'))}; lmgen loads "
            f"{', '.join(SUPPORTED)}"
        )
    f = Fields(d, source)
    vocab_size = f.integer("vocab_size")
    fields = FAMILIES[kind].read(f)
    try:
        return GPTConfig(
            vocab_size=vocab_size, model_type=kind, **fields, **_token_ids(f, vocab_size)
        )
    except ConfigError as e:
        raise ModelLoadError(f"{source}: {e}") from e


def config_to_hf(config: GPTConfig, dtype: torch.dtype = torch.float32) -> dict:
    """config.json for `config`, as transformers writes it for the family."""
    family = family_of(config)
    return {
        "model_type": config.model_type,
        "architectures": [family.architecture],
        **_common_out(config),
        **family.write(config),
        "torch_dtype": str(dtype).removeprefix("torch."),
        **config.extra,
    }
