"""What the first layer sees: token embeddings, positional embeddings and their sum.

The three matrices are captured from the model's own forward pass (hooks on `wte`, `wpe` and
on the dropout that receives their sum), so the picture shows exactly what `GPT.forward`
feeds its first block.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure

from lmgen.errors import ConfigError

from . import style
from .common import as_lm, prompt_ids, require_prompt, to_numpy

DEFAULT_PROMPT = "To be, or not to be: that is the question."


@dataclass
class EmbeddingData:
    """The data behind `plot_embeddings`; rows follow the prompt's tokens."""

    prompt: str
    token_ids: list[int]
    tokens: list[str]
    positions: list[int]
    token: np.ndarray
    """(tokens, n_embd): wte(token id)"""
    position: np.ndarray
    """(tokens, n_embd): wpe(position)"""
    combined: np.ndarray
    """(tokens, n_embd): their sum, the input of the first transformer block"""
    position_cosine: np.ndarray
    """(tokens, tokens): cosine similarity between the positional embeddings"""
    combined_cosine: np.ndarray
    """(tokens, tokens): cosine similarity between the summed embeddings"""


def embedding_data(lm, prompt: str | None = None) -> EmbeddingData:
    """Token, positional and summed embeddings of `prompt`'s tokens (default: a line of
    Hamlet), and the cosine similarity of their positional embeddings."""
    lm = as_lm(lm)
    if lm.config.positions != "learned":
        raise ConfigError(
            f"plot embeddings shows a learned positional table, and {lm.name} has none: its "
            f"family ({lm.config.model_type}) encodes positions by rotating queries and keys "
            "(RoPE) inside attention"
        )
    prompt = DEFAULT_PROMPT if prompt is None else require_prompt(prompt, "plot embeddings")
    ids = prompt_ids(lm, prompt, new_tokens=0)
    model = lm.model
    seen: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, args, output=None):
            seen[name] = (output if output is not None else args[0]).detach()

        return hook

    handles = [
        model.wte.register_forward_hook(keep("token")),
        model.wpe.register_forward_hook(keep("position")),
        model.drop.register_forward_pre_hook(keep("combined")),
    ]
    try:
        with torch.inference_mode():
            model(torch.tensor([ids], device=lm.device), logits_to_keep=1)
    finally:
        for h in handles:
            h.remove()
    token = seen["token"][0]
    position = seen["position"][0]
    combined = seen["combined"][0]
    return EmbeddingData(
        prompt,
        ids,
        style.token_labels(lm.tokenizer, ids),
        list(range(len(ids))),
        to_numpy(token),
        to_numpy(position),
        to_numpy(combined),
        _cosine(position),
        _cosine(combined),
    )


def _cosine(rows: torch.Tensor) -> np.ndarray:
    unit = torch.nn.functional.normalize(rows.float(), dim=-1)
    return to_numpy(unit @ unit.T)


@style.styled
def draw_embeddings(data: EmbeddingData) -> Figure:
    n, dim = data.token.shape
    if n == 0:
        raise ConfigError("nothing to draw: the prompt has no tokens", "prompt")
    row_h = 0.3 if n <= 24 else 0.18
    top_height = max(2.6, row_h * n + 1.3)
    side = min(7.0, max(4.0, 0.3 * n + 1.8))
    fig = style.new_figure(17.0, top_height + side + 0.8)
    grid = fig.add_gridspec(2, 3, height_ratios=[top_height, side])
    labels = [f"{t}  @{p}" for t, p in zip(data.tokens, data.positions, strict=True)]
    label_size = 10 if n <= 24 else 7
    panels = [
        ("token embedding  wte[token]", data.token),
        ("positional embedding  wpe[position]", data.position),
        ("sum: the first block's input", data.combined),
    ]
    # A few large values would wash the rest out: the scale ends at the 99th percentile.
    limit = float(np.percentile(np.abs(np.concatenate([m for _, m in panels])), 99)) or 1.0
    image = None
    first = None
    for i, (title, matrix) in enumerate(panels):
        ax = fig.add_subplot(grid[0, i], sharey=first)
        first = first or ax
        image = ax.imshow(
            matrix,
            cmap=style.DIV_CMAP,
            vmin=-limit,
            vmax=limit,
            aspect="auto",
            interpolation="nearest",
        )
        ax.set_title(title)
        ax.set_xlabel(f"dimension (0 – {dim - 1})")
        if i == 0:
            ax.set_yticks(range(n), labels, fontsize=label_size)
            ax.set_ylabel("token  @position")
        else:
            ax.tick_params(axis="y", left=False, labelleft=False)
    fig.colorbar(image, ax=fig.axes, shrink=0.9, pad=0.01, aspect=20).set_label("value")

    bottom = grid[1, :].subgridspec(1, 2)
    ticks = list(range(n) if n <= 40 else range(0, n, max(1, n // 20)))
    for k, (matrix, title, names) in enumerate(
        [
            (
                data.position_cosine,
                "cosine similarity of positional embeddings",
                [str(data.positions[i]) for i in ticks],
            ),
            (
                data.combined_cosine,
                "cosine similarity of the sums",
                [data.tokens[i] for i in ticks],
            ),
        ]
    ):
        ax = fig.add_subplot(bottom[k])
        cos = ax.imshow(matrix, cmap=style.DIV_CMAP, vmin=-1, vmax=1, interpolation="nearest")
        rotate = 0 if k == 0 else 90
        ax.set_xticks(ticks, names, fontsize=label_size, rotation=rotate)
        ax.set_yticks(ticks, names, fontsize=label_size)
        ax.set_xlabel("position" if k == 0 else "token")
        ax.set_ylabel("position" if k == 0 else "token")
        ax.set_title(title)
        fig.colorbar(cos, ax=ax, shrink=0.9, pad=0.02).set_label("cosine similarity")
    fig.suptitle(
        f"Embeddings of “{style.quoted(data.prompt, keep='both')}” ({n} tokens, {dim} dimensions)"
    )
    return fig


def plot_embeddings(lm, prompt: str | None = None) -> Figure:
    """Token embedding, positional embedding and their sum as heatmaps (rows: the prompt's
    tokens), with the cosine-similarity matrix of the positional embeddings.

    `plot_embeddings(lm, prompt)`, or `plot_embeddings(embedding_data(...))`."""
    if isinstance(lm, EmbeddingData):
        return draw_embeddings(lm)
    return draw_embeddings(embedding_data(lm, prompt))
