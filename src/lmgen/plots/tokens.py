"""Token text that shows what a token holds: a byte-level BPE token that is part of a UTF-8
character is written as its bytes (`\\xe6\\x97`) instead of `�`. No matplotlib here, so the
command line uses it too (`lmgen tokenize`)."""

from __future__ import annotations

import functools
import re


@functools.lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """The byte-level BPE alphabet: the printable character that stands for each byte.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes are mapped, in order, to
    the code points from 256 up (so a space is written `Ġ`, U+0120)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return {ch: b for b, ch in table.items()}


def token_bytes(tokenizer, token_id: int) -> bytes | None:
    """The bytes a byte-level token stands for: a byte-level BPE piece (GPT-2's alphabet, in
    lmgen's own BPE or a released model's), or a SentencePiece byte-fallback piece such as
    `<0xE6>`; None for other tokens and tokenizers."""
    backend = getattr(tokenizer, "backend", None)
    if getattr(tokenizer, "kind", None) not in ("bpe", "pretrained") or backend is None:
        return None
    piece = backend.id_to_token(int(token_id))
    if piece is None:
        return None
    fallback = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece)
    if fallback:
        return bytes([int(fallback.group(1), 16)])
    decoder = byte_decoder()
    if not all(ch in decoder for ch in piece):
        return None  # a special token such as <|endoftext|>, or a SentencePiece word
    return bytes(decoder[ch] for ch in piece)


def token_text(tokenizer, token_id: int) -> str:
    """The text of one token; a byte-level piece that is not whole UTF-8 on its own (part of a
    multi-byte character) is written as its bytes, e.g. `\\xe6\\x97`."""
    text = tokenizer.token_to_str(int(token_id))
    if "\ufffd" in text:
        raw = token_bytes(tokenizer, token_id)
        if raw is not None:
            text = raw.decode("utf-8", errors="backslashreplace")
    return text
