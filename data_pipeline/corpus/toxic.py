"""Toxic cases: documents of abusive sentences that every quality filter keeps and the language
check calls English, so only the toxicity stage can drop them.
"""

from __future__ import annotations

from data_pipeline.corpus.assets import strings
from data_pipeline.corpus.checks import kept_unchanged
from data_pipeline.corpus.planted import Builder, Planted, expect, first_ok, split_paragraphs

NUM_TOXIC = 30

_TOXIC_SENTENCES = strings("toxic_sentences")


def plant_toxic(b: Builder) -> None:
    rng = b.rng
    for _ in range(NUM_TOXIC):
        text, _ = first_ok(
            lambda: split_paragraphs(rng.sample(_TOXIC_SENTENCES, rng.randint(7, 10)), rng),
            kept_unchanged,
            "toxic",
        )
        b.add(Planted("toxic", text, expect=expect("toxicity", "toxic"), url=b.url("forum")))
