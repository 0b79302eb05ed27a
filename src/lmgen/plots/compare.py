"""`lmgen plot compare`: the pictures of a comparison (`lmgen compare --out DIR`).

Three panels, each also alone with `panel=`:

- "likelihood": perplexity (log scale) against Self-BLEU-4 — how likely each strategy's text
  is against how alike its texts are; the human text is the star to be near.
- "repetition": the share of continuations that end in a repeating loop, per row.
- "position": the probability the model gives each chosen token, by position in the
  continuation, averaged over prompts (smoothed over 5 positions) — human text is not the
  most likely text (the paper's Figure 1, averaged).

Everything is read from compare.json; nothing is generated again.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmgen.errors import ConfigError

PANELS = ("all", "likelihood", "repetition", "position")
HUMAN = "human"
HUMAN_COLOUR = "#111111"
SMOOTH = 5  # positions in the moving average of the "position" panel
# Rows drawn in the "position" panel when present (all rows otherwise).
POSITION_ROWS = ("greedy", "beam, b=16", "pure sampling", "top-k=40", "nucleus, p=0.95")


@dataclass
class CompareData:
    model: str
    title: str
    rows: list[dict]  # name, kind, metrics, per_position_prob


def load_compare(source) -> dict:
    """The dict of a comparison: a CompareResult, its dict, a compare.json file or a folder
    holding one."""
    if hasattr(source, "to_dict"):
        return source.to_dict()
    if isinstance(source, dict):
        return source
    if not isinstance(source, str | os.PathLike):
        raise ConfigError(f"expected a comparison or a path, got {type(source).__name__}")
    path = Path(source)
    if path.is_dir():
        path = path / "compare.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(
            f"{path}: {e.strerror or e} (make one with lmgen compare --out)"
        ) from None
    except ValueError as e:
        raise ConfigError(f"{path}: not JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise ConfigError(f"{path}: not the compare.json of lmgen compare")
    return data


def compare_data(source) -> CompareData:
    data = load_compare(source)
    s = data.get("settings", {})
    title = (
        f"{data.get('model', '?')}: {s.get('prompts', '?')} prompts from {s.get('source', '?')}, "
        f"{s.get('max_new_tokens', '?')} new tokens"
    )
    return CompareData(data.get("model", "?"), title, data["rows"])


def _metric(row: dict, name: str):
    m = row["metrics"].get(name) or {}
    return m.get("value"), m.get("ci")


def plot_compare(source, panel: str = "all"):
    """A Figure of a comparison (see the module docstring for the panels)."""
    from .style import styled

    if panel not in PANELS:
        raise ConfigError(f"panel must be one of {', '.join(PANELS)}, got {panel!r}", "panel")
    return styled(_draw)(compare_data(source), panel)


def _draw(data: CompareData, panel: str):
    from .style import new_figure

    panels = PANELS[1:] if panel == "all" else (panel,)
    fig = new_figure(max(7.5, 6.0 * len(panels)), 4.8)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    draw = {"likelihood": _likelihood, "repetition": _repetition, "position": _position}
    for ax, name in zip(axes, panels, strict=True):
        draw[name](ax, data)
    fig.suptitle(data.title)
    return fig


def _colours(rows: list[dict]) -> dict[str, str]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    names = [r["name"] for r in rows if r["name"] != HUMAN]
    out = {name: cmap(i % 10) for i, name in enumerate(names)}
    out[HUMAN] = HUMAN_COLOUR
    return out


def _likelihood(ax, data: CompareData) -> None:
    colours = _colours(data.rows)
    xs, ys = [], []
    for row in data.rows:
        (x, xci), (y, yci) = _metric(row, "perplexity"), _metric(row, "self_bleu4")
        if x is None or y is None:
            continue
        xs.append(x)
        ys.append(y)
        human = row["name"] == HUMAN
        xerr = None if not xci else [[x - xci[0]], [xci[1] - x]]
        yerr = None if not yci else [[y - yci[0]], [yci[1] - y]]
        ax.errorbar(
            x, y, xerr=xerr, yerr=yerr, fmt="*" if human else "o",
            markersize=15 if human else 7, color=colours[row["name"]], capsize=2, lw=0.8,
            zorder=3 if human else 2, label=row["name"],
        )  # fmt: skip
    # log scales where every point can take one (a Self-BLEU of 0: no shared 4-gram at all)
    x_log, y_log = all(v > 0 for v in xs), all(v > 0 for v in ys)
    ax.set_xscale("log" if x_log else "linear")
    ax.set_yscale("log" if y_log else "linear")
    ax.set_xlabel("perplexity under the model" + (" (log scale)" if x_log else ""))
    ax.set_ylabel(f"Self-BLEU-4{', log scale' if y_log else ''} (higher: texts more alike)")
    ax.set_title("likelihood against diversity")
    ax.legend(fontsize=7, loc="best", ncol=2)
    ax.grid(True, which="both", alpha=0.25)


def _repetition(ax, data: CompareData) -> None:
    colours = _colours(data.rows)
    rows = [r for r in data.rows if _metric(r, "repetition_pct")[0] is not None]
    y = np.arange(len(rows))
    for i, row in enumerate(rows):
        v, ci = _metric(row, "repetition_pct")
        err = None if not ci else [[v - ci[0]], [ci[1] - v]]
        ax.barh(i, v, xerr=err, color=colours[row["name"]], capsize=2, alpha=0.85)
        ax.annotate(f"{v:.1f}%", (v, i), xytext=(4, -3), textcoords="offset points", fontsize=8)
    ax.set_yticks(y, [r["name"] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("continuations ending in a repeating loop (%)")
    ax.set_title("repetition")
    ax.grid(True, axis="x", alpha=0.3)


def _position(ax, data: CompareData) -> None:
    colours = _colours(data.rows)
    names = {r["name"] for r in data.rows}
    wanted = [n for n in POSITION_ROWS if n in names]
    rows = [r for r in data.rows if r["name"] == HUMAN or not wanted or r["name"] in wanted]
    for row in rows:
        p = np.asarray(row.get("per_position_prob") or [], dtype=np.float64)
        if not p.size:
            continue
        k = min(SMOOTH, p.size)
        smooth = np.convolve(p, np.ones(k) / k, mode="valid")
        x = np.arange(smooth.size) + (k - 1) / 2
        human = row["name"] == HUMAN
        ax.plot(x, smooth, color=colours[row["name"]], lw=2.4 if human else 1.4,
                label=row["name"])  # fmt: skip
    ax.set_ylim(0, 1)
    ax.set_xlabel("position in the continuation (tokens)")
    ax.set_ylabel(f"p(chosen token), mean over prompts ({SMOOTH}-token average)")
    ax.set_title("how likely each next token is")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(True, alpha=0.3)


# -- the command ---------------------------------------------------------------------------------


def add_parser(psub) -> None:
    """`lmgen plot compare RESULT --out FILE`, registered by lmgen.plots.cli."""
    from lmgen.cli_args import add_command

    from . import DPI, FORMATS

    p = add_command(psub, cmd_compare, "compare", "the pictures of an lmgen compare run")
    p.add_argument("result", help="a folder written by lmgen compare --out, or its compare.json")
    p.add_argument(
        "--panel", choices=PANELS, default="all", help="one panel, or all three (default)"
    )
    p.add_argument("--out", "-o", required=True, metavar="FILE", help="the image file to write")
    p.add_argument("--format", choices=FORMATS, default=None, help="png, svg or pdf")
    p.add_argument("--dpi", type=int, default=DPI, help=f"resolution of a png (default {DPI})")


def cmd_compare(args: argparse.Namespace) -> int:
    """Likelihood against diversity (perplexity vs Self-BLEU-4, human text marked), the repetition
    rate per strategy, and the probability of each chosen token by position, from the
    compare.json that lmgen compare --out wrote."""
    from .style import check_output, save_figure

    check_output(args.out, args.format, args.dpi)
    fig = plot_compare(args.result, panel=args.panel)
    print(save_figure(fig, args.out, args.format, dpi=args.dpi))
    return 0
