"""Cases normalize drops: texts with nothing but whitespace or control characters (empty), and
giant documents of GIANT_CHARS characters, over the length limit (too_long).
"""

from __future__ import annotations

from data_pipeline.corpus.planted import Builder, Planted, expect

NUM_GIANT = 2
GIANT_CHARS = 1_200_000

_EMPTY_TEXTS = (
    "",
    "   ",
    "\n\n\t  \n",
    "\x00\x01\x02\x03",
    " \x0b\x0c\x1b\x7f ",
)  # nothing but space/controls


def plant_empty(b: Builder) -> None:
    for text in _EMPTY_TEXTS:
        b.add(Planted("empty", text, expect=expect("normalize", "empty")))


def plant_giant(b: Builder, texts: list[str]) -> None:
    """Giants made of the base `texts` in a seeded order, repeated up to GIANT_CHARS."""
    for _ in range(NUM_GIANT):
        order = b.rng.sample(texts, len(texts))
        text = "\n".join(order)
        text = (text + "\n") * (GIANT_CHARS // (len(text) + 1) + 1)
        extra = {"num_chars": GIANT_CHARS}
        b.add(Planted("giant", text[:GIANT_CHARS], expect=expect("normalize", "too_long"), extra=extra))
