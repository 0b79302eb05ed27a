"""The beam-search tree, drawn from the trace `lmgen.beam.beam_search` records on request.

Each step, beam search scores the continuations of every running beam and looks at the best
`2 x num_beams` of them: the best that did not end become the next step's beams (kept), those
that end with end-of-sequence among the top `num_beams` join the finished hypotheses, the rest
are pruned. Nothing here searches: the tree is the search's own record.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from lmgen.errors import ConfigError

from . import MAX_TREE_BEAMS, MAX_TREE_STEPS, style
from .common import as_lm, require_prompt


@dataclass
class BeamNode:
    """One scored continuation at one step."""

    step: int
    index: int
    """its place among the step's candidates (best score first)"""
    parent: int | None
    """the index of the node it extends at the previous step; None: the prompt"""
    token_id: int
    token: str
    score: float
    """cumulative log-probability of the whole continuation (after the processors)"""
    status: str
    """"kept" (a beam of the next step) | "finished" | "pruned\""""
    beam: int | None
    """its beam index at the next step when kept"""
    token_ids: list[int]
    """the continuation up to and including this token"""
    rank: int | None = None
    """1-based rank among the returned hypotheses, when this node ends one of them"""


@dataclass
class Hypothesis:
    token_ids: list[int]
    text: str
    score: float
    """the length-normalised score beam search ranks by"""
    finish_reason: str
    node: tuple[int, int] | None
    """(step, index) of the tree node that ends it"""


@dataclass
class BeamTree:
    """The data behind `plot_beam`."""

    prompt: str
    prompt_token_ids: list[int]
    num_beams: int
    length_penalty: float
    steps: list[list[BeamNode]]
    hypotheses: list[Hypothesis]
    result: object = field(repr=False)
    """the `GenerationResult` beam search returned"""
    trace: object = field(repr=False)
    """the raw `BeamTrace` it recorded"""

    @property
    def nodes(self) -> list[BeamNode]:
        return [n for step in self.steps for n in step]


def beam_data(
    lm, prompt: str, *, num_beams: int = 3, max_new_tokens: int = 6, **config
) -> BeamTree:
    """Runs beam search on `prompt` with a trace and returns the tree it explored; every
    beam's final hypothesis is returned (`num_return_sequences` defaults to `num_beams`)."""
    from lmgen.decoding.api import beam_trace
    from lmgen.generation_config import GenerationConfig

    lm = as_lm(lm)
    require_prompt(prompt, "plot beam")
    strategy = config.pop("strategy", "beam")
    if strategy != "beam":
        raise ConfigError(f"plot beam draws beam search, not strategy {strategy!r}", "strategy")
    config.setdefault("num_return_sequences", num_beams if isinstance(num_beams, int) else 1)
    result, trace = beam_trace(
        lm, prompt, strategy="beam", num_beams=num_beams, max_new_tokens=max_new_tokens, **config
    )
    cfg = GenerationConfig(
        strategy="beam", num_beams=num_beams, max_new_tokens=max_new_tokens, **config
    )
    return build_tree(lm, prompt, result.prompt_token_ids, cfg, result, trace)


def build_tree(lm, prompt: str, ids: list[int], cfg, result, trace) -> BeamTree:
    """The tree of a recorded beam search: links every candidate to the beam it extends."""
    from lmgen.decoding.beam import NEG

    tok = lm.tokenizer
    eos = set() if cfg.ignore_eos else set(lm.eos_token_ids)
    steps: list[list[BeamNode]] = []
    for s, st in enumerate(trace.steps):
        previous = {n.beam: n for n in steps[-1] if n.status == "kept"} if steps else {}
        nodes = []
        for i, c in enumerate(st.candidates):
            if c["score"] <= NEG / 2:
                continue  # a copy of the prompt's empty beam: scored impossible, never used
            parent = previous.get(c["parent"]) if s else None
            if s and parent is None:
                continue
            seq = (parent.token_ids if parent else []) + [c["token_id"]]
            nodes.append(
                BeamNode(
                    s,
                    i,
                    parent.index if parent else None,
                    c["token_id"],
                    style.token_label(tok, c["token_id"]),
                    float(c["score"]),
                    c["status"],
                    c["beam"],
                    seq,
                )
            )
        steps.append(nodes)

    ends = {}
    for n in (n for step in steps for n in step if n.status == "finished"):
        seq = n.token_ids[:-1] if n.token_ids and n.token_ids[-1] in eos else n.token_ids
        ends.setdefault(tuple(seq), n)
    hypotheses = []
    for rank, c in enumerate(result.choices, 1):
        node = ends.get(tuple(c.token_ids))
        if node is not None:
            node.rank = rank
        hypotheses.append(
            Hypothesis(
                list(c.token_ids),
                style.decoded_text(tok, c.token_ids),
                float(c.score),
                c.finish_reason,
                (node.step, node.index) if node else None,
            )
        )
    return BeamTree(
        prompt, list(ids), cfg.num_beams, cfg.length_penalty, steps, hypotheses, result, trace
    )


