"""Work units sized by bytes: large files split into parts (JSONL at line starts, Parquet at row
groups), small files grouped; ids, outputs and stats the same as one unit per file."""

from __future__ import annotations

import gzip
import json
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline.executor import run_pipeline
from data_pipeline.readers import InputConfig, InputUnit, read_unit, scan_inputs, unit_fingerprints
from data_pipeline.units import (
    group_key,
    group_label,
    group_target_bytes,
    group_units,
    split_units,
    unit_size,
)
from pretrain.core.files import read_json
from pretrain.core.progress import Progress
from pretrain.core.shards import read_manifest
from tests.pipeline_helpers import pipeline_config, read_outputs

LINES = [
    json.dumps({"text": "first document, plain"}),
    "",  # blank lines are skipped but still counted in line numbers
    json.dumps({"text": "second: ünïcode and a long tail " + "x" * 300}),
    "{not json",
    json.dumps({"body": "no text field"}),
    "   ",
    *[json.dumps({"text": f"document {i} " + "word " * (i % 37)}) for i in range(60)],
]


def _read_all(units, cfg):
    return [(d.id, d.text, r.reason if r else None) for u in units for d, r in read_unit(u, cfg)]


def _parts(paths, unit_bytes, **cfg_fields):
    cfg = InputConfig(paths=[str(p) for p in paths], unit_bytes=unit_bytes, **cfg_fields)
    units = scan_inputs(cfg).units
    return cfg, units, split_units(units, unit_fingerprints(units), unit_bytes)


