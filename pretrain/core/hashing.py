"""Hashing used by every folder: file sha256, a cheap file fingerprint, a digest of JSON-able values.

sha256_file("runs/data/shards/a.parquet")       # hex digest, streamed in 1 MiB chunks
file_fingerprint("raw/web.jsonl")               # size, mtime and a sampled sha256 (reads <= 3 MiB)
file_fingerprint("s3://b/raw/web.jsonl")        # size, last-modified and the ETag (one HEAD request)
fingerprint_matches("raw/web.jsonl", recorded)  # the check a resume makes, stat first
json_digest({"seed": 0, "files": [...]})        # sha256 of the canonical JSON (sorted keys)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pretrain.core.storage import is_remote, open_binary, stat


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open_binary(path) as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def json_digest(obj: Any) -> str:
    """sha256 hex of `obj` as canonical JSON (sorted keys; non-JSON values through str())."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


SAMPLE_BYTES = 1 << 20  # each of the three windows of the sampled hash


def sampled_sha256(path: str | Path, size: int, sample_bytes: int = SAMPLE_BYTES) -> str:
    """sha256 of the size and the first, middle and last `sample_bytes` of a file (the whole file
    when it is at most three windows): catches a file rewritten in place at the same size and
    mtime, for a read of at most 3 MiB whatever the file's size."""
    h = hashlib.sha256(size.to_bytes(8, "little"))
    with open_binary(path) as f:
        if size <= 3 * sample_bytes:
            while chunk := f.read(sample_bytes):
                h.update(chunk)
        else:
            for offset in (0, size // 2 - sample_bytes // 2, size - sample_bytes):
                f.seek(offset)
                h.update(f.read(sample_bytes))
    return h.hexdigest()


def file_fingerprint(path: str | Path) -> dict[str, Any]:
    """Cheap identity of a file, kept in done records to decide whether work must be redone:
    size, mtime and `sampled_sha256`. On an object store: size, last-modified time and the store's
    ETag (its own digest of the content, from the same request as the size, so nothing is read)."""
    st = stat(path)
    if is_remote(path):
        return st
    return {**st, "sample_sha256": sampled_sha256(path, st["size"])}


def fingerprint_matches(path: str | Path, recorded: Any) -> bool:
    """Whether `path` still has the `file_fingerprint` recorded; a missing file or another size or
    mtime (or ETag) answers from one stat, without reading the file."""
    try:
        st = stat(path)
    except OSError:
        return False
    if not isinstance(recorded, dict) or any(recorded.get(k) != v for k, v in st.items()):
        return False
    if is_remote(path):
        return True
    try:
        return sampled_sha256(path, st["size"]) == recorded.get("sample_sha256")
    except OSError:
        return False
