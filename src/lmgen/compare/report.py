"""A comparison as JSON, as a terminal table, as Markdown next to the paper's Table 1, and
the paper's directions checked against it."""

from __future__ import annotations

from typing import Any

from .strategies import HUMAN

FORMAT = 1

PAPER = "Holtzman et al., The Curious Case of Neural Text Degeneration, ICLR 2020, Table 1"
PAPER_SETUP = (
    "GPT-2 Large; 5,000 WebText test contexts (text up to the first paragraph end, under 40 "
    "tokens), 200-token continuations; human = the rest of the same documents"
)
# (perplexity, Self-BLEU-4, Zipf coefficient, repetition %) as published; the paper's
# stochastic beam search row is left out (lmgen has no stochastic beam search), and min-p and
# typical-p came after it.
PAPER_TABLE1: dict[str, tuple[float, float, float, float]] = {
    HUMAN: (12.38, 0.31, 0.93, 0.28),
    "greedy": (1.50, 0.50, 1.00, 73.66),
    "beam, b=16": (1.48, 0.44, 0.94, 28.94),
    "pure sampling": (22.73, 0.28, 0.93, 0.22),
    "sampling, t=0.9": (10.25, 0.35, 0.96, 0.66),
    "top-k=40": (6.88, 0.39, 0.96, 0.78),
    "top-k=640": (13.82, 0.32, 0.96, 0.28),
    "top-k=40, t=0.7": (3.48, 0.44, 1.00, 8.86),
    "nucleus, p=0.95": (13.13, 0.32, 0.95, 0.36),
}
PAPER_COLUMNS = ("perplexity", "self_bleu4", "zipf", "repetition_pct")


def result_dict(result) -> dict[str, Any]:
    """Every number of a comparison (no prompt or continuation text: those go to --out)."""
    return {
        "format": FORMAT,
        "model": result.model,
        "settings": result.settings,
        "timing": result.timing,
        "rows": [
            {
                "name": r.name,
                "kind": r.kind,
                "options": r.options,
                "chain": r.chain,
                "warnings": r.warnings,
                "texts": len(r.samples),
                "generation_s": r.seconds,
                "metrics": r.metrics,
                "per_position_prob": r.per_position_prob,
                "entropy_histogram": r.entropy_histogram,
            }
            for r in result.rows
        ],
        "passages": [
            {"source": p.source, "prompt_tokens": len(p.prompt_ids)} for p in result.passages
        ],  # fmt: skip
        "checks": checks(result_rows(result)),
        "paper": {
            "source": PAPER,
            "setup": PAPER_SETUP,
            "columns": list(PAPER_COLUMNS),
            "rows": {k: list(v) for k, v in PAPER_TABLE1.items()},
        },
    }


def result_rows(data) -> dict[str, dict[str, Any]]:
    """name -> metrics, from a CompareResult or its dict."""
    if isinstance(data, dict):
        return {r["name"]: r["metrics"] for r in data["rows"]}
    return {r.name: r.metrics for r in data.rows}


def value(metrics: dict, name: str):
    m = metrics.get(name)
    return None if m is None else m.get("value")


# -- the paper's directions ---------------------------------------------------------------------


def checks(rows: dict[str, dict]) -> list[dict[str, Any]]:
    """The directions of the paper's Table 1 that the issue asks this model to show, each with
    the rule used, whether it holds (None: a row it needs is missing) and the numbers."""
    out = []

    def ppl(name):
        return value(rows[name], "perplexity") if name in rows else None

    def rep(name):
        return value(rows[name], "repetition_pct") if name in rows else None

    g, h, s = rep("greedy"), rep(HUMAN), rep("pure sampling")
    out.append(
        _check(
            "greedy repeats far more than sampling and human text",
            "greedy's loop rate at least 10 points above both pure sampling's and human text's",
            None if None in (g, h, s) else g >= max(h, s) + 10,
            f"repetition: greedy {_f(g)} %, pure sampling {_f(s)} %, human {_f(h)} %",
        )
    )
    pg, pb, ph = ppl("greedy"), ppl("beam, b=16"), ppl(HUMAN)
    out.append(
        _check(
            "greedy and beam search text is far more likely than human text",
            "greedy's and beam's perplexity both at most half of human text's",
            None if None in (pg, pb, ph) else max(pg, pb) <= ph / 2,
            f"perplexity: greedy {_f(pg)}, beam {_f(pb)}, human {_f(ph)}",
        )
    )
    ps = ppl("pure sampling")
    out.append(
        _check(
            "pure sampling is less likely than human text",
            "pure sampling's perplexity above human text's",
            None if None in (ps, ph) else ps > ph,
            f"perplexity: pure sampling {_f(ps)}, human {_f(ph)}",
        )
    )
    pp, pk = ppl("nucleus, p=0.95"), ppl("top-k=40")
    out.append(
        _check(
            "top-p is closer to human perplexity than top-k=40",
            "|nucleus p=0.95 - human| < |top-k=40 - human| (perplexity)",
            None if None in (pp, pk, ph) else abs(pp - ph) < abs(pk - ph),
            f"perplexity: nucleus {_f(pp)}, top-k=40 {_f(pk)}, human {_f(ph)}",
        )
    )
    return out + newer_checks(rows, ppl)


