"""The whole data pipeline on the generated corpus, on local Ray: every planted case's fate,
accounting, resume and worker-count invariance."""

from __future__ import annotations

import json
import logging
from collections import Counter

import pytest

from data_pipeline.cli import main as cli_main
from data_pipeline.executor import run_pipeline
from data_pipeline.groundtruth import score_run
from pretrain.core.shards import read_manifest
from tests.pipeline_helpers import pipeline_config, read_outputs, shard_digests

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(data_run):
    return data_run


def test_every_document_accounted_for(run):
    stats, truth = run["stats"], run["truth"]
    assert stats["num_in"] == len(truth)
    assert set(run["kept"]) | set(run["rejected"]) == set(truth)
    assert stats["num_kept"] == len(run["kept"]) and stats["num_rejected"] == len(run["rejected"])
    # Each stage sees exactly what the stages before it kept, among the profiles that run it: the
    # code source (profile `code`) skips language, quality and toxicity, prose skips code_quality.
    cfg = pipeline_config(run["out"], run["out"])
    runs = {p: {"read", *(n for n, _ in cfg.stage_configs(p)), "exact_dedup"} for p in cfg.used_profiles()}
    alive = Counter(cfg.profile_of(t["source"]) for t in truth.values())
    gone = Counter((r["stage"], cfg.profile_of(r["source"])) for r in run["rejected"].values())
    assert set(alive) == {"prose", "code"}
    for name, s in stats["stages"].items():
        assert s["in"] == s["kept"] + s["rejected"], name
        assert s["rejected"] == sum(s["reasons"].values()), name
        assert s["in"] == sum(n for p, n in alive.items() if name in runs[p]), name
        for p in alive:
            alive[p] -= gone[name, p]
    assert sum(alive.values()) == stats["num_kept"]
    on_disk = json.loads((run["out"] / "stats.json").read_text())
    assert on_disk["num_in"] == stats["num_in"] and (run["out"] / "summary.md").exists()


def test_rejects_are_counted_per_language_and_rule(run):
    """The per-language tally adds up to each stage's reasons, and summary.md shows it."""
    stats = run["stats"]
    for stage, counts in stats["rejected_by_language"].items():
        per_reason: dict[str, int] = {}
        for key, n in counts.items():
            reason = key.partition("/")[2]
            per_reason[reason] = per_reason.get(reason, 0) + n
        assert per_reason == stats["stages"][stage]["reasons"], stage
    langs = {k.partition("/")[0] for k in stats["rejected_by_language"]["language"]}
    assert "en" not in langs and len(langs) >= 2  # the non-English planted docs, by their language
    assert {k.partition("/")[0] for k in stats["rejected_by_language"]["quality"]} == {"en"}
    summary = (run["out"] / "summary.md").read_text()
    assert "## Rejected per language and rule" in summary and "| quality | en |" in summary


def test_each_planted_case_has_its_expected_fate(run):
    wrong = []
    for doc_id, t in run["truth"].items():
        expect = t["expect"]
        if expect == "kept":
            if doc_id not in run["kept"]:
                r = run["rejected"][doc_id]
                wrong.append((doc_id, t["category"], "kept", (r["stage"], r["reason"], r["detail"])))
        else:
            r = run["rejected"].get(doc_id)
            if r is None or r["stage"] != expect["stage"] or expect.get("reason") not in (None, r["reason"]):
                wrong.append((doc_id, t["category"], expect, (r["stage"], r["reason"]) if r else "kept"))
    assert not wrong, f"{len(wrong)} wrong fates, first: {wrong[:10]}"


def test_exact_duplicates_name_their_survivor(run):
    dups = [t for t in run["truth"].values() if t["category"].startswith("exact_dup")]
    assert dups
    for t in dups:
        r = run["rejected"][t["id"]]
        assert (r["stage"], r["reason"], r["detail"]) == ("exact_dedup", "exact_duplicate", t["dup_of"])
        assert r["metadata"]["duplicate_of"] == t["dup_of"]
        assert t["dup_of"] in run["kept"]


