"""Helpers for pipeline tests: build a config for a corpus, compare run outputs."""

from __future__ import annotations

from pathlib import Path

from data_pipeline.groundtruth import load_truth, read_outputs  # noqa: F401 - re-exported for tests
from pretrain.core.shards import read_manifest

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
