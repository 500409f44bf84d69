"""Short documents with planted duplicates, for scale benchmarks and dedup tests.

    pool = sentence_pool()                               # real English sentences (Python's docs)
    docs = short_docs(400_000, seed=0, pool=pool)        # ~430 bytes each, 5% planted copies

Each document is 4-7 random pool sentences (~70 words); the last `dup_fraction` of them are copies
of earlier ones, half exact and half with one word deleted (Jaccard about 0.9), so both exact and
MinHash dedup have work whose size grows with the corpus.
"""

from __future__ import annotations

import re

import numpy as np

from data_pipeline.corpus.base_texts import base_texts

DUP_FRACTION = 0.05


def sentence_pool() -> list[str]:
    """Distinct English sentences of 6-30 words from the base texts (Python's own prose)."""
    pool = set()
    for _, text in base_texts():
        for s in re.split(r"(?<=[.!?])\s+", text):
            if 6 <= len(s.split()) <= 30:
                pool.add(s.strip())
    return sorted(pool)


def short_docs(num_docs: int, seed: int, pool: list[str], dup_fraction: float = DUP_FRACTION) -> list[str]:
    """`num_docs` texts of 4-7 random pool sentences; the last `dup_fraction` copy earlier ones,
    alternately exact and with one word deleted."""
    rng = np.random.default_rng(seed)
    num_dups = int(num_docs * dup_fraction)
    num_base = num_docs - num_dups
    lengths = rng.integers(4, 8, size=num_base)
    picks = rng.integers(0, len(pool), size=int(lengths.sum())).tolist()
    ends = np.cumsum(lengths).tolist()
    docs, start = [], 0
    for end in ends:
        docs.append(" ".join([pool[i] for i in picks[start:end]]))
        start = end
    sources = rng.integers(0, num_base, size=num_dups).tolist()
    cut = rng.random(num_dups).tolist()
    for k, (src, c) in enumerate(zip(sources, cut)):
        if k % 2 == 0:
            docs.append(docs[src])
        else:
            words = docs[src].split()
            del words[int(c * len(words))]
            docs.append(" ".join(words))
    return docs
