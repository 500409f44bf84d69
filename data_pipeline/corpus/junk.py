"""Junk cases: confident English that a default quality filter drops (boilerplate, symbol soup,
repeated lines, very short, lorem ipsum, lists of short lines); the truth names the filter and
its counted reason.
"""

from __future__ import annotations

import random

from data_pipeline.corpus.assets import pools, strings
from data_pipeline.corpus.checks import MIN_LANG_PROB, checks
from data_pipeline.corpus.planted import Builder, Planted, expect, first_ok, split_paragraphs
from data_pipeline.stages.quality import stage_reason

NUM_JUNK_PER_KIND = 10
JUNK_KINDS = ("boilerplate", "symbol_soup", "repeated_lines", "very_short", "lorem_ipsum", "short_lines")

_JUNK_BOILERPLATE = strings("junk_boilerplate")
_JUNK_SYMBOLS = strings("junk_symbols")
_JUNK_SPAM_WORDS = strings("junk_spam_words")
_JUNK_REPEATED = strings("junk_repeated")
_JUNK_SHORT = strings("junk_short")
_LOREM: str = pools()["lorem"]
_JUNK_LOREM_ENGLISH = strings("junk_lorem_english")
_JUNK_LIST_ITEMS = strings("junk_list_items")


def _junk_candidate(kind: str, rng: random.Random) -> str:
    if kind == "boilerplate":
        return "\n".join(rng.sample(_JUNK_BOILERPLATE, rng.randint(6, 10)))
    if kind == "symbol_soup":
        tokens = [
            rng.choice(_JUNK_SYMBOLS) if rng.random() < 0.45 else rng.choice(_JUNK_SPAM_WORDS)
            for _ in range(150)
        ]
        return "\n".join(" ".join(tokens[j : j + 16]) for j in range(0, len(tokens), 16))
    if kind == "repeated_lines":
        line, other = rng.sample(_JUNK_REPEATED, 2)
        lines = [line] * rng.randint(10, 20)
        lines.insert(rng.randrange(len(lines)), other)
        return "\n".join(lines)
    if kind == "very_short":
        return rng.choice(_JUNK_SHORT)
    if kind == "lorem_ipsum":
        sentences = rng.sample(_JUNK_LOREM_ENGLISH, 5)
        sentences.insert(rng.randint(1, 4), _LOREM)
        return split_paragraphs(sentences, rng)
    if kind == "short_lines":
        return "\n".join(rng.sample(_JUNK_LIST_ITEMS, rng.randint(8, 16)))
    raise ValueError(f"unknown junk kind {kind!r}; expected one of {JUNK_KINDS}")


def _junk_verdict(text: str) -> tuple[str, str] | None:
    """(filter, reason) when `text` is confident English that a quality filter drops."""
    lang, prob = checks().language(text)
    return checks().quality_failure(text) if lang == "en" and prob >= MIN_LANG_PROB else None


def plant_junk(b: Builder) -> None:
    rng = b.rng
    for kind in JUNK_KINDS:
        for _ in range(NUM_JUNK_PER_KIND):
            text, (name, reason) = first_ok(lambda k=kind: _junk_candidate(k, rng), _junk_verdict, kind)
            extra = {"junk_kind": kind, "quality_filter": name}
            fate = expect("quality", stage_reason(name, reason))
            b.add(Planted("junk", text, expect=fate, extra=extra, url=b.url("site")))
