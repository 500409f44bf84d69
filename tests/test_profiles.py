"""Per-source profiles on text nobody here wrote, and outputs partitioned by language.

The `code` profile on the installed Python's own standard library (files read as text): most are
kept, generated codec tables, data-only modules and a minified module are rejected with their
reasons, secrets are scrubbed, numeric literals and licence headers are left alone. The same files
under the prose rules are nearly all rejected (what the issue measured). The `docs` profile on this
machine's /usr/share/doc keeps what the prose rules drop. With `partition_by_language`, the shards
are packed per language folder (lang=en/, lang=de/, lang=code/) and MinHash and the held-out split
keep the folders.
"""

from __future__ import annotations

import gzip
import json
import sysconfig
from collections import Counter
from pathlib import Path

import pytest

from data_pipeline.config import PipelineConfig, load_pipeline_config
from data_pipeline.corpus.code import minify
from data_pipeline.document import Doc, Reject
from data_pipeline.stages.code_quality import CodeQualityConfig
from pretrain.core.config import ConfigError, from_dict
from pretrain.core.shards import list_shards, read_manifest
from tests.pipeline_helpers import REPO

STDLIB = Path(sysconfig.get_paths()["stdlib"])
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"  # AWS's documented example key id
SECRET_LINE = f'AWS_ACCESS_KEY_ID = "{AWS_KEY}"\nTIMEOUT_MS = 4155552671\n'
GERMAN = (
    "Die Stadt liegt am Ufer des großen Flusses und ist seit vielen Jahrhunderten ein wichtiger Ort "
    "für den Handel. Im Sommer kommen viele Besucher, die durch die alten Gassen gehen und die "
    "Kirchen und Museen besichtigen. Das Leben in der Stadt ist ruhig, aber nicht langweilig, und "
    "die Menschen sind freundlich zu den Gästen, die mit dem Zug oder dem Schiff ankommen. Am Abend "
    "sitzen die Familien in den Gärten, und die Kinder spielen bis zur Dämmerung am Wasser. Im Winter ist es still, "
    "und der Nebel liegt oft bis zum Mittag über den Wiesen."
)


def _stdlib_files() -> list[Path]:
    files = [*STDLIB.glob("*.py"), *STDLIB.glob("encodings/*.py"), *STDLIB.glob("json/*.py"),
             *STDLIB.glob("html/*.py"), *STDLIB.glob("pydoc_data/*.py"), *STDLIB.glob("logging/*.py")]  # fmt: skip
    return sorted(f for f in files if f.stat().st_size > 0)


def _records(files: list[Path]) -> list[dict]:
    recs = [{"id": str(f.relative_to(STDLIB)), "text": f.read_text(encoding="utf-8")} for f in files]
    recs.append({"id": "minified/textwrap.py", "text": minify((STDLIB / "textwrap.py").read_text())})
    recs.append({"id": "secret/bisect.py", "text": SECRET_LINE + (STDLIB / "bisect.py").read_text()})
    return recs


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def _config(raw: Path, out: Path, *overrides: str) -> PipelineConfig:
    return load_pipeline_config(
        REPO / "configs" / "data_tiny.yaml",
        [f"input.paths=[{raw}]", f"output_dir={out}", "progress=false", "exact_dedup.num_partitions=2",
         "input.keep_fields=[id]", *overrides],
    )  # fmt: skip


def _outputs(out: Path) -> tuple[dict, dict]:
    from data_pipeline.groundtruth import read_outputs

    kept, rejected = read_outputs(out)
    by_name = lambda rows: {r["metadata"]["source_id"]: r for r in rows.values()}  # noqa: E731
    return by_name(kept), by_name(rejected)


@pytest.fixture(scope="module")
def code_run(tmp_path_factory, ray_local) -> dict:
    """The stdlib as a `code` source beside a small prose source, partitioned by language."""
    from data_pipeline.executor import run_pipeline

    root = tmp_path_factory.mktemp("profiles")
    raw = root / "raw"
    _write_jsonl(raw / "code" / "stdlib.jsonl", _records(_stdlib_files()))
    from data_pipeline.corpus import base_texts

    prose = [t for _, t in base_texts()][:40]
    _write_jsonl(raw / "web" / "pages.jsonl", [{"id": f"en-{i}", "text": t} for i, t in enumerate(prose)]
                 + [{"id": "de-0", "text": GERMAN}])  # fmt: skip
    out = root / "out"
    stats = run_pipeline(
        _config(
            raw,
            out,
            "source_profiles={code: code}",
            "partition_by_language=true",
            "language.languages=[en,de]",
        )
    )
    kept, rejected = _outputs(out)
    return {"root": root, "raw": raw, "out": out, "stats": stats, "kept": kept, "rejected": rejected}


