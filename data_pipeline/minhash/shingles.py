"""Shingles for MinHash: normalised text cut into word n-grams (default) or character n-grams.

Normalisation: lowercase, drop every character that is neither a word character (`\\w`) nor
whitespace, collapse whitespace runs to one space. A document with fewer than n tokens is one
shingle (all its tokens); one with no tokens has no shingles. The tiny corpus records the exact
Jaccard of its planted near-duplicates with these very functions, so they are its ground truth.

`words_utf8` is the fast path the signatures use: the same words as `word_shingles`, as UTF-8 bytes.
"""

from __future__ import annotations

import re

_NON_WORD = re.compile(r"[^\w\s]")

# ASCII text skips the regex: one bytes.translate lowercases, deletes what `_NON_WORD` deletes and
# turns the whitespace str.split() knows (\x1c-\x1f included, unlike bytes.split) into spaces.
_ASCII_KEEP = {i for i in range(128) if chr(i).isalnum() or chr(i) == "_" or chr(i).isspace()}
_ASCII_TABLE = bytes(32 if chr(i).isspace() else ord(chr(i).lower()) if i < 128 else i for i in range(256))
_ASCII_DELETE = bytes(i for i in range(128) if i not in _ASCII_KEEP)


def normalize_for_shingles(text: str) -> str:
    """Lowercased `text` without punctuation, tokens separated by single spaces."""
    return " ".join(_NON_WORD.sub("", text.lower()).split())


def words_utf8(text: str) -> list[bytes]:
    """The words of `normalize_for_shingles(text)`, UTF-8 encoded."""
    if text.isascii():
        return text.encode("ascii").translate(_ASCII_TABLE, _ASCII_DELETE).split()
    norm = normalize_for_shingles(text)
    # UTF-8 never puts byte 0x20 inside a multi-byte character, so splitting the bytes is safe.
    return norm.encode("utf-8", "surrogatepass").split(b" ") if norm else []


def word_shingles(text: str, n: int = 5) -> set[str]:
    """Word n-grams of `text`: lowercased, punctuation removed, split on whitespace."""
    words = _NON_WORD.sub("", text.lower()).split()
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def char_shingles(text: str, n: int = 5) -> set[str]:
    """Character n-grams of `normalize_for_shingles(text)` (spaces included)."""
    norm = normalize_for_shingles(text)
    if len(norm) < n:
        return {norm} if norm else set()
    return {norm[i : i + n] for i in range(len(norm) - n + 1)}


def shingles(text: str, n: int = 5, mode: str = "word") -> set[str]:
    """`word_shingles` or `char_shingles`, by `mode`."""
    if mode == "word":
        return word_shingles(text, n)
    if mode == "char":
        return char_shingles(text, n)
    raise ValueError(f"mode={mode!r}: expected 'word' or 'char'")


def jaccard(a: set[str], b: set[str]) -> float:
    """|a & b| / |a | b|; two empty sets count as identical."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)
