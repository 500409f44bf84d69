"""Helpers for pipeline tests: run it, read its outputs back keyed by document id."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from pretrain.shards import read_manifest

REPO = Path(__file__).resolve().parent.parent


def pipeline_config(corpus: Path, out: Path, *overrides: str):
    from data_pipeline.config import load_pipeline_config

    return load_pipeline_config(
        REPO / "configs" / "data_tiny.yaml",
        [f"input.paths=[{corpus / 'raw'}]", f"output_dir={out}", "progress=false", *overrides],
    )


def load_truth(corpus: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (corpus / "truth.jsonl").read_text().splitlines() if line.strip()]
    return {r["id"]: r for r in rows}


def read_outputs(out: Path) -> tuple[dict[str, dict], dict[str, dict]]:
    """(kept docs by id, rejects by id); asserts no id appears twice anywhere."""
    kept: dict[str, dict] = {}
    rejected: dict[str, dict] = {}
    for f in sorted((out / "shards").glob("*.parquet")):
        for row in pq.read_table(f).to_pylist():
            assert row["id"] not in kept, f"duplicate id {row['id']} in shards"
            row["metadata"] = json.loads(row["metadata"])
            kept[row["id"]] = row
    for f in sorted((out / "rejects").glob("*.parquet")):
        for row in pq.read_table(f).to_pylist():
            assert row["id"] not in rejected and row["id"] not in kept, f"id {row['id']} written twice"
            row["metadata"] = json.loads(row["metadata"])
            rejected[row["id"]] = row
    return kept, rejected


def shard_digests(out: Path) -> dict[str, str]:
    m = read_manifest(out)
    return {e["path"]: e["sha256"] for e in m["shards"]} | {
        "rejects/" + e["path"]: e["sha256"] for e in m["rejects"]
    }
