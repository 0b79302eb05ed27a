"""The next-token distribution: each decoding method on the same candidates, and temperature.

Every number comes from `lmgen.decoding.next_token` (the model's logits and the processor
chain the generator itself builds), `lmgen.decoding.sampling.sample_from_logits` (the sampler the
decode loop uses) and `lmgen.beam.beam_search` (its recorded trace), never from a second
implementation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from lmgen.errors import ConfigError

from . import style
from .common import as_lm, entropy, prompt_ids, require_prompt, to_numpy

# The method knobs `next_data` sets itself; other processor knobs (penalties, filters, ...)
# may be passed and then apply to every method.
_METHOD_KNOBS = ("strategy", "temperature", "top_k", "top_p", "num_beams", "seed")


@dataclass
class MethodPanel:
    """One decoding method's view of the shown candidates (all arrays follow their order)."""

    key: str
    """"greedy" | "temperature" | "top_k" | "top_p" | "beam\""""
    title: str
    subtitle: str
    chain: list[str]
    """the processors applied, as the generator prints them"""
    probs: np.ndarray
    """probability after the processors (beam: exp of the first step's score; NaN where the
    beam step did not score the token)"""
    status: list[str]
    """per candidate: "kept" | "removed"; beam: "kept" | "finished" | "pruned" | "unscored\""""
    selected_token_ids: list[int]
    """what the method picks: greedy's argmax, a seeded sample, or the beams kept"""
    kept_count: int
    """how many tokens of the whole vocabulary survive (beam: the beams kept)"""
    cutoff: int | None = None
    """the cut line falls after this many shown candidates (top-k, top-p)"""
    cumulative: np.ndarray | None = None
    """top-p: the cumulative probability of the distribution top-p received"""
    threshold: float | None = None
    """top-k: k; top-p: p; beam: how many continuations the step considered"""

    @property
    def kept(self) -> np.ndarray:
        return np.array([s in ("kept", "finished") for s in self.status], dtype=bool)


@dataclass
class NextComparison:
    """The data behind `plot_next`: the top-N candidates by raw logit, seen by each method."""

    prompt: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    tokens: list[str]
    """readable labels (␣ for spaces, escapes for bytes the font cannot draw)"""
    logits: np.ndarray
    raw_probs: np.ndarray
    vocab_size: int
    seed: int
    methods: list[MethodPanel] = field(default_factory=list)

    all_logits: torch.Tensor | None = field(default=None, repr=False)
    """the raw logits over the whole vocabulary"""
    labels: dict[int, str] = field(default_factory=dict, repr=False)
    """readable labels of the chosen tokens that are not among the shown ones"""

    def rank_of(self, token_id: int) -> int:
        """The 1-based rank of a token by raw logit over the whole vocabulary."""
        if self.all_logits is None:
            return 0
        return int((self.all_logits > self.all_logits[token_id]).sum()) + 1

    def method(self, key: str) -> MethodPanel:
        for m in self.methods:
            if m.key == key:
                return m
        raise KeyError(key)


def _check_method_knobs(config: dict) -> None:
    clash = sorted(set(config) & set(_METHOD_KNOBS))
    if clash:
        raise ConfigError(
            f"{', '.join(clash)}: set by the method panels themselves; use the "
            "named arguments (temperature=, top_k=, top_p=, num_beams=, seed=)",
            clash[0],
        )


def _prefix_cutoff(status: list[str]) -> int | None:
    """n when the first n candidates are kept and the rest removed; None otherwise."""
    kept = [s == "kept" for s in status]
    n = sum(kept)
    if 0 < n < len(kept) and all(kept[:n]):
        return n
    return None


