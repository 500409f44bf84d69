"""Shard and manifest I/O shared by data_pipeline, tokenizer and trainer (pyarrow only, no Ray).

Document shard: Parquet (zstd) with DOC_SCHEMA. Rejects add `stage`, `reason`, `detail`.
A stage directory holds shards/, rejects/, manifest.json and stats.json. Every file is written
to a temporary name and renamed when complete, so a reader never sees a half-written file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pretrain.core.files import atomic_path, read_json, write_json
from pretrain.core.hashing import sha256_file
from pretrain.core.storage import exists, find_files, is_remote, open_binary, remove, stage_path

DOC_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("url", pa.string(), nullable=True),
        pa.field("metadata", pa.string(), nullable=False),  # JSON object
    ]
)
REJECT_SCHEMA = pa.schema(
    list(DOC_SCHEMA)
    + [
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=True),
    ]
)
PARQUET_OPTS = {
    "compression": "zstd",
    "compression_level": 3,
    "use_dictionary": ["source", "stage", "reason"],
}
MANIFEST_VERSION = 1


class ShardWriter:
    """Streams record batches into one Parquet file atomically (row group per write)."""

    def __init__(self, path: str | Path, schema: pa.Schema = DOC_SCHEMA):
        self.path = stage_path(path)
        self.schema = schema
        self.num_rows = 0
        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        self._writer = pq.ParquetWriter(self._tmp, schema, **PARQUET_OPTS)

    def write_rows(self, rows: list[dict]) -> None:
        if rows:
            self.write_table(pa.Table.from_pylist(rows, schema=self.schema))

    def write_table(self, table: pa.Table) -> None:
        if table.num_rows:
            self._writer.write_table(table.select(self.schema.names).cast(self.schema))
            self.num_rows += table.num_rows

    def close(self) -> dict[str, Any]:
        """Finish the file and return its manifest entry (rows, bytes, sha256: of the finished
        temporary file, before it is renamed or uploaded, so an object store is not read back)."""
        self._writer.close()
        entry = {
            "path": self.path.name,
            "rows": self.num_rows,
            "bytes": self._tmp.stat().st_size,
            "sha256": sha256_file(self._tmp),
        }
        self._ctx.__exit__(None, None, None)
        return entry

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
        with contextlib.suppress(BaseException):
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_table(path: str | Path, table: pa.Table, schema: pa.Schema | None = None) -> dict[str, Any]:
    w = ShardWriter(path, schema or table.schema)
    try:
        w.write_table(table)
    except BaseException:
        w.abort()
        raise
    return w.close()


def iter_batches(
    path: str | Path, batch_rows: int = 1024, columns: list[str] | None = None
) -> Iterator[pa.RecordBatch]:
    try:
        pf = parquet_file(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"cannot read Parquet shard {path}: {e}") from None
    yield from pf.iter_batches(batch_size=batch_rows, columns=columns)


def parquet_file(path: str | Path) -> pq.ParquetFile:
    """A Parquet file on a local disk (memory-mapped) or an object store (read by ranges)."""
    if is_remote(path):  # pre-buffered: fewer, larger range requests
        return pq.ParquetFile(open_binary(path))
    # pre_buffer off: pyarrow would otherwise keep every column chunk read until the reader is done
    # (94 MiB held while streaming a 100 MB shard in small batches, measured)
    return pq.ParquetFile(path, pre_buffer=False)


def read_table(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    try:
        if is_remote(path):
            with open_binary(path) as f:
                return pq.read_table(f, columns=columns)
        return pq.read_table(path, columns=columns)
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"cannot read Parquet shard {path}: {e}") from None


def list_shards(stage_dir: str | Path, kind: str = "shards") -> list[Path]:
    """Shard files of a stage directory, in the manifest's order when there is a manifest."""
    stage_dir = stage_path(stage_dir)
    manifest = stage_dir / "manifest.json"
    if exists(manifest):
        entries = read_json(manifest).get(kind, [])
        return [stage_dir / kind / e["path"] for e in entries]
    # with language folders (lang=xx/)
    return [p for p in find_files(stage_dir / kind) if p.name.endswith(".parquet")]


def shard_relpath(stage_dir: str | Path, path: str | Path, kind: str = "shards") -> str:
    """A shard's path under stage_dir/kind (`part-00000.parquet`, `lang=de/part-00003.parquet`):
    what a stage that writes one output per input shard names its output, keeping the folders."""
    return stage_path(path).relative_to(stage_path(stage_dir) / kind).as_posix()


def remove_unlisted(
    stage_dir: str | Path, keep: set[str], kinds: tuple[str, ...] = ("shards", "rejects")
) -> None:
    """Delete the files under stage_dir/<kind>/ whose path relative to stage_dir is not in `keep`
    (outputs of inputs, or language folders, no longer in the run), then the folders left empty."""
    if is_remote(stage_dir):  # no folders on an object store: only files to delete
        base = stage_path(stage_dir)
        for kind in kinds:
            for f in find_files(base / kind):
                if f.relative_to(base).as_posix() not in keep:
                    remove(f)
        return
    stage_dir = Path(stage_dir)
    for kind in kinds:
        for f in sorted((stage_dir / kind).rglob("*"), reverse=True):  # files before their folders
            if f.is_dir():
                if not any(f.iterdir()):
                    f.rmdir()
            elif f.relative_to(stage_dir).as_posix() not in keep:
                f.unlink()


def write_manifest(stage_dir: str | Path, **fields: Any) -> None:
    write_json(stage_path(stage_dir) / "manifest.json", {"version": MANIFEST_VERSION, **fields})


def read_manifest(stage_dir: str | Path) -> dict[str, Any]:
    path = stage_path(stage_dir) / "manifest.json"
    if not exists(path):
        raise FileNotFoundError(f"{path} not found: is {stage_dir} a finished stage directory?")
    return read_json(path)
