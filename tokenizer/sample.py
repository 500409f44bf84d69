"""The tokenizer's training sample: deterministic, source-balanced, bounded by a byte budget.

    plan = plan_sample(list_shards("runs/data"), cfg)     # pass 1: ids, sources, lengths only
    for source, text, is_heldout in plan.iter_texts(): ...  # pass 2: streams the drawn texts

Each document gets a key = keyed blake2b(seed, id). Per source, the sample is the documents with the
smallest keys until the source's share of the budget is filled, so it depends only on the ids,
lengths and config (not on shard order, batch size or the number of shards), and a larger budget
draws a superset. Pass 1 keeps, per source, only the smallest-key documents that could still be
drawn (their key, length and position), so memory is bounded by the budget, not by the corpus.
Shares are split by weight (equal by default); a source smaller than its share gives the rest to
the others (water-filling). The first `heldout_fraction` of each source's share (in key order) is
held out of training to measure bytes per token.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from pretrain.core.shards import iter_batches
from tokenizer.config import TokenizerTrainConfig


def byte_lengths(texts: pa.Array, path: Path) -> np.ndarray:
    """UTF-8 byte length of each text, read off the Arrow offsets. (pyarrow's to_numpy and scalars
    import pandas, a quarter of a second per process.)"""
    if texts.null_count:
        raise ValueError(f"document shard {path} has {texts.null_count} null texts (schema says non-null)")
    width = np.int64 if pa.types.is_large_string(texts.type) else np.int32
    offsets = np.frombuffer(texts.buffers()[1], dtype=width)[texts.offset : texts.offset + len(texts) + 1]
    return np.diff(offsets).astype(np.int64)


def doc_key(doc_id: str, seed_key: bytes) -> int:
    return int.from_bytes(
        hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8, key=seed_key).digest(), "big"
    )


def _seed_key(seed: int) -> bytes:
    return f"tokenizer-sample:{seed}".encode()


@dataclass
class SourceSample:
    """What pass 1 learned about one source, and which of its documents were drawn."""

    num_docs: int = 0
    num_bytes: int = 0  # after the max_doc_bytes cap
    share_bytes: int = 0
    heap: list = field(default_factory=list)  # max-heap on key: (-key, -shard, -row, nbytes)
    heap_bytes: int = 0
    train: list[tuple[int, int, int]] = field(default_factory=list)  # (shard, row, nbytes)
    heldout: list[tuple[int, int, int]] = field(default_factory=list)

    def offer(self, key: int, shard: int, row: int, nbytes: int, keep_bytes: int) -> None:
        """Keep the smallest-key documents whose bytes first reach `keep_bytes`."""
        item = (-key, -shard, -row, nbytes)
        if self.heap_bytes >= keep_bytes and item <= self.heap[0]:
            return  # larger key than everything kept, and what is kept already covers the budget
        heapq.heappush(self.heap, item)
        self.heap_bytes += nbytes
        while self.heap_bytes - self.heap[0][3] >= keep_bytes:
            self.heap_bytes -= heapq.heappop(self.heap)[3]

    def ordered(self) -> list[tuple[int, int, int]]:
        """Kept documents by increasing key: (shard, row, nbytes)."""
        return [(-s, -r, n) for _, s, r, n in sorted(self.heap, reverse=True)]


def allocate(totals: dict[str, int], weights: dict[str, float], budget: int) -> dict[str, int]:
    """Split `budget` bytes over sources by weight; a source with less than its share takes all it
    has and the rest is split again among the others."""
    share = {s: 0 for s in totals}
    active = {s for s, n in totals.items() if n > 0 and weights.get(s, 0) > 0}
    remaining = budget
    while active:
        wsum = sum(weights[s] for s in active)
        fair = {s: remaining * weights[s] / wsum for s in active}
        small = sorted(s for s in active if totals[s] <= fair[s])
        if not small:
            for s in sorted(active):
                share[s] = int(fair[s])
            break
        for s in small:
            share[s] = totals[s]
            remaining -= totals[s]
            active.discard(s)
    return share


@dataclass
class SamplePlan:
    """The sample of one run: per-source shares and the (shard, row) of every drawn document."""

    shards: list[Path]
    sources: dict[str, SourceSample]
    max_doc_bytes: int
    batch_rows: int

    def _selected(self, which: str) -> dict[int, set[int]]:
        rows: dict[int, set[int]] = {}
        for src in self.sources.values():
            for shard, row, _ in getattr(src, which):
                rows.setdefault(shard, set()).add(row)
        return rows

    def iter_texts(self) -> Iterator[tuple[str, str, bool]]:
        """(source, text, is_heldout) for every drawn document, in shard then row order."""
        train, heldout = self._selected("train"), self._selected("heldout")
        for i, path in enumerate(self.shards):
            t_rows, h_rows = train.get(i, set()), heldout.get(i, set())
            if not t_rows and not h_rows:
                continue
            base = 0
            for batch in iter_batches(path, self.batch_rows, columns=["text", "source"]):
                wanted = [r for r in range(base, base + batch.num_rows) if r in t_rows or r in h_rows]
                texts, srcs = batch.column(0), batch.column(1)
                for r in wanted:  # per-row access: Array.take would import pandas (0.25 s per process)
                    yield srcs[r - base].as_py(), self._cap(texts[r - base].as_py()), r in h_rows
                base += batch.num_rows

    def _cap(self, text: str) -> str:
        """The first max_doc_bytes bytes of `text` (a character cut in two is dropped)."""
        if len(text) * 4 <= self.max_doc_bytes:  # cannot exceed the cap: skip the encode
            return text
        raw = text.encode("utf-8")
        if len(raw) <= self.max_doc_bytes:
            return text
        return raw[: self.max_doc_bytes].decode("utf-8", errors="ignore")


def plan_sample(shards: Sequence[Path], cfg: TokenizerTrainConfig) -> SamplePlan:
    """Pass 1: read id, source and text length of every document; choose the sample."""
    seed_key = _seed_key(cfg.seed)
    # A source's share is at most the budget; the held-out part may overshoot it by one document.
    keep_bytes = cfg.sample_bytes + cfg.max_doc_bytes
    sources: dict[str, SourceSample] = {}
    for i, path in enumerate(shards):
        base = 0
        for batch in iter_batches(path, cfg.batch_rows, columns=["id", "source", "text"]):
            ids = batch.column(0).to_pylist()
            srcs = batch.column(1).to_pylist()
            lens = np.minimum(byte_lengths(batch.column(2), path), cfg.max_doc_bytes)
            for j, (doc_id, src, n) in enumerate(zip(ids, srcs, lens.tolist())):
                s = sources.get(src)
                if s is None:
                    s = sources[src] = SourceSample()
                s.num_docs += 1
                s.num_bytes += n
                if n:
                    s.offer(doc_key(doc_id, seed_key), i, base + j, n, keep_bytes)
            base += batch.num_rows
    weights = cfg.source_weights or {s: 1.0 for s in sources}
    shares = allocate({s: v.num_bytes for s, v in sources.items()}, weights, cfg.sample_bytes)
    for name, s in sources.items():
        s.share_bytes = shares[name]
        _split(s, cfg.heldout_fraction)
        s.heap = []  # only the drawn documents are needed from here on
    return SamplePlan(list(shards), dict(sorted(sources.items())), cfg.max_doc_bytes, cfg.batch_rows)


def _split(s: SourceSample, heldout_fraction: float) -> None:
    """Walk the source's documents by key: the first fill the held-out part of its share (never all
    of them), the next fill the training part."""
    docs = s.ordered()
    heldout_bytes = int(s.share_bytes * heldout_fraction)
    train_bytes = s.share_bytes - heldout_bytes
    i = got = 0
    while i < len(docs) - 1 and got < heldout_bytes:
        s.heldout.append(docs[i])
        got += docs[i][2]
        i += 1
    got = 0
    while i < len(docs) and got < train_bytes:
        s.train.append(docs[i])
        got += docs[i][2]
        i += 1
