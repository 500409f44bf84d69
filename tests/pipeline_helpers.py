"""Helpers for pipeline tests: build a config for a corpus, compare run outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from data_pipeline.groundtruth import load_truth, read_outputs  # noqa: F401 - re-exported for tests
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
