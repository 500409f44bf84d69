"""Work units sized by bytes: large files split into parts, small files grouped into one task.

    parts = split_units(scan.units, fingerprints, cfg.input.unit_bytes)  # what the outputs follow
    groups = group_units(pending_parts, group_target_bytes(pending_parts, unit_bytes, num_cpus))

`split_units` decides the outputs: each part (a whole file, or a part of a split one) is one
output shard and one done record, and depends only on the file and `unit_bytes`, never on the
number of workers. An uncompressed JSONL file larger than `unit_bytes` is cut at the first line
start after each multiple of size/n (n = ceil(size / unit_bytes)), and each part learns how many
lines come before it (one read of the file, in a Ray task per file: the driver never reads the
corpus), so its ids are the `relpath:line` the whole file gives. A Parquet file is cut between row groups
(their rows before it come from the footer). A WARC file is cut at the first record start after
each multiple of size/n (for .warc.gz, a record is a gzip member of its own); one pass over its
records, in the same task, finds their offsets and counts the responses
before each part, so its ids are the `relpath#k` the whole file gives. Compressed JSONL, a gzip
WARC that is one member (or that warcio cannot walk) and folders of .txt files cannot be entered
in the middle and stay whole.

`group_units` only schedules: consecutive parts up to a target size run as one task (a million
small files are not a million tasks), and the largest tasks go first, so no worker waits at the
end on one big one. Done records stay per part, so the grouping may differ between runs.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Callable

from data_pipeline.readers import InputUnit
from pretrain.core.files import io_map
from pretrain.core.shards import parquet_file
from pretrain.core.storage import open_binary

SPLITTABLE_JSONL = (".jsonl", ".ndjson")
READ_BYTES = 8 << 20  # block size of the line count
TASKS_PER_CPU = 8  # a small input is grouped into about this many tasks per CPU: a short tail


def unit_size(fingerprint: dict) -> int:
    """Input bytes of a unit from its `readers.unit_fingerprint` (a folder of .txt: their sum)."""
    if "files" in fingerprint:
        return sum(f[1] for f in fingerprint["files"])
    return int(fingerprint["size"])


SplitMany = Callable[[list[InputUnit], int], list[list[InputUnit]]]


def split_units(
    units: list[InputUnit], fingerprints: list[dict], unit_bytes: int, split_many: SplitMany | None = None
) -> list[InputUnit]:
    """Every unit with its size, the files larger than `unit_bytes` that can be split replaced by
    their parts, in input order. Finding the parts of a JSONL or WARC file reads it whole (lines or
    records before each cut), so `split_many(units, unit_bytes)` does that for the units that need
    it, each unit's parts in order: the executor runs one Ray task per file (`split_unit`), so the
    driver never reads the corpus; by default, threads here."""
    sized = [dataclasses.replace(u, num_bytes=unit_size(fp)) for u, fp in zip(units, fingerprints)]
    todo = [u for u in sized if u.num_bytes > unit_bytes]
    if split_many is None:
        parts = io_map(lambda u: _split(u, unit_bytes), todo)
    else:
        parts = split_many(todo, unit_bytes) if todo else []
    each = iter(parts)  # in the order of `todo`
    return [p for u in sized for p in (next(each) if u.num_bytes > unit_bytes else [u])]


def split_unit(unit: InputUnit, unit_bytes: int) -> dict:
    """A Ray task: the parts of one input unit larger than `unit_bytes` (see `split_units`)."""
    return {"parts": _split(unit, unit_bytes)}


def _split(unit: InputUnit, unit_bytes: int) -> list[InputUnit]:
    if unit.num_bytes <= unit_bytes:
        return [unit]
    if unit.format == "jsonl" and unit.path.lower().endswith(SPLITTABLE_JSONL):
        ranges = _jsonl_ranges(unit.path, unit.num_bytes, unit_bytes)
    elif unit.format in ("parquet", "shards"):
        ranges = _parquet_ranges(unit.path, unit_bytes)
    elif unit.format == "warc":
        ranges = _warc_ranges(unit.path, unit.num_bytes, unit_bytes)
    else:
        return [unit]
    if len(ranges) <= 1:
        return [unit]
    return [
        dataclasses.replace(unit, part=k, start=a, end=b, first_record=first, num_bytes=size)
        for k, (a, b, first, size) in enumerate(ranges)
    ]


def _line_start_at_or_after(f, offset: int, size: int) -> int:
    """The first byte >= offset that begins a line (just after a newline), or `size`."""
    f.seek(offset - 1)
    pos = offset - 1
    while block := f.read(1 << 16):
        i = block.find(b"\n")
        if i >= 0:
            return pos + i + 1
        pos += len(block)
    return size


def _count_newlines(f, start: int, end: int) -> int:
    f.seek(start)
    n, left = 0, end - start
    while left > 0 and (block := f.read(min(READ_BYTES, left))):
        n += block.count(b"\n")
        left -= len(block)
    return n


def _jsonl_ranges(path: str, size: int, unit_bytes: int) -> list[tuple[int, int, int, int]]:
    """(start byte, end byte, lines before, bytes) of each part of a JSONL file."""
    n = math.ceil(size / unit_bytes)
    with open_binary(path) as f:
        cuts = sorted({_line_start_at_or_after(f, k * size // n, size) for k in range(1, n)} - {size})
        bounds = [0, *cuts, size]
        ranges, lines = [], 0
        for a, b in zip(bounds, bounds[1:]):
            ranges.append((a, b, lines, b - a))
            if b < size:
                lines += _count_newlines(f, a, b)
    return ranges


def _parquet_ranges(path: str, unit_bytes: int) -> list[tuple[int, int, int, int]]:
    """(first row group, end row group, rows before, compressed bytes) of each part of a Parquet
    file: consecutive row groups up to `unit_bytes`. An unreadable footer leaves the file whole
    (its task then names the file)."""
    try:
        meta = parquet_file(path).metadata
    except Exception:  # noqa: BLE001 - pyarrow raises several types for a bad file
        return []
    ranges: list[tuple[int, int, int, int]] = []
    start = rows = part_rows = part_bytes = 0
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        nbytes = sum(rg.column(c).total_compressed_size for c in range(rg.num_columns))
        if part_bytes and part_bytes + nbytes > unit_bytes:
            ranges.append((start, g, rows, part_bytes))
            start, rows, part_bytes, part_rows = g, rows + part_rows, 0, 0
        part_bytes += nbytes
        part_rows += rg.num_rows
    ranges.append((start, meta.num_row_groups, rows, part_bytes))
    return ranges


def _warc_record_starts(path: str) -> list[tuple[int, int]]:
    """(byte offset, responses before it) of each record of a WARC file: one pass over its records
    (decompressing a .warc.gz), not parsing their HTTP headers. Empty when the records cannot be
    entered one by one: a .gz that holds several records in one gzip member (warcio refuses it),
    or a file warcio cannot walk (the task that reads it whole then names the error)."""
    from warcio.archiveiterator import ArchiveIterator  # [data] extra, only for WARC inputs

    starts: list[tuple[int, int]] = []
    responses = 0
    try:
        with open_binary(path) as f:
            records = ArchiveIterator(f, no_record_parse=True)
            for record in records:
                starts.append((records.get_record_offset(), responses))  # reads to the record's end
                responses += record.rec_type == "response"
    except OSError:
        raise  # the file itself cannot be read: as for JSONL, the run names it here
    except Exception:  # noqa: BLE001 - warcio raises assorted errors on a corrupt or one-member archive
        return []
    return starts


def _warc_ranges(path: str, size: int, unit_bytes: int) -> list[tuple[int, int, int, int]]:
    """(start byte, end byte, responses before, bytes) of each part of a WARC file, cut at the first
    record start at or after each multiple of size/n."""
    starts = _warc_record_starts(path)
    if len(starts) <= 1:
        return []
    offsets = [o for o, _ in starts]
    before = dict(starts)
    n = math.ceil(size / unit_bytes)
    cuts = {
        offsets[i] for k in range(1, n) if (i := bisect.bisect_left(offsets, k * size // n)) < len(offsets)
    }
    bounds = [0, *sorted(cuts - {0, size}), size]
    return [(a, b, before.get(a, 0), b - a) for a, b in zip(bounds, bounds[1:])]


def group_target_bytes(units: list[InputUnit], unit_bytes: int, num_cpus: int) -> int:
    """Bytes of one group: `unit_bytes`, or less when the input is small, so that every CPU gets
    TASKS_PER_CPU tasks."""
    total = sum(u.num_bytes for u in units)
    return max(1, min(unit_bytes, total // (TASKS_PER_CPU * num_cpus)))


def group_units(units: list[InputUnit], target_bytes: int) -> list[list[InputUnit]]:
    """Consecutive units up to `target_bytes` together (a larger one alone), largest group first
    (ties in input order)."""
    groups: list[list[InputUnit]] = []
    size = 0
    for u in units:
        if not groups or size + u.num_bytes > target_bytes:
            groups.append([])
            size = 0
        groups[-1].append(u)
        size += u.num_bytes
    return sorted(groups, key=lambda g: -sum(u.num_bytes for u in g))


def group_key(group: list[InputUnit]) -> str:
    """A group's task key: its first unit's stem, and how many more it holds."""
    return group[0].stem + (f"+{len(group) - 1}" if len(group) > 1 else "")


def group_label(group: list[InputUnit]) -> str:
    """A group in messages: `input web/a.jsonl`, or the first and last of several."""
    if len(group) == 1:
        return f"input {group[0].label}"
    return f"inputs {group[0].label} .. {group[-1].label} ({len(group)} units)"