def next_data(
    lm,
    prompt: str,
    *,
    top: int = 10,
    temperature: float = 0.8,
    top_k: int = 5,
    top_p: float = 0.9,
    num_beams: int = 3,
    seed: int = 0,
    **config,
) -> NextComparison:
    """The next-token distribution after `prompt` as greedy decoding, temperature sampling,
    top-k, top-p and the first beam-search step see it, on the same top-`top` candidates.

    Extra keyword arguments (any GenerationConfig setting: a penalty, a filter) join every
    method's chain."""
    from lmgen.decoding.api import next_token
    from lmgen.decoding.processors import TopP, build_chain
    from lmgen.decoding.sampling import make_generator, sample_from_logits
    from lmgen.generation_config import GenerationConfig

    lm = as_lm(lm)
    require_prompt(prompt, "plot next")
    _check_method_knobs(config)
    if not isinstance(top, int) or isinstance(top, bool) or top < 1:
        raise ConfigError(f"top must be an int >= 1, got {top!r}", "top")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"seed must be an int >= 0, got {seed!r}", "seed")
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ConfigError(f"top_k must be an int >= 1 for the top-k panel, got {top_k!r}", "top_k")
    if not isinstance(top_p, int | float) or not 0 < top_p < 1:
        raise ConfigError(f"top_p must be in (0, 1) for the top-p panel, got {top_p!r}", "top_p")
    if not isinstance(temperature, int | float) or not 0 < temperature < math.inf:
        raise ConfigError(
            f"temperature must be finite and > 0 for the temperature panel, got {temperature!r}",
            "temperature",
        )
    tok = lm.tokenizer

    greedy = next_token(lm, prompt, top=top, strategy="greedy", **config)
    ids = [c.token_id for c in greedy.candidates]
    index = torch.tensor(ids)
    V = int(greedy.logits.shape[-1])
    data = NextComparison(
        prompt,
        greedy.prompt_token_ids,
        ids,
        style.token_labels(tok, ids),
        to_numpy(greedy.logits[index]),
        to_numpy(greedy.logits.softmax(-1)[index]),
        V,
        seed,
    )

    def panel(key, title, subtitle, nt, selected, **extra) -> MethodPanel:
        kept_all = torch.isfinite(nt.processed_logits)
        probs = nt.processed_logits.softmax(-1)
        status = ["kept" if bool(kept_all[i]) else "removed" for i in ids]
        return MethodPanel(
            key,
            title,
            subtitle,
            nt.chain,
            to_numpy(probs[index]),
            status,
            selected,
            int(kept_all.sum()),
            **extra,
        )

    def sample(nt) -> list[int]:
        # The decode loop's own generator and sampler, seeded as `generate(seed=...)` does.
        gen = make_generator(seed, lm.device)
        picked = sample_from_logits(nt.processed_logits[None], [gen])
        return [int(picked[0])]

    data.methods.append(
        panel("greedy", "greedy", "the most likely token", greedy, [greedy.greedy_token_id])
    )

    nt = next_token(lm, prompt, top=1, strategy="sample", temperature=temperature, **config)
    data.methods.append(
        panel(
            "temperature",
            f"temperature T={temperature:g}",
            "sample softmax(logits / T)",
            nt,
            sample(nt),
        )
    )

    nt = next_token(lm, prompt, top=1, strategy="sample", top_k=top_k, **config)
    p = panel("top_k", f"top-k, k={top_k}", "", nt, sample(nt), threshold=float(top_k))
    p.cutoff = _prefix_cutoff(p.status)
    p.subtitle = f"keeps {p.kept_count} of {V}, samples"
    data.methods.append(p)

    nt = next_token(lm, prompt, top=1, strategy="sample", top_p=top_p, **config)
    p = panel("top_p", f"top-p, p={top_p:g}", "", nt, sample(nt), threshold=float(top_p))
    p.cutoff = _prefix_cutoff(p.status)
    p.subtitle = f"keeps {p.kept_count} of {V}, samples"
    # The cumulative mass of the distribution top-p itself received (after any processor
    # that runs before it in the chain), summed in the order shown.
    cfg = GenerationConfig.from_kwargs(strategy="sample", top_p=top_p, **config)
    ids_t = torch.tensor([data.prompt_token_ids], device=lm.device)
    chain = build_chain(
        cfg,
        prompt_length=len(data.prompt_token_ids),
        eos_token_ids=lm.eos_token_ids,
        tokenizer=lm.tokenizer,
    )
    at = next(i for i, proc in enumerate(chain) if isinstance(proc, TopP))
    before = type(chain)(chain[:at])
    entering = before(ids_t, nt.logits[None].to(lm.device)) if before else nt.logits[None]
    p.cumulative = np.cumsum(to_numpy(entering[0].softmax(-1).cpu()[index]))
    data.methods.append(p)

    data.methods.append(_beam_panel(lm, prompt, data, num_beams, config))
    data.all_logits = greedy.logits.detach().cpu()
    for m in data.methods:
        for t in m.selected_token_ids:
            if t not in ids:
                data.labels[t] = style.token_label(tok, t)
    return data


