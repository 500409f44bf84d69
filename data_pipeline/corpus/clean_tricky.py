"""Clean-but-tricky cases: base documents that open with a paragraph of innocent technical uses
of violent-sounding words ("kill the process"), which the toxicity filter must keep.
"""

from __future__ import annotations

from data_pipeline.corpus.assets import strings
from data_pipeline.corpus.planted import Builder

NUM_CLEAN_TRICKY = 10

# Four per clean_tricky document, none reused.
_TRICKY_SENTENCES = strings("tricky_sentences")


def plant_clean_tricky(b: Builder) -> None:
    tricky = b.rng.sample(_TRICKY_SENTENCES, len(_TRICKY_SENTENCES))
    for i in range(NUM_CLEAN_TRICKY):
        paragraph = " ".join(tricky[4 * i : 4 * i + 4])
        b.modified("clean_tricky", lambda t, p=paragraph: (f"{p}\n{t}", {}, f"{p}\n{t}"))
