"""Base documents: English prose paragraphs of the standard library's documentation, grouped into
documents of roughly 80-110 words. `base_texts()` is the public source of real text for the corpus,
the MinHash near-duplicate corpus, benchmarks and tests.

    for module, text in base_texts(): ...
"""

from __future__ import annotations

import random
import re
from functools import lru_cache

from data_pipeline.corpus.stdlib_docs import docstrings
from data_pipeline.minhash.shingles import word_shingles

_BULLET_OR_CODE_LINE = re.compile(r"\s|[-*•+]|\d|>>>|\.\.\s|:")
_MARKUP = re.compile(r"(?<![\w*`])(\*{1,2}|`{1,2})([A-Za-z][A-Za-z' -]*?)\1(?![\w*`])")  # *word*, ``word``
_ROLE = re.compile(r":[a-z]+:(?=`)")  # :class:`Foo`
_BANNED = re.compile(
    r"[{}@<>|\\=`\[\]#$%^~*/+]|__|\d{3,}|\d[.:/-]\d|--|\.\.\.|…|javascript|cookie|lorem|terms of use|policy",
    re.IGNORECASE,
)
_PLAIN_WORD = re.compile(r"\(?(?:[A-Za-z][a-z]*(?:'[a-z]+)?|\d{1,2})[.,;:!?)]?")
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)")


def _prose(paragraph: str) -> str | None:
    """The paragraph joined into one line if it reads as English prose, else None."""
    lines = paragraph.strip("\n").splitlines()
    if not lines or any(_BULLET_OR_CODE_LINE.match(line) for line in lines):
        return None
    text = " ".join(" ".join(line.split()) for line in lines)
    text = _MARKUP.sub(r"\2", _ROLE.sub("", text))
    if text.endswith(":"):  # "... works as follows:" introduces an example; keep what precedes it
        cut = text.rfind(". ")
        text = text[: cut + 1] if cut > 0 else text
    words = text.split()
    if (
        _BANNED.search(text)
        or not text.endswith((".", "!", "?"))
        or not text[0].isalpha()
        or len(words) < 6
        or len(text) < 40
        or text.count('"') % 2
        or text.count("(") != text.count(")")
    ):
        return None
    if sum(1 for w in words if _PLAIN_WORD.fullmatch(w)) < 0.85 * len(words):
        return None
    return text


_TOKEN = re.compile(r"\w+(?:[.'’]\w+)*|[^\w\s]")  # close to spaCy's English tokens


def _looks_clean(text: str) -> bool:
    """Cheap stand-in for the Gopher rules docstrings tend to break (punctuation-heavy text and
    templated one-liners), with a margin; the real filters still run on every selected document."""
    from datatrove.pipeline.filters.gopher_repetition_filter import (  # heavy (data extra)
        find_all_duplicate,
        find_top_duplicate,
        get_n_grams,
    )

    tokens = _TOKEN.findall(text)
    if sum(any(c.isalpha() for c in t) for t in tokens) < 0.81 * len(tokens):
        return False
    for n, frac in ((2, 0.2), (3, 0.18), (4, 0.16)):
        if find_top_duplicate(get_n_grams(tokens, n)) > 0.9 * frac * len(text):
            return False
    return all(
        find_all_duplicate(tokens, n) <= 0.9 * frac * len(text)
        for n, frac in ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))
    )


@lru_cache(maxsize=1)
def base_texts() -> tuple[tuple[str, str], ...]:
    """Candidate base documents as (top-level module, text), the same for every seed.

    Paragraphs are deduplicated globally (exactly, and when 30% of their word 5-grams were seen
    before) and grouped per top-level module into documents of roughly 80-110 words and at
    least 6 sentences, one paragraph per line. The corpus still checks each one it selects
    against the default filters; other users get them as they are.
    """
    seen_text: set[str] = set()
    seen_shingles: set[str] = set()
    by_module: dict[str, list[str]] = {}
    for module, doc in docstrings():
        for paragraph in re.split(r"\n\s*\n", doc):
            text = _prose(paragraph)
            if text is None or text.lower() in seen_text:
                continue
            seen_text.add(text.lower())
            shingles = word_shingles(text)
            if len(shingles & seen_shingles) > 0.3 * len(shingles):
                continue
            seen_shingles |= shingles
            by_module.setdefault(module, []).append(text)

    rng = random.Random(1234)  # grouping is part of the corpus definition, not of the seed
    out: list[tuple[str, str]] = []
    for module, paragraphs in by_module.items():
        current: list[str] = []
        target = rng.randint(80, 110)
        for paragraph in paragraphs:
            if current and len(" ".join(current).split()) + len(paragraph.split()) > 400:
                current = []
            current.append(paragraph)
            text = "\n".join(current)
            if len(text.split()) >= target and len(_SENTENCE_END.findall(text)) >= 6:
                if _looks_clean(text):
                    out.append((module, text))
                current, target = [], rng.randint(80, 110)
    return tuple(out)