def _beam_panel(lm, prompt, data: NextComparison, num_beams: int, config: dict) -> MethodPanel:
    from lmgen.decoding.api import beam_trace
    from lmgen.decoding.beam import NEG
    from lmgen.generation_config import GenerationConfig

    # Two steps, so that the first step's candidates are judged as running beams rather than
    # all finishing at the length limit; the picture shows the first.
    prompt_ids(lm, prompt, new_tokens=2)  # the context check, with the plot's wording
    result, trace = beam_trace(
        lm, prompt, strategy="beam", num_beams=num_beams, max_new_tokens=2, **config
    )
    ids = result.prompt_token_ids
    cfg = GenerationConfig(strategy="beam", num_beams=num_beams, max_new_tokens=2, **config)
    first = {c["token_id"]: c for c in trace.steps[0].candidates if c["score"] > NEG / 2}
    probs, status = [], []
    for t in data.token_ids:
        c = first.get(t)
        probs.append(np.exp(c["score"]) if c else np.nan)
        status.append(c["status"] if c else "unscored")
    kept = [c for c in trace.steps[0].candidates if c["status"] == "kept"]
    kept.sort(key=lambda c: c["beam"])
    finished = sum(c["status"] == "finished" for c in first.values())
    sub = f"first step: {len(kept)} beams kept"
    if finished:
        sub += f", {finished} finished"
    from lmgen.decoding.processors import build_chain

    chain = build_chain(
        cfg, prompt_length=len(ids), eos_token_ids=lm.eos_token_ids, tokenizer=lm.tokenizer
    )
    return MethodPanel(
        "beam",
        f"beam search, {num_beams} beams",
        sub,
        chain.describe(),
        np.array(probs, dtype=float),
        status,
        [c["token_id"] for c in kept],
        len(kept),
        threshold=float(len(first)),
    )


# -- the picture -------------------------------------------------------------------------------


@style.styled
def draw_next(data: NextComparison) -> Figure:
    n, m = len(data.token_ids), len(data.methods)
    fig = style.new_figure(2.45 * m + 1.9, 0.42 * n + 2.4)
    axes = fig.subplots(1, m, sharey=True)
    axes = np.atleast_1d(axes)
    vmax = max(float(np.nanmax(p.probs)) for p in data.methods)
    norm = Normalize(0.0, max(vmax, 1e-9))
    cmap = matplotlib_cmap(style.SEQ_CMAP)
    image = None
    for ax, panel in zip(axes, data.methods, strict=True):
        image = _draw_panel(ax, panel, data, norm, cmap)
    labels = [f"{t}  #{i + 1}" for i, t in enumerate(data.tokens)]
    axes[0].set_yticks(range(n), labels)
    axes[0].set_ylabel(f"top {n} next tokens by raw logit")
    for ax in axes[1:]:
        ax.tick_params(axis="y", left=False)
    bar = fig.colorbar(image, ax=list(axes), shrink=0.8, pad=0.01, aspect=30)
    bar.set_label("probability after the method's processors")
    fig.suptitle(f"Next token after “{style.quoted(data.prompt)}”")
    return fig


