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
  which never split a key, so a result never depends on the number of reducers or chunks;
- a run carries a sample of its keys in its schema's metadata, so a RunSet reads one footer per
  run to plan, never the key column;
- a RunSet maps each run once and drops the pages it touched after each read, so a reducer may
  read many chunks (`num_partitions(..., num_runs)`) without reopening runs or holding pages;
- when map tasks are many and small (one run per input unit), `merge_groups` + `merge_runs` first
  merge runs of consecutive units, at most MERGE_FAN_IN at a time, into *pieces*: runs of at most
  a chunk of rows, each holding one key range [lo, hi) of its group. A reducer then opens only the
  pieces whose range meets its own (`pieces_in`): about one per group, not one per unit, so the
  files and pages a reducer touches stop growing with units x reducers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from pretrain.core.files import atomic_path
from pretrain.core.memory import private_bytes, release_mapped_pages
from pretrain.core.shards import write_table

KEY_SPACE = 1 << 64
MAX_PARTITIONS = 65536
DEFAULT_TASK_BUDGET_BYTES = 2 << 30  # when Ray cannot say how much memory a task has
# What one reducer holds, at most (at its step's measured bytes per row). Small enough that reducers
# are full from corpora of a few 100,000 short documents on, so a task's memory stays the same at
# any larger size (bench/data_scale.py: at 256 MiB, 400k documents gave MinHash's candidates 3
# reducers under their size, 4M gave 26 full ones, and the largest task grew 1.42x); large enough
# that a reducer's fixed costs (a Ray task, one footer per run it reads) stay small beside its rows.
REDUCER_BYTES = 64 << 20
SAMPLE_STRIDE = 512  # a run's keys a RunSet keeps: one in this many (at most, at least 64 per run)
MIN_CHUNK_ROWS = 4096  # below this a chunk's fixed costs dominate; a tiny budget still progresses
CHUNK_SLACK = 1.25  # a reducer's range holds REDUCER_BYTES on average: up to this much more in one chunk
# Runs a reducer may open per chunk it reads: opening one costs 0.2-0.3 ms, reading and processing a
# chunk of REDUCER_BYTES ~30 ms (MinHash's candidates, 666k band rows), so at 16 the opens are ~10%.
RUNS_PER_CHUNK = 16
MERGE_FAN_IN = 256  # runs one merge task reads: its mapped pages per chunk stay a few MiB
MERGE_BYTES = 1 << 30  # rows (at their task bytes) one merge group holds at most: groups stay parallel
_SAMPLE = b"pretrain.run.sample"  # schema metadata of a run: every stride-th key, little-endian u64
_STRIDE = b"pretrain.run.stride"
_ROWS = b"pretrain.run.rows"


def write_run(path: str | Path, table: pa.Table, key: str) -> dict:
    """Write `table` sorted by its uint64 column `key` as one Arrow IPC file, atomically."""
    keys = table.column(key).to_numpy()
    if len(keys) > 1 and np.any(keys[1:] < keys[:-1]):
        table = table.take(sort_order(keys))
    table = table.combine_chunks()
    keys = table.column(key).to_numpy()
    stride = _stride(len(keys))
    meta = {
        _SAMPLE: keys[::stride].astype("<u8").tobytes(),
        _STRIDE: str(stride).encode(),
        _ROWS: str(len(keys)).encode(),
    }
    table = table.replace_schema_metadata((table.schema.metadata or {}) | meta)
    with atomic_path(path) as tmp, pa.OSFile(str(tmp), "wb") as sink:
        with pa.ipc.new_file(sink, table.schema) as writer:
            if table.num_rows:
                writer.write_table(table, max_chunksize=max(1, table.num_rows))
    return {"path": str(path), "rows": table.num_rows, "bytes": Path(path).stat().st_size}


def key_range(q: int, num_partitions: int) -> tuple[int, int]:
    """The keys [lo, hi) of partition q of num_partitions equal slices of the uint64 key space."""
    return q * KEY_SPACE // num_partitions, (q + 1) * KEY_SPACE // num_partitions