@pytest.mark.slow
def test_code_profile_keeps_most_stdlib_files_and_names_what_it_drops(code_run):
    kept, rejected = code_run["kept"], code_run["rejected"]
    code_kept = [k for k, r in kept.items() if r["source"] == "code"]
    code_rej = {k: r for k, r in rejected.items() if r["source"] == "code"}
    total = len(code_kept) + len(code_rej)
    assert total == len(_stdlib_files()) + 2
    # outside encodings/ (mostly generated codec tables), nearly everything is hand-written code
    hand = [k for k in [*code_kept, *code_rej] if not k.startswith(("encodings/", "minified/"))]
    assert sum(k in code_kept for k in hand) / len(hand) >= 0.9, Counter(
        r["reason"] for r in code_rej.values()
    )
    plain = [k for k in code_kept if "/" not in k]  # top-level modules: hand-written code
    assert len(plain) / len(list(STDLIB.glob("*.py"))) >= 0.9
    # generated, data-only and minified files, each with its reason and stage
    expected = {
        "encodings/cp1252.py": "code_autogenerated",  # "generated from ... with gencodec.py"
        "pydoc_data/topics.py": "code_autogenerated",  # "Autogenerated by Sphinx"
        "html/entities.py": "code_data_only",
        "minified/textwrap.py": "code_max_line_length",
    }
    for name, reason in expected.items():
        assert (code_rej[name]["stage"], code_rej[name]["reason"]) == ("code_quality", reason), name
    codecs = [f"encodings/{p.name}" for p in STDLIB.glob("encodings/cp*.py")]
    assert sum(c in code_rej for c in codecs) / len(codecs) >= 0.9  # the codec tables go
    assert {r["stage"] for r in code_rej.values()} == {"code_quality"}
    # a licence header stays; secrets are scrubbed, a number that looks like a phone is not
    assert kept["logging/__init__.py"]["text"].startswith("# Copyright 2001-")
    secret = kept["secret/bisect.py"]["text"]
    assert AWS_KEY not in secret and "<SECRET>" in secret and "TIMEOUT_MS = 4155552671" in secret
    assert kept["bisect.py"]["metadata"]["profile"] == "code"
    # the prose side is judged by the prose rules, language stage included
    assert "de-0" in kept and kept["de-0"]["metadata"]["language"] == "de"
    assert kept["en-0"]["metadata"]["language"] == "en" and "profile" not in kept["en-0"]["metadata"]


def test_the_prose_rules_reject_nearly_all_code():
    """What the issue measured: code through the prose chain is almost all rejected."""
    cfg = _config(Path("unused"), Path("unused"))
    stages = [st.build() for name, st in cfg.stage_configs("prose") if name in ("language", "quality")]
    files = sorted(STDLIB.glob("*.py"))[:60]
    kept = 0
    for f in files:
        doc: Doc | Reject = Doc(str(f), f.read_text(encoding="utf-8"), "code")
        for stage in stages:
            doc = stage.process(doc)
            if isinstance(doc, Reject):
                break
        kept += isinstance(doc, Doc)
    assert kept / len(files) <= 0.1


@pytest.mark.slow
def test_partitioned_by_language_through_minhash_and_split(code_run, tmp_path):
    out, stats = code_run["out"], code_run["stats"]
    shards = {e["path"]: e for e in read_manifest(out)["shards"]}
    assert list(shards) == [  # packed per folder, folders sorted, parts numbered across them
        "lang=code/part-00000.parquet",
        "lang=de/part-00001.parquet",
        "lang=en/part-00002.parquet",
    ]
    assert shards["lang=de/part-00001.parquet"]["rows"] == 1
    assert [(s["input"], s["rows"]) for s in shards["lang=de/part-00001.parquet"]["sources"]] == [
        ("web/pages.jsonl", [0, 1])
    ]
    assert sum(e["rows"] for e in shards.values()) == stats["num_kept"] == len(code_run["kept"])
    assert [p.relative_to(out / "shards").as_posix() for p in list_shards(out)] == list(shards)
    assert stats["num_shards"] == 3
    for rel, e in shards.items():  # every row of a language folder has that language
        import pyarrow.parquet as pq

        lang = rel.split("/")[0].removeprefix("lang=")
        metas = [json.loads(m) for m in pq.read_table(out / "shards" / rel).column("metadata").to_pylist()]
        assert len(metas) == e["rows"] and {m.get("language") or m.get("profile") for m in metas} == {lang}
    # MinHash and the held-out split read the folders and keep them
    from data_pipeline.minhash.dedup import load_minhash_config, run_minhash_dedup
    from data_pipeline.split import split_heldout

    mh = tmp_path / "minhash"
    mstats = run_minhash_dedup(
        load_minhash_config(
            None, [f"input_dir={out}", f"output_dir={mh}", "progress=false", "ray.num_cpus=2"]
        )
    )
    assert mstats["num_in"] == stats["num_kept"]
    assert {e["path"] for e in read_manifest(mh)["shards"]} == set(shards)
    split_heldout(mh, tmp_path / "split", 0.1, 1, 0)
    sides = [read_manifest(tmp_path / "split" / side)["shards"] for side in ("train", "heldout")]
    assert {e["path"].split("/")[0] for side in sides for e in side} == {"lang=code", "lang=de", "lang=en"}
    # a rerun without partitioning drops the language folders: the documents packed flat
    from data_pipeline.executor import run_pipeline

    flat = run_pipeline(
        _config(code_run["raw"], out, "source_profiles={code: code}", "language.languages=[en,de]")
    )
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["part-00000.parquet"]
    assert flat["num_kept"] == stats["num_kept"]


