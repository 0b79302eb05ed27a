"""Token text that shows what a token holds: a byte-level BPE token that is part of a UTF-8
character is written as its bytes (`\\xe6\\x97`) instead of `�`. No matplotlib here, so the
command line uses it too (`lmgen tokenize`)."""

from __future__ import annotations

from lmgen.tokenizers import token_utf8


def token_text(tokenizer, token_id: int) -> str:
    """The text of one token; a byte-level piece that is not whole UTF-8 on its own (part of a
    multi-byte character) is written as its bytes, e.g. `\\xe6\\x97`."""
    return token_utf8(tokenizer, token_id).decode("utf-8", errors="backslashreplace")