def matplotlib_cmap(name: str):
    import matplotlib

    return matplotlib.colormaps[name].with_extremes(bad=style.REMOVED)


def _cutoff_note(pad: float) -> dict:
    """The text style of a note on a panel's cut-off line."""
    box = dict(facecolor="white", edgecolor="none", pad=pad, alpha=0.85)
    return dict(va="bottom", fontsize=8.5, color=style.CUTOFF, bbox=box)


def _draw_panel(ax, panel: MethodPanel, data: NextComparison, norm, cmap):
    n = len(panel.probs)
    removed = ~panel.kept
    shown = np.where(removed, np.nan, panel.probs)
    image = ax.imshow(
        shown[:, None], cmap=cmap, norm=norm, aspect="auto", extent=(0.0, 1.0, n - 0.5, -0.5)
    )
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(n - 0.5, -0.5)
    for spine in ax.spines.values():
        spine.set_visible(False)
    selected = set(panel.selected_token_ids)
    for i, (t, p, st) in enumerate(zip(data.token_ids, panel.probs, panel.status, strict=True)):
        if st in ("removed", "pruned", "unscored"):
            ax.add_patch(
                Rectangle(
                    (0, i - 0.5),
                    1,
                    1,
                    facecolor="none",
                    edgecolor="white",
                    hatch="///",
                    linewidth=0,
                    zorder=2,
                )
            )
            text = {
                "removed": "removed",
                "pruned": f"{pct(p)} pruned",
                "unscored": f"not in the top {panel.threshold:g}",
            }[st]
            x, ha = (0.04, "left") if panel.cumulative is not None else (0.5, "center")
            ax.text(x, i, text, ha=ha, va="center", color=style.REMOVED_TEXT, fontsize=9, zorder=7)
            continue
        dark = norm(p) > 0.55
        label = pct(p)
        if st == "finished":
            label += " (ends)"
        # On the top-p panel the numbers sit left, out of the cumulative line's way.
        x, ha = (0.04, "left") if panel.cumulative is not None else (0.5, "center")
        ax.text(
            x,
            i,
            label,
            ha=ha,
            va="center",
            zorder=7,
            fontsize=10,
            color="white" if dark else "black",
        )
        if t in selected:
            ax.add_patch(
                Rectangle(
                    (0.02, i - 0.46),
                    0.96,
                    0.92,
                    facecolor="none",
                    edgecolor=style.SELECTED,
                    linewidth=2.5,
                    zorder=4,
                )
            )
    if panel.key == "beam":
        mark = dict(ha="right", va="center", fontsize=8, color=style.SELECTED, zorder=5)
        for b, t in enumerate(panel.selected_token_ids):
            if t in data.token_ids:
                ax.text(0.97, data.token_ids.index(t), f"b{b}", **mark)
    if panel.cutoff is not None:
        y = panel.cutoff - 0.5
        ax.axhline(y, color=style.CUTOFF, linewidth=2.2, linestyle=(0, (4, 2)), zorder=5)
        what = f"k = {panel.threshold:g}" if panel.key == "top_k" else "mass ≥ p reached"
        ax.text(0.98, y - 0.08, what, ha="right", zorder=6, **_cutoff_note(pad=0.5))
    if panel.key in ("top_k", "top_p") and panel.cutoff is None and panel.kept.all():
        what = f"cut-off below #{n}: keeps {panel.kept_count}"
        ax.text(0.5, n - 0.55, what, ha="center", zorder=8, **_cutoff_note(pad=1.0))
    if panel.cumulative is not None:
        y = np.arange(n)
        ax.plot(
            panel.cumulative,
            y,
            color="#ff7f0e",
            marker="o",
            markersize=3.5,
            linewidth=1.6,
            zorder=6,
            label="cumulative mass",
        )
        ax.axvline(panel.threshold, color="#ff7f0e", linestyle=":", linewidth=1.6, zorder=6)
        ax.text(
            panel.threshold,
            -0.45,
            f" p={panel.threshold:g} ",
            color="#c65a00",
            fontsize=8.5,
            ha="right" if panel.threshold > 0.6 else "left",
            va="top",
            zorder=6,
        )
        ax.set_xticks([0, 0.5, 1.0], ["0", "0.5", "1"])
        ax.tick_params(axis="x", labelsize=8, length=2)
        ax.set_xlabel("cumulative mass (orange)", fontsize=9)
    else:
        ax.set_xticks([])
    chosen = _chosen_text(panel, data)
    ax.set_title(f"{panel.title}\n{panel.subtitle}", fontsize=11)
    if panel.cumulative is not None:
        ax.set_xlabel(f"{chosen}\ncumulative mass (orange line)", fontsize=9.5)
    else:
        ax.set_xlabel(chosen, fontsize=9.5)
    ax.xaxis.label.set_color(style.SELECTED)
    return image


