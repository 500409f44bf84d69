"""MinHash verification as a join by shard: each verify task reads the signature files of its own
range of shards only (the old design had every reducer open every shard's file: shards x reducers
opens), and the edges and kept ids are those of checking every candidate pair against the two
signatures, whatever the partition counts, budget and workers."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline.corpus.short_docs import sentence_pool, short_docs
from tests.pipeline_helpers import run_minhash, write_doc_stage

NUM_DOCS = 2400
NUM_PARTIAL = 120  # documents that extend another one: Jaccard about 0.5, 0.67 and 0.8 to it
NUM_SHARDS = 48  # many shards, few documents each: a join that opens every shard per task shows
VERIFY_REDUCERS = 5
# Candidates from J = 0.5 up (34 bands x 3 rows), so verification at 0.75 has pairs to drop; every run
# keeps its work folder, read by the tests.
COMMON = {"keep_work": True, "threshold": 0.5, "verify_threshold": 0.75}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """NUM_DOCS short documents with 5% planted copies, and NUM_PARTIAL that are another document
    followed by all, half or a quarter of a third one, spread over NUM_SHARDS shards."""
    docs = short_docs(NUM_DOCS, seed=5, pool=sentence_pool())
    rng = np.random.default_rng(5)
    for i in range(NUM_PARTIAL):
        a, b = rng.integers(0, NUM_DOCS, 2)
        words = docs[b].split()
        docs.append(docs[a] + " " + " ".join(words[: len(words) // (1, 2, 4)[i % 3]]))
    order = rng.permutation(len(docs))
    inp = tmp_path_factory.mktemp("verify_in")
    return write_doc_stage(inp, docs, order, NUM_SHARDS)


def _records(out, step: str) -> list[dict]:
    paths = sorted((out / "_work" / "minhash" / step).glob("r=*.done.json"))
    return [json.loads(p.read_text()) for p in paths]


def _edges(out) -> set[tuple[int, int]]:
    files = [f for rec in _records(out, "edges") for f in rec["edge_files"]]
    return {(s, d) for f in files for s, d in zip(*pq.read_table(f).to_pydict().values())}


@pytest.fixture(scope="module")
def reference(corpus, ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("verify_ref")
    stats, kept, rejected = run_minhash(corpus, out, f"minhash.partitions.verify={VERIFY_REDUCERS}", **COMMON)
    return {"out": out, "stats": stats, "kept": kept, "rejected": rejected, "edges": _edges(out)}


def _sig_files(out) -> list[str]:
    names = sorted(p.stem for p in (out / "_work" / "minhash" / "nodes").glob("*.parquet"))
    assert len(names) == NUM_SHARDS
    return [str(out / "_work" / "minhash" / "sig" / f"{n}.npy") for n in names]


def test_edges_are_the_candidate_pairs_whose_signatures_agree(reference):
    """What the old verify computed, pair by pair from the candidate runs and the signatures."""
    out = reference["out"]
    cands = sorted((out / "_work" / "minhash" / "cand").glob("*.arrow"))
    pairs = set()
    for path in cands:
        with pa.memory_map(str(path)) as f:
            t = pa.ipc.open_file(f).read_all()
        pairs.update(zip(t.column("src").to_pylist(), t.column("dst").to_pylist()))
    sigs = [np.load(f) for f in _sig_files(out)]
    expected = set()
    for s, d in pairs:
        a, b = sigs[s >> 32][s & 0xFFFFFFFF], sigs[d >> 32][d & 0xFFFFFFFF]
        if (a == b).mean() >= 0.75:  # minhash.verify_threshold
            expected.add((s, d))
    m = reference["stats"]["minhash"]
    assert m["num_candidates"] == len(pairs) > m["num_verified_edges"] + 20 == len(expected) + 20 > 120
    assert reference["edges"] == expected
    assert len(reference["rejected"]) >= NUM_DOCS * 0.05


def test_each_verify_task_opens_only_the_signature_files_of_its_shards(reference, tmp_path, monkeypatch):
    from data_pipeline.minhash import steps

    out = reference["out"]
    sig_files = _sig_files(out)
    opened: list[str] = []
    real_load = np.load

    def load(path, *args, **kwargs):
        opened.append(str(path))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(np, "load", load)
    budget = 1 << 30
    src_recs, dst_recs = _records(out, "vsrc"), _records(out, "edges")
    assert len(src_recs) == len(dst_recs) == VERIFY_REDUCERS
    cand_runs = sorted(str(p) for p in (out / "_work" / "minhash" / "cand").glob("*.arrow"))
    src_runs = [p for rec in src_recs for p in rec["runs"]]
    for rec in src_recs:  # rerun each task here, into another folder, watching what it opens
        opened.clear()
        a, b = rec["shards"]
        assert 0 < b - a < NUM_SHARDS
        again = steps.verify_src_partition(
            rec["partition"], a, b, cand_runs, sig_files, True, budget, 1500, str(tmp_path), "fp"
        )
        assert opened and set(opened) <= set(sig_files[a:b]), (a, b, opened)
        assert len(opened) == len(set(opened))  # each file once (one chunk at this budget)
        assert again["num_pairs"] == rec["num_pairs"]
    for rec in dst_recs:
        opened.clear()
        a, b = rec["shards"]
        again = steps.verify_dst_partition(
            rec["partition"], a, b, src_runs, sig_files, 0.75, budget, 1500, str(tmp_path), "fp"
        )
        assert opened and set(opened) <= set(sig_files[a:b]), (a, b, opened)
        assert (again["num_candidates"], again["num_edges"]) == (rec["num_candidates"], rec["num_edges"])
    # little memory: many chunks per task, still only its own shards' files, and the same pairs
    monkeypatch.setattr(steps, "chunk_rows", lambda budget, bytes_per_row: 8)
    opened.clear()
    rec = src_recs[1]
    a, b = rec["shards"]
    small = steps.verify_src_partition(
        rec["partition"], a, b, cand_runs, sig_files, True, budget, 1500, str(tmp_path / "small"), "fp"
    )
    assert len(small["runs"]) > 1 and set(opened) <= set(sig_files[a:b])
    assert small["num_pairs"] == rec["num_pairs"]
    opened.clear()
    rec = dst_recs[1]
    a, b = rec["shards"]
    small = steps.verify_dst_partition(
        rec["partition"], a, b, src_runs, sig_files, 0.75, budget, 1500, str(tmp_path / "small"), "fp"
    )
    assert len(small["edge_files"]) > 1 and set(opened) <= set(sig_files[a:b])
    edges = {(s, d) for f in small["edge_files"] for s, d in zip(*pq.read_table(f).to_pydict().values())}
    assert edges == {e for e in reference["edges"] if a <= e[1] >> 32 < b}


@pytest.mark.parametrize(
    "overrides",
    [
        ("minhash.partitions.verify=1",),
        ("minhash.partitions.verify=3", "ray.max_in_flight=1"),
        ("minhash.num_partitions=7",),
        ("minhash.partitions.verify=100",),  # more than the shards: one task per shard
        ("minhash.verify=false",),
    ],
)
def test_same_edges_and_kept_ids_for_any_verify_partitions(corpus, reference, tmp_path, overrides):
    stats, kept, rejected = run_minhash(corpus, tmp_path / "out", *overrides, **COMMON)
    edges = _edges(tmp_path / "out")
    if "minhash.verify=false" in overrides:  # every candidate pair is an edge
        assert (
            len(edges)
            == stats["minhash"]["num_candidates"]
            == reference["stats"]["minhash"]["num_candidates"]
        )
        assert edges > reference["edges"]
        return
    assert (kept, rejected) == (reference["kept"], reference["rejected"])
    assert edges == reference["edges"]
    assert len(_records(tmp_path / "out", "edges")) == min(NUM_SHARDS, int(overrides[0].split("=")[1]))


def test_same_result_with_a_tiny_budget(corpus, reference, tmp_path, monkeypatch):
    from data_pipeline.minhash import dedup

    monkeypatch.setattr(dedup, "task_memory_bytes", lambda ray_cfg: 1 << 20)  # reducers of 512 KiB
    stats, kept, rejected = run_minhash(corpus, tmp_path / "out", **COMMON)
    assert (kept, rejected) == (reference["kept"], reference["rejected"])
    assert _edges(tmp_path / "out") == reference["edges"]
    assert len(_records(tmp_path / "out", "vsrc")) > 1 and len(_records(tmp_path / "out", "edges")) > 1
