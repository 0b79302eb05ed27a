"""Regenerate the picture gallery: docs/gallery/*.png and docs/gallery.md.

    python scripts/make_gallery.py                 # the bundled model (shakespeare)
    python scripts/make_gallery.py --model DIR     # any model directory
    python scripts/make_gallery.py --only beam     # one picture

Every picture is drawn by the `lmgen plot` command shown above it in docs/gallery.md, run
in-process with fixed seeds, so running this again gives the same pictures. The PNGs are
then stored with a 256-colour palette to keep the repository small.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Entry:
    name: str
    title: str
    args: list[str]
    text: str


ENTRIES = [
    Entry(
        "next",
        "One next token, five decoding methods",
        [
            "next",
            "JULIET:\nO Romeo, Romeo, wherefore art",
            "--top",
            "10",
            "--temperature",
            "0.8",
            "--top-k",
            "5",
            "--top-p",
            "0.9",
            "--num-beams",
            "3",
            "--seed",
            "0",
        ],
        "Each column is one decoding method looking at the same ten most likely next "
        "tokens (rows, by raw logit). The colour and the number are the probability that "
        "method samples from after its processors; hatched grey cells were removed. Greedy "
        "takes the top row. Temperature rescales every logit, so nothing is removed but "
        "the shares move. Top-k cuts below the k-th token (dashed line); top-p keeps the "
        "smallest head of the list whose mass reaches p: the orange line is the running "
        "total and the dotted line marks p. The red box is the token each method picks "
        "(the sampled ones with seed 0, the same draw `lmgen generate --seed 0` makes); "
        "the beam column shows the first step of beam search, which keeps the best three "
        "continuations as beams and prunes the next three.",
    ),
    Entry(
        "temperature",
        "Temperature: the same logits, flatter or sharper",
        [
            "temperature",
            "ROMEO:\nWhat say you, my",
            "--top",
            "10",
            "--temperatures",
            "0.1,0.5,1,1.5,2",
        ],
        "One row per temperature T: the probability of the ten most likely next tokens "
        "after dividing the logits by T, and the share of all other tokens in the last "
        "column. At T = 0.1 almost all the mass sits on the top token (greedy in all but "
        "name); at T = 2 most of it has drained into the long tail. The bars on the right "
        "give each distribution's entropy in nats, which grows with T towards the "
        "entropy of the uniform distribution.",
    ),
    Entry(
        "embeddings",
        "Embeddings: what the first block receives",
        ["embeddings", "To be, or not to be, that is the question"],
        "The three heatmaps have one row per token of the prompt and one column per "
        "embedding dimension: the token embedding looked up for each token, the positional "
        "embedding looked up for each position, and their sum, which is exactly what the "
        "first transformer block reads (the same token at two positions, such as `␣be`, "
        "has identical rows on the left but different sums). Below left, the cosine "
        "similarity between the positional embeddings: each position has a direction of "
        "its own, nearly orthogonal to the others. Below right, the same for the sums: a "
        "repeated token (`␣be`, `,`) stays similar to itself wherever it stands, which is "
        "what lets attention find it again.",
    ),
    Entry(
        "attention",
        "Attention: where each token looks",
        ["attention", "ROMEO:\nBut soft, what light through yonder window breaks?", "--layer", "1"],
        "Every head of layer 1 (of 4). Row q shows how the token at position q spreads its "
        "attention over the tokens up to itself (each row sums to 1); the light grey "
        "triangle is the future, which a causal model cannot see. The colour scale is a "
        "square root, so thinly spread attention stays visible. Heads specialise: heads 1 "
        "and 3 keep returning to the colon that ends the speaker's name, head 2 mostly "
        "looks at the last few tokens. `--head H` draws one head large, with the weights "
        "written in.",
    ),
    Entry(
        "beam",
        "Beam search: the tree it explores",
        ["beam", "ROMEO:\n", "--num-beams", "3", "--max-new-tokens", "6"],
        "Read left to right from the prompt. At each step beam search extends every "
        "running beam, scores the continuations by their cumulative log-probability "
        "(the number in each box) and looks at the best six: the best three that have not "
        "ended become the next step's beams (blue), the rest are pruned (grey, dashed). A "
        "continuation that ends, with the end token or at the length limit, is finished "
        "(green); the finished hypotheses beam search returns are gold, ranked by their "
        "length-normalised score in the list below. To stay readable, a tree holds at most "
        "8 beams (a step shows twice as many candidates) and draws the first 10 steps of a "
        "longer search, saying so in its title; the list of hypotheses is always complete.",
    ),
    Entry(
        "generation",
        "A generated text, token by token",
        [
            "generation",
            "ROMEO:\nI",
            "--strategy",
            "sample",
            "--temperature",
            "0.8",
            "--top-k",
            "40",
            "--seed",
            "2",
            "--max-new-tokens",
            "40",
        ],
        "Sampling with temperature 0.8 and top-k 40 (seed 2). Each generated token is "
        "coloured by the probability it had when it was drawn: green was an easy choice, "
        "red a surprising one. Below, per step: that probability (bars; the dots are the "
        "raw model's probability before temperature and top-k) and the entropy of the "
        "distribution it was drawn from (solid) and of the raw one (dashed). The line "
        "breaks after a comma are easy, with low entropy; most words are drawn from wide "
        "distributions, where temperature and top-k matter most.",
    ),
]


def shrink_png(path: Path) -> None:
    """Store a PNG with a 256-colour palette when that is smaller (pictures of flat colour
    and text lose nothing visible)."""
    from PIL import Image

    before = path.stat().st_size
    tmp = path.with_suffix(".tmp.png")
    with Image.open(path) as im:
        im.convert("RGB").quantize(
            colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
        ).save(tmp, optimize=True)
    if tmp.stat().st_size < before:
        tmp.replace(path)
    else:
        tmp.unlink()


def quote(word: str) -> str:
    """A shell word; one with a line break in bash's $'…' form, to stay on one line."""
    if "\n" not in word:
        return shlex.quote(word)
    return "$'" + word.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def command_line(entry: Entry, model: str | None) -> str:
    words = ["lmgen", "plot", *entry.args]
    if model:
        words += ["--model", model]
    return " ".join(quote(w) for w in [*words, "--out", f"docs/gallery/{entry.name}.png"])


