"""MinHash near-duplicate removal over the pipeline's output, against the planted ground truth."""

from __future__ import annotations

import json

import pytest

from data_pipeline.groundtruth import read_outputs
from data_pipeline.minhash.dedup import load_minhash_config, run_minhash_dedup
from tests.pipeline_helpers import shard_digests

pytestmark = pytest.mark.slow


def _cfg(data_run, out, *overrides):
    return load_minhash_config(
        None, [f"input_dir={data_run['out']}", f"output_dir={out}", "progress=false", *overrides]
    )


@pytest.fixture(scope="module")
def dedup(data_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("dedup")
    stats = run_minhash_dedup(_cfg(data_run, out))
    kept, rejected = read_outputs(out)
    return {"out": out, "stats": stats, "kept": kept, "rejected": rejected}


def _pairs(data_run, dedup):
    """(jaccard, merged) for every planted near-duplicate pair."""
    rej = dedup["rejected"]
    out = []
    for t in data_run["truth"].values():
        if t["category"] == "near_dup":
            a, b = t["id"], t["near_dup_of"]
            merged = (a in rej and rej[a]["detail"] == b) or (b in rej and rej[b]["detail"] == a)
            out.append((t["jaccard"], merged))
    return out


def test_recall_high_jaccard_and_no_low_jaccard_merges(data_run, dedup):
    pairs = _pairs(data_run, dedup)
    high = [m for j, m in pairs if j >= 0.85]
    low = [m for j, m in pairs if j <= 0.5]
    assert len(high) >= 10 and len(low) >= 3
    assert all(high), sorted(pairs)
    assert not any(low), sorted(pairs)


def test_only_near_duplicates_removed_and_accounted(data_run, dedup):
    truth, rej, stats = data_run["truth"], dedup["rejected"], dedup["stats"]
    assert stats["num_in"] == data_run["stats"]["num_kept"] == len(dedup["kept"]) + len(rej)
    for doc_id, r in rej.items():
        assert (r["stage"], r["reason"]) == ("minhash_dedup", "near_duplicate")
        assert truth[doc_id]["category"] == "near_dup" or truth[r["detail"]]["category"] == "near_dup", doc_id
        assert r["detail"] in dedup["kept"], "the survivor must be kept"
        meta = r["metadata"]
        assert meta["duplicate_of"] == r["detail"] and meta["near_dup_cluster"] in (doc_id, r["detail"])
    # survivor rule: no quality score in these docs, so the smaller id survives
    assert all(r["detail"] < doc_id for doc_id, r in rej.items())
    m = stats["minhash"]
    assert m["cluster_size_histogram"] == {"2": len(rej)} and m["num_clusters"] == len(rej)
    assert m["num_verified_edges"] <= m["num_candidates"]
    on_disk = json.loads((dedup["out"] / "stats.json").read_text())
    assert on_disk["minhash"]["bands"] * on_disk["minhash"]["rows"] <= 128


def test_same_result_for_any_worker_count_partitions_and_components_path(data_run, dedup, tmp_path):
    out = tmp_path / "serial"
    # one task at a time, other partition count, components forced onto the distributed Ray path
    run_minhash_dedup(
        _cfg(
            data_run, out, "ray.max_in_flight=1", "minhash.num_partitions=3", "minhash.union_find_max_edges=0"
        )
    )
    kept, rejected = read_outputs(out)
    assert kept.keys() == dedup["kept"].keys()
    assert {k: (r["detail"], r["metadata"]["near_dup_cluster"]) for k, r in rejected.items()} == {
        k: (r["detail"], r["metadata"]["near_dup_cluster"]) for k, r in dedup["rejected"].items()
    }
    assert (
        json.loads((out / "stats.json").read_text())["minhash"]["components_method"]
        != dedup["stats"]["minhash"]["components_method"]
    )


def test_rerun_skips_finished_steps(data_run, dedup):
    assert not (dedup["out"] / "_work").exists()  # removed once the run finished
    mtimes = {p: p.stat().st_mtime_ns for p in dedup["out"].rglob("*")}
    before = shard_digests(dedup["out"])
    run_minhash_dedup(_cfg(data_run, dedup["out"]))
    assert {p: p.stat().st_mtime_ns for p in dedup["out"].rglob("*")} == mtimes
    assert shard_digests(dedup["out"]) == before


def test_survivor_prefers_higher_quality_score(tmp_path, ray_local):
    """Two identical documents: the one with the higher metadata quality score survives."""
    import pyarrow as pa

    from pretrain.core.shards import DOC_SCHEMA, write_manifest, write_table

    text = " ".join(f"word{i} appears in this fairly ordinary sentence number {i}." for i in range(40))
    rows = [
        {"id": "a", "text": text, "source": "s", "url": None, "metadata": json.dumps({"quality_score": 0.1})},
        {"id": "b", "text": text, "source": "s", "url": None, "metadata": json.dumps({"quality_score": 0.9})},
    ]
    inp = tmp_path / "in"
    entry = write_table(inp / "shards" / "x.parquet", pa.Table.from_pylist(rows, schema=DOC_SCHEMA))
    write_manifest(inp, shards=[entry])
    out = tmp_path / "out"
    cfg = load_minhash_config(None, [f"input_dir={inp}", f"output_dir={out}", "progress=false"])
    run_minhash_dedup(cfg)
    kept, rejected = read_outputs(out)
    assert list(kept) == ["b"] and rejected["a"]["detail"] == "b"
    cfg = load_minhash_config(
        None, [f"input_dir={inp}", f"output_dir={tmp_path / 'out2'}", "progress=false", "minhash.survivor=id"]
    )
    run_minhash_dedup(cfg)
    kept, rejected = read_outputs(tmp_path / "out2")
    assert list(kept) == ["a"] and rejected["b"]["detail"] == "a"


def test_documents_without_shingles_are_never_clustered(tmp_path, ray_local):
    import pyarrow as pa

    from pretrain.core.shards import DOC_SCHEMA, write_manifest, write_table

    texts = ["!!! ???", "--- ...", "*** ///", "Plain words make an ordinary short text here."]
    rows = [
        {"id": f"d{i}", "text": t, "source": "s", "url": None, "metadata": "{}"} for i, t in enumerate(texts)
    ]
    inp = tmp_path / "in"
    write_manifest(
        inp, shards=[write_table(inp / "shards" / "x.parquet", pa.Table.from_pylist(rows, schema=DOC_SCHEMA))]
    )
    stats = run_minhash_dedup(
        load_minhash_config(None, [f"input_dir={inp}", f"output_dir={tmp_path / 'o'}", "progress=false"])
    )
    assert stats["num_kept"] == 4 and stats["minhash"]["num_candidates"] == 0


@pytest.mark.parametrize("kill_after", ["sig", "cand", "vsrc"])
def test_killed_driver_resumes_to_identical_clusters(data_run, dedup, tmp_path, kill_after):
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.pipeline_helpers import REPO

    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "data_pipeline",
        "minhash",
        "--input",
        str(data_run["out"]),
        "--output",
        str(out),
        "progress=false",
        "ray.max_in_flight=1",
    ]
    env = os.environ | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if list((out / "_work" / "minhash" / kill_after).glob("*.done.json")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p: p.stat().st_mtime_ns for p in (out / "_work").rglob("*.done.json")}
    res = subprocess.run(cmd[:-1] + ["--keep-work"], env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    assert finished and all(p.stat().st_mtime_ns == t for p, t in finished.items()), (
        "finished tasks were redone"
    )
    kept, rejected = read_outputs(out)
    assert kept.keys() == dedup["kept"].keys()
    assert {k: r["detail"] for k, r in rejected.items()} == {
        k: r["detail"] for k, r in dedup["rejected"].items()
    }