def test_pii_full_recall_and_no_false_positives(run):
    pii_docs = [t for t in run["truth"].values() if t["category"] == "pii"]
    assert {ty for t in pii_docs for ty in t["pii"]} == {
        "email",
        "ip_address",
        "phone",
        "credit_card",
        "iban",
        "ssn",
        "secret",
    }
    for t in pii_docs:
        doc = run["kept"][t["id"]]
        assert doc["metadata"]["pii"] == t["pii"], t["id"]
        for _, value in t["pii_values"]:
            assert value not in doc["text"], (t["id"], value)
    for doc_id, doc in run["kept"].items():
        t = run["truth"][doc_id]
        if t["category"] != "pii":
            assert doc["metadata"]["pii"] == {}, (doc_id, t["category"], doc["metadata"]["pii"])
        for s in t.get("hard_negatives", []):
            assert s in doc["text"], (doc_id, s)
    expected_totals = Counter()
    for t in pii_docs:
        expected_totals.update(t["pii"])
    assert run["stats"]["pii"] == dict(sorted(expected_totals.items()))


def test_ground_truth_score_toxicity_precision_recall(run, tiny_corpus, capsys):
    score = score_run(tiny_corpus, run["out"])
    assert score["num_met"] == score["num_docs"] == len(run["truth"]), score["wrong"][:5]
    tox = score["toxicity"]
    print(f"toxicity on the planted set: precision={tox['precision']:.3f} recall={tox['recall']:.3f}")
    assert tox["num_toxic"] == 30 and tox["precision"] == 1.0 and tox["recall"] == 1.0
    assert score["pii"]["recall"] == 1.0 and score["pii"]["false_positive_docs"] == 0
    assert cli_main(["score", "--corpus", str(tiny_corpus), "--run", str(run["out"])]) == 0
    assert f"ground truth: {len(run['truth'])}/{len(run['truth'])} documents" in capsys.readouterr().out


def test_single_stage_commands_chain_over_stage_dirs(run, tiny_corpus, tmp_path, capsys):
    """`normalize` on raw input, then `quality` over its stage directory: ids and metadata carry over."""
    norm, qual = tmp_path / "norm", tmp_path / "qual"
    raw = str(tiny_corpus / "raw")
    assert cli_main(["normalize", "--input", raw, "--output", str(norm), "progress=false"]) == 0
    stats = json.loads((norm / "stats.json").read_text())
    assert stats["stage_order"] == ["read", "normalize"]
    assert stats["stages"]["normalize"]["reasons"] == {"empty": 5, "too_long": 2}
    # the code source keeps its profile: the prose rules of `quality` do not apply to it
    profiles = "source_profiles={code: code}"
    assert cli_main(["quality", "--input", str(norm), "--output", str(qual), "progress=false", profiles]) == 0
    qstats = json.loads((qual / "stats.json").read_text())
    assert qstats["stage_order"] == ["read", "quality"]
    assert qstats["num_in"] == stats["num_kept"]
    kept, rejected = read_outputs(qual)
    norm_kept, _ = read_outputs(norm)
    assert set(kept) | set(rejected) == set(norm_kept)
    for t in run["truth"].values():
        stage = t["expect"] if t["expect"] == "kept" else t["expect"]["stage"]
        if stage == "quality":
            assert (rejected[t["id"]]["stage"], rejected[t["id"]]["reason"]) == (
                "quality",
                t["expect"]["reason"],
            )
        elif stage in ("kept", "toxicity", "exact_dedup"):
            assert t["id"] in kept, (t["id"], rejected[t["id"]]["reason"])
            meta = kept[t["id"]]["metadata"]
            assert all(meta[k] == v for k, v in norm_kept[t["id"]]["metadata"].items())


