"""Tokenizer encoding on Ray: exact document layout ([BOS] ids EOS), one token shard per (document
shard, source), manifest counts, byte-identical output for 1 or 2 workers, resume after a lost
task or a killed worker, and refusal of shards made by another tokenizer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pretrain.core.token_shards import (
    TokenizerMismatchError,
    check_tokenizer,
    open_token_shard,
    read_token_manifest,
)
from pretrain.core.tokenizer_file import load_tokenizer
from tests.test_tokenizer import REPO, make_stage, synth_docs, tiny_cfg
from tokenizer.config import TokenizerEncodeConfig
from tokenizer.encode import run_encode
from tokenizer.train import train_tokenizer


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").iterdir())} | {
        "manifest.json": (out / "manifest.json").read_bytes()
    }


@pytest.fixture(scope="module")
def stage(tmp_path_factory) -> Path:
    """Shards that mix sources (dealt round-robin), plus an empty and a whitespace-only document."""
    docs = synth_docs("web", 160, 0) + synth_docs("code", 60, 1, mean_words=20) + synth_docs("wiki", 30, 2)
    docs = [docs[i] for i in np.random.default_rng(3).permutation(len(docs))]
    docs[5] = docs[5] | {"text": ""}
    docs[9] = docs[9] | {"text": "   \n\t "}
    return make_stage(tmp_path_factory.mktemp("stage"), docs, 5)


@pytest.fixture(scope="module")
def tok(stage, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(stage, out, tiny_cfg())
    return out


@pytest.fixture(scope="module")
def reference(stage, tok, ray_local, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref")
    stats = run_encode(stage, tok, out, TokenizerEncodeConfig(workers=1, progress=False))
    assert stats["num_tasks_run"] == 5 and stats["num_tasks_skipped"] == 0
    return out


def _doc_rows(stage: Path) -> list[tuple[str, str, str]]:
    rows = []
    for p in sorted((stage / "shards").glob("*.parquet")):
        t = pq.read_table(p)
        rows += [(p.stem, r["source"], r["text"]) for r in t.select(["source", "text"]).to_pylist()]
    return rows


def test_every_document_is_its_ids_then_eos_in_order(stage, tok, reference):
    bpe = load_tokenizer(tok)
    manifest = read_token_manifest(reference)
    rows = _doc_rows(stage)
    assert manifest.raw["appends_eos"] is True and manifest.raw["eos_id"] == bpe.eos_id
    assert manifest.raw["bos_id"] is None and manifest.raw["vocab_size"] == bpe.vocab_size
    assert manifest.tokenizer_hash == bpe.hash and manifest.raw["dtype"] == "uint16"
    seen = 0
    for entry in manifest.shards:
        stem, source = entry["path"].removeprefix("shards/").removesuffix(".arrow").rsplit(".", 1)
        assert source == entry["source"]
        texts = [t for s, src, t in rows if s == stem and src == source]
        shard = open_token_shard(manifest.shard_path(entry))
        assert shard.num_docs == len(texts) == entry["num_docs"]
        for i, text in enumerate(texts):
            doc = shard.doc(i)
            assert doc[-1] == bpe.eos_id and bpe.decode(doc[:-1].tolist()) == text
            assert doc[:-1].tolist() == bpe.encode(text)
        assert entry["text_bytes"] == sum(len(t.encode()) for t in texts)
        seen += len(texts)
    assert seen == len(rows) == 250


def test_empty_document_is_a_lone_eos(stage, tok, reference):
    bpe = load_tokenizer(tok)
    manifest = read_token_manifest(reference)
    lone = [
        d.tolist()
        for e in manifest.shards
        for s in [open_token_shard(manifest.shard_path(e))]
        for d in (s.doc(i) for i in range(s.num_docs))
        if len(d) == 1
    ]
    assert lone == [[bpe.eos_id]]


def test_one_token_shard_per_doc_shard_and_source_with_exact_counts(stage, reference):
    manifest = read_token_manifest(reference)
    pairs = sorted({(s, src) for s, src, _ in _doc_rows(stage)})
    assert [e["path"] for e in manifest.shards] == [f"shards/{s}.{src}.arrow" for s, src in pairs]
    shards = {e["path"]: open_token_shard(manifest.shard_path(e)) for e in manifest.shards}
    assert manifest.raw["num_tokens"] == sum(e["num_tokens"] for e in manifest.shards)
    assert manifest.raw["num_tokens"] == sum(s.num_tokens for s in shards.values())
    assert manifest.raw["num_docs"] == 250
    for src, agg in manifest.sources.items():
        mine = [e for e in manifest.shards if e["source"] == src]
        assert agg["num_tokens"] == sum(shards[e["path"]].num_tokens for e in mine)
        assert agg["num_docs"] == sum(shards[e["path"]].num_docs for e in mine)
        assert agg["num_shards"] == len(mine)
    assert set(manifest.sources) == {"web", "code", "wiki"}


def test_two_workers_give_byte_identical_output(stage, tok, reference, tmp_path):
    stats = run_encode(
        stage, tok, tmp_path / "two", TokenizerEncodeConfig(workers=2, progress=False, batch_rows=7)
    )
    assert stats["num_tasks_run"] == 5
    assert _files(tmp_path / "two") == _files(reference)


def test_resume_redoes_only_lost_work(stage, tok, reference, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(reference, out)
    (out / "_work" / "part-00002.done.json").unlink()  # a task that never finished ...
    lost = out / "shards" / "part-00003.web.arrow"  # ... one whose output was truncated ...
    lost.write_bytes(lost.read_bytes()[:100])
    (out / "shards" / ".part-00004.web.arrow.x1.tmp").write_bytes(b"half")  # ... a killed writer
    (out / "shards" / "gone.web.arrow").write_bytes(b"from an input no longer there")
    (out / "manifest.json").unlink()
    kept = {p: p.stat().st_mtime_ns for p in (out / "_work").glob("*.done.json")}
    stats = run_encode(stage, tok, out, TokenizerEncodeConfig(progress=False))
    assert stats["num_tasks_run"] == 2 and stats["num_tasks_skipped"] == 3
    redone = {p for p, t in kept.items() if p.stat().st_mtime_ns != t}
    assert {p.name for p in redone} == {"part-00003.done.json"}
    assert _files(out) == _files(reference)
    assert not list((out / "_work").glob(".*"))


def test_add_bos_reencodes_and_starts_each_document(stage, tok, reference, tmp_path):
    import shutil

    out = tmp_path / "bos"
    shutil.copytree(reference, out)
    bpe = load_tokenizer(tok)
    stats = run_encode(stage, tok, out, TokenizerEncodeConfig(add_bos=True, progress=False))
    assert stats["num_tasks_run"] == 5  # the done records of add_bos=false do not match
    m = read_token_manifest(out)
    assert m.raw["bos_id"] == bpe.bos_id
    ref = read_token_manifest(reference)
    assert m.num_tokens == ref.num_tokens + m.raw["num_docs"]
    s = open_token_shard(m.shard_path(m.shards[0]))
    assert all(s.doc(i)[0] == bpe.bos_id and s.doc(i)[-1] == bpe.eos_id for i in range(s.num_docs))


def test_shards_of_another_tokenizer_are_refused(stage, tok, reference, tmp_path):
    other = tmp_path / "other_tok"
    train_tokenizer(stage, other, tiny_cfg("vocab_size=700"))
    expected = load_tokenizer(other).hash
    manifest = read_token_manifest(reference)
    with pytest.raises(
        TokenizerMismatchError,
        match=f"made with tokenizer {manifest.tokenizer_hash}.*expects tokenizer {expected}",
    ):
        check_tokenizer(manifest, expected)
    from trainer.data import load_sources

    with pytest.raises(TokenizerMismatchError, match="retokenize"):
        load_sources([reference], tokenizer_hash=expected)
    assert set(load_sources([reference], tokenizer_hash=manifest.tokenizer_hash)) == {"web", "code", "wiki"}


@pytest.mark.slow
def test_killed_worker_is_retried_and_cli_output_is_identical(stage, tok, reference, tmp_path):
    """`python -m tokenizer encode` with a worker that dies mid-shard (os._exit, like an OOM kill)."""
    out, marker = tmp_path / "out", tmp_path / "crashed"
    env = os.environ | {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "PYTHONPATH": str(REPO),
        "DATA_PIPELINE_CRASH": f"part-00002:14:{marker}",
    }
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "tokenizer", "encode", "--input", str(stage), "--tokenizer", str(tok)]
    cmd += ["--output", str(out), "--workers", "2", "batch_rows=7", "progress=false"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert marker.exists(), "the fault was never injected"
    assert "250 docs" in res.stdout and "5 shards encoded" in res.stdout
    assert _files(out) == _files(reference)


@pytest.mark.slow
def test_train_and_encode_the_data_pipeline_output(data_run, tmp_path):
    """The real chain: the data pipeline's stage directory -> tokenizer_tiny.yaml -> token shards."""
    from collections import Counter

    from pretrain.core.config import load_config
    from tokenizer.config import TokenizerTrainConfig

    stage, tok = data_run["out"], tmp_path / "tok"
    cfg = load_config(TokenizerTrainConfig, REPO / "configs" / "tokenizer_tiny.yaml")
    report = train_tokenizer(stage, tok, cfg)
    kept = data_run["kept"]
    by_source = Counter(row["source"] for row in kept.values())
    assert report["vocab_size"] == 4096 and set(report["sources"]) == set(by_source)
    assert {s: r["corpus_docs"] for s, r in report["sources"].items()} == dict(by_source)
    stats = run_encode(stage, tok, tmp_path / "tokens", TokenizerEncodeConfig(progress=False))
    m = read_token_manifest(tmp_path / "tokens")
    assert m.raw["num_docs"] == stats["num_docs"] == len(kept)
    assert {s: v["num_docs"] for s, v in m.sources.items()} == dict(by_source)
    assert stats["text_bytes"] == sum(len(row["text"].encode()) for row in kept.values())
    assert 3.0 < stats["bytes_per_token"] < 6.0