def newer_checks(rows: dict[str, dict], ppl) -> list[dict[str, Any]]:
    """The headline claims of issue 29's samplers, as far as these measures reach them:
    Top-H (arXiv 2509.02510) and p-less (arXiv 2509.23234) on coherence at a high
    temperature against min-p, p-less-norm against p-less on diversity, adaptive-p
    (llama.cpp #17927) on the probability of the tokens it chooses."""

    def get(name, metric):
        return value(rows[name], metric) if name in rows else None

    out = []
    th2, mp2, mp1 = ppl("top-H=0.4, t=2"), ppl("min-p=0.1, t=2"), ppl("min-p=0.1")
    out.append(
        _check(
            "Top-H keeps high-temperature text more coherent than min-p (Top-H paper)",
            "at t=2, top-H=0.4's perplexity below min-p=0.1's",
            None if None in (th2, mp2) else th2 < mp2,
            f"perplexity at t=2: top-H=0.4 {_f(th2)}, min-p=0.1 {_f(mp2)}; "
            f"distinct-4 {_f(get('top-H=0.4, t=2', 'distinct_4'), 3)} and "
            f"{_f(get('min-p=0.1, t=2', 'distinct_4'), 3)}",
        )
    )
    pl1, pl2 = ppl("p-less"), ppl("p-less, t=2")
    ok = None if None in (pl1, pl2, mp1, mp2) else pl2 / pl1 < mp2 / mp1
    out.append(
        _check(
            "p-less degrades less than min-p as the temperature rises (p-less paper)",
            "perplexity at t=2 over t=1: p-less's ratio below min-p=0.1's",
            ok,
            f"perplexity t=1 -> t=2: p-less {_f(pl1)} -> {_f(pl2)}, "
            f"min-p=0.1 {_f(mp1)} -> {_f(mp2)}",
        )
    )
    d_plain, d_norm = get("p-less", "distinct_4"), get("p-less-norm", "distinct_4")
    out.append(
        _check(
            "p-less-norm is the more diverse of the two (p-less paper)",
            "p-less-norm's distinct-4 above p-less's",
            None if None in (d_plain, d_norm) else d_norm > d_plain,
            f"distinct-4: p-less-norm {_f(d_norm, 3)}, p-less {_f(d_plain, 3)}; perplexity "
            f"{_f(ppl('p-less-norm'))} and {_f(pl1)}",
        )
    )
    ap, ps = get("adaptive-p=0.3", "chosen_prob"), get("pure sampling", "chosen_prob")
    am = get("adaptive-p=0.3, min-p=0.05", "chosen_prob")
    out.append(
        _check(
            "adaptive-p steers the chosen tokens' probability to its target (llama.cpp #17927)",
            "alone (so it is given the model's own distribution), the mean probability of "
            "adaptive-p=0.3's tokens within 0.05 of 0.3",
            None if ap is None else abs(ap - 0.3) <= 0.05,
            f"mean model probability of the chosen token: adaptive-p=0.3 {_f(ap, 3)}, after "
            f"min-p=0.05 {_f(am, 3)} (min-p renormalises: what adaptive-p sees is higher), "
            f"pure sampling {_f(ps, 3)}",
        )
    )
    return out


def _check(claim: str, rule: str, holds, numbers: str) -> dict[str, Any]:
    return {"claim": claim, "rule": rule, "holds": holds, "numbers": numbers}