def test_output_files_have_one_extension_and_ids_stay_positional(run):
    out = run["out"]
    shards = sorted(p.name for p in (out / "shards").iterdir())
    rejects = sorted(p.name for p in (out / "rejects").iterdir())
    # shards are packed into parts (tests/test_shard_sizing.py); rejects stay per input unit
    assert shards == [f"part-{k:05d}.parquet" for k in range(len(shards))] and shards, shards
    assert "books__part-00000.exact_dedup.parquet" in rejects, rejects
    assert [n for n in shards + rejects if n.count(".parquet") != 1] == []
    sources = [s for e in read_manifest(out)["shards"] for s in e["sources"]]
    assert {"input": "books/part-00000.parquet", "unit": "books__part-00000"} in [
        {k: s[k] for k in ("input", "unit")} for s in sources
    ]
    assert any(i.startswith("books/part-00000.parquet#") for i in run["kept"])  # ids: relpath#row


def test_skipped_input_files_are_said_once_in_summary_stats_and_console(ray_local, tmp_path, caplog):
    raw = tmp_path / "raw" / "web"
    raw.mkdir(parents=True)
    text = "The river keeps its slow pace through the valley, and the old mill still turns each spring."
    (raw / "a.jsonl").write_text(json.dumps({"text": text}) + "\n")
    (raw / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (raw / "NOTES.md").write_text("how this crawl was made\n")
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="data_pipeline.executor"):
        stats = run_pipeline(pipeline_config(tmp_path, out))
    skipped = {f["path"]: f["reason"] for f in stats["skipped_files"]}
    assert sorted(skipped) == [str(raw / "NOTES.md"), str(raw / "logo.png")]
    assert skipped[str(raw / "logo.png")].startswith("binary file (suffix '.png'")
    assert skipped[str(raw / "NOTES.md")].startswith("unknown format (suffix '.md'")
    assert json.loads((out / "stats.json").read_text())["skipped_files"] == stats["skipped_files"]
    summary = (out / "summary.md").read_text()
    assert "## Skipped input files" in summary and f"`{raw / 'logo.png'}` | binary file" in summary
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("skipped 2 input files: "), lines
    assert "NOTES.md (unknown format" in lines[0] and "logo.png (binary file" in lines[0]
    assert stats["num_in"] == 1


def test_dry_run_prints_config_and_plan(tiny_corpus, capsys):
    assert (
        cli_main(
            [
                "run",
                "--config",
                "configs/data_tiny.yaml",
                f"input.paths=[{tiny_corpus / 'raw'}]",
                "quality.c4.enabled=false",
                "--dry-run",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "c4:\n    enabled: false" in out
    assert "# 12 input units\n" in out
    assert (
        "# stages (prose): read -> normalize -> language -> quality -> pii -> toxicity -> exact_dedup" in out
    )
    assert "# stages (code): read -> normalize -> code_quality -> pii -> exact_dedup" in out
    assert cli_main(["run", "language.min_score=7", "--dry-run"]) == 2
    assert "language.min_score=7" in capsys.readouterr().err


def test_mojibake_repaired(run):
    fixed = [t for t in run["truth"].values() if t["category"] == "mojibake"]
    assert fixed
    for t in fixed:
        assert t["fixed_text_contains"] in run["kept"][t["id"]]["text"]


def test_rerun_skips_everything_and_changes_nothing(run, tiny_corpus):
    out = run["out"]
    before = shard_digests(out)
    assert not (out / "_work").exists()  # removed once the run finished; done.json says it did
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    stats = run_pipeline(pipeline_config(tiny_corpus, out))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == mtimes
    assert shard_digests(out) == before
    assert stats["num_kept"] == run["stats"]["num_kept"]


def test_same_output_for_any_worker_count_and_partitioning(run, tiny_corpus, tmp_path):
    out = tmp_path / "serial"
    stats = run_pipeline(
        pipeline_config(tiny_corpus, out, "ray.max_in_flight=1", "exact_dedup.num_partitions=1")
    )
    assert shard_digests(out) == shard_digests(run["out"])
    # the stats too, example rejects included: folded as tasks end, in whatever order they end
    timing = ("seconds", "docs_per_second", "task_seconds_chain")
    assert {k: v for k, v in stats.items() if k not in timing} == {
        k: v for k, v in run["stats"].items() if k not in timing
    }
    assert stats["examples"] and all(stats["examples"].values())
