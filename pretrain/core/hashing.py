"""Hashing used by every folder: file sha256, a cheap file fingerprint, a digest of JSON-able values.

sha256_file("runs/data/shards/a.parquet")   # hex digest, streamed in 1 MiB chunks
json_digest({"seed": 0, "files": [...]})    # sha256 of the canonical JSON (sorted keys)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def json_digest(obj: Any) -> str:
    """sha256 hex of `obj` as canonical JSON (sorted keys; non-JSON values through str())."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_fingerprint(path: str | Path) -> dict[str, Any]:
    """Cheap identity of an input file (size + mtime) used to decide whether a shard must be redone."""
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
