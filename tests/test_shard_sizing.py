"""Shards sized for training: the per-unit shards of a stage packed into `part-NNNNN.parquet` of
about `target_shard_bytes` (and at most `target_shard_rows`), in input order, the same for any
number of workers, resumable from the parts' done records. Tolerance: every part but the last of a
folder within 0.5x-1.5x the target (measured: 0.96-1.0x for the thousand files at 64 KiB, 1.0-1.2x
for the language folders at 16 KiB)."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from data_pipeline.config import STAGE_ORDER, load_pipeline_config
from data_pipeline.corpus.short_docs import sentence_pool, short_docs
from data_pipeline.executor import run_pipeline
from data_pipeline.pack import PackSource, plan_parts
from pretrain.core.shards import read_manifest

TARGET = 64 << 10
NUM_FILES = 1000
DOCS_PER_FILE = 12


def _run(raw, out, *overrides: str) -> dict:
    """The data stage with every per-document step off: read, then finalize and pack."""
    off = [f"{s}.enabled=false" for s in STAGE_ORDER]
    return run_pipeline(
        load_pipeline_config(
            None,
            [
                f"input.paths=[{raw}]",
                f"output_dir={out}",
                "progress=false",
                "exact_dedup.enabled=false",
                f"target_shard_bytes={TARGET}",
                *off,
                *overrides,
            ],
        )
    )


def _parts(out) -> list[tuple[str, str]]:
    return [(e["path"], e["sha256"]) for e in read_manifest(out)["shards"]]


def _ids(out) -> list[str]:
    m = read_manifest(out)
    return [i for e in m["shards"] for i in pq.read_table(out / "shards" / e["path"])["id"].to_pylist()]


def _mtimes(d) -> dict[str, int]:
    return {p.relative_to(d).as_posix(): p.stat().st_mtime_ns for p in d.rglob("*") if p.is_file()}


# --- the plan ------------------------------------------------------------------------------------


def _flat(parts, sources) -> list[tuple[int, int]]:
    return [(i, r) for p in parts for i, a, b in p.slices for r in range(a, b)]


def test_plan_keeps_every_row_once_in_order_and_cuts_big_sources_by_rows():
    sources = [PackSource(f"s{i}", 10, 1_400, f"h{i}") for i in range(95)]
    sources.insert(40, PackSource("big", 1_000, 200_000, "hb"))  # 20x the target
    sources.insert(7, PackSource("empty", 0, 0, "he"))
    parts = plan_parts(sources, {"": 0.5}, 10_000)  # 0.5: on-disk bytes per Arrow byte
    assert _flat(parts, sources) == [(i, r) for i, s in enumerate(sources) for r in range(s.rows)]
    row_bytes = 200_000 * 0.5 / 1_000
    assert all(10_000 <= p.est_bytes < 10_000 + row_bytes for p in parts[:-1]), [p.est_bytes for p in parts]
    assert [p.path for p in parts] == [f"part-{k:05d}.parquet" for k in range(len(parts))]
    big = [p for p in parts if any(sources[i].path == "big" for i, _, _ in p.slices)]
    assert len(big) >= 10 and any(len(p.slices) > 1 for p in big)  # shares its first and last part
    assert plan_parts(sources, {"": 0.5}, 10_000) == parts  # a pure function of data and targets


def test_plan_target_rows_language_folders_and_no_rows():
    sources = [
        PackSource(f"s{i}", 30, 300, f"h{i}", folder=("lang=en" if i % 3 else "lang=de")) for i in range(9)
    ]
    parts = plan_parts(sources, {"lang=de": 1.0, "lang=en": 1.0}, 10**9, target_rows=40)
    assert [p.path for p in parts] == [
        "lang=de/part-00000.parquet",  # 90 rows of de: 40 + 40 + 10
        "lang=de/part-00001.parquet",
        "lang=de/part-00002.parquet",
        "lang=en/part-00003.parquet",  # numbered across folders: a part's name is unique
        "lang=en/part-00004.parquet",
        "lang=en/part-00005.parquet",
        "lang=en/part-00006.parquet",
        "lang=en/part-00007.parquet",
    ]
    assert [sum(b - a for _, a, b in p.slices) for p in parts] == [40, 40, 10, 40, 40, 40, 40, 20]
    assert {sources[i].folder for p in parts[:3] for i, _, _ in p.slices} == {"lang=de"}
    empty = plan_parts([PackSource("e", 0, 0, "h")], {}, 1000)
    assert [(p.path, p.slices) for p in empty] == [("part-00000.parquet", [])]


# --- a thousand small files ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    """NUM_FILES JSONL files of DOCS_PER_FILE short documents (about 5 KB each) in 10 folders."""
    docs = short_docs(NUM_FILES * DOCS_PER_FILE, seed=7, pool=sentence_pool(), dup_fraction=0)
    raw = tmp_path_factory.mktemp("many")
    for f in range(NUM_FILES):
        path = raw / f"d{f // 100}" / f"f{f:04d}.jsonl"
        path.parent.mkdir(exist_ok=True)
        lines = docs[f * DOCS_PER_FILE : (f + 1) * DOCS_PER_FILE]
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    return raw


@pytest.fixture(scope="module")
def packed(small_files, ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("packed")
    stats = _run(small_files, out, "keep_work=true", "batch_rows=100")
    return out, stats


@pytest.mark.slow  # a thousand files: about 30 s of per-file work in the chain
def test_many_small_files_give_parts_near_the_target(small_files, packed):
    out, stats = packed
    m = read_manifest(out)
    sizes = [e["bytes"] for e in m["shards"]]
    assert len(sizes) == stats["num_shards"] >= 10
    assert all(0.5 * TARGET <= b <= 1.5 * TARGET for b in sizes[:-1]), sizes
    assert 0 < sizes[-1] <= 1.5 * TARGET
    names = [f"part-{k:05d}.parquet" for k in range(len(sizes))]
    assert [e["path"] for e in m["shards"]] == names == sorted(p.name for p in (out / "shards").iterdir())
    # the documents in input order; each part says which units (and rows of them) it holds
    want = [
        f"d{f // 100}/f{f:04d}.jsonl:{line + 1}" for f in range(NUM_FILES) for line in range(DOCS_PER_FILE)
    ]
    assert _ids(out) == want
    held = [(s["input"], *s["rows"]) for e in m["shards"] for s in e["sources"]]
    assert [h[0] for h in held if h[1] == 0] == [w.split(":")[0] for w in want[::DOCS_PER_FILE]]
    assert sum(b - a for _, a, b in held) == len(want) == sum(e["rows"] for e in m["shards"])
    assert (
        held[0] == ("d0/f0000.jsonl", 0, DOCS_PER_FILE)
        and m["shards"][0]["sources"][0]["unit"] == "d0__f0000.jsonl"
    )
    # row groups of batch_rows, whatever the sources' cuts (units.py splits a part at them)
    meta = pq.read_metadata(out / "shards" / names[0])
    groups = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    assert len(groups) > 1 and set(groups[:-1]) == {100}, groups
    # rejects stay per input unit (an audit trail); no per-unit shard is left in shards/
    assert len(list((out / "rejects").glob("*.parquet"))) == 2 * NUM_FILES  # read, exact_dedup


@pytest.mark.slow  # a thousand files: about 30 s of per-file work in the chain
def test_same_parts_for_one_worker_and_after_a_kill_during_the_pack(small_files, packed, tmp_path):
    src, _ = packed
    out = tmp_path / "out"
    shutil.copytree(src, out)  # mtimes kept: the done records still hold
    want = _parts(out)
    before = _mtimes(out / "_work")
    # killed during the pack: no stage record or manifest, part 1 lost, parts 2.. never written
    (out / "done.json").unlink()
    (out / "manifest.json").unlink()
    parts = sorted((out / "shards").iterdir())
    parts[1].unlink()
    for p in parts[2:]:
        p.unlink()
        (out / "_work" / "pack" / f"{p.stem}.done.json").unlink()
    first = parts[0].stat().st_mtime_ns
    _run(small_files, out, "keep_work=true", "batch_rows=100", "ray.max_in_flight=1")  # one task at a time
    assert _parts(out) == want  # the same names and bytes as 2 workers wrote
    assert parts[0].stat().st_mtime_ns == first  # the finished part was not redone
    after = _mtimes(out / "_work")
    assert all(after[k] == t for k, t in before.items() if not k.startswith("pack/")), "upstream tasks redone"


@pytest.mark.slow  # a thousand files: about 30 s of per-file work in the chain
def test_a_new_target_rewrites_only_the_parts_and_removes_stale_ones(small_files, packed, tmp_path):
    src, _ = packed
    out = tmp_path / "out"
    shutil.copytree(src, out)
    num_before = len(_parts(out))
    before = _mtimes(out / "_work")
    stats = _run(small_files, out, "keep_work=true", "batch_rows=100", f"target_shard_bytes={4 * TARGET}")
    m = read_manifest(out)
    assert stats["num_shards"] == len(m["shards"]) < num_before / 2
    assert [e["path"] for e in m["shards"]] == sorted(p.name for p in (out / "shards").iterdir())
    assert all(0.5 * 4 * TARGET <= e["bytes"] <= 1.5 * 4 * TARGET for e in m["shards"][:-1])
    after = _mtimes(out / "_work")
    assert all(after[k] == t for k, t in before.items() if k.startswith(("chain/", "final/")))
    assert _ids(out) == _ids(src)


# --- one big file, MinHash and the split ----------------------------------------------------------


@pytest.fixture(scope="module")
def big_file(ray_local, tmp_path_factory):
    """One JSONL file of 4,000 short documents (1.7 MB; 5% planted near copies), split into 6
    work units, packed at TARGET."""
    raw = tmp_path_factory.mktemp("big")
    docs = short_docs(4000, seed=8, pool=sentence_pool())
    (raw / "web").mkdir()
    (raw / "web" / "big.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    out = tmp_path_factory.mktemp("big_out")
    _run(raw, out, "input.unit_bytes=300000")
    return raw, out


def test_one_big_file_gives_several_parts_the_same_for_one_worker(big_file, tmp_path):
    raw, out = big_file
    m = read_manifest(out)
    assert len(m["shards"]) >= 4
    assert all(0.5 * TARGET <= e["bytes"] <= 1.5 * TARGET for e in m["shards"][:-1])
    assert _ids(out) == [f"web/big.jsonl:{i + 1}" for i in range(4000)]
    units = [[(s["unit"], *s["rows"]) for s in e["sources"]] for e in m["shards"]]
    assert any(len(u) > 1 for u in units)  # a part holding the end of a unit and the next one
    assert any(u[0][1] > 0 for u in units)  # a unit continued from the part before
    assert all(s["input"] == "web/big.jsonl" and "input_part" in s for e in m["shards"] for s in e["sources"])
    _run(raw, tmp_path / "one", "input.unit_bytes=300000", "ray.max_in_flight=1")
    assert _parts(tmp_path / "one") == _parts(out)


def test_minhash_and_the_split_pack_their_outputs(big_file, tmp_path):
    from data_pipeline.minhash.dedup import load_minhash_config, run_minhash_dedup
    from data_pipeline.split import split_heldout

    _, stage = big_file
    mh = tmp_path / "minhash"
    stats = run_minhash_dedup(
        load_minhash_config(
            None,
            [f"input_dir={stage}", f"output_dir={mh}", "progress=false", f"target_shard_bytes={TARGET // 2}"],
        )
    )
    m = read_manifest(mh)
    assert stats["stages"]["minhash_dedup"]["rejected"] > 100 and stats["num_shards"] == len(m["shards"])
    assert len(m["shards"]) > len(read_manifest(stage)["shards"])  # smaller parts than its input's
    assert all(0.5 * TARGET // 2 <= e["bytes"] <= 1.5 * TARGET // 2 for e in m["shards"][:-1])
    assert [e["path"] for e in m["shards"]] == [f"part-{k:05d}.parquet" for k in range(len(m["shards"]))]
    assert {s["unit"] for e in m["shards"] for s in e["sources"]} == {
        p.removesuffix(".parquet") for p, _ in _parts(stage)
    }
    ids = _ids(mh)
    assert ids == [i for i in _ids(stage) if i in set(ids)]  # order kept
    # the split: each side packed at its target (the held-out side: one small part)
    split = split_heldout(mh, tmp_path / "split", 0.05, 1, seed=0, target_shard_bytes=TARGET)
    train, held = read_manifest(tmp_path / "split" / "train"), read_manifest(tmp_path / "split" / "heldout")
    assert len(held["shards"]) == 1 and held["shards"][0]["rows"] == split["num_heldout"] > 0
    assert all(0.5 * TARGET <= e["bytes"] <= 1.5 * TARGET for e in train["shards"][:-1])
    assert sum(e["rows"] for e in train["shards"]) == split["num_train"] == len(ids) - split["num_heldout"]
    assert not (tmp_path / "split" / "_work").exists()


# --- language folders --------------------------------------------------------------------------------


def test_partition_by_language_packs_each_folder(ray_local, tmp_path):
    docs = short_docs(1200, seed=9, pool=sentence_pool(), dup_fraction=0)
    raw = tmp_path / "raw"
    for source, lo, hi in (("web", 0, 800), ("code", 800, 1200)):
        (raw / source).mkdir(parents=True)
        for f in range(4):
            rows = docs[lo + f * (hi - lo) // 4 : lo + (f + 1) * (hi - lo) // 4]
            (raw / source / f"{f}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    out = tmp_path / "out"
    small = f"target_shard_bytes={TARGET // 4}"
    _run(raw, out, "partition_by_language=true", "source_profiles={code: code}", "only_stages=[]", small)
    m = read_manifest(out)
    paths = [e["path"] for e in m["shards"]]
    assert paths == [
        f"lang={'code' if e['language'] == 'code' else 'und'}/part-{k:05d}.parquet"
        for k, e in enumerate(m["shards"])
    ]
    by_lang = {lang: [e for e in m["shards"] if e["language"] == lang] for lang in ("code", "und")}
    assert len(by_lang["code"]) >= 2 and len(by_lang["und"]) >= 3, paths  # code first: folders sorted
    assert (
        sorted(p.relative_to(out / "shards").as_posix() for p in (out / "shards").rglob("*.parquet")) == paths
    )
    for lang, entries in by_lang.items():
        assert all(0.5 * TARGET // 4 <= e["bytes"] <= 1.5 * TARGET // 4 for e in entries[:-1])
        for e in entries:
            metas = [json.loads(x) for x in pq.read_table(out / "shards" / e["path"])["metadata"].to_pylist()]
            assert {x.get("language") or x.get("profile") or "und" for x in metas} == {lang}
            assert {s["input"].split("/")[0] for s in e["sources"]} == {"code" if lang == "code" else "web"}
    assert len(_ids(out)) == 1200