def num_partitions(
    num_rows: int, bytes_per_row: float, budget_bytes: int, override: int | None, num_runs: int = 0
) -> int:
    """Reducers of a shuffle: the `override` when set, else enough that each one's rows, at
    `bytes_per_row` of task memory each (the measured peak of its step, temporaries included), fill
    at most REDUCER_BYTES, or half of `budget_bytes` (the rest: the worker process itself, and
    skew) when that is less. A fixed size per reducer, not a fixed count, keeps every task's memory
    and time the same whatever the size of the data. When each reducer reads all of `num_runs` runs,
    one reducer reads the range of ceil(num_runs / RUNS_PER_CHUNK) of those, chunk by chunk
    (`RunSet.chunks`): it opens each run once, so opening runs stays a small part of a task however
    many runs there are, and its memory is still one chunk's."""
    if override:
        return override
    target = min(REDUCER_BYTES, (budget_bytes or DEFAULT_TASK_BUDGET_BYTES) / 2)
    chunks = math.ceil(num_rows * bytes_per_row / target)
    return max(1, min(MAX_PARTITIONS, math.ceil(chunks / max(1, math.ceil(num_runs / RUNS_PER_CHUNK)))))


def unit_ranges(num_units: int, num_reducers: int) -> list[tuple[int, int]]:
    """Units [a, b) of each of `num_reducers` reducers (at most one per unit), in order."""
    k = max(1, min(num_units, num_reducers))
    return [(r * num_units // k, (r + 1) * num_units // k) for r in range(k)]


def chunk_rows(budget_bytes: int, bytes_per_row: float) -> int:
    """Rows a task may hold at once: what is left of its budget (less the private memory the
    process already holds) at `bytes_per_row` each, at most a reducer's REDUCER_BYTES (so a task's
    memory does not grow with its range either; with CHUNK_SLACK, so that a range `num_partitions`
    sized reads in one chunk although counts are estimates), and at least MIN_CHUNK_ROWS."""
    budget = budget_bytes or DEFAULT_TASK_BUDGET_BYTES
    free = min(REDUCER_BYTES * CHUNK_SLACK, max(0, budget - private_bytes()) * 0.8)
    return max(MIN_CHUNK_ROWS, int(free / bytes_per_row))


def merge_groups(rows: list[int], bytes_per_row: float) -> list[tuple[int, int]]:
    """Runs [a, b) that one merge task reads: consecutive, at most MERGE_FAN_IN of them and about
    MERGE_BYTES of rows (a run over that is a group alone). Depends only on the row counts."""
    groups, a, total = [], 0, 0
    for i, n in enumerate(rows):
        if i > a and (i - a >= MERGE_FAN_IN or (total + n) * bytes_per_row > MERGE_BYTES):
            groups.append((a, i))
            a, total = i, 0
        total += n
    if a < len(rows):
        groups.append((a, len(rows)))
    return groups


def merge_runs(paths: list[str], key: str, prefix: str, max_rows: int) -> list[dict]:
    """The rows of `paths` as pieces `{prefix}.cNNNN.arrow`: runs of at most about `max_rows` rows
    (a key with more stays whole), each the rows of one key range [lo, hi) of the whole key space,
    in order. Returns their entries, write_run's plus "lo" and "hi"."""
    runs = RunSet(paths, key)
    pieces = []
    for c, (lo, hi) in enumerate(runs.chunks(0, KEY_SPACE, max_rows)):
        table = runs.read(lo, hi)
        if table is not None:
            pieces.append(write_run(f"{prefix}.c{c:04d}.arrow", table, key) | {"lo": lo, "hi": hi})
    return pieces


def whole_piece(path: str) -> dict:
    """A run that no merge read, as a piece over the whole key space."""
    return {"path": str(path), "lo": 0, "hi": KEY_SPACE}


def pieces_in(pieces: list[dict], lo: int, hi: int) -> list[str]:
    """Paths of the pieces whose key range meets [lo, hi)."""
    return [p["path"] for p in pieces if p["lo"] < hi and lo < p["hi"]]


class RunSet:
    """The runs a reducer reads: counts and reads key ranges across all of them. It plans from a
    sample of each run's keys (every SAMPLE_STRIDE-th, from the run's footer). Each run is mapped
    once, for the RunSet's life: opening one costs 0.2-0.3 ms (measured here), and a reducer that
    reopened every run for each chunk would pay runs x chunks of them. File pages a task has touched
    count in its RSS while mapped (64 KiB or more per touch, with the kernel's fault-around), so
    after planning and after each read the RunSet drops the pages it touched from the process
    (`release_mapped_pages`; they stay in the page cache): its memory does not grow with the number
    of runs, chunks or rows it has read."""

    def __init__(self, paths: list[str], key: str):
        self.key = key
        self.runs: list[tuple[str, int, int, np.ndarray]] = []  # path, rows, stride, sampled keys
        self._maps: list[tuple[pa.Buffer, pa.Table]] = []  # each run's mapping, and its table on it
        for p in paths:
            mapping, table = _map_run(p)
            n, stride, sample = _run_sample(table, key)
            if n:
                self.runs.append((str(p), n, stride, sample))
                self._maps.append((mapping, table))
            else:
                release_mapped_pages(mapping)
        self._release()

    def _release(self) -> None:
        for mapping, _ in self._maps:
            release_mapped_pages(mapping)

    def count(self, lo: int, hi: int) -> int:
        """Rows with lo <= key < hi, within a stride per run at each end (from the samples)."""
        total = 0
        for _, n, stride, sample in self.runs:
            a, b = _bounds(sample, lo, hi)
            total += min(n, b * stride) - min(n, a * stride)
        return total

    def read(self, lo: int, hi: int, columns: list[str] | None = None) -> pa.Table | None:
        """Rows with lo <= key < hi of every run, in run order (None when there are none)."""
        parts: list[pa.Table] = []
        for r, (_, n, stride, sample) in enumerate(self.runs):
            a, b = _bounds(sample, lo, hi)
            first, end = max(0, (a - 1) * stride), min(n, b * stride + 1)  # the rows can only be here
            if end <= first:
                continue
            table = self._maps[r][1]
            keys = table.column(self.key).chunk(0).to_numpy()[first:end]
            i, j = _bounds(keys, lo, hi)
            if j > i:
                part = table.slice(first + i, j - i)
                parts.append(part.select(columns) if columns else part)
        if not parts:
            self._release()  # the pages the binary searches touched
            return None
        table = pa.concat_tables(parts).combine_chunks()
        self._release()  # a table of one part is still on the mapping: its pages come back when read
        meta = {k: v for k, v in (table.schema.metadata or {}).items() if k not in (_SAMPLE, _STRIDE, _ROWS)}
        return table.replace_schema_metadata(meta or None)  # the sample was the run's, not the rows'

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


def _stride(num_rows: int) -> int:
    return max(1, min(SAMPLE_STRIDE, num_rows // 64))


def _run_sample(table: pa.Table, key: str) -> tuple[int, int, np.ndarray]:
    """(rows, stride, every stride-th key) of a mapped run: from its footer (write_run puts the
    sample in the schema's metadata), or, for a run written without one, from its key column."""
    meta = table.schema.metadata or {}
    if _SAMPLE in meta:
        sample = np.frombuffer(meta[_SAMPLE], dtype="<u8").astype(np.uint64)
        return int(meta[_ROWS]), int(meta[_STRIDE]), sample
    stride = _stride(table.num_rows)
    keys = table.column(key).to_numpy() if table.num_rows else np.zeros(0, np.uint64)
    return table.num_rows, stride, keys[::stride].copy()


def _map_run(path: str | Path) -> tuple[pa.Buffer, pa.Table]:
    """A run mapped into memory (no page read yet), as the buffer of the whole file and the table on
    it (which reads its footer: a few pages, and the sample in its schema)."""
    with pa.memory_map(str(path)) as source:  # buffers keep the mapping alive after close
        mapping = source.read_buffer()
    return mapping, pa.ipc.open_file(mapping).read_all()


def _bounds(keys: np.ndarray, lo: int, hi: int) -> tuple[int, int]:
    """Positions of the first key >= lo and the first key >= hi in sorted `keys`."""
    a = int(np.searchsorted(keys, keys.dtype.type(lo), side="left"))
    b = len(keys) if hi >= KEY_SPACE else int(np.searchsorted(keys, keys.dtype.type(hi), side="left"))
    return a, b


def sort_order(*cols: np.ndarray) -> np.ndarray:
    """The stable order of rows by integer columns, cols[0] first: what np.lexsort(cols[::-1])
    gives, rows equal in every column in their input order. np.lexsort runs one stable sort per
    column; this sorts cols[0] once with numpy's default introsort (SIMD where the CPU has it: 10x
    faster on 666k uint64 hash keys here, and blind to how many sorted runs the rows came from, where
    a stable merge sort grows with their log), then sorts only the rows whose first column ties, by
    the other columns and their position. Hash keys tie in a few rows (the duplicates), so that
    second sort is small; at worst, all tied, it is the lexsort itself."""
    first = cols[0]
    order = np.argsort(first)
    if len(order) < 2:
        return order.astype(np.int64, copy=False)
    ranked = first[order]
    tied = np.zeros(len(order), dtype=bool)
    tied[1:] = ranked[1:] == ranked[:-1]
    tied[:-1] |= tied[1:]
    del ranked
    pos = np.flatnonzero(tied)
    if len(pos):  # whole groups of equal first values, in order: sorting them in place keeps the rest
        sub = np.sort(order[pos])  # positions, so that lexsort's last tiebreak is the input order
        order[pos] = sub[np.lexsort((*(c[sub] for c in cols[:0:-1]), first[sub]))]
    return order


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
