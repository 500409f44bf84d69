"""Acceptance of MinHash dedup on planted near-duplicate pairs at known Jaccard (issue 3).

Generates the near-duplicate corpus once (about 8k documents, 1500 pairs at J = 0.5 ... 0.95 and
5000 singletons on Python docstring prose) and checks: recall >= 0.99 for pairs with J >= 0.85, at
most 1% of pairs with J <= 0.5 merged, at most 0.1% of singletons removed, and the same clusters
with one task at a time and another partition count. Prints the per-level table for CI logs.
"""

from __future__ import annotations

import pytest

from data_pipeline.minhash.dedup import load_minhash_config, run_minhash_dedup
from data_pipeline.minhash.neardup_corpus import (
    clusters_from_dedup_output,
    format_table,
    generate_neardup_corpus,
    load_truth,
    score,
)

pytestmark = pytest.mark.slow


def _run(inp, out, *overrides):
    cfg = load_minhash_config(None, [f"input_dir={inp}", f"output_dir={out}", "progress=false", *overrides])
    stats = run_minhash_dedup(cfg)
    cluster, removed = clusters_from_dedup_output(out)
    return stats, cluster, removed


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("neardup")
    info = generate_neardup_corpus(out, seed=0)
    pairs, singletons = load_truth(out)
    return {"dir": out, "info": info, "pairs": pairs, "singletons": singletons}


@pytest.fixture(scope="module")
def dedup(corpus, ray_local, tmp_path_factory):
    stats, cluster, removed = _run(corpus["dir"], tmp_path_factory.mktemp("neardup_dedup"))

    def same(a, b):
        return a in cluster and cluster.get(a) == cluster.get(b)

    result = score(corpus["pairs"], corpus["singletons"], same, removed)
    print("\n" + format_table({"ours": result}))
    return {"stats": stats, "cluster": cluster, "removed": removed, "score": result}


def test_corpus_is_big_enough_and_clean(corpus):
    info = corpus["info"]
    assert info["num_singletons"] >= 5000 and info["max_unplanted_jaccard"] <= 0.3, info
    high = [p for p in corpus["pairs"] if p["jaccard"] >= 0.85]
    low = [p for p in corpus["pairs"] if p["jaccard"] <= 0.5]
    assert len(high) >= 900 and len(low) >= 300, (len(high), len(low))
    assert (
        {p["edit"] for p in high}
        == {p["edit"] for p in low}
        == {
            "insert",
            "delete",
            "substitute",
            "mixed",
            "boilerplate",
            "reorder",
        }
    )


def test_recall_at_high_jaccard(dedup):
    s = dedup["score"]
    assert s["recall_high"] >= 0.99, s


def test_few_low_jaccard_pairs_merged(dedup):
    s = dedup["score"]
    assert s["merge_rate_low"] <= 0.01, s


def test_singletons_are_kept(dedup):
    s = dedup["score"]
    assert s["singleton_removal_rate"] <= 0.001, s


def test_removed_documents_are_accounted(dedup):
    stats = dedup["stats"]
    assert stats["num_rejected"] == len(dedup["removed"])
    assert stats["stages"]["minhash_dedup"]["reasons"] == {"near_duplicate": len(dedup["removed"])}


def test_same_clusters_for_one_worker_and_other_partitions(corpus, dedup, tmp_path):
    _, cluster, removed = _run(
        corpus["dir"], tmp_path / "serial", "ray.max_in_flight=1", "minhash.num_partitions=3"
    )
    assert removed == dedup["removed"]
    assert cluster == dedup["cluster"]
