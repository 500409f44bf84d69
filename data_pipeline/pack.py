"""Shards sized for training: the per-unit document shards of a stage repacked into parts of about
`target_shard_bytes`, named `shards/part-NNNNN.parquet` (`shards/lang=xx/part-NNNNN.parquet`).

    sources = [PackSource(path, rows, arrow_bytes, sha256, folder, about), ...]   # manifest order
    entries = pack_shards(sources, cfg, out, out / "shards", work_dir(out) / "pack", progress)

A stage's finalize writes one shard per work unit under `_work/`; `pack_shards` plans the parts in
the driver and writes each in one Ray task. The plan walks the sources in order, per folder (the
language folders of `partition_by_language`, sorted), and closes a part once it holds about
`target_shard_bytes` (or `target_shard_rows` rows); a source larger than the room left is cut
across parts by row ranges. Parts are numbered across the whole stage, so a part's name is unique
whatever its folder. The plan depends only on the sources and the targets, never on the number of
workers, and documents keep their order.

Sizes are estimated, not measured after the fact: a source's rows count for their in-memory
(Arrow) bytes times the compression ratio of its folder's data, found by compressing the folder's
first rows (PROBE_BYTES, or about one part when parts are smaller) as a part is written. (The
sources' own file sizes would overestimate a part up to 7x when they are tiny: a Parquet footer
and zstd on small pages cost more than the rows.)
Each part ends with a done record keyed on its slices and its sources' sha256, so a killed run
redoes only the parts it had not finished.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pretrain.core.config import check, config_hash
from pretrain.core.done import load_done_many, output_fingerprints
from pretrain.core.files import io_map, write_json
from pretrain.core.progress import Progress
from pretrain.core.runner import maybe_crash, raise_errors, run_tasks
from pretrain.core.sections import TaskConfig
from pretrain.core.shards import DOC_SCHEMA, PARQUET_OPTS, ShardWriter, iter_batches, parquet_file
from pretrain.core.storage import stage_path

DEFAULT_TARGET_SHARD_BYTES = 256 << 20
PROBE_BYTES = 4 << 20  # Arrow bytes compressed to learn a folder's ratio: ~70 ms, past the 1 MiB pages
ARROW_BYTES_PER_DISK_BYTE = 3  # about, for text under zstd: how many Arrow bytes make a part's bytes
PACK_VERSION = 1  # bump when a part's layout changes, so old done records are not reused


@dataclass
class ShardSizeConfig(TaskConfig):
    """TaskConfig plus the size of the document shards a stage writes (`data_pipeline.pack`)."""

    target_shard_bytes: int = DEFAULT_TARGET_SHARD_BYTES
    """About how many bytes (on disk) each output shard `shards/part-NNNNN.parquet` holds (default
    256 MiB); the last of a folder holds the rest. Estimated from the rows' size and the data's
    compression ratio, so a part may be off by some percent. Part of the output: changing it
    rewrites the parts (only them, with `keep_work`)."""
    target_shard_rows: int | None = None
    """At most this many documents per output shard as well (null: no row limit)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.target_shard_bytes >= 1, "target_shard_bytes", self.target_shard_bytes, ">= 1 (bytes)")
        check(
            self.target_shard_rows is None or self.target_shard_rows >= 1,
            "target_shard_rows",
            self.target_shard_rows,
            ">= 1 or null",
        )


@dataclass
class PackSource:
    """One per-unit document shard to pack."""

    path: str
    rows: int
    arrow_bytes: int
    """In-memory (Arrow) bytes of its rows: what the plan sizes parts by (`arrow_bytes`)."""
    sha256: str
    folder: str = ""
    """The folder under shards/ its rows go to: "" or a language folder `lang=xx`."""
    about: dict[str, Any] = field(default_factory=dict)
    """What a part's manifest entry says of it (its unit, input file, part of the file)."""


@dataclass
class Part:
    path: str
    """Relative to shards/: `part-00000.parquet`, `lang=de/part-00001.parquet`."""
    slices: list[tuple[int, int, int]]
    """(source index, first row, end row) in order."""
    est_bytes: int


def arrow_bytes(table: pa.Table) -> int:
    """What a source's rows count for in the plan (their in-memory size, the same whatever the
    file they sit in)."""
    return table.nbytes


