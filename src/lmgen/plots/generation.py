"""A generated text, each token coloured by its probability, with per-step charts.

The text and the chosen tokens' probabilities come from `lmgen.decoding.generate` itself.
The entropy of each step's distribution is not something `generate` reports, so the finished
sequence is read once more by the model in a single pass and each step's logits go through
the same processor chain `generate` built (`build_chain` with the same config): the same
code path, applied to the same tokens. Where both exist the chosen token's probability from
that pass is checked against the one `generate` recorded.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from lmgen.errors import ConfigError

from . import DEFAULT_MAX_NEW_TOKENS, style
from .common import as_lm, entropy, require_prompt

log = logging.getLogger(__name__)


@dataclass
class GenerationSteps:
    """The data behind `plot_generation`: one entry per generated token."""

    prompt: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    tokens: list[str]
    """readable labels (␣ for spaces)"""
    probs: np.ndarray
    """probability of the chosen token under the distribution it was chosen from (after the
    processors)"""
    raw_probs: np.ndarray
    """the same under the model's raw distribution"""
    entropy: np.ndarray
    """entropy (nats) of the distribution the token was chosen from"""
    raw_entropy: np.ndarray
    """entropy (nats) of the model's raw distribution"""
    pieces: list[tuple[str, list[int]]]
    """the continuation's text cut at token boundaries: (text, indices of the tokens that
    make it); a character split over several byte-level tokens stays whole"""
    prompt_text: str
    strategy: str
    chain: list[str]
    finish_reason: str
    result: object = field(repr=False)
    """the `GenerationResult` generate returned"""