@pytest.mark.parametrize("trailing_newline", [True, False])
def test_jsonl_parts_start_at_lines_and_keep_the_ids_of_the_whole_file(tmp_path, trailing_newline):
    path = tmp_path / "web" / "big.jsonl"
    path.parent.mkdir()
    path.write_text("\n".join(LINES) + ("\n" if trailing_newline else ""), encoding="utf-8")
    data = path.read_bytes()
    cfg, whole, parts = _parts([tmp_path], 700)
    assert len(parts) == -(-len(data) // 700) and [p.part for p in parts] == list(range(len(parts)))
    assert parts[0].start == 0 and parts[-1].end == len(data)
    for a, b in zip(parts, parts[1:]):
        assert a.end == b.start and data[b.start - 1 : b.start] == b"\n"  # cut just after a newline
        assert b.first_record == data[: b.start].count(b"\n")
    assert sum(p.num_bytes for p in parts) == len(data)
    assert [p.stem for p in parts[:2]] == ["web__big.jsonl@00000", "web__big.jsonl@00001"]
    assert parts[1].label == f"web/big.jsonl bytes {parts[1].start}-{parts[1].end}"
    got, want = _read_all(parts, cfg), _read_all(whole, cfg)
    assert got == want and len(want) == len(LINES) - 2
    assert want[1][0] == "web/big.jsonl:3" and want[2][2] == "malformed_json"


def test_one_line_longer_than_a_part_and_compressed_files_stay_whole(tmp_path):
    (tmp_path / "giant.jsonl").write_text(json.dumps({"text": "y" * 5000}) + "\n")
    (tmp_path / "small.jsonl").write_text(json.dumps({"text": "z"}) + "\n")
    (tmp_path / "packed.jsonl.gz").write_bytes(gzip.compress(("\n".join(LINES) + "\n").encode() * 20))
    _, whole, parts = _parts([tmp_path], 1000)
    assert [p.part for p in parts] == [None, None, None] and [p.name for p in parts] == [
        u.name for u in whole
    ]


def test_parquet_parts_are_row_groups_and_keep_row_ids(tmp_path):
    path = tmp_path / "books" / "shelf.parquet"
    path.parent.mkdir()
    texts = [f"book {i} " + "page " * (i % 50) for i in range(500)]
    pq.write_table(pa.table({"text": texts, "id": [f"b{i}" for i in range(500)]}), path, row_group_size=64)
    cfg, whole, parts = _parts([tmp_path], path.stat().st_size // 3)
    assert 2 <= len(parts) <= 8 and parts[0].start == 0 and parts[-1].end == 8  # 500 rows / 64
    assert all(a.end == b.start for a, b in zip(parts, parts[1:]))
    assert [p.first_record for p in parts] == [64 * p.start for p in parts]
    assert parts[1].label.startswith("books/shelf.parquet row groups ")
    assert parts[0].stem == "books__shelf@00000"  # one extension: books__shelf@00000.parquet
    got, want = _read_all(parts, cfg), _read_all(whole, cfg)
    assert got == want and want[499][0] == "books/shelf.parquet#499"


def test_small_files_are_grouped_largest_group_first():
    sizes = [5, 20, 10, 1, 1, 40, 3]
    units = [
        InputUnit(f"/d/f{i}.jsonl", f"f{i}.jsonl", "jsonl", f"f{i}.jsonl", num_bytes=n)
        for i, n in enumerate(sizes)
    ]
    groups = group_units(units, 25)
    assert [[u.name for u in g] for g in groups] == [
        ["f5.jsonl"],  # 40: alone, over the target
        ["f0.jsonl", "f1.jsonl"],  # 25
        ["f2.jsonl", "f3.jsonl", "f4.jsonl"],  # 12: f5 would pass the target
        ["f6.jsonl"],  # 3
    ]
    assert sorted(u.name for g in groups for u in g) == sorted(u.name for u in units)
    assert all(sum(u.num_bytes for u in g) <= 25 or len(g) == 1 for g in groups)
    totals = [sum(u.num_bytes for u in g) for g in groups]
    assert totals == sorted(totals, reverse=True)
    assert (
        group_key(groups[1]) == "f0.jsonl+1"
        and group_label(groups[1]) == "inputs f0.jsonl .. f1.jsonl (2 units)"
    )
    assert group_key(groups[0]) == "f5.jsonl" and group_label(groups[0]) == "input f5.jsonl"
    # a small input: about 8 tasks per CPU; a large one: unit_bytes
    assert group_target_bytes(units, 1000, num_cpus=2) == sum(sizes) // 16
    assert group_target_bytes(units, 4, num_cpus=1) == 4


def test_progress_eta_counts_bytes_not_tasks(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    p = Progress(enabled=False)
    p.start("chain", total=8, total_bytes=325, done_bytes=0)
    clock[0] = 17.0
    for _ in range(5):  # five small tasks of 5 MB in 17 s, the 240 MB one still running
        p.advance("chain", num_docs=10, num_bytes=5)
    assert p.eta_s() == pytest.approx(17.0 / 25 * 300)  # 204 s, not 17/5*3 = 10 s
    q = Progress(enabled=False)
    q.start("exact_dedup", total=4)
    clock[0] = 27.0
    q.advance("exact_dedup", num_docs=0)
    assert q.eta_s() == pytest.approx(10.0 * 3)


@pytest.mark.slow
def test_split_run_gives_the_ids_outputs_and_stats_of_one_unit_per_file(
    data_run, tiny_corpus, tmp_path, monkeypatch
):
    out = tmp_path / "split"
    monkeypatch.setenv("PRETRAIN_TASK_LOG", str(tmp_path / "tasks.jsonl"))  # the tasks that ran
    cfg = pipeline_config(tiny_corpus, out, "input.unit_bytes=32768", "keep_work=true")
    stats = run_pipeline(cfg)
    # the files over 32 KiB were split by Ray tasks, one each, not read by the driver
    units = scan_inputs(cfg.input).units
    big = sorted(u.stem for u, fp in zip(units, unit_fingerprints(units)) if unit_size(fp) > 32768)
    logged = [json.loads(line) for line in (tmp_path / "tasks.jsonl").read_text().splitlines()]
    assert big and sorted(t["key"] for t in logged if t["task"] == "split_unit") == big
    kept, rejected = read_outputs(out)
    assert kept == data_run["kept"]
    assert {k: (v["stage"], v["reason"]) for k, v in rejected.items()} == {
        k: (v["stage"], v["reason"]) for k, v in data_run["rejected"].items()
    }

    def in_order(d):
        m = read_manifest(d)
        return [
            r["id"]
            for e in m["shards"]
            for r in pq.read_table(d / "shards" / e["path"], columns=["id"]).to_pylist()
        ]

    assert in_order(out) == in_order(data_run["out"])  # the same documents in the same order
    skip = {"seconds", "docs_per_second", "task_seconds_chain", "num_shards"}
    assert {k: v for k, v in stats.items() if k not in skip} == {
        k: v for k, v in data_run["stats"].items() if k not in skip
    }
    # the units a packed shard holds say which part of which file they are
    sources = [s for e in read_manifest(out)["shards"] for s in e["sources"]]
    parts = [s for s in sources if "input_part" in s]
    assert len(sources) > len([s for e in read_manifest(data_run["out"])["shards"] for s in e["sources"]])
    assert parts and {s["input"] for s in parts} >= {"web/part-00005.jsonl", "code/part-00000.jsonl"}
    # each part's done record says which bytes of which file it read, and the lines before them
    first = next(s for s in parts if s["input_part"]["index"] == 1 and s["input"] == "code/part-00000.jsonl")
    rec = read_json(out / "_work" / "chain" / f"{first['unit']}.done.json")
    assert rec["part"] == first["input_part"] and rec["relpath"] == "code/part-00000.jsonl"
    a, b = rec["part"]["bytes"]
    data = (tiny_corpus / "raw" / "code" / "part-00000.jsonl").read_bytes()
    assert rec["part"]["records_before"] == data[:a].count(b"\n") and b > a
    assert rec["fingerprint"]["part"] == rec["part"]
