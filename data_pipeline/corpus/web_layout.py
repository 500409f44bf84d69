"""Where web documents land: a seeded shuffle into NUM_WEB_SHARDS JSONL shards (the last two
compressed), with every duplicate after its original and unreadable records in plain shards.
"""

from __future__ import annotations

import random

from data_pipeline.corpus.planted import Planted

NUM_WEB_SHARDS = 8  # parts 0-5 plain JSONL, 6 gzip, 7 zstd


def layout_web(docs: list[Planted], rng: random.Random) -> list[list[Planted]]:
    """Seeded shuffle into the web shards; duplicates land in a later shard than their original,
    unreadable records only in plain .jsonl shards, both giants in one plain shard."""
    num_plain = NUM_WEB_SHARDS - 2
    copies = [d for d in docs if d.dup_of is not None]
    special = [d for d in docs if d.raw_kind or d.fields is not None or d.category == "giant"]
    regular = [d for d in docs if d.dup_of is None and d not in special]
    rng.shuffle(regular)
    shards: list[list[Planted]] = [regular[i::NUM_WEB_SHARDS] for i in range(NUM_WEB_SHARDS)]
    where = {id(d): s for s, shard in enumerate(shards) for d in shard}

    def insert(doc: Planted, shard: int) -> None:
        shards[shard].insert(rng.randint(0, len(shards[shard])), doc)
        where[id(doc)] = shard

    for copy in copies:
        original = copy.dup_of
        assert original is not None
        if where[id(original)] == NUM_WEB_SHARDS - 1:
            shards[-1].remove(original)
            insert(original, rng.randrange(NUM_WEB_SHARDS - 1))
        insert(copy, rng.randint(where[id(original)] + 1, NUM_WEB_SHARDS - 1))
    giant_shard = rng.randrange(num_plain)
    for doc in special:
        insert(doc, giant_shard if doc.category == "giant" else rng.randrange(num_plain))
    return shards


def web_shard_name(i: int) -> str:
    suffix = {NUM_WEB_SHARDS - 2: ".jsonl.gz", NUM_WEB_SHARDS - 1: ".jsonl.zst"}.get(i, ".jsonl")
    return f"web/part-{i:05d}{suffix}"