def generation_data(lm, prompt: str, config=None, *, choice: int = 0, **kwargs) -> GenerationSteps:
    """Generates from `prompt` (any `generate` arguments: strategy, temperature, top_k, seed,
    …; max_new_tokens defaults to 40 here) and collects each step's probabilities and
    entropies."""
    from lmgen.decoding.api import generate
    from lmgen.decoding.processors import build_chain
    from lmgen.generation_config import GenerationConfig

    lm = as_lm(lm)
    require_prompt(prompt, "plot generation")
    if config is None:
        kwargs.setdefault("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
    if config is None:
        cfg = GenerationConfig.from_kwargs(**kwargs)
    else:
        cfg = config.replace(**kwargs) if kwargs else config
        cfg.validate()
    if cfg.dola_layers is not None:
        # the plot re-reads the final layer's logits; DoLa samples from a contrast of layers,
        # so every probability and entropy drawn would be of a distribution not sampled from
        raise ConfigError(
            "plot generation shows the model's own logits, which dola_layers (--dola-layers) "
            "replaces by a contrast of layers: leave it out",
            "dola_layers",
        )
    if not isinstance(choice, int) or not 0 <= choice < cfg.num_return_sequences:
        raise ConfigError(
            f"choice must be an int in [0, {cfg.num_return_sequences - 1}], got {choice!r}",
            "choice",
        )
    result = generate(lm, prompt, cfg)
    ch = result.choices[choice]
    ids, gen = list(result.prompt_token_ids), list(ch.token_ids)
    n_pos = lm.config.n_positions
    if len(ids) + len(gen) > n_pos:
        raise ConfigError(
            f"prompt ({len(ids)} tokens) + continuation ({len(gen)}) exceed "
            f"the model's context of {n_pos}: the plot reads them in one pass; "
            "lower max_new_tokens",
            "max_new_tokens",
        )
    strategy = cfg.effective_strategy()
    chain = build_chain(
        cfg, prompt_length=len(ids), eos_token_ids=lm.eos_token_ids, tokenizer=lm.tokenizer
    )
    seq = torch.tensor([ids + gen], device=lm.device)
    P, n = len(ids), len(gen)
    raw_p, proc_p, ent, raw_ent = [], [], [], []
    if n:
        with torch.inference_mode():
            logits = lm.model(seq[:, : P + n - 1])[0, P - 1 :].float()  # step i: row i
            for i in range(n):
                step = logits[i : i + 1]
                if strategy == "beam":  # beam search runs the chain on log-probabilities
                    step = torch.log_softmax(step, dim=-1)
                processed = chain(seq[:, : P + i], step) if chain else step
                t = gen[i]
                raw_p.append(float(torch.softmax(logits[i], -1)[t]))
                proc_p.append(float(torch.softmax(processed[0], -1)[t]))
                ent.append(float(entropy(processed[0])))
                raw_ent.append(float(entropy(logits[i])))
    probs = np.array(proc_p)
    if ch.processed_logprobs:
        recorded = np.exp(np.array(ch.processed_logprobs))
        worst = float(np.abs(recorded - probs).max()) if n else 0.0
        if worst > 1e-3:
            log.warning("re-read probabilities differ from generate's by up to %.2g", worst)
        probs = recorded
    if ch.logprobs:
        raw_p = list(np.exp(np.array(ch.logprobs)))
    tok = lm.tokenizer
    return GenerationSteps(
        prompt,
        ids,
        gen,
        style.token_labels(tok, gen),
        probs,
        np.array(raw_p, dtype=float),
        np.array(ent),
        np.array(raw_ent),
        _pieces(tok, ids, gen),
        prompt,
        strategy,
        result.chain,
        ch.finish_reason,
        result,
    )


def _pieces(tok, prompt_ids: list[int], gen: list[int]) -> list[tuple[str, list[int]]]:
    """The continuation's text, token by token, as the decoder writes it after the prompt;
    tokens that only together make a character are kept together."""
    pieces: list[tuple[str, list[int]]] = []
    done = tok.decode(prompt_ids)
    start = 0
    for i in range(len(gen)):
        text = tok.decode(prompt_ids + gen[: i + 1])
        whole = not text.endswith("\ufffd") or i - start >= 3 or i == len(gen) - 1
        if text.startswith(done) and whole:
            piece = text[len(done) :]
            if "\ufffd" in piece:  # bytes that make no character: show each token's bytes
                pieces.extend((style.token_text(tok, gen[k]), [k]) for k in range(start, i + 1))
            else:
                pieces.append((piece, list(range(start, i + 1))))
            done, start = text, i + 1
        elif not text.startswith(done) and not text.endswith("\ufffd"):
            # The decoder rewrote earlier text: fall back to one token at a time.
            for k in range(start, i + 1):
                pieces.append((style.token_text(tok, gen[k]), [k]))
            done, start = text, i + 1
    return pieces


# -- the picture -------------------------------------------------------------------------------

_FONT_PT = 12.5
_CHAR_W = 0.6021 * _FONT_PT / 72  # DejaVu Sans Mono's advance, in inches
_LINE_H = 0.34  # inches
_CMAP = "RdYlGn"


def _wrap(prompt: str, pieces, cols: int):
    """(line, column, text, piece index or None for the prompt) runs that fit `cols`."""
    runs = []
    line = col = 0

    def put(text: str, who):
        nonlocal line, col
        for k, part in enumerate(text.split("\n")):
            if k:
                if who is not None:
                    runs.append((line, col, "↵", who))
                line, col = line + 1, 0
            while part:
                room = cols - col
                if len(part) > room and col > 0 and len(part) <= cols:
                    line, col = line + 1, 0
                    continue
                chunk, part = part[:room], part[room:]
                runs.append((line, col, chunk, who))
                col += len(chunk)
                if part:
                    line, col = line + 1, 0

    put(prompt, None)
    for i, (text, _) in enumerate(pieces):
        put(_shown(text), i)
    return runs, line + 1


def _shown(text: str) -> str:
    """Text for the flow: drawable characters, line breaks kept for the wrapping."""
    return "\n".join(
        style.readable(part, spaces=False, math=False) if part else "" for part in text.split("\n")
    )


@style.styled
def draw_generation(data: GenerationSteps, color_by: str = "processed") -> Figure:
    if color_by not in ("processed", "raw"):
        raise ConfigError(f"color_by must be 'processed' or 'raw', got {color_by!r}", "color_by")
    n = len(data.token_ids)
    width, margin = 13.0, 0.55
    cols = int((width - 2 * margin) / _CHAR_W)
    prompt = _shown(style.shorten(data.prompt_text, 4 * cols))
    runs, lines = _wrap(prompt, data.pieces, cols)
    text_h = lines * _LINE_H
    chart_h, labels_h = 1.75, 0.8 if n <= 80 else 0.3
    top, gap = 0.95, 0.55
    height = top + text_h + 0.9 + 2 * chart_h + gap + labels_h + 0.35
    fig = Figure(figsize=(width, height), dpi=style.DPI)

    def axes(y_top: float, h: float, left: float = margin, w: float = width - 2 * margin):
        return fig.add_axes((left / width, 1 - (y_top + h) / height, w / width, h / height))

    values = data.probs if color_by == "processed" else data.raw_probs
    cmap = _cmap()
    norm = Normalize(0.0, 1.0)
    ax = axes(top, text_h)
    ax.set_xlim(0, cols)
    ax.set_ylim(lines, 0)
    ax.axis("off")
    text_style = dict(
        family=style.MONO, fontsize=_FONT_PT, va="center", ha="left", parse_math=False
    )
    for line, col, chunk, who in runs:
        if who is None:
            ax.text(col, line + 0.5, chunk, color="#777777", **text_style)
            continue
        group = data.pieces[who][1]
        p = float(np.prod([values[k] for k in group]))
        ax.add_patch(
            Rectangle(
                (col, line + 0.1),
                len(chunk),
                0.8,
                facecolor=cmap(norm(p)),
                edgecolor="white",
                linewidth=0.8,
                alpha=0.6,
            )
        )
        ax.text(col, line + 0.5, chunk, color="black", **text_style)

    bar_ax = axes(top + text_h + 0.25, 0.13, left=width - margin - 4.0, w=4.0)
    fig.colorbar(_mappable(cmap, norm), cax=bar_ax, orientation="horizontal")
    bar_ax.set_xlabel(f"probability of the chosen token ({color_by})", fontsize=9.5)
    bar_ax.tick_params(labelsize=8.5)
    fig.text(
        margin / width,
        1 - (top + text_h + 0.3) / height,
        "grey: the prompt; coloured: generated tokens",
        fontsize=9.5,
        color="#555555",
        va="top",
    )

    x = np.arange(1, n + 1)
    y0 = top + text_h + 0.9
    pa = axes(y0, chart_h, left=margin + 0.45, w=width - 2 * margin - 0.45)
    pa.bar(
        x,
        data.probs,
        color=[cmap(norm(v)) for v in data.probs],
        edgecolor="#555555",
        linewidth=0.4,
        width=0.8,
        label="chosen token, after the processors",
    )
    pa.plot(
        x,
        data.raw_probs,
        linestyle="none",
        marker="o",
        markersize=4,
        color="black",
        label="the same, raw model",
    )
    pa.set_ylim(0, 1.05)
    pa.set_ylabel("probability")
    pa.set_xlim(0.4, n + 0.6)
    pa.tick_params(axis="x", labelbottom=False)
    handles, labels = pa.get_legend_handles_labels()
    pa.legend(
        handles[::-1],
        labels[::-1],
        loc="upper left",
        bbox_to_anchor=(0, 1.28),
        ncol=2,
        frameon=False,
        fontsize=9,
    )
    pa.grid(axis="y", alpha=0.3)

    ea = axes(y0 + chart_h + gap, chart_h, left=margin + 0.45, w=width - 2 * margin - 0.45)
    ea.sharex(pa)
    ea.plot(
        x, data.entropy, marker="o", markersize=4, color="#9467bd", label="distribution chosen from"
    )
    ea.plot(x, data.raw_entropy, linestyle="--", color="#7f7f7f", label="raw model")
    ea.set_ylabel("entropy (nats)")
    ea.set_ylim(
        0,
        max(
            0.5,
            float(np.max(data.raw_entropy, initial=0.0)),
            float(np.max(data.entropy, initial=0.0)),
        )
        * 1.12,
    )
    ea.legend(loc="upper left", bbox_to_anchor=(0, 1.25), ncol=2, frameon=False, fontsize=9)
    ea.grid(axis="y", alpha=0.3)
    if n <= 80:
        ea.set_xticks(x, data.tokens, rotation=90, fontsize=9 if n <= 50 else 7)
    else:
        step = math.ceil(n / 40)
        ea.set_xticks(x[::step], [str(v) for v in x[::step]])
        ea.set_xlabel("step")
    ea.set_xlim(0.4, n + 0.6)

    chain = " → ".join(data.chain) if data.chain else "no processors"
    end = {
        "eos": "ended with the end token",
        "length": "stopped at max_new_tokens",
        "stop": "stopped at a stop string",
    }.get(data.finish_reason, data.finish_reason)
    fig.text(
        0.5,
        1 - 0.28 / height,
        f"Generation, {data.strategy}: {n} tokens, {end}",
        ha="center",
        va="center",
        fontsize=14,
        fontweight="bold",
    )
    fig.text(
        0.5,
        1 - 0.62 / height,
        style.esc(f"chain: {chain}"),
        ha="center",
        va="center",
        fontsize=10,
        color="#444444",
    )
    return fig


def _cmap():
    import matplotlib

    return matplotlib.colormaps[_CMAP]


def _mappable(cmap, norm):
    from matplotlib.cm import ScalarMappable

    return ScalarMappable(norm=norm, cmap=cmap)


def plot_generation(lm, prompt: str | None = None, config=None, **kwargs) -> Figure:
    """The generated text with each token coloured by its probability, and below it each
    step's chosen-token probability and the entropy of the distribution it came from.

    `plot_generation(lm, prompt, strategy="sample", temperature=0.8, seed=0, ...)`, or
    `plot_generation(generation_data(...))`."""
    if isinstance(lm, GenerationSteps):
        return draw_generation(lm)
    return draw_generation(generation_data(lm, prompt, config, **kwargs))