def part_path(folder: str, index: int) -> str:
    name = f"part-{index:05d}.parquet"
    return f"{folder}/{name}" if folder else name


def plan_parts(
    sources: list[PackSource], ratios: dict[str, float], target_bytes: int, target_rows: int | None = None
) -> list[Part]:
    """Cut `sources` (in order, per folder, folders sorted) into parts of about `target_bytes` on
    disk (rows x their Arrow bytes x the folder's ratio) and at most `target_rows` rows. A part
    closes as soon as it reaches a target; a source cut across parts continues in the next. No
    rows at all: one empty part, so the stage still has a shard with the schema."""
    by_folder: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(sources):
        if s.rows:
            by_folder[s.folder].append(i)
    plan: list[tuple[str, list[tuple[int, int, int]], float]] = []
    for folder in sorted(by_folder):
        slices: list[tuple[int, int, int]] = []
        size, rows = 0.0, 0
        for i in by_folder[folder]:
            s = sources[i]
            row_bytes = max(s.arrow_bytes, 1) * ratios[folder] / s.rows
            start = 0
            while start < s.rows:
                take = min(s.rows - start, max(1, math.ceil((target_bytes - size) / row_bytes)))
                if target_rows:
                    take = min(take, target_rows - rows)
                slices.append((i, start, start + take))
                size, rows, start = size + take * row_bytes, rows + take, start + take
                if size >= target_bytes or rows == target_rows:
                    plan.append((folder, slices, size))
                    slices, size, rows = [], 0.0, 0
        if slices:
            plan.append((folder, slices, size))
    if not plan:
        plan = [("", [], 0.0)]
    return [Part(part_path(folder, k), sl, round(size)) for k, (folder, sl, size) in enumerate(plan)]


