"""Atomic file writes and JSON files: a reader never sees a half-written file, and a file that was
renamed into place survives a power cut (its data and the rename are fsynced).

with atomic_path("out/x.parquet") as tmp:   # write tmp; fsynced and renamed over the target on success
    ...
write_json("out/manifest.json", obj); read_json("s3://bucket/out/manifest.json")   # any store
sizes = io_map(lambda p: p.stat().st_size, paths)   # I/O-bound calls on a thread pool, in order
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from pretrain.core.storage import is_remote, stage_path, upload

T = TypeVar("T")
R = TypeVar("R")
IO_THREADS = 16  # stat/read calls in flight at once: enough for a network disk, harmless on a laptop


def fsync_file(path: str | Path) -> None:
    """Flush a file's data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (a rename into it) to the disk, where the OS and filesystem allow
    it (Windows cannot open a folder; some network filesystems refuse the call)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; if the block succeeds, fsync it, rename it over
    `path` and fsync the folder (so the rename itself is on disk). For `path` on an object store
    (`s3://...`: no rename there) the temporary file is local and is uploaded to the final name in
    one request when the block succeeds, so a reader never sees part of it either."""
    if is_remote(path):
        fd, tmp = tempfile.mkstemp(prefix=".upload.", suffix=".tmp")
        os.close(fd)
        try:
            yield Path(tmp)
            upload(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")


def read_json(path: str | Path) -> Any:
    return json.loads(stage_path(path).read_text(encoding="utf-8"))


def write_text(path: str | Path, text: str) -> None:
    """A small text file (config.yaml, summary.md) written like `write_json`, on any store."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def io_map(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """`[fn(x) for x in items]` with the calls on a thread pool: for stats and small reads of many
    files (a resume check), which wait on the disk rather than the CPU."""
    items = list(items)
    if len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=min(IO_THREADS, len(items))) as pool:
        return list(pool.map(fn, items))
