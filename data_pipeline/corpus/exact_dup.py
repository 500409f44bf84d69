"""Exact-duplicate cases: copies of plain web base documents, byte for byte, and copies equal
only after normalisation (NFD accents, trailing whitespace per line). Exact dedup drops the copy;
the layout puts every copy in a later shard than its original.
"""

from __future__ import annotations

import unicodedata

from data_pipeline.corpus.assets import strings
from data_pipeline.corpus.checks import kept_unchanged
from data_pipeline.corpus.planted import Builder, Planted, expect, insert_sentences

NUM_EXACT_DUP = 20
NUM_EXACT_DUP_NORMALIZED = 10  # half NFD, half trailing spaces

_ACCENT_SENTENCES = strings("accent_sentences")


def plant_exact_duplicates(b: Builder, candidates: list[Planted]) -> None:
    """Copies of documents popped from the end of `candidates` (in seeded order)."""
    rng = b.rng
    exact = expect("exact_dedup", "exact_duplicate")
    for _ in range(NUM_EXACT_DUP):
        original = candidates.pop()
        b.add(Planted("exact_dup", original.text, expect=exact, url=b.url("mirror"), dup_of=original))

    num_nfd = NUM_EXACT_DUP_NORMALIZED // 2
    for i in range(num_nfd):
        while True:
            original = candidates.pop()
            accented = insert_sentences(original.text, [_ACCENT_SENTENCES[i % len(_ACCENT_SENTENCES)]], rng)
            if kept_unchanged(accented):
                break
        original.text = accented
        original.extra["accented"] = True
        copy = unicodedata.normalize("NFD", accented)
        assert copy != accented
        b.add(Planted("exact_dup_normalized", copy, expect=exact, extra={"variant": "nfd"}, dup_of=original))
    for _ in range(NUM_EXACT_DUP_NORMALIZED - num_nfd):
        original = candidates.pop()
        copy = "\n".join(line + rng.choice(("  ", " ", "\t", " \t ")) for line in original.text.split("\n"))
        b.add(
            Planted(
                "exact_dup_normalized",
                copy,
                expect=exact,
                extra={"variant": "trailing_whitespace"},
                url=b.url("mirror"),
                dup_of=original,
            )
        )
