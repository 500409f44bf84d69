"""Helpers for pipeline tests: build a config for a corpus, compare run outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from data_pipeline.groundtruth import load_truth, read_outputs  # noqa: F401 - load_truth: for tests
from pretrain.core.shards import DOC_SCHEMA, read_manifest, write_manifest, write_table

REPO = Path(__file__).resolve().parent.parent


def pipeline_config(corpus: Path, out: Path, *overrides: str):
    from data_pipeline.config import load_pipeline_config

    return load_pipeline_config(
        REPO / "configs" / "data_tiny.yaml",
        [f"input.paths=[{corpus / 'raw'}]", f"output_dir={out}", "progress=false", *overrides],
    )


def shard_digests(out: Path) -> dict[str, str]:
    m = read_manifest(out)
    return {e["path"]: e["sha256"] for e in m["shards"]} | {
        "rejects/" + e["path"]: e["sha256"] for e in m["rejects"]
    }


def write_doc_stage(out: Path, docs: list[str], order: np.ndarray, num_shards: int) -> Path:
    """A finished stage directory `out` of `docs` (ids `doc00000`, ... by position in `docs`, source
    `s`), taken in `order` and spread over `num_shards` shards `part-NNNNN.parquet`."""
    entries = []
    for s, rows in enumerate(np.array_split(order, num_shards)):
        table = pa.table(
            {
                "id": [f"doc{i:05d}" for i in rows],
                "text": [docs[i] for i in rows],
                "source": ["s"] * len(rows),
                "url": pa.nulls(len(rows), pa.string()),
                "metadata": ["{}"] * len(rows),
            },
            schema=DOC_SCHEMA,
        )
        entries.append(write_table(out / "shards" / f"part-{s:05d}.parquet", table))
    write_manifest(out, shards=entries)
    return out


def run_minhash(
    inp: Path,
    out: Path,
    *overrides: str,
    keep_work: bool = False,
    threshold: float | None = None,
    verify_threshold: float | None = None,
) -> tuple[dict, set[str], dict[str, tuple]]:
    """`pretrain data minhash` from the stage directory `inp` into `out` (default config, then
    `keep_work`, the thresholds given, then `overrides`): its stats, the kept ids, and each rejected
    id's (detail, near_dup_cluster)."""
    from data_pipeline.minhash.dedup import load_minhash_config, run_minhash_dedup

    options = ["keep_work=true"] if keep_work else []
    if threshold is not None:
        options.append(f"minhash.threshold={threshold}")
    if verify_threshold is not None:
        options.append(f"minhash.verify_threshold={verify_threshold}")
    cfg = load_minhash_config(
        None, [f"input_dir={inp}", f"output_dir={out}", "progress=false", *options, *overrides]
    )
    stats = run_minhash_dedup(cfg)
    kept, rejected = read_outputs(out)
    return (
        stats,
        set(kept),
        {k: (r["detail"], r["metadata"]["near_dup_cluster"]) for k, r in rejected.items()},
    )
