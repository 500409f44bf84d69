"""Token shards: exact round trips (uint16/uint32), zero-copy memory map, manifest counts, errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pretrain.core.token_shards import (
    CorruptShardError,
    TokenizerMismatchError,
    check_tokenizer,
    open_token_shard,
    read_token_manifest,
    write_token_manifest,
    write_token_shard,
)


def _docs(rng: np.random.Generator, n: int, vocab: int) -> list[np.ndarray]:
    return [rng.integers(0, vocab, size=int(rng.integers(0, 50))) for _ in range(n)]


@pytest.mark.parametrize("vocab,dtype", [(50_000, np.uint16), (65_536, np.uint16), (100_000, np.uint32)])
def test_round_trip_exact(tmp_path, vocab, dtype):
    docs = _docs(np.random.default_rng(0), 40, vocab)
    docs[3] = np.array([vocab - 1, 0])  # extremes of the id range survive
    entry = write_token_shard(tmp_path / "s.arrow", docs, vocab)
    shard = open_token_shard(tmp_path / "s.arrow")
    assert shard.tokens.dtype == dtype and shard.vocab_size == vocab
    assert entry["num_tokens"] == shard.num_tokens == sum(len(d) for d in docs)
    assert entry["num_docs"] == shard.num_docs == 40
    for i, d in enumerate(docs):
        np.testing.assert_array_equal(shard.doc(i), d)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temp file


def test_open_is_zero_copy_memory_map(tmp_path):
    docs = [np.arange(200_000) % 60_000 for _ in range(5)]
    write_token_shard(tmp_path / "big.arrow", docs, 60_000)
    before = pa.total_allocated_bytes()
    shard = open_token_shard(tmp_path / "big.arrow")
    assert pa.total_allocated_bytes() == before  # nothing copied into Arrow's heap
    assert not shard.tokens.flags.owndata and not shard.tokens.flags.writeable  # a read-only mmap view
    assert not shard.doc_offsets.flags.owndata
    assert shard.num_tokens == 1_000_000 and int(shard.tokens[200_001]) == 1


def test_out_of_range_token_refused(tmp_path):
    with pytest.raises(ValueError, match="must be in"):
        write_token_shard(tmp_path / "s.arrow", [np.array([1, 70_000])], 65_536)


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_truncated_shard_error_names_file(tmp_path, cut):
    write_token_shard(tmp_path / "s.arrow", _docs(np.random.default_rng(1), 30, 1000), 1000)
    data = (tmp_path / "s.arrow").read_bytes()
    bad = tmp_path / "bad-00007.arrow"
    bad.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(CorruptShardError, match="bad-00007.arrow"):
        open_token_shard(bad)


def test_garbage_file_error_names_file(tmp_path):
    bad = tmp_path / "garbage.arrow"
    bad.write_bytes(b"not arrow at all" * 10)
    with pytest.raises(CorruptShardError, match="garbage.arrow"):
        open_token_shard(bad)


def test_manifest_counts_per_shard_and_source(tmp_path):
    rng = np.random.default_rng(2)
    entries = []
    for i, (source, ndocs) in enumerate([("web", 10), ("web", 5), ("code", 7)]):
        docs = _docs(rng, ndocs, 500)
        entries.append({**write_token_shard(tmp_path / f"{i}.arrow", docs, 500), "source": source})
    write_token_manifest(tmp_path, tokenizer_hash="tok-a", shards=entries, vocab_size=500)
    m = read_token_manifest(tmp_path)
    assert m.tokenizer_hash == "tok-a" and m.raw["vocab_size"] == 500
    assert m.sources["web"]["num_docs"] == 15 and m.sources["code"]["num_docs"] == 7
    assert m.sources["web"]["num_shards"] == 2
    assert m.sources["web"]["num_tokens"] == entries[0]["num_tokens"] + entries[1]["num_tokens"]
    assert m.num_tokens == sum(e["num_tokens"] for e in entries) == m.raw["num_tokens"]
    assert [e["path"] for e in m.source_shards("web")] == ["0.arrow", "1.arrow"]
    assert open_token_shard(m.shard_path(m.source_shards("code")[0])).num_docs == 7
    with pytest.raises(KeyError, match="'math'"):
        m.source_shards("math")


def test_manifest_entry_missing_field_refused(tmp_path):
    with pytest.raises(ValueError, match="source"):
        write_token_manifest(tmp_path, "tok", [{"path": "a", "num_tokens": 1, "num_docs": 1, "sha256": "x"}])


def test_tokenizer_mismatch_names_both_hashes(tmp_path):
    write_token_manifest(tmp_path, tokenizer_hash="aaa111", shards=[])
    m = read_token_manifest(tmp_path)
    check_tokenizer(m, "aaa111")
    with pytest.raises(TokenizerMismatchError, match="aaa111.*bbb222"):
        check_tokenizer(m, "bbb222")
