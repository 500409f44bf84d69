"""Token shards: uncompressed Arrow IPC files the trainer memory-maps and slices without copies.

    entry = write_token_shard("out/shards/00000.arrow", [np.array([5, 6, 7]), ...], vocab_size=32000)
    write_token_manifest("out", tokenizer_hash="ab12..", shards=[{**entry, "source": "web"}])
    shard = open_token_shard("out/shards/00000.arrow")  # shard.tokens, shard.doc_offsets (zero-copy)

A shard holds one record batch with one column `tokens: large_list<uint16|uint32>`, one row per
document: the list's values buffer is the flat token array and its offsets are the document
boundaries, so both come out of the memory map as numpy views. pyarrow + numpy only (no torch, no Ray).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from pretrain.core.files import atomic_path, read_json, write_json
from pretrain.core.hashing import sha256_file
from pretrain.core.storage import exists, is_remote, open_binary, stage_path

TOKEN_SHARD_VERSION = 1
TOKEN_MANIFEST_VERSION = 1
UINT16_MAX_VOCAB = 1 << 16


class CorruptShardError(ValueError):
    """A token shard cannot be read or is inconsistent; the message names the file."""


class TokenizerMismatchError(ValueError):
    """Token shards were made by a different tokenizer than the one the run expects."""


def token_dtype(vocab_size: int) -> np.dtype:
    if vocab_size <= 0:
        raise ValueError(f"vocab_size={vocab_size} must be positive")
    return np.dtype(np.uint16 if vocab_size <= UINT16_MAX_VOCAB else np.uint32)


def write_token_shard(path: str | Path, docs: Sequence[np.ndarray], vocab_size: int) -> dict[str, Any]:
    """Write `docs` (1-D integer arrays) to one Arrow IPC file atomically; return its manifest entry.

    The entry has path (file name), num_tokens, num_docs, bytes and sha256; the caller adds `source`.
    """
    dtype = token_dtype(vocab_size)
    lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate([np.asarray(d).ravel() for d in docs]) if docs else np.zeros(0, np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= vocab_size):
        raise ValueError(
            f"token ids must be in [0, {vocab_size}) for {path}: got min {flat.min()}, max {flat.max()}"
        )
    arr = np.ascontiguousarray(flat.astype(dtype, copy=False))
    # from_buffers, not pa.array: pa.array imports pandas (0.2 s per fresh Ray worker)
    values = pa.Array.from_buffers(pa.from_numpy_dtype(dtype), len(arr), [None, pa.py_buffer(arr)])
    column = pa.LargeListArray.from_arrays(pa.array(offsets), values)
    meta = {
        "token_shard_version": str(TOKEN_SHARD_VERSION),
        "vocab_size": str(vocab_size),
        "num_tokens": str(int(offsets[-1])),
        "num_docs": str(len(docs)),
    }
    schema = pa.schema([pa.field("tokens", column.type, nullable=False)], metadata=meta)
    batch = pa.record_batch([column], schema=schema)
    with atomic_path(path) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, ipc.new_file(sink, schema) as writer:
            writer.write_batch(batch)  # one batch keeps the token array contiguous in the file
        entry = {  # of the finished temporary file: an object store is not read back
            "path": stage_path(path).name,
            "num_tokens": int(offsets[-1]),
            "num_docs": len(docs),
            "bytes": tmp.stat().st_size,
            "sha256": sha256_file(tmp),
        }
    return entry


@dataclass(frozen=True)
class TokenShard:
    """A memory-mapped token shard; `tokens` and `doc_offsets` are views into the mapped file."""

    path: Path
    tokens: np.ndarray  # (num_tokens,) uint16 or uint32
    doc_offsets: np.ndarray  # (num_docs + 1,) int64; doc i is tokens[doc_offsets[i]:doc_offsets[i+1]]
    vocab_size: int

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def num_docs(self) -> int:
        return int(self.doc_offsets.shape[0]) - 1

    def doc(self, i: int) -> np.ndarray:
        return self.tokens[self.doc_offsets[i] : self.doc_offsets[i + 1]]


def open_token_shard(path: str | Path) -> TokenShard:
    """Memory-map a token shard (one on an object store is read into memory whole); raise
    CorruptShardError naming the file when it is unreadable."""
    path = stage_path(path)
    try:
        if is_remote(path):
            with open_binary(path) as f:
                source = pa.BufferReader(f.read())
        else:
            source = pa.memory_map(str(path), "r")
        reader = ipc.open_file(source)
        if reader.num_record_batches != 1:
            raise ValueError(f"expected 1 record batch, found {reader.num_record_batches}")
        batch = reader.get_batch(0)
        meta = {k.decode(): v.decode() for k, v in (reader.schema.metadata or {}).items()}
        column = batch.column("tokens")
        if not pa.types.is_large_list(column.type) or column.offset != 0:
            raise ValueError(f"column 'tokens' has type {column.type}, expected large_list")
        tokens = column.values.to_numpy(zero_copy_only=True)
        doc_offsets = column.offsets.to_numpy(zero_copy_only=True)
        vocab_size = int(meta["vocab_size"])
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError, ValueError, KeyError) as e:
        raise CorruptShardError(f"corrupt or truncated token shard {path}: {e}") from None
    if tokens.dtype != token_dtype(vocab_size):
        raise CorruptShardError(f"token shard {path}: dtype {tokens.dtype} does not fit vocab {vocab_size}")
    if int(meta.get("num_tokens", -1)) != tokens.shape[0] or doc_offsets[-1] != tokens.shape[0]:
        raise CorruptShardError(
            f"token shard {path}: header says {meta.get('num_tokens')} tokens, "
            f"offsets end at {doc_offsets[-1]}, data has {tokens.shape[0]}"
        )
    return TokenShard(path=path, tokens=tokens, doc_offsets=doc_offsets, vocab_size=vocab_size)


def write_token_manifest(
    out_dir: str | Path, tokenizer_hash: str, shards: Sequence[Mapping[str, Any]], **extra: Any
) -> dict[str, Any]:
    """Write out_dir/manifest.json for token shards; each shard needs path, num_tokens, num_docs,
    source and sha256 (path relative to out_dir). Returns the manifest written."""
    entries = []
    sources: dict[str, dict[str, int]] = {}
    for s in shards:
        missing = {"path", "num_tokens", "num_docs", "source", "sha256"} - set(s)
        if missing:
            raise ValueError(f"token manifest entry {dict(s)} is missing {sorted(missing)}")
        entries.append(dict(s))
        src = sources.setdefault(s["source"], {"num_tokens": 0, "num_docs": 0, "num_shards": 0})
        src["num_tokens"] += int(s["num_tokens"])
        src["num_docs"] += int(s["num_docs"])
        src["num_shards"] += 1
    manifest = {
        "version": TOKEN_MANIFEST_VERSION,
        "kind": "token_shards",
        "tokenizer_hash": tokenizer_hash,
        "num_tokens": sum(v["num_tokens"] for v in sources.values()),
        "num_docs": sum(v["num_docs"] for v in sources.values()),
        "sources": sources,
        "shards": entries,
        **extra,
    }
    write_json(stage_path(out_dir) / "manifest.json", manifest)
    return manifest


@dataclass(frozen=True)
class TokenManifest:
    """A token-shard manifest read from disk; shard paths are resolved against `root`."""

    root: Path
    tokenizer_hash: str
    shards: list[dict[str, Any]]
    sources: dict[str, dict[str, int]]
    raw: dict[str, Any]

    @property
    def num_tokens(self) -> int:
        return sum(v["num_tokens"] for v in self.sources.values())

    def source_shards(self, source: str) -> list[dict[str, Any]]:
        """Manifest entries of one source, in manifest order (which fixes the data order)."""
        if source not in self.sources:
            raise KeyError(f"source {source!r} not in {self.root}/manifest.json; have {sorted(self.sources)}")
        return [s for s in self.shards if s["source"] == source]

    def shard_path(self, entry: Mapping[str, Any]) -> Path:
        return self.root / entry["path"]


def read_token_manifest(out_dir: str | Path) -> TokenManifest:
    path = stage_path(out_dir) / "manifest.json"
    if not exists(path):
        raise FileNotFoundError(f"{path} not found: is {out_dir} a token-shard directory?")
    raw = read_json(path)
    if raw.get("kind") != "token_shards" or "tokenizer_hash" not in raw:
        raise ValueError(f"{path} is not a token-shard manifest (kind={raw.get('kind')!r})")
    return TokenManifest(
        root=stage_path(out_dir),
        tokenizer_hash=raw["tokenizer_hash"],
        shards=list(raw["shards"]),
        sources=dict(raw["sources"]),
        raw=raw,
    )


def check_tokenizer(manifest: TokenManifest, expected_hash: str) -> None:
    """Refuse shards made by another tokenizer than the one this run started with."""
    if manifest.tokenizer_hash != expected_hash:
        raise TokenizerMismatchError(
            f"token shards in {manifest.root} were made with tokenizer {manifest.tokenizer_hash}, "
            f"but this run expects tokenizer {expected_hash}; retokenize or point at the right shards"
        )
