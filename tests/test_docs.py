"""The worked examples in the docs are run as doctests, so their outputs stay true."""

import doctest
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.parametrize("name", ["decoding.md", "EVALUATION.md"])
def test_doc_examples(name, monkeypatch):
    monkeypatch.chdir(DOCS.parent)  # the examples name files from the repository root
    result = doctest.testfile(
        str(DOCS / name),
        module_relative=False,
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
    )
    assert result.attempted > 0
    assert result.failed == 0
