"""`lmgen plot …`: every command writes a real image; bad input gets a clear error."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from lmgen import GPTConfig
from lmgen.cli import main
from lmgen.errors import ConfigError
from lmgen.lm import LM
from lmgen.model import GPT


@pytest.fixture(scope="module")
def model_dir(tiny_tokenizer, tmp_path_factory):
    tok = tiny_tokenizer
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tok.vocab_size,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    path = tmp_path_factory.mktemp("plots") / "tiny"
    LM(GPT(config).eval(), tok).save(path)
    return str(path)


def image_stats(path) -> tuple[int, int, float, float]:
    """(width, height, grey-level spread, share of non-white pixels) of a png."""
    from PIL import Image

    with Image.open(path) as im:
        grey = np.asarray(im.convert("L"), dtype=float)
    return grey.shape[1], grey.shape[0], float(grey.std()), float((grey < 245).mean())


COMMANDS = {
    "next": ["To be, or not", "--top", "8"],
    "temperature": ["To be, or not", "--temperatures", "0.5,1,2"],
    "embeddings": [],
    "attention": ["To be, or not", "--layer", "1"],
    "beam": ["To be, or not", "--num-beams", "2", "--max-new-tokens", "3"],
    "generation": ["To be, or not", "--temperature", "0.9", "--seed", "1", "--max-new-tokens", "8"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_writes_a_sensible_png(command, model_dir, tmp_path, capsys):
    out = tmp_path / f"{command}.png"
    assert main(["plot", command, *COMMANDS[command], "-m", model_dir, "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    width, height, spread, inked = image_stats(out)
    assert 500 <= width <= 2500 and 300 <= height <= 2500, (width, height)
    assert spread > 20 and inked > 0.03  # not blank
    assert os.listdir(tmp_path) == [out.name]  # no temporary file left behind


@pytest.mark.parametrize("fmt, magic", [("svg", b"<?xml"), ("pdf", b"%PDF")])
def test_other_formats(fmt, magic, model_dir, tmp_path):
    out = tmp_path / "picture"
    assert (
        main(["plot", "attention", "To be", "-m", model_dir, "-o", str(out), "--format", fmt]) == 0
    )
    assert out.read_bytes().startswith(magic)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["attention", "To be", "--layer", "2"], "layer 2 does not exist: the model has 2 layers"),
        (["attention", "To be", "--head", "7"], "head 7 does not exist: the model has 4 heads"),
        (["next", ""], "the prompt is empty"),
        (["temperature", ""], "the prompt is empty"),
        (["attention", ""], "the prompt is empty"),
        (["beam", ""], "the prompt is empty"),
        (["generation", ""], "the prompt is empty"),
        (["embeddings", ""], "the prompt is empty"),
        (["temperature", "To be", "--temperatures", "1,0"], "temperatures must be finite and > 0"),
    ],
)
def test_bad_input_is_a_clear_error(argv, message, model_dir, tmp_path, capsys):
    out = tmp_path / "x.png"
    assert main(["plot", *argv, "-m", model_dir, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not out.exists()


def test_unwritable_output_path(model_dir, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for out in (tmp_path / "missing" / "x.png", blocker / "x.png", tmp_path):
        assert main(["plot", "attention", "To be", "-m", model_dir, "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: cannot write {out}"), err


def test_save_figure_errors_name_the_path(tmp_path):
    from matplotlib.figure import Figure

    from lmgen.plots import save_figure

    with pytest.raises(ConfigError, match="cannot write .*nowhere"):
        save_figure(Figure(), tmp_path / "nowhere" / "f.png")
    with pytest.raises(ConfigError, match="ends in .png but the format is svg"):
        save_figure(Figure(), tmp_path / "f.png", "svg")
    assert save_figure(Figure(), tmp_path / "f.svg").read_bytes().startswith(b"<?xml")


@pytest.mark.parametrize("name", ["x.jpg", "x.jpeg", "x.webp"])
def test_an_image_suffix_lmgen_does_not_write_is_refused(name, model_dir, tmp_path, capsys):
    """`--out x.jpg` used to get png bytes under a .jpg name."""
    out = tmp_path / name
    assert main(["plot", "attention", "To be", "-m", model_dir, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"cannot write .{name.split('.')[1]} files; name it .png, .svg or .pdf" in err
    assert "--format" not in err  # png bytes under an image format's name: not suggested
    assert not out.exists()
    assert (
        main(["plot", "attention", "To be", "-m", model_dir, "-o", str(out), "--format", "png"])
        == 0
    )
    assert out.read_bytes().startswith(b"\x89PNG")  # asked for by name: png under that name


def test_beam_tree_is_capped_to_stay_readable(model_dir, tmp_path, capsys):
    from lmgen.plots import MAX_TREE_BEAMS, MAX_TREE_STEPS

    out = tmp_path / "b.png"
    argv = ["plot", "beam", "To be", "-m", model_dir, "-o", str(out)]
    assert main([*argv, "--num-beams", str(MAX_TREE_BEAMS + 1)]) == 2
    assert f"plot beam draws at most {MAX_TREE_BEAMS} beams" in capsys.readouterr().err
    steps = MAX_TREE_STEPS + 5
    flags = [
        "--num-beams",
        str(MAX_TREE_BEAMS),
        "--max-new-tokens",
        str(steps),
        "--early-stopping",
        "never",
    ]
    assert main([*argv, *flags]) == 0
    width, height, _, _ = image_stats(out)
    assert width <= 2500 and height <= 2000, (width, height)


def test_beam_figure_says_which_steps_it_draws(model_dir):
    import lmgen
    from lmgen.plots import MAX_TREE_STEPS, beam_data, draw_beam

    tree = beam_data(
        lmgen.load(model_dir),
        "To be",
        num_beams=2,
        max_new_tokens=MAX_TREE_STEPS + 2,
        early_stopping="never",
    )
    assert len(tree.steps) == MAX_TREE_STEPS + 2
    fig = draw_beam(tree)
    assert (
        f"the first {MAX_TREE_STEPS} of {MAX_TREE_STEPS + 2} steps drawn"
        in fig._suptitle.get_text()
    )
    assert len(tree.steps) == MAX_TREE_STEPS + 2  # the data is left whole


def test_attention_title_keeps_the_prompt_start(model_dir):
    import lmgen
    from lmgen.plots import plot_attention

    prompt = "ROMEO: but soft, what light through yonder window breaks, THE END"
    title = plot_attention(lmgen.load(model_dir), prompt)._suptitle.get_text()
    assert "“ROMEO:␣" not in title  # spaces are plain in titles
    assert "“ROMEO: but soft" in title and title.rstrip("”").endswith("THE END")
    assert "…" in title
