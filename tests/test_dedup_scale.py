"""Shuffles whose cost follows the data: sorted runs, removal lists per shard, partitions derived
from the input and the memory budget. The kept ids must not depend on any of it."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline import shuffle
from data_pipeline.corpus.short_docs import sentence_pool, short_docs
from data_pipeline.groundtruth import read_outputs
from data_pipeline.shuffle import (
    KEY_SPACE,
    RunSet,
    key_range,
    merge_groups,
    merge_runs,
    num_partitions,
    pieces_in,
    sort_order,
    whole_piece,
    write_run,
)
from pretrain.core.memory import rss_bytes
from tests.pipeline_helpers import run_minhash, write_doc_stage

NUM_DOCS = 3000
NUM_SHARDS = 12


def test_runs_read_by_range_and_chunk_without_splitting_a_key(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        keys = rng.integers(0, 1 << 63, 2000, dtype=np.uint64) * np.uint64(2)
        keys[:300] = np.uint64(12345)  # one heavy key in every run
        paths.append(
            write_run(tmp_path / f"r{i}.arrow", pa.table({"key": keys, "v": np.arange(2000)}), "key")["path"]
        )
    runs = RunSet(paths, "key")
    assert runs.count(0, KEY_SPACE) == 10_000
    for q_total in (1, 3, 7):
        pieces = [runs.read(*key_range(q, q_total)) for q in range(q_total)]
        assert sum(p.num_rows for p in pieces if p is not None) == 10_000
    chunks = list(runs.chunks(0, KEY_SPACE, max_rows=700))
    assert len(chunks) > 10
    total = 0
    for lo, hi in chunks:
        t = runs.read(lo, hi)
        n = t.num_rows if t is not None else 0
        total += n
        # counts are estimates from every 31st key of each run: off by at most 31 per run and end
        assert n <= 700 + 2 * 31 * 5 or (hi - lo == 1 and lo == 12345), (lo, hi, n)  # the heavy key
        if n:
            keys = t.column("key").to_numpy()
            assert keys.min() >= lo and keys.max() < hi
    assert total == 10_000
    assert [c for c in chunks if c[0] <= 12345 < c[1]] == [(12345, 12346)]


def test_sort_order_is_a_stable_lexsort():
    """sort_order: one fast sort of the first column, then the tied rows by the rest and their
    position: the very order of np.lexsort, for any share of ties."""
    rng = np.random.default_rng(5)
    for n in (0, 1, 2, 7, 5000):
        for high in (2, 40, 1 << 62):  # almost all tied, some, almost none
            a = rng.integers(0, high, n).astype(np.uint64)
            b = rng.integers(0, 3, n).astype(np.uint16)
            c = rng.integers(-5, 5, n)
            assert sort_order(a, b, c).tolist() == np.lexsort((c, b, a)).tolist()
            assert sort_order(a).tolist() == np.argsort(a, kind="stable").tolist()


def test_runset_maps_each_run_once_and_holds_no_pages_between_reads(tmp_path, monkeypatch):
    """A RunSet opens each run once, however many chunks it reads, and drops the pages it touched
    after each read: RSS after reading all of 8 runs (64 MiB of keys) in chunks stays near where it
    began."""
    rng = np.random.default_rng(1)
    n = 1 << 20
    paths = [
        write_run(
            tmp_path / f"r{i}.arrow", pa.table({"key": rng.integers(0, 1 << 64, n, dtype=np.uint64)}), "key"
        )["path"]
        for i in range(8)
    ]
    opened = []
    real_map_run = shuffle._map_run
    monkeypatch.setattr(shuffle, "_map_run", lambda p: opened.append(p) or real_map_run(p))
    runs = RunSet(paths, "key")
    start, total = rss_bytes(), 0
    for lo, hi in runs.chunks(0, KEY_SPACE, max_rows=n // 2):
        table = runs.read(lo, hi)
        total += table.num_rows
        keys = table.column("key").to_numpy()
        assert keys.min() >= lo and (hi == KEY_SPACE or keys.max() < hi)
        del table, keys
    assert total == 8 * n and sorted(opened) == sorted(paths)
    assert rss_bytes() - start < 24 << 20, (rss_bytes() - start) >> 20


def test_runs_carry_their_key_sample_and_merge_into_pieces_by_key_range(tmp_path):
    rng = np.random.default_rng(1)
    paths, tables = [], []
    for i in range(7):
        keys = rng.integers(0, KEY_SPACE, 3000, dtype=np.uint64)
        keys[:50] = np.uint64(777)  # a heavy key in every run stays in one piece
        tables.append(pa.table({"key": keys, "v": np.arange(3000) + 10_000 * i}))
        paths.append(write_run(tmp_path / f"r{i}.arrow", tables[-1], "key")["path"])
    # the sample is in the footer: a RunSet plans from it without reading the key column
    meta = pa.ipc.open_file(pa.memory_map(paths[0])).schema.metadata
    assert int(meta[b"pretrain.run.rows"]) == 3000 and int(meta[b"pretrain.run.stride"]) == 46
    sample = np.frombuffer(meta[b"pretrain.run.sample"], "<u8")
    assert np.array_equal(sample, np.sort(tables[0].column("key").to_numpy())[::46])
    old = tmp_path / "old.arrow"  # a run written before the sample: planned from its key column
    with pa.OSFile(str(old), "wb") as sink, pa.ipc.new_file(sink, tables[0].schema) as w:
        w.write_table(tables[0].sort_by("key"))
    assert RunSet([str(old)], "key").runs[0][1:3] == RunSet([paths[0]], "key").runs[0][1:3]
    assert RunSet([str(old)], "key").count(0, KEY_SPACE) == 3000
    # merged: pieces of at most ~max_rows, disjoint key ranges covering the whole key space
    pieces = merge_runs(paths[:5], "key", str(tmp_path / "m"), max_rows=2000)
    assert sum(p["rows"] for p in pieces) == 15_000 and len(pieces) >= 7
    assert pieces[0]["lo"] == 0 and pieces[-1]["hi"] == KEY_SPACE
    assert all(a["hi"] == b["lo"] for a, b in zip(pieces, pieces[1:]))
    assert b"pretrain.run.sample" not in (RunSet(paths, "key").read(0, KEY_SPACE).schema.metadata or {})
    for p in pieces:
        keys = pa.ipc.open_file(pa.memory_map(p["path"])).read_all().column("key").to_numpy()
        assert keys.min() >= p["lo"] and keys.max() < p["hi"] and np.all(np.diff(keys.astype(float)) >= 0)
    heavy = [p for p in pieces if p["lo"] <= 777 < p["hi"]]
    assert len(heavy) == 1 and heavy[0]["rows"] >= 250
    # a reducer reading the pieces that meet its range gets what it gets from the runs themselves
    all_pieces = pieces + [whole_piece(p) for p in paths[5:]]
    for q in range(5):
        lo, hi = key_range(q, 5)
        mine = pieces_in(all_pieces, lo, hi)
        assert len(mine) <= 2 + 2 + len(paths[5:])  # about one piece per merged group, not a run per unit
        got = RunSet(mine, "key").read(lo, hi).sort_by([("key", "ascending"), ("v", "ascending")])
        want = RunSet(paths, "key").read(lo, hi).sort_by([("key", "ascending"), ("v", "ascending")])
        assert got.equals(want)


def test_merge_groups_bound_fan_in_and_rows(monkeypatch):
    assert merge_groups([], 100) == []
    assert merge_groups([10] * 600, 100) == [(0, 256), (256, 512), (512, 600)]
    monkeypatch.setattr(shuffle, "MERGE_BYTES", 1000)
    # at most 1,000 bytes of rows a group; a run over that is a group alone
    assert merge_groups([3, 3, 3, 20, 1, 1], 100) == [(0, 3), (3, 4), (4, 6)]


def test_partitions_follow_rows_and_budget():
    assert num_partitions(0, 100, 1 << 30, None) == 1
    assert num_partitions(10_000_000, 100, 64 << 20, None) == 30  # 1 GB of rows, half of 64 MiB each
    assert num_partitions(10_000_000, 100, 1 << 30, None) == 15  # at most 64 MiB each, any budget
    assert num_partitions(10_000_000, 100, 64 << 30, None) == 15
    assert num_partitions(100_000_000, 100, 1 << 30, None) == 150  # 10x the rows, 10x the reducers
    assert num_partitions(100_000_000, 100, 1 << 30, 4) == 4  # the override wins
    # every reducer reads all of num_runs runs: one reads ceil(num_runs / RUNS_PER_CHUNK) chunks
    assert num_partitions(100_000_000, 100, 1 << 30, None, num_runs=16) == 150
    assert num_partitions(100_000_000, 100, 1 << 30, None, num_runs=17) == 75
    assert num_partitions(100_000_000, 100, 1 << 30, None, num_runs=100) == 22  # 7 chunks each
    assert num_partitions(1_000_000, 100, 1 << 30, None, num_runs=100) == 1


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """NUM_DOCS short documents with 5% planted copies (exact and one word deleted), in NUM_SHARDS
    shards of a finished stage directory."""
    docs = short_docs(NUM_DOCS, seed=3, pool=sentence_pool())
    order = np.random.default_rng(3).permutation(NUM_DOCS)  # copies spread over the shards
    inp = tmp_path_factory.mktemp("scale_in")
    return write_doc_stage(inp, docs, order, NUM_SHARDS)


@pytest.fixture(scope="module")
def reference(corpus, ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("scale_ref")
    stats, kept, rejected = run_minhash(corpus, out, keep_work=True)
    return {"out": out, "stats": stats, "kept": kept, "rejected": rejected}


def test_reference_finds_the_planted_copies(reference):
    assert 0.8 * NUM_DOCS * 0.05 <= len(reference["rejected"]) <= 1.2 * NUM_DOCS * 0.05
    assert len(reference["kept"]) + len(reference["rejected"]) == NUM_DOCS


def test_same_kept_ids_for_any_partitions_budget_and_workers(corpus, reference, tmp_path, monkeypatch):
    from data_pipeline.minhash import dedup

    # one task at a time, 3 reducers in every shuffle, components on the distributed path
    stats, kept, rejected = run_minhash(
        corpus,
        tmp_path / "p3",
        "ray.max_in_flight=1",
        "minhash.num_partitions=3",
        "minhash.union_find_max_edges=0",
    )
    assert (kept, rejected) == (reference["kept"], reference["rejected"])
    assert stats["minhash"]["components_method"] == "ray_star"
    # a 4 MiB budget: the driver derives many reducers, each task reads its range in small chunks
    monkeypatch.setattr(dedup, "task_memory_bytes", lambda ray_cfg: 4 << 20)
    stats, kept, rejected = run_minhash(
        corpus, tmp_path / "small", "minhash.partitions.survivors=5", keep_work=True
    )
    assert (kept, rejected) == (reference["kept"], reference["rejected"])
    work = tmp_path / "small" / "_work" / "minhash"
    assert len(list((work / "cand").glob("q=*.done.json"))) > 1
    assert len(list((work / "removed").glob("q=*.done.json"))) == 5
    chunks = [json.loads(p.read_text())["runs"] for p in (work / "cand").glob("q=*.done.json")]
    assert max(len(c) for c in chunks) > 1, chunks  # ranges read in more than one chunk


def test_no_file_fan_out_between_partitions(reference):
    work = reference["out"] / "_work" / "minhash"
    num_shards = len(list((work / "sig").glob("*.done.json")))
    assert len(list((work / "bands").glob("*.arrow"))) == num_shards  # one run per map task
    assert len(list((work / "lists").glob("*.parquet"))) == num_shards  # one removal list per shard
    assert not list(work.rglob("from-*/**"))


def test_finalize_reads_only_its_shard_and_its_removal_list(corpus, reference, monkeypatch):
    from data_pipeline.minhash import steps

    out = reference["out"]
    opened: list[str] = []
    real_read_table, real_init = pq.read_table, pq.ParquetFile.__init__

    def read_table(source, *args, **kwargs):
        opened.append(str(source))
        return real_read_table(source, *args, **kwargs)

    def init(self, source, *args, **kwargs):
        opened.append(str(source))
        real_init(self, source, *args, **kwargs)

    monkeypatch.setattr(pq, "read_table", read_table)
    monkeypatch.setattr(pq.ParquetFile, "__init__", init)
    shard = corpus / "shards" / "part-00003.parquet"
    before = json.loads((out / "_work" / "minhash" / "final" / "part-00003.done.json").read_text())
    rec = steps.finalize_shard(str(shard), "part-00003.parquet", 1024, 3, str(out), before["fingerprint"])
    removal_list = steps.list_path(out, "part-00003")
    assert set(opened) == {str(shard), str(removal_list)}, opened
    assert rec["num_in"] - rec["num_kept"] == pq.read_metadata(removal_list).num_rows > 0
    assert rec["bytes_read"] <= 1.2 * shard.stat().st_size, (rec["bytes_read"], shard.stat().st_size)
    assert (rec["num_in"], rec["num_kept"]) == (before["num_in"], before["num_kept"])


def test_union_find_runs_in_a_task_not_in_the_driver(ray_local, tmp_path, monkeypatch):
    from data_pipeline.minhash import components as cc

    files = []
    for i in range(3):
        src = np.arange(i * 100, i * 100 + 99)
        files.append(tmp_path / f"e{i}.parquet")
        pq.write_table(pa.table({"src": src, "dst": src + 1}), files[-1])

    def not_here(path):
        raise AssertionError(f"the driver read edge file {path}")

    monkeypatch.setattr(cc, "_read_edge_file", not_here)  # the driver's copy; the task has its own
    summary = cc.components([str(f) for f in files], str(tmp_path / "work"), 2)
    assert (summary["method"], summary["num_nodes"], summary["num_components"]) == ("union_find", 300, 3)


def test_giant_component_over_the_budget_fails_with_its_figures(ray_local, tmp_path):
    from data_pipeline.minhash.components import ray_components
    from pretrain.core.runner import PipelineError

    hub = np.zeros(5000, np.int64)  # one document near-duplicated 5,000 times: a star on node 0
    pq.write_table(pa.table({"src": hub, "dst": np.arange(1, 5001)}), tmp_path / "e.parquet")
    with pytest.raises(PipelineError, match=r"would hold [\d,]+ edges.*over the task budget of 0 MiB"):
        ray_components([str(tmp_path / "e.parquet")], str(tmp_path / "work"), 4, budget_bytes=100_000)


@pytest.fixture(scope="module")
def jsonl_corpus(tmp_path_factory):
    """The same kind of documents as raw JSONL: 8 files, exact copies across them."""
    docs = short_docs(NUM_DOCS, seed=4, pool=sentence_pool())
    order = np.random.default_rng(4).permutation(NUM_DOCS)
    inp = tmp_path_factory.mktemp("exact_in")
    for f, rows in enumerate(np.array_split(order, 8)):
        lines = [json.dumps({"text": docs[i], "source": "s"}) for i in rows]
        (inp / f"part-{f}.jsonl").write_text("\n".join(lines) + "\n")
    return inp


def _exact(inp, out, *overrides):
    from data_pipeline.config import STAGE_ORDER, load_pipeline_config
    from data_pipeline.executor import run_pipeline

    off = [f"{s}.enabled=false" for s in STAGE_ORDER]
    cfg = load_pipeline_config(
        None, [f"input.paths=[{inp}]", f"output_dir={out}", "progress=false", *off, *overrides]
    )
    stats = run_pipeline(cfg)
    kept, rejected = read_outputs(out)
    return stats, set(kept), {k: (r["reason"], r["detail"]) for k, r in rejected.items()}


@pytest.fixture(scope="module")
def exact_reference(jsonl_corpus, ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("exact_ref")
    stats, kept, rejected = _exact(jsonl_corpus, out, "keep_work=true")
    return {"out": out, "stats": stats, "kept": kept, "rejected": rejected}


def test_exact_dedup_same_kept_ids_for_any_partitions_and_budget(
    jsonl_corpus, exact_reference, tmp_path, monkeypatch
):
    from data_pipeline import executor, shuffle

    rejected = exact_reference["rejected"]
    assert len(rejected) == NUM_DOCS * 5 // 100 // 2, len(rejected)  # the exact half of the planted copies
    assert {r[0] for r in rejected.values()} == {"exact_duplicate"}
    ref_work = exact_reference["out"] / "_work"
    assert len(list((ref_work / "hash_merge").glob("q=*.done.json"))) == 1  # the 8 units' runs, merged
    # 8 units: one merged group of 7 and one unit read as it is
    monkeypatch.setattr(shuffle, "MERGE_FAN_IN", 7)
    stats, kept, rej = _exact(
        jsonl_corpus, tmp_path / "p3", "ray.max_in_flight=1", "exact_dedup.num_partitions=3", "keep_work=true"
    )
    assert (kept, rej) == (exact_reference["kept"], rejected)
    assert len(list((tmp_path / "p3" / "_work" / "hash_merge").glob("q=*.done.json"))) == 1
    # groups of 3, many reducers, small chunks: pieces of a few thousand rows
    monkeypatch.setattr(shuffle, "MERGE_FAN_IN", 3)
    monkeypatch.setattr(executor, "task_memory_bytes", lambda ray_cfg: 1 << 20)
    stats, kept, rej = _exact(jsonl_corpus, tmp_path / "small", "keep_work=true")
    assert (kept, rej) == (exact_reference["kept"], rejected)
    work = tmp_path / "small" / "_work"
    assert len(list((work / "dups").glob("q=*.done.json"))) > 1
    merged = [json.loads(p.read_text()) for p in sorted((work / "hash_merge").glob("q=*.done.json"))]
    assert len(merged) == 3 and sum(r["num_rows"] for r in merged) == len(kept) + len(rej)


def test_exact_finalize_reads_only_its_unit_and_its_list(exact_reference, monkeypatch):
    from data_pipeline import tasks
    from data_pipeline.config import load_pipeline_config
    from data_pipeline.readers import scan_inputs

    out = exact_reference["out"]
    cfg = load_pipeline_config(out / "config.yaml")
    unit = next(u for u in scan_inputs(cfg.input).units if u.stem.startswith("part-3"))
    record = json.loads((out / "_work" / "final" / f"{unit.stem}.done.json").read_text())
    opened: list[str] = []
    real_read_table, real_init = pq.read_table, pq.ParquetFile.__init__
    monkeypatch.setattr(
        pq, "read_table", lambda src, *a, **k: opened.append(str(src)) or real_read_table(src, *a, **k)
    )
    monkeypatch.setattr(
        pq.ParquetFile,
        "__init__",
        lambda self, src, *a, **k: opened.append(str(src)) or real_init(self, src, *a, **k),
    )
    rec = tasks.finalize_unit(unit, cfg, out, record["fingerprint"])
    chain = out / "_work" / "chain" / f"{unit.stem}.parquet"
    assert set(opened) == {str(chain), str(tasks.dup_list_path(out, unit.stem))}, opened
    assert rec["bytes_read"] <= 1.2 * chain.stat().st_size
    assert (rec["num_in"], rec["num_kept"]) == (record["num_in"], record["num_kept"])
    assert rec["num_kept"] < rec["num_in"]