def _chosen_text(panel: MethodPanel, data: NextComparison) -> str:
    if panel.key == "beam":
        return "kept: " + ", ".join(_where(t, data) for t in panel.selected_token_ids)
    verb = "picks" if panel.key == "greedy" else f"draws (seed {data.seed})"
    return f"{verb} {_where(panel.selected_token_ids[0], data)}"


def _where(token_id: int, data: NextComparison) -> str:
    if token_id in data.token_ids:
        return f"#{data.token_ids.index(token_id) + 1}"
    rank = data.rank_of(token_id)
    return f"#{rank} “{data.labels.get(token_id, token_id)}” (not shown)"


def plot_next(lm, prompt: str | None = None, **kwargs) -> Figure:
    """The next-token heatmap per method (greedy, temperature, top-k, top-p, first beam step)
    on the same candidates: removed candidates hatched grey, the chosen token boxed, the
    top-k and top-p cut lines drawn.

    `plot_next(lm, prompt, top=10, temperature=0.8, top_k=5, top_p=0.9, num_beams=3, seed=0)`,
    or `plot_next(next_data(...))`."""
    if isinstance(lm, NextComparison):
        return draw_next(lm)
    return draw_next(next_data(lm, prompt, **kwargs))


# -- temperature -------------------------------------------------------------------------------


DEFAULT_TEMPERATURES = (0.1, 0.5, 1.0, 1.5, 2.0)


@dataclass
class TemperatureSweep:
    """The data behind `plot_temperature`: one row per temperature."""

    prompt: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    tokens: list[str]
    temperatures: np.ndarray
    probs: np.ndarray
    """(temperatures, candidates): softmax(logits / T) of the shown candidates"""
    rest: np.ndarray
    """the probability of every token not shown, per temperature"""
    entropy: np.ndarray
    """entropy in nats of the whole distribution, per temperature"""
    chains: list[list[str]]
    vocab_size: int


def temperature_data(
    lm, prompt: str, temperatures=DEFAULT_TEMPERATURES, *, top: int = 10, **config
) -> TemperatureSweep:
    """The next-token distribution after `prompt` at each temperature, via the sampling chain
    `next_token` builds; the shown candidates are the top `top` by raw logit."""
    from lmgen.decoding.api import next_token

    lm = as_lm(lm)
    require_prompt(prompt, "plot temperature")
    temps = [float(t) for t in temperatures]
    if not temps:
        raise ConfigError("give at least one temperature", "temperatures")
    for t in temps:
        if not np.isfinite(t) or t <= 0:
            raise ConfigError(f"temperatures must be finite and > 0, got {t:g}", "temperatures")
    if "temperature" in config or "strategy" in config:
        raise ConfigError("temperature and strategy are set by the sweep itself", "temperature")
    if not isinstance(top, int) or isinstance(top, bool) or top < 1:
        raise ConfigError(f"top must be an int >= 1, got {top!r}", "top")
    rows, rest, ent, chains = [], [], [], []
    ids = None
    for t in temps:
        nt = next_token(lm, prompt, top=top, strategy="sample", temperature=t, **config)
        if ids is None:
            ids = [c.token_id for c in nt.candidates]
            prompt_ids_ = nt.prompt_token_ids
        probs = nt.processed_logits.softmax(-1)
        shown = to_numpy(probs[torch.tensor(ids)])
        rows.append(shown)
        rest.append(max(0.0, 1.0 - float(shown.sum())))
        ent.append(float(entropy(nt.processed_logits)))
        chains.append(nt.chain)
    return TemperatureSweep(
        prompt,
        prompt_ids_,
        ids,
        style.token_labels(lm.tokenizer, ids),
        np.array(temps),
        np.stack(rows),
        np.array(rest),
        np.array(ent),
        chains,
        int(nt.logits.shape[-1]),
    )