# -- the picture -------------------------------------------------------------------------------


def _layout(tree: BeamTree) -> tuple[dict[tuple[int, int], float], float]:
    """y of every node: each step's candidates grouped under their parent beam, best first."""
    width = max((len(s) for s in tree.steps), default=1)
    ys: dict[tuple[int, int], float] = {}
    root = (width - 1) / 2
    for s, nodes in enumerate(tree.steps):

        def parent_y(n, s=s):
            return root if n.parent is None else ys[(s - 1, n.parent)]

        order = sorted(nodes, key=lambda n: (parent_y(n), -n.score))
        offset = (width - len(order)) / 2
        for k, n in enumerate(order):
            ys[(s, n.index)] = offset + k
    return ys, root


_FACE = {"kept": "#deebf7", "finished": "#e5f5e0", "pruned": "white"}
_EDGE = {"kept": style.KEPT, "finished": style.FINISHED, "pruned": "#bdbdbd"}


def check_drawable(num_beams) -> None:
    if isinstance(num_beams, int) and num_beams > MAX_TREE_BEAMS:
        raise ConfigError(
            f"plot beam draws at most {MAX_TREE_BEAMS} beams (each step shows 2 x beams "
            f"candidates), got {num_beams}; beam search itself has no such limit",
            "num_beams",
        )


