"""Near-duplicate quality of MinHash dedup vs datasketch's LSH and datatrove's default MinHash.

    .venv/bin/python bench/minhash_quality.py [--work-dir runs/bench_minhash_quality] [--seed 0]

On the planted pairs of `data_pipeline.minhash.neardup_corpus` (about 8k documents, word 5-gram
Jaccard measured exactly), for each method: recall at J >= 0.85 (both ends in one cluster), merge
rate at J <= 0.5 and the share of singletons removed, plus the merge rate per planted level.
  - ours: `run_minhash_dedup` with its defaults, on local Ray;
  - datasketch: `MinHashLSH(threshold=0.8, num_perm=128)` over plain `MinHash(num_perm=128)` of the
    same word 5-gram shingles; a pair is merged when one end is a query candidate of the other,
    clusters are the connected components of all candidate pairs (all but the smallest id removed);
  - datatrove: Signature -> Buckets -> Cluster -> Filter with the default `MinhashConfig`, via
    `LocalPipelineExecutor` over a JSONL dump of the same documents; removed = filtered out.
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _docs(corpus_dir: Path) -> list[tuple[str, str]]:
    import pyarrow.parquet as pq

    out = []
    for f in sorted((corpus_dir / "shards").glob("*.parquet")):
        t = pq.read_table(f, columns=["id", "text"])
        out += zip(t.column("id").to_pylist(), t.column("text").to_pylist())
    return out


def _components(ids: list[str], edges: list[tuple[str, str]]) -> tuple[dict[str, str], set[str]]:
    parent = {i: i for i in ids}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = {i: find(i) for i in ids}
    clustered = {i for a, b in edges for i in (a, b)}
    return {i: roots[i] for i in clustered}, {i for i in clustered if roots[i] != i}


def ours(corpus_dir: Path, work_dir: Path) -> tuple[dict[str, str], set[str]]:
    from data_pipeline.minhash.dedup import load_minhash_config, run_minhash_dedup
    from data_pipeline.minhash.neardup_corpus import clusters_from_dedup_output
    from pretrain.core.runner import ensure_ray

    out = work_dir / "ours"
    cfg = load_minhash_config(None, [f"input_dir={corpus_dir}", f"output_dir={out}", "progress=false"])
    ensure_ray(cfg.ray)
    run_minhash_dedup(cfg)
    return clusters_from_dedup_output(out)


def datasketch_lsh(docs: list[tuple[str, str]]) -> tuple[dict[str, str], set[str]]:
    from datasketch import MinHash, MinHashLSH

    from data_pipeline.minhash.shingles import word_shingles

    lsh = MinHashLSH(threshold=0.8, num_perm=128)
    sigs = {}
    for doc_id, text in docs:
        m = MinHash(num_perm=128)
        m.update_batch([s.encode("utf-8") for s in word_shingles(text)])
        sigs[doc_id] = m
        lsh.insert(doc_id, m)
    edges = [(a, b) for a, m in sigs.items() for b in lsh.query(m) if a < b]
    return _components([d for d, _ in docs], edges)


def datatrove_default(docs: list[tuple[str, str]], work_dir: Path) -> tuple[dict[str, str], set[str]]:
    import gzip

    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    base = work_dir / "datatrove"
    shutil.rmtree(base, ignore_errors=True)
    (base / "input").mkdir(parents=True)
    with open(base / "input" / "docs.jsonl", "w") as f:
        for doc_id, text in docs:
            f.write(json.dumps({"id": doc_id, "text": text}) + "\n")
    cfg = MinhashConfig()
    logs = str(base / "logs")

    def run(pipeline: list, tasks: int, name: str) -> None:
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=1, logging_dir=f"{logs}/{name}").run()

    run([JsonlReader(str(base / "input")), MinhashDedupSignature(str(base / "sigs"), config=cfg)], 1, "sig")
    run(
        [MinhashDedupBuckets(str(base / "sigs"), str(base / "buckets"), config=cfg)],
        cfg.num_buckets,
        "buckets",
    )
    run(
        [MinhashDedupCluster(str(base / "buckets"), str(base / "remove"), config=cfg, save_cluster_id=True)],
        1,
        "cl",
    )
    run(
        [
            JsonlReader(str(base / "input")),
            MinhashDedupFilter(
                str(base / "remove"),
                exclusion_writer=JsonlWriter(str(base / "removed")),
                load_cluster_ids=True,
            ),
            JsonlWriter(str(base / "kept")),
        ],
        1,
        "filter",
    )
    cluster, removed = {}, set()
    for sub in ("kept", "removed"):
        for f in sorted((base / sub).glob("*.jsonl.gz")):
            for line in gzip.open(f, "rt"):
                row = json.loads(line)
                cid = row["metadata"].get("minhash_cluster_id", -1)
                if cid != -1:
                    cluster[row["id"]] = str(cid)
                if sub == "removed":
                    removed.add(row["id"])
    return cluster, removed


def compare_quality(work_dir: Path, seed: int = 0) -> dict[str, Any]:
    """Generate the corpus under `work_dir` and score the three methods on it."""
    from data_pipeline.minhash.neardup_corpus import generate_neardup_corpus, load_truth, score

    work_dir = Path(work_dir)
    corpus_dir = work_dir / "corpus"
    shutil.rmtree(work_dir, ignore_errors=True)
    info = generate_neardup_corpus(corpus_dir, seed=seed)
    pairs, singletons = load_truth(corpus_dir)
    docs = _docs(corpus_dir)
    results, seconds = {}, {}
    for name, fn in (
        ("ours", lambda: ours(corpus_dir, work_dir)),
        ("datasketch", lambda: datasketch_lsh(docs)),
        ("datatrove", lambda: datatrove_default(docs, work_dir)),
    ):
        t0 = time.perf_counter()
        cluster, removed = fn()
        seconds[name] = round(time.perf_counter() - t0, 1)

        def same(a: str, b: str, cluster: dict = cluster) -> bool:
            return a in cluster and cluster.get(a) == cluster.get(b)

        results[name] = score(pairs, singletons, same, removed) | {"seconds": seconds[name]}
    ok = results["ours"]
    beats = all(
        ok["recall_high"] >= results[m]["recall_high"]
        and ok["merge_rate_low"] <= results[m]["merge_rate_low"]
        for m in ("datasketch", "datatrove")
    )
    return {"corpus": info, "results": results, "ours_beats_both": beats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work-dir", type=Path, default=Path("runs/bench_minhash_quality"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from data_pipeline.minhash.neardup_corpus import format_table

    out = compare_quality(args.work_dir, args.seed)
    print(format_table(out["results"]))
    print("seconds: " + ", ".join(f"{k} {v['seconds']}" for k, v in out["results"].items()))
    summary = {
        m: {k: r[k] for k in ("recall_high", "merge_rate_low", "singleton_removal_rate", "seconds")}
        for m, r in out["results"].items()
    }
    print(json.dumps({"corpus": out["corpus"], **summary, "ours_beats_both": out["ours_beats_both"]}))


if __name__ == "__main__":
    main()
