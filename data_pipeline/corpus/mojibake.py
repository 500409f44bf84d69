"""Mojibake cases: an ASCII base document with one accented sentence, its UTF-8 bytes read as
Windows-1252; normalize's ftfy repair must bring back the word the truth names
(`fixed_text_contains`), and the repaired text passes the default filters.
"""

from __future__ import annotations

import random
from typing import Any

from data_pipeline.corpus.assets import pairs
from data_pipeline.corpus.planted import Builder, insert_sentences

NUM_MOJIBAKE = 5

# (sentence, substring that must appear once ftfy has repaired the mojibake)
_MOJIBAKE_SENTENCES = pairs("mojibake_sentences")


def _mojibake(
    text: str, sentence: str, repaired_word: str, rng: random.Random
) -> tuple[str, dict[str, Any], str] | None:
    import ftfy  # data extra; only normalize and this case need it

    clean = insert_sentences(text, [sentence], rng)
    broken = clean.encode("utf-8").decode("cp1252")  # UTF-8 bytes read as Windows-1252
    repaired = ftfy.fix_text(broken)
    if repaired_word not in repaired or repaired_word in broken:
        return None
    return broken, {"fixed_text_contains": repaired_word}, repaired


def plant_mojibake(b: Builder) -> None:
    for i in range(NUM_MOJIBAKE):
        sentence, word = _MOJIBAKE_SENTENCES[i % len(_MOJIBAKE_SENTENCES)]
        b.modified("mojibake", lambda t, s=sentence, w=word: _mojibake(t, s, w, b.rng), ok=str.isascii)