@pytest.mark.slow
def test_summary_shows_profiles_rules_per_language_and_examples(code_run):
    stats = code_run["stats"]
    assert stats["source_profiles"] == {"code": "code"}
    by_lang = stats["rejected_by_language"]["code_quality"]
    assert (
        by_lang["code/code_autogenerated"] == stats["stages"]["code_quality"]["reasons"]["code_autogenerated"]
    )
    assert all(k.startswith("code/") for k in by_lang)
    assert stats["stages"]["language"]["in"] == 41  # the prose source only
    examples = stats["examples"]["code_quality/code_data_only"]
    assert examples and {e["language"] for e in examples} == {"code"} and len(examples) <= 3
    summary = (code_run["out"] / "summary.md").read_text()
    assert "## Source profiles" in summary and "| `code` | code |" in summary
    assert (
        "| code_quality | code | code_autogenerated |" in summary
        and "- [code] `code/stdlib.jsonl:" in summary
    )


def test_examples_are_kept_per_language():
    from data_pipeline.tasks import RejectTally

    tally = RejectTally(num_examples=2)
    for i in range(5):
        for lang in ("en", "de"):
            tally.reject("quality", Doc(f"{lang}-{i}", "x", "web", metadata={"language": lang}), Reject("r"))
    ex = tally.examples["quality/r"]
    assert [e["id"] for e in ex] == ["en-0", "de-0", "en-1", "de-1"]


def test_docs_profile_keeps_documentation_the_prose_rules_drop():
    files = []
    for f in sorted(Path("/usr/share/doc").rglob("README*")):
        if f.is_file() and not f.is_symlink():
            try:
                data = f.read_bytes()
                text = (gzip.decompress(data) if f.suffix == ".gz" else data).decode("utf-8")
            except (OSError, UnicodeDecodeError, EOFError):
                continue
            if len(text) > 500:
                files.append(text[:50_000])
    if len(files) < 30:
        pytest.skip(f"only {len(files)} README files under /usr/share/doc on this machine")
    cfg = _config(Path("unused"), Path("unused"), "source_profiles={docs: docs}")
    kept = {}
    for profile in ("prose", "docs"):
        stages = [
            st.build()
            for name, st in cfg.stage_configs(profile)
            if name in ("normalize", "language", "quality")
        ]
        n = 0
        for text in files:
            doc: Doc | Reject = Doc("x", text, "docs")
            for stage in stages:
                doc = stage.process(doc)
                if isinstance(doc, Reject):
                    break
            n += isinstance(doc, Doc)
        kept[profile] = n
    assert kept["docs"] >= 2 * kept["prose"] and kept["docs"] >= 0.4 * len(files), (kept, len(files))


def test_profile_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"source_profiles\.code.*a profile: code, docs, prose"):
        from_dict(PipelineConfig, {"source_profiles": {"code": "kode"}})
    with pytest.raises(ConfigError, match=r"profiles\.code\.minhash: a profile sets stages only"):
        from_dict(
            PipelineConfig, {"source_profiles": {"code": "code"}, "profiles": {"code": {"minhash": {}}}}
        )
    with pytest.raises(ConfigError, match=r"profiles\.code: code_quality\.max_line_length=-1"):
        from_dict(PipelineConfig, {"profiles": {"code": {"code_quality": {"max_line_length": -1}}}})
    with pytest.raises(ConfigError, match=r"only_stages"):
        from_dict(PipelineConfig, {"only_stages": ["minhash"]})
    with pytest.raises(ConfigError, match=r"code_quality\.min_alnum_fraction"):
        CodeQualityConfig(min_alnum_fraction=1.5)


def test_profiles_by_name_glob_and_user_overrides():
    cfg = from_dict(PipelineConfig, {
        "source_profiles": {"github-*": "code", "manuals": "docs", "wiki": "prose"},
        "profiles": {"code": {"code_quality": {"max_line_length": 2000}}, "forum": {"toxicity": {"threshold": 0.9}}},
    })  # fmt: skip
    assert [cfg.profile_of(s) for s in ("github-python", "manuals", "wiki", "web")] == [
        "code",
        "docs",
        "prose",
        "prose",
    ]
    assert (
        cfg.profile("code").code_quality.max_line_length == 2000 and cfg.profile("code").code_quality.enabled
    )
    assert cfg.code_quality.max_line_length == 1000 and not cfg.code_quality.enabled
    assert cfg.profile("forum").toxicity.threshold == 0.9 and cfg.used_profiles() == ["prose", "code", "docs"]
    assert [n for n, _ in cfg.stage_configs("code")] == ["normalize", "code_quality", "pii"]
    assert [n for n, _ in cfg.stage_configs("prose")] == [
        "normalize",
        "language",
        "quality",
        "pii",
        "toxicity",
    ]
    only = from_dict(PipelineConfig, {"source_profiles": {"c": "code"}, "only_stages": ["quality"]})
    assert [n for n, _ in only.stage_configs("prose")] == ["quality"] and only.stage_configs("code") == []
