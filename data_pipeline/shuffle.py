"""Sorted runs: how the dedup stages move rows between tasks at a cost proportional to the data.

    entry = write_run(path, table, "key")            # sorted by key; {"path", "rows", "bytes"}
    runs = RunSet([e["path"] for e in entries], "key")
    for lo, hi in runs.chunks(*key_range(q, num_reducers), max_rows):   # bounded pieces of range q
        table = runs.read(lo, hi)                    # rows with lo <= key < hi, from every run

A map task writes each of its outputs as one *run*: an Arrow IPC file (uncompressed, so it is
memory-mapped, not read) holding one table sorted by an unsigned 64-bit key, a hash of what the
reducers group by (or a unit index, for removal lists). A reducer owns a key range and finds its
rows in every run by binary search on the mapped key column: it touches a few pages of each run
besides its own rows, whatever the number of reducers. So

- there is one file per map task, not one per (map task, reducer);
- the number of reducers of a shuffle is chosen after its map side, from the rows that side wrote
  and the per-task memory budget (`num_partitions`), and can change without redoing the map side;
- a reducer whose range holds more than its memory allows reads it in key sub-ranges (`chunks`),
  which never split a key, so a result never depends on the number of reducers or chunks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from pretrain.core.files import atomic_path
from pretrain.core.memory import rss_bytes
from pretrain.core.shards import write_table

KEY_SPACE = 1 << 64
MAX_PARTITIONS = 65536
DEFAULT_TASK_BUDGET_BYTES = 2 << 30  # when Ray cannot say how much memory a task has
REDUCER_BYTES = 256 << 20  # what one reducer holds, at most: enough to keep its fixed costs small
SAMPLE_STRIDE = 512  # a run's keys a RunSet keeps: one in this many (at most, at least 64 per run)
MIN_CHUNK_ROWS = 4096  # below this a chunk's fixed costs dominate; a tiny budget still progresses


def write_run(path: str | Path, table: pa.Table, key: str) -> dict:
    """Write `table` sorted by its uint64 column `key` as one Arrow IPC file, atomically."""
    keys = table.column(key).to_numpy()
    if len(keys) > 1 and np.any(keys[1:] < keys[:-1]):
        table = table.take(np.argsort(keys, kind="stable"))
    table = table.combine_chunks()
    with atomic_path(path) as tmp, pa.OSFile(str(tmp), "wb") as sink:
        with pa.ipc.new_file(sink, table.schema) as writer:
            if table.num_rows:
                writer.write_table(table, max_chunksize=max(1, table.num_rows))
    return {"path": str(path), "rows": table.num_rows, "bytes": Path(path).stat().st_size}


def key_range(q: int, num_partitions: int) -> tuple[int, int]:
    """The keys [lo, hi) of partition q of num_partitions equal slices of the uint64 key space."""
    return q * KEY_SPACE // num_partitions, (q + 1) * KEY_SPACE // num_partitions


def num_partitions(num_rows: int, bytes_per_row: float, budget_bytes: int, override: int | None) -> int:
    """Reducers of a shuffle: the `override` when set, else enough that each one's rows, at
    `bytes_per_row` of task memory each (the measured peak of its step, temporaries included), fill
    at most REDUCER_BYTES, or half of `budget_bytes` (the rest: the worker process itself, and
    skew) when that is less. A fixed size per reducer, not a fixed count, keeps every task's memory
    and time the same whatever the size of the data."""
    if override:
        return override
    target = min(REDUCER_BYTES, (budget_bytes or DEFAULT_TASK_BUDGET_BYTES) / 2)
    return max(1, min(MAX_PARTITIONS, math.ceil(num_rows * bytes_per_row / target)))


def unit_ranges(num_units: int, num_reducers: int) -> list[tuple[int, int]]:
    """Units [a, b) of each of `num_reducers` reducers (at most one per unit), in order."""
    k = max(1, min(num_units, num_reducers))
    return [(r * num_units // k, (r + 1) * num_units // k) for r in range(k)]


def chunk_rows(budget_bytes: int, bytes_per_row: float) -> int:
    """Rows a task may hold at once: what is left of its budget (less what the process already
    holds) at `bytes_per_row` each, and at least MIN_CHUNK_ROWS."""
    budget = budget_bytes or DEFAULT_TASK_BUDGET_BYTES
    free = max(0, budget - rss_bytes()) * 0.8
    return max(MIN_CHUNK_ROWS, int(free / bytes_per_row))


class RunSet:
    """The runs a reducer reads: counts and reads key ranges across all of them. It keeps only a
    sample of each run's keys (every SAMPLE_STRIDE-th) and maps a run only while reading from it,
    so its memory does not grow with the number of runs (file pages a task maps count in its RSS)."""

    def __init__(self, paths: list[str], key: str):
        self.key = key
        self.runs: list[tuple[str, int, int, np.ndarray]] = []  # path, rows, stride, sampled keys
        for p in paths:
            table = _open_run(p)
            if table.num_rows:
                stride = max(1, min(SAMPLE_STRIDE, table.num_rows // 64))
                keys = table.column(key).chunk(0).to_numpy()
                self.runs.append((str(p), table.num_rows, stride, keys[::stride].copy()))
            del table  # unmapped: no buffer refers to it any more

    def count(self, lo: int, hi: int) -> int:
        """Rows with lo <= key < hi, within a stride per run at each end (from the samples)."""
        total = 0
        for _, n, stride, sample in self.runs:
            a, b = _bounds(sample, lo, hi)
            total += min(n, b * stride) - min(n, a * stride)
        return total

    def read(self, lo: int, hi: int, columns: list[str] | None = None) -> pa.Table | None:
        """Rows with lo <= key < hi of every run, in run order (None when there are none)."""
        parts = []
        for path, n, stride, sample in self.runs:
            a, b = _bounds(sample, lo, hi)
            first, end = max(0, (a - 1) * stride), min(n, b * stride + 1)  # the rows can only be here
            if end <= first:
                continue
            table = _open_run(path)
            keys = table.column(self.key).chunk(0).to_numpy()[first:end]
            i, j = _bounds(keys, lo, hi)
            if j > i:
                part = table.slice(first + i, j - i)
                parts.append(part.select(columns) if columns else part)
        return pa.concat_tables(parts).combine_chunks() if parts else None

    def chunks(self, lo: int, hi: int, max_rows: int) -> Iterator[tuple[int, int]]:
        """[lo, hi) cut into key sub-ranges of at most about `max_rows` rows (keys are hashes, so
        equal widths hold about equal rows); one key with more rows than that stays one sub-range."""
        todo = [(lo, hi)]
        while todo:
            a, b = todo.pop()
            n = self.count(a, b)
            if n <= max_rows or b - a <= 1:
                yield a, b  # maybe without rows (counts are estimates): `read` then gives None
                continue
            k = min(b - a, math.ceil(n / max_rows) + 1)
            cuts = [a + (b - a) * i // k for i in range(k + 1)]
            todo.extend(reversed(list(zip(cuts[:-1], cuts[1:]))))


def _open_run(path: str | Path) -> pa.Table:
    with pa.memory_map(str(path)) as source:  # buffers keep the mapping alive after close
        return pa.ipc.open_file(source).read_all()


def _bounds(keys: np.ndarray, lo: int, hi: int) -> tuple[int, int]:
    """Positions of the first key >= lo and the first key >= hi in sorted `keys`."""
    a = int(np.searchsorted(keys, keys.dtype.type(lo), side="left"))
    b = len(keys) if hi >= KEY_SPACE else int(np.searchsorted(keys, keys.dtype.type(hi), side="left"))
    return a, b


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer of int64/uint64 values, as uint64: the same in every process (unlike
    Python's hash()), and uniform, so key ranges of equal width hold about equal rows."""
    x = np.asarray(x).astype(np.int64, copy=False).view(np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def write_unit_lists(
    run_paths: list[str], first: int, paths: list[Path], schema: pa.Schema, sort_by: str
) -> int:
    """The last shuffle of a dedup: from runs keyed by `unit` (an input unit's index), write to
    paths[i] the rows of unit first + i (sorted by `sort_by`, without the key), an empty file when it
    has none; so the finalize task of a unit reads one small file that holds only its own rows.
    Returns the rows written."""
    table = RunSet(run_paths, "unit").read(first, first + len(paths))
    if table is None:
        table = schema.empty_table().append_column("unit", pa.array([], pa.uint64()))
    table = table.sort_by([("unit", "ascending"), (sort_by, "ascending")])
    units = table.column("unit").to_numpy()
    bounds = np.searchsorted(units, np.arange(first, first + len(paths) + 1, dtype=np.uint64))
    for i, path in enumerate(paths):
        part = table.slice(int(bounds[i]), int(bounds[i + 1] - bounds[i])).select(schema.names)
        write_table(path, part.cast(schema))
    return table.num_rows
