"""Rotary position embeddings: the frequencies of each scaling people ship, computed as
transformers computes them (modeling_rope_utils), so the rotations agree bit for bit.

`Rope(config, theta, scaling).cos_sin(position_ids, dtype)` gives the (batch, 1, seq, rot)
cosines and sines a layer multiplies queries and keys by; `apply_rope` rotates the first `rot`
dimensions of each head (all of them unless the family rotates part, as GPT-NeoX does) in
transformers' rotate-half layout."""

from __future__ import annotations

import math

import torch


def inv_frequencies(
    dim: int, theta: float, scaling: dict | None, max_positions: int, seq_len: int | None = None
) -> tuple[torch.Tensor, float]:
    """(inverse frequencies (dim/2,), attention factor) for one rope_type."""
    base_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "default":
        return base_freq, 1.0
    factor = scaling.get("factor")
    if kind == "linear":
        return base_freq / factor, 1.0
    if kind == "dynamic":
        # NTK-aware: the base grows once the sequence outgrows the trained context
        seq_len = max(seq_len or max_positions, max_positions)
        base = theta * ((factor * seq_len / max_positions) - (factor - 1)) ** (dim / (dim - 2))
        return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)), 1.0
    if kind == "llama3":
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / base_freq
        freq = torch.where(wavelen > old / low, base_freq / factor, base_freq)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * freq / factor + smooth * freq
        medium = ~(wavelen < old / high) * ~(wavelen > old / low)
        return torch.where(medium, smoothed, freq), 1.0
    if kind == "yarn":
        return _yarn(dim, theta, scaling, max_positions)
    raise ValueError(f"rope_type {kind!r}")  # GPTConfig refuses it first


def _yarn(dim: int, theta: float, s: dict, max_positions: int) -> tuple[torch.Tensor, float]:
    original = s.get("original_max_position_embeddings") or max_positions
    factor = s.get("factor") or max_positions / original
    attention = s.get("attention_factor")
    if attention is None:
        mscale, mscale_all = s.get("mscale"), s.get("mscale_all_dim")
        if mscale and mscale_all:
            attention = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all)
        else:
            attention = _yarn_mscale(factor)
    beta_fast, beta_slow = s.get("beta_fast") or 32, s.get("beta_slow") or 1

    def correction_dim(rotations):
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos_freqs = theta ** (torch.arange(0, dim, 2).float() / dim)
    extrapolation = 1 - ramp
    inv = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv, float(attention)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


class Rope:
    """One set of rotary frequencies; cosines and sines come from a table made once per
    device (or, for dynamic scaling past the trained context, from the frequencies of that
    length, as transformers recomputes them)."""

    def __init__(self, dim: int, theta: float, scaling: dict | None, max_positions: int):
        self.dim, self.theta, self.scaling = dim, theta, scaling
        self.max_positions = max_positions
        self.dynamic = (scaling or {}).get("rope_type", (scaling or {}).get("type")) == "dynamic"
        self.inv_freq, self.attention_factor = inv_frequencies(dim, theta, scaling, max_positions)
        self._tables: dict = {}

    def _table(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        key = str(device)
        if key not in self._tables:
            n = self.max_positions
            cos, sin = self._cos_sin(torch.arange(n, device=device), self.inv_freq.to(device))
            self._tables[key] = (cos, sin)
        return self._tables[key]

    def _cos_sin(self, positions: torch.Tensor, inv_freq: torch.Tensor):
        freqs = positions.float()[..., None] * inv_freq  # (..., dim/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (..., dim)
        return emb.cos() * self.attention_factor, emb.sin() * self.attention_factor

    def cos_sin(self, position_ids: torch.Tensor, dtype: torch.dtype):
        """(cos, sin), each (batch, 1, seq, dim) in `dtype`, for `position_ids` (batch, seq)."""
        top = int(position_ids.max()) + 1 if position_ids.numel() else 0
        if self.dynamic and top > self.max_positions:
            inv, _ = inv_frequencies(self.dim, self.theta, self.scaling, self.max_positions, top)
            cos, sin = self._cos_sin(position_ids, inv.to(position_ids.device))
        else:
            table_cos, table_sin = self._table(position_ids.device)
            cos, sin = table_cos[position_ids], table_sin[position_ids]
        return cos[:, None].to(dtype), sin[:, None].to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotates the first cos.shape[-1] dimensions of q (B, H, T, D) and k (B, KV, T, D)."""
    rot = cos.shape[-1]
    if rot == q.shape[-1]:
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
    q_rot, q_pass = q[..., :rot], q[..., rot:]
    k_rot, k_pass = k[..., :rot], k[..., rot:]
    q_rot = q_rot * cos + rotate_half(q_rot) * sin
    k_rot = k_rot * cos + rotate_half(k_rot) * sin
    return torch.cat((q_rot, q_pass), dim=-1), torch.cat((k_rot, k_pass), dim=-1)