@style.styled
def draw_temperature(data: TemperatureSweep) -> Figure:
    n, m = len(data.token_ids), len(data.temperatures)
    fig = style.new_figure(max(9.0, 0.95 * (n + 1) + 4.6), 0.62 * m + 2.9)
    grid = fig.add_gridspec(1, 2, width_ratios=[0.95 * (n + 1), 3.0])
    ax = fig.add_subplot(grid[0])
    bars = fig.add_subplot(grid[1], sharey=ax)
    table = np.concatenate([data.probs, data.rest[:, None]], axis=1)
    cmap = matplotlib_cmap(style.SEQ_CMAP)
    image = ax.imshow(table, cmap=cmap, vmin=0.0, vmax=max(1e-9, float(table.max())), aspect="auto")
    norm = image.norm
    for r in range(m):
        for c in range(n + 1):
            v = table[r, c]
            ax.text(
                c,
                r,
                pct(v),
                ha="center",
                va="center",
                fontsize=9,
                color="white" if norm(v) > 0.55 else "black",
            )
    ax.axvline(n - 0.5, color="white", linewidth=4)
    ax.set_xticks(
        range(n + 1),
        [*data.tokens, "(all others)"],
        rotation=45,
        ha="right",
        rotation_mode="anchor",
    )
    ax.set_yticks(range(m), [f"T = {t:g}" for t in data.temperatures])
    ax.set_xlabel(f"top {n} next tokens by raw logit")
    ax.set_title("probability = softmax(logits / T)")
    for spine in ax.spines.values():
        spine.set_visible(False)

    bars.barh(range(m), data.entropy, color="#9467bd", height=0.6)
    top = float(np.log(data.vocab_size))
    for r, h in enumerate(data.entropy):
        bars.text(h, r, f" {h:.2f}", va="center", ha="left", fontsize=10)
    bars.set_xlim(0, max(float(data.entropy.max()) * 1.3, 0.5))
    bars.set_xlabel(f"entropy (nats)\nuniform over {data.vocab_size}: {top:.2f}")
    bars.set_title("entropy")
    bars.tick_params(axis="y", left=False, labelleft=False)
    fig.colorbar(image, ax=ax, shrink=0.85, pad=0.01, aspect=25).set_label("probability")
    fig.suptitle(f"Temperature after “{style.quoted(data.prompt)}”")
    return fig


def pct(v: float) -> str:
    """A probability as a short percentage: 0.1% resolution below 10%."""
    if not np.isfinite(v):
        return "–"
    if v < 0.0005:
        return "0%"
    return f"{v:.1%}" if v < 0.0995 else f"{v:.0%}"


def plot_temperature(lm, prompt: str | None = None, **kwargs) -> Figure:
    """The top-N distribution at each temperature (default 0.1, 0.5, 1, 1.5, 2) as a heatmap,
    with each distribution's entropy beside it.

    `plot_temperature(lm, prompt, temperatures=(...), top=10)`, or
    `plot_temperature(temperature_data(...))`."""
    if isinstance(lm, TemperatureSweep):
        return draw_temperature(lm)
    return draw_temperature(temperature_data(lm, prompt, **kwargs))