@style.styled
def draw_beam(tree: BeamTree) -> Figure:
    if not tree.steps:
        raise ConfigError("beam search took no step: nothing to draw", "max_new_tokens")
    check_drawable(tree.num_beams)
    searched = len(tree.steps)
    if searched > MAX_TREE_STEPS:  # the first steps, where the search branches
        tree = dataclasses.replace(tree, steps=tree.steps[:MAX_TREE_STEPS])
    ys, root = _layout(tree)
    width = max(len(s) for s in tree.steps)
    n_steps = len(tree.steps)
    dx = 1.9
    tree_h = 0.68 * width + 0.8
    list_h = 0.3 * len(tree.hypotheses) + 0.7
    fig = style.new_figure(max(9.0, dx * (n_steps + 1) + 1.2), tree_h + list_h + 1.1)
    grid = fig.add_gridspec(2, 1, height_ratios=[tree_h, list_h])
    ax = fig.add_subplot(grid[0])
    ax.set_xlim(-0.75 * dx, (n_steps + 0.55) * dx)
    ax.set_ylim(width - 0.4, -0.6)
    ax.axis("off")

    def box(x, y, text, status, rank=None, size=9.5):
        face = "#fff3bf" if rank else _FACE[status]
        ax.text(
            x,
            y,
            text,
            ha="center",
            va="center",
            fontsize=size,
            zorder=3,
            color="#444444" if status == "pruned" else "black",
            bbox=dict(
                boxstyle="round,pad=0.3",
                facecolor=face,
                edgecolor=_EDGE[status],
                linewidth=2.2 if rank else 1.2,
            ),
        )

    prompt = style.readable(style.shorten(tree.prompt, 16), spaces=False)
    ax.text(
        0,
        root,
        prompt,
        ha="center",
        va="center",
        fontsize=10,
        zorder=3,
        wrap=True,
        bbox=dict(boxstyle="round,pad=0.4", facecolor="#f0f0f0", edgecolor="#555555"),
    )
    for s, nodes in enumerate(tree.steps):
        x = (s + 1) * dx
        ax.text(x, -0.55, f"step {s + 1}", ha="center", va="bottom", fontsize=10, color="#555555")
        for n in nodes:
            y = ys[(s, n.index)]
            px, py = (0.0, root) if n.parent is None else (s * dx, ys[(s - 1, n.parent)])
            ax.add_line(
                Line2D(
                    [px, x],
                    [py, y],
                    color=_EDGE[n.status],
                    zorder=1,
                    linewidth=1.8 if n.status != "pruned" else 1.0,
                    linestyle="-" if n.status != "pruned" else (0, (3, 2)),
                )
            )
            label = style.shorten(n.token, 12)
            text = f"{label}\n{n.score:.2f}"
            box(x, y, text, n.status, n.rank)
            if n.rank:
                ax.text(
                    x + 0.5 * dx - 0.12,
                    y,
                    f"#{n.rank}",
                    ha="left",
                    va="center",
                    fontsize=10,
                    fontweight="bold",
                    color=style.FINISHED,
                    zorder=4,
                )
            elif n.status == "kept":
                label = dict(ha="center", va="top", fontsize=7.5, color=style.KEPT, zorder=4)
                ax.text(x, y + 0.42, f"beam {n.beam}", **label)
    handles = [
        Patch(facecolor=_FACE["kept"], edgecolor=_EDGE["kept"], label="kept: a beam"),
        Patch(
            facecolor=_FACE["finished"],
            edgecolor=_EDGE["finished"],
            label="finished (end token or length limit)",
        ),
        Patch(
            facecolor="#fff3bf",
            edgecolor=_EDGE["finished"],
            linewidth=2,
            label="returned hypothesis #rank",
        ),
        Patch(facecolor="white", edgecolor=_EDGE["pruned"], label="pruned"),
    ]
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=4,
        frameon=False,
        fontsize=9.5,
    )

    lst = fig.add_subplot(grid[1])
    lst.axis("off")
    lst.set_xlim(0, 1)
    lst.set_ylim(len(tree.hypotheses) + 0.1, -1.0)
    lp = tree.length_penalty
    lst.text(
        0,
        -0.6,
        f"finished hypotheses, best first (score = sum of log-probs / length^{lp:g})",
        fontsize=10.5,
        fontweight="bold",
        va="center",
    )
    for k, h in enumerate(tree.hypotheses):
        text = style.readable(style.shorten(h.text, 70), spaces=False)
        end = " + end token" if h.finish_reason == "eos" else ""
        lst.text(
            0,
            k + 0.3,
            f"#{k + 1}   {h.score:7.3f}   {len(h.token_ids)} tokens{end}",
            fontsize=10,
            va="center",
            family=style.MONO,
        )
        lst.text(0.25, k + 0.3, f"“{text}”", fontsize=10.5, va="center")
    drawn = f"; the first {n_steps} of {searched} steps drawn" if searched > n_steps else ""
    fig.suptitle(
        f"Beam search, {tree.num_beams} beams, after "
        f"“{style.quoted(tree.prompt, 40)}”  (node: token, cumulative "
        f"log-prob{drawn})",
        fontsize=13,
    )
    return fig


def plot_beam(lm, prompt: str | None = None, **kwargs) -> Figure:
    """The beam-search tree: every step's candidates with their cumulative log-probability,
    which were kept, finished or pruned, and the returned hypotheses ranked. At most
    `MAX_TREE_BEAMS` beams; past `MAX_TREE_STEPS` steps only the first are drawn.

    `plot_beam(lm, prompt, num_beams=3, max_new_tokens=6, **config)`, or
    `plot_beam(beam_data(...))`."""
    if isinstance(lm, BeamTree):
        return draw_beam(lm)
    check_drawable(kwargs.get("num_beams"))  # before searching
    return draw_beam(beam_data(lm, prompt, **kwargs))
