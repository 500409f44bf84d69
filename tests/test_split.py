"""Held-out split: per-source counts, every document accounted for, independent of shard layout."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from data_pipeline.split import heldout_ids, split_heldout
from pretrain.core.shards import DOC_SCHEMA, list_shards, read_table, write_manifest, write_table


def _stage(root, layout: list[list[tuple[str, str]]]):
    """A stage directory whose shard i holds the (id, source) docs of layout[i]."""
    entries = []
    for i, docs in enumerate(layout):
        rows = [
            {"id": d, "text": f"text of {d}", "source": s, "url": None, "metadata": "{}"} for d, s in docs
        ]
        (root / "shards").mkdir(parents=True, exist_ok=True)
        entries.append(
            write_table(root / "shards" / f"{i:03d}.parquet", pa.Table.from_pylist(rows, DOC_SCHEMA))
        )
    write_manifest(root, shards=entries)
    return root


DOCS = (
    [(f"web-{i}", "web") for i in range(100)] + [(f"code-{i}", "code") for i in range(7)] + [("one-0", "one")]
)


def _ids(stage_dir) -> set[str]:
    return {i for p in list_shards(stage_dir) for i in read_table(p, ["id"])["id"].to_pylist()}


def test_split_counts_and_accounting(tmp_path):
    src = _stage(tmp_path / "in", [DOCS[:50], DOCS[50:]])
    stats = split_heldout(src, tmp_path / "out", heldout_fraction=0.05, min_per_source=2, seed=0)
    # web: round(0.05 * 100) = 5; code: max(2, 0) = 2; one: a single doc is never held out
    assert stats["per_source"] == {
        "code": {"in": 7, "train": 5, "heldout": 2},
        "one": {"in": 1, "train": 1, "heldout": 0},
        "web": {"in": 100, "train": 95, "heldout": 5},
    }
    train, held = _ids(tmp_path / "out" / "train"), _ids(tmp_path / "out" / "heldout")
    assert train.isdisjoint(held) and train | held == {d for d, _ in DOCS}
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["num_in"] == len(DOCS)


def test_split_is_independent_of_shard_layout_and_seeded(tmp_path):
    a = _stage(tmp_path / "a", [DOCS])
    b = _stage(tmp_path / "b", [DOCS[i::3] for i in range(3)])
    split_heldout(a, tmp_path / "sa", 0.1, 2, seed=1)
    split_heldout(b, tmp_path / "sb", 0.1, 2, seed=1)
    assert _ids(tmp_path / "sa" / "heldout") == _ids(tmp_path / "sb" / "heldout")
    by_source = {}
    for d, s in DOCS:
        by_source.setdefault(s, []).append(d)
    assert heldout_ids(by_source, 0.1, 2, seed=1) == _ids(tmp_path / "sa" / "heldout")
    assert heldout_ids(by_source, 0.1, 2, seed=2) != heldout_ids(by_source, 0.1, 2, seed=1)


def test_split_refuses_repeated_ids(tmp_path):
    src = _stage(tmp_path / "in", [DOCS[:3], DOCS[:1]])
    with pytest.raises(ValueError, match="ids must be unique"):
        split_heldout(src, tmp_path / "out", 0.1, 1, seed=0)