def _f(v, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


# -- the terminal table ------------------------------------------------------------------------

# (metric, header, digits): the main table, then the detail table
TABLE = [
    ("perplexity", "ppl", 2),
    ("self_bleu4", "S-BLEU4", 3),
    ("zipf", "Zipf", 2),
    ("repetition_pct", "loops%", 1),
    ("rep_4", "rep-4", 3),
    ("distinct_4", "dist-4", 3),
    ("entropy", "H", 2),
    ("chosen_entropy", "H drawn", 2),
]
DETAIL = [
    ("perplexity_chosen_from", "ppl drawn", 2),
    ("rep_1", "rep-1", 3),
    ("distinct_1", "dist-1", 3),
    ("eos_pct", "EOS%", 1),
    ("mean_length", "length", 1),
    ("tokens_per_s", "tok/s", 0),
]


def print_table(data: dict, console=None) -> None:
    """Rich tables of a comparison's dict: the measures, then the detail with the paper's
    four figures where it has the row, then the paper's directions."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    s = data["settings"]
    title = (
        f"{data['model']}: {s['prompts']} prompts from {s['source']}, "
        f"{s['max_new_tokens']} new tokens, seed {s['seed']}"
    )
    detail = DETAIL + ([("mauve", "MAUVE*", 3)] if s.get("mauve") else [])
    for cols, name in ((TABLE, title), (detail, None)):
        table = Table(title=name, title_justify="left", box=None, pad_edge=False)
        table.add_column("strategy", no_wrap=True)
        for _, header, _ in cols:
            table.add_column(header, justify="right", no_wrap=True)
        for row in data["rows"]:
            m = row["metrics"]
            cells = [_f(value(m, key), digits).replace("n/a", "-") for key, _, digits in cols]
            table.add_row(row["name"], *cells)
        console.print(table)
        console.print()
    known = [r["name"] for r in data["rows"] if r["name"] in PAPER_TABLE1]
    if known:
        table = Table(
            title="the paper's Table 1 (GPT-2 Large, WebText)", title_justify="left",
            box=None, pad_edge=False, style="dim",
        )  # fmt: skip
        table.add_column("strategy", no_wrap=True)
        for header in ("ppl", "S-BLEU4", "Zipf", "loops%"):
            table.add_column(header, justify="right")
        for name in known:
            table.add_row(name, *(f"{v:.2f}" for v in PAPER_TABLE1[name]))
        console.print(table)
        console.print()
    console.print(
        "ppl: perplexity of the continuation under the model, given its prompt (ppl drawn: "
        "under the distribution each token was drawn from). loops%: continuations that end in "
        "a repeating loop. H: mean entropy (nats) of the model's next-token distribution along "
        "the text; H drawn: of the distribution each token was drawn from (0 for greedy; "
        "none for beam search). 95% bootstrap intervals over prompts: --json."
        + (
            " *MAUVE on this model's own hidden states, not GPT-2 Large's."
            if s.get("mauve")
            else ""
        ),
        style="dim",
    )
    checks = data.get("checks", [])
    for c in checks:
        if c["holds"] is not None:
            mark = "holds" if c["holds"] else "does NOT hold"
            console.print(f"[bold]{mark}[/bold]: {c['claim']} ({c['numbers']})")
    unmeasured = sum(c["holds"] is None for c in checks)
    if unmeasured:  # their strategies were not in this run: one line, not one each
        console.print(
            f"{unmeasured} of the papers' claims need strategies this run did not have (the "
            "default set has them all; --json lists each claim)",
            style="dim",
        )


# -- Markdown for docs/decoding-report.md --------------------------------------------------------


def _ci(m: dict, name: str, digits: int) -> str:
    v = m.get(name) or {}
    if v.get("value") is None:
        return "—"
    text = f"{v['value']:.{digits}f}"
    if v.get("ci"):
        lo, hi = v["ci"]
        text += f" <sub>{lo:.{digits}f}–{hi:.{digits}f}</sub>"
    return text


def markdown_tables(data: dict) -> str:
    """The main table side by side with the paper's, then the finer detail."""
    lines = [
        "| | perplexity | paper | Self-BLEU-4 | paper | Zipf | paper | loops % | paper |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    digits = (2, 3, 2, 1)
    paper_digits = (2, 2, 2, 2)
    for row in data["rows"]:
        m = row["metrics"]
        paper = PAPER_TABLE1.get(row["name"])
        cells = []
        for i, key in enumerate(PAPER_COLUMNS):
            cells.append(_ci(m, key, digits[i]))
            cells.append(f"{paper[i]:.{paper_digits[i]}f}" if paper else "—")
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    mauve = data["settings"].get("mauve")
    head = ["rep-1", "rep-2", "rep-4", "distinct-1", "distinct-4", "H model", "H drawn",
            "ppl drawn-from", "EOS %", "length", "tok/s"]  # fmt: skip
    keys = [("rep_1", 3), ("rep_2", 3), ("rep_4", 3), ("distinct_1", 3), ("distinct_4", 3),
            ("entropy", 2), ("chosen_entropy", 2), ("perplexity_chosen_from", 2),
            ("eos_pct", 1), ("mean_length", 1), ("tokens_per_s", 0)]  # fmt: skip
    if mauve:
        head.append("MAUVE*")
        keys.append(("mauve", 3))
    lines += ["", "| | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]
    for row in data["rows"]:
        m = row["metrics"]
        cells = [_f(value(m, k), d) if m.get(k) else "—" for k, d in keys]
        lines.append(
            f"| {row['name']} | " + " | ".join(c.replace("n/a", "—") for c in cells) + " |"
        )
    return "\n".join(lines)


def markdown_checks(data: dict) -> str:
    lines = []
    for c in data.get("checks", []):
        mark = {True: "**holds**", False: "**does not hold**", None: "not measured"}[c["holds"]]
        lines.append(f"- {mark}: {c['claim']} — {c['numbers']} (rule: {c['rule']})")
    return "\n".join(lines)