def write_markdown(path: Path, model: str | None) -> None:
    lines = [
        "# Gallery",
        "",
        "One picture per `lmgen plot` command, drawn from the bundled `shakespeare` model "
        "by `scripts/make_gallery.py` (fixed seeds; run `python scripts/make_gallery.py` to "
        "regenerate them). The name given to `--out` picks the format: `.png`, `.svg` or "
        "`.pdf` (another suffix is refused, unless `--format` says which of the three to "
        "write). Every number in them comes from the code that generates: the "
        "model's forward pass, the processor chain, the sampler and beam search's own trace.",
        "",
        "The same pictures from Python: each `lmgen.plots.plot_*` function returns a "
        "matplotlib `Figure`, and each `lmgen.plots.*_data` function returns the numbers "
        "behind it as arrays in a dataclass.",
        "",
        "Tokens are written as the model sees them: `␣` is a space that belongs to the "
        "token, `↵` a line break, and `\\xe2` a byte of a character split over several "
        "tokens.",
        "",
    ]
    for entry in ENTRIES:
        lines += [
            f"## {entry.title}",
            "",
            "```bash",
            command_line(entry, model),
            "```",
            "",
            f"![{entry.title}](gallery/{entry.name}.png)",
            "",
            entry.text,
            "",
        ]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="model directory or bundled name (default: the bundled model)"
    )
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs" / "gallery")
    parser.add_argument("--markdown", type=Path, default=ROOT / "docs" / "gallery.md")
    parser.add_argument(
        "--only",
        nargs="*",
        choices=[e.name for e in ENTRIES],
        help="draw only these pictures (the markdown is still rewritten)",
    )
    parser.add_argument("--dpi", type=int, default=100)
    args = parser.parse_args(argv)

    import torch

    from lmgen.cli import main as lmgen_main

    torch.manual_seed(0)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for entry in ENTRIES:
        if args.only and entry.name not in args.only:
            continue
        out = args.out_dir / f"{entry.name}.png"
        cmd = ["plot", *entry.args, "--out", str(out), "--dpi", str(args.dpi)]
        if args.model:
            cmd += ["--model", args.model]
        print(f"{entry.name}: {command_line(entry, args.model)}", file=sys.stderr)
        rc = lmgen_main(cmd)
        if rc:
            return rc
        shrink_png(out)
        print(f"  {out.stat().st_size // 1024} KB", file=sys.stderr)
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    write_markdown(args.markdown, args.model)
    print(args.markdown, file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
