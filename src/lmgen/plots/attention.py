"""Attention weights: who each token looks at, per layer and head.

The weights are the ones `GPT.forward(..., output_attentions=True)` computes (the softmax
of the masked scores each head multiplies its values by), for the prompt read in one pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure

from lmgen.errors import ConfigError

from . import style
from .common import as_lm, prompt_ids, require_prompt, to_numpy


@dataclass
class AttentionData:
    """The data behind `plot_attention`."""

    prompt: str
    token_ids: list[int]
    tokens: list[str]
    weights: np.ndarray
    """(layer, head, query, key): row q is how query token q spreads its attention over the
    keys 0..q (causal: keys after q get 0); each row sums to 1"""

    @property
    def n_layer(self) -> int:
        return self.weights.shape[0]

    @property
    def n_head(self) -> int:
        return self.weights.shape[1]


def attention_data(lm, prompt: str) -> AttentionData:
    """Every layer's and head's attention weights over `prompt`'s tokens."""
    lm = as_lm(lm)
    require_prompt(prompt, "plot attention")
    ids = prompt_ids(lm, prompt, new_tokens=0)
    with torch.inference_mode():
        _, weights = lm.model(
            torch.tensor([ids], device=lm.device), logits_to_keep=1, output_attentions=True
        )
    stacked = torch.stack([w[0] for w in weights])  # (layer, head, q, k)
    return AttentionData(prompt, ids, style.token_labels(lm.tokenizer, ids), to_numpy(stacked))


def check_index(name: str, value, count: int) -> int:
    """`value` as an index into `count` layers or heads, or ConfigError."""
    plural = {"layer": "layers", "head": "heads"}.get(name, name + "s")
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{name} must be an int, got {value!r}", name)
    if not 0 <= value < count:
        raise ConfigError(
            f"{name} {value} does not exist: the model has {count} {plural} (0 to {count - 1})",
            name,
        )
    return value


@style.styled
def draw_attention(data: AttentionData, layer: int = 0, head: int | None = None) -> Figure:
    check_index("layer", layer, data.n_layer)
    heads = list(range(data.n_head)) if head is None else [check_index("head", head, data.n_head)]
    n = len(data.tokens)
    cols = 1 if len(heads) == 1 else min(4, math.ceil(math.sqrt(len(heads))))
    rows = math.ceil(len(heads) / cols)
    cell = (
        min(0.42, max(0.16, 7.0 / max(n, 1)))
        if len(heads) == 1
        else min(0.3, max(0.1, 3.6 / max(n, 1)))
    )
    panel = max(2.4, cell * n)
    label_size = 10 if cell >= 0.25 else (8 if cell >= 0.16 else 6)
    label_w = 0.11 * max(len(t) for t in data.tokens) * label_size / 10 + 0.3
    fig = style.new_figure(
        cols * panel + (cols - 1) * 0.3 + label_w + 1.4,
        rows * panel + (rows - 1) * 0.45 + label_w + 1.0,
    )
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    import matplotlib

    # The future, which a causal model cannot look at, is light grey.
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#f0f0f0")
    # A square-root scale: attention spread thin over many tokens stays visible next to the
    # weight-1 cells (the first token can only look at itself).
    norm = PowerNorm(0.5, vmin=0.0, vmax=1.0)
    future = np.triu(np.ones((n, n), dtype=bool), k=1)
    image = None
    for k, ax in enumerate(axes):
        if k >= len(heads):
            ax.set_visible(False)
            continue
        h = heads[k]
        w = np.ma.masked_array(data.weights[layer, h], mask=future)
        image = ax.imshow(w, cmap=cmap, norm=norm, interpolation="nearest")
        if len(heads) > 1:
            ax.set_title(f"head {h}", fontsize=11)
        r, c = divmod(k, cols)
        last_row = r == rows - 1 or k + cols >= len(heads)
        ax.set_xticks(
            range(n), data.tokens if last_row else [""] * n, rotation=90, fontsize=label_size
        )
        ax.set_yticks(range(n), data.tokens if c == 0 else [""] * n, fontsize=label_size)
        if c == 0:
            ax.set_ylabel("query (attends from)")
        if last_row:
            ax.set_xlabel("key (attends to)")
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        if len(heads) == 1 and n <= 16:
            for q in range(n):
                for key in range(q + 1):
                    v = data.weights[layer, h, q, key]
                    ax.text(
                        key,
                        q,
                        f"{v:.2f}",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="black" if v > 0.6 else "white",
                    )
    bar = fig.colorbar(
        image, ax=[a for a in axes if a.get_visible()], shrink=0.8, pad=0.02, aspect=30
    )
    bar.set_ticks([0, 0.02, 0.1, 0.25, 0.5, 0.75, 1])
    bar.set_label("attention weight (each row sums to 1; square-root scale)")
    which = f"layer {layer}" + (
        f", head {heads[0]}" if head is not None else f", all {data.n_head} heads"
    )
    fig.suptitle(f"Attention, {which}: “{style.quoted(data.prompt, 50, keep='both')}”")
    return fig


def plot_attention(
    lm, prompt: str | None = None, layer: int = 0, head: int | None = None
) -> Figure:
    """Attention weights as heatmaps, tokens on both axes (query rows, key columns): a grid
    of every head of `layer`, or the one `head`; the causally hidden future is light grey.

    `plot_attention(lm, prompt, layer=0, head=None)`, or
    `plot_attention(attention_data(...), layer=..., head=...)`."""
    if isinstance(lm, AttentionData):
        return draw_attention(lm, layer, head)
    lm = as_lm(lm)
    check_index("layer", layer, lm.config.n_layer)
    if head is not None:
        check_index("head", head, lm.config.n_head)
    return draw_attention(attention_data(lm, prompt), layer, head)