class RowGroups:
    """Feeds tables to `write` in row groups of exactly `rows` rows (the last: the rest), however
    the tables come cut."""

    def __init__(self, write: Callable[[pa.Table], None], rows: int):
        self.write, self.rows = write, rows
        self._pending: list[pa.Table] = []
        self._num_pending = 0

    def add(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._num_pending += table.num_rows
        while self._num_pending >= self.rows:
            merged = pa.concat_tables(self._pending)
            self.write(merged.slice(0, self.rows))
            self._pending = [merged.slice(self.rows)]
            self._num_pending -= self.rows

    def flush(self) -> None:
        if self._num_pending:
            self.write(pa.concat_tables(self._pending))
        self._pending, self._num_pending = [], 0


def _head(path: str, num_bytes: int, batch_rows: int) -> list[pa.RecordBatch]:
    """The first batches of a shard, until they hold `num_bytes` (Arrow)."""
    batches, size = [], 0
    for batch in iter_batches(path, batch_rows, columns=DOC_SCHEMA.names):
        batches.append(batch)
        size += batch.nbytes
        if size >= num_bytes:
            break
    return batches


def compression_ratio(sources: list[PackSource], row_group_rows: int, target_bytes: int) -> float:
    """On-disk bytes per Arrow byte of these sources' rows written as a part is: their first
    PROBE_BYTES (in order; the files read in parallel) compressed in memory, or about one part's
    rows when a part is smaller (zstd compresses a part's pages, about 1 MiB each, one by one: a
    tiny part compresses worse than a large one)."""
    probe_bytes = min(PROBE_BYTES, ARROW_BYTES_PER_DISK_BYTE * target_bytes)
    head, size = [], 0
    for s in sources:
        head.append(s.path)
        size += s.arrow_bytes
        if size >= probe_bytes:
            break
    batches = [b for bs in io_map(lambda p: _head(p, probe_bytes, row_group_rows), head) for b in bs]
    table = pa.Table.from_batches(batches, DOC_SCHEMA)
    if not table.nbytes:
        return 1.0
    sink = pa.BufferOutputStream()
    writer = pq.ParquetWriter(sink, DOC_SCHEMA, **PARQUET_OPTS)
    groups = RowGroups(writer.write_table, row_group_rows)
    groups.add(table)
    groups.flush()
    writer.close()
    return sink.getvalue().size / table.nbytes


def read_rows(path: str, start: int, end: int, batch_rows: int) -> Iterator[pa.Table]:
    """Rows [start, end) of a document shard, reading only the row groups that hold them."""
    pf = parquet_file(path)
    groups, first, skipped = [], 0, 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if first + n <= start:
            skipped += n
        elif first < end:
            groups.append(g)
        first += n
    row = skipped
    for batch in pf.iter_batches(batch_size=batch_rows, row_groups=groups, columns=DOC_SCHEMA.names):
        lo, hi = max(start - row, 0), min(end - row, batch.num_rows)
        if hi > lo:
            yield pa.Table.from_batches([batch]).slice(lo, hi - lo)
        row += batch.num_rows


def write_part(
    slices: list[tuple[str, int, int]],
    path: str,
    out_dir: str,
    done_path: str,
    row_group_rows: int,
    fingerprint: str,
) -> dict[str, Any]:
    """One Ray task: the rows `slices` ((source path, first row, end row), in order) as the part
    `path`, in row groups of `row_group_rows`; then its done record."""
    out = stage_path(out_dir)
    writer = ShardWriter(stage_path(path))
    try:
        groups = RowGroups(writer.write_table, row_group_rows)
        for src, a, b in slices:
            for table in read_rows(src, a, b, row_group_rows):
                groups.add(table)
            maybe_crash(writer.path.stem, writer.num_rows)
        groups.flush()
        entry = writer.close()
    except BaseException:
        writer.abort()
        raise
    record = {
        "fingerprint": fingerprint,
        "shard": entry,
        "num_in": entry["rows"],
        "outputs": output_fingerprints(out, writer.path),
    }
    write_json(done_path, record)
    return record


def pack_shards(
    sources: list[PackSource],
    cfg: ShardSizeConfig,
    out: Any,
    shards_dir: Any,
    work: Path,
    progress: Progress,
) -> list[dict[str, Any]]:
    """Plan the parts of `sources`, write those whose done record (`work/<part>.done.json`) is
    missing or stale into `shards_dir`, one Ray task each; return the parts' manifest entries
    (rows, bytes, sha256, the sources they hold with row ranges, their language), in order.
    `out` is the stage directory the done records name files relative to."""
    by_folder: dict[str, list[PackSource]] = defaultdict(list)
    for s in sources:
        if s.rows:
            by_folder[s.folder].append(s)
    ratios = {
        f: compression_ratio(by_folder[f], cfg.batch_rows, cfg.target_shard_bytes) for f in sorted(by_folder)
    }
    parts = plan_parts(sources, ratios, cfg.target_shard_bytes, cfg.target_shard_rows)
    jobs = []
    for part in parts:
        slices = [(sources[i].path, a, b) for i, a, b in part.slices]
        fp = config_hash(
            {
                "version": PACK_VERSION,
                "path": part.path,
                "row_group_rows": cfg.batch_rows,
                "slices": [[sources[i].sha256, a, b] for i, a, b in part.slices],
            }
        )
        done_path = work / f"{part.path.removesuffix('.parquet')}.done.json"
        jobs.append((part, slices, fp, done_path))
    done = load_done_many(out, [(d, fp) for _, _, fp, d in jobs])
    todo = [
        (part.path, (slices, str(shards_dir / part.path), str(out), str(d), cfg.batch_rows, fp))
        for (part, slices, fp, d), rec in zip(jobs, done)
        if rec is None
    ]
    sizes = {part.path: part.est_bytes for part in parts}
    progress.start(
        "pack",
        total=len(parts),
        done=len(parts) - len(todo),
        total_bytes=sum(sizes.values()),
        done_bytes=sum(p.est_bytes for p, rec in zip(parts, done) if rec is not None),
    )
    results, errors = run_tasks(
        write_part, todo, cfg.ray, progress, "pack", sizes=sizes, labels={k: f"part {k}" for k, _ in todo}
    )
    raise_errors(errors, "pack")
    entries = []
    for part, rec in zip(parts, done):
        rec = rec or results[part.path]
        folder = part.path.rpartition("/")[0]
        entries.append(
            rec["shard"]
            | {"path": part.path}
            | ({"language": folder.removeprefix("lang=")} if folder.startswith("lang=") else {})
            | {"sources": [sources[i].about | {"rows": [a, b]} for i, a, b in part.slices]}
        )
    return entries
