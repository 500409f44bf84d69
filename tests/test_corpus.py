"""Tests for the tiny-corpus generator: byte-for-byte determinism, ids that point at their records,
and planted ground truth that holds against datatrove's default filters and py3langid."""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import json
import re
import unicodedata
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import pytest

from data_pipeline import corpus
from data_pipeline.corpus import generate_corpus, jaccard, word_shingles
from data_pipeline.corpus import pii as corpus_pii
from data_pipeline.stages.quality import stage_reason

NUM_BASE = 600
EXPECTED_COUNTS = {
    "bad_text_type": 2,
    "base": NUM_BASE
    - corpus.NUM_PII
    - corpus.NUM_PII_HARD_NEGATIVE
    - corpus.NUM_MOJIBAKE
    - corpus.NUM_CLEAN_TRICKY,
    "clean_tricky": 10,
    "code": 13,  # stdlib modules the code profile keeps
    "code_rejected": 3,  # a generated codec table, a data-only module, a minified module
    "empty": 5,
    "exact_dup": 20,
    "exact_dup_normalized": 10,
    "giant": 2,
    "invalid_utf8": 5,
    "junk": 60,
    "malformed_json": 5,
    "missing_text": 3,
    "mojibake": 5,
    "near_dup": 28,
    "non_english": 30,
    "pii": 28,
    "pii_hard_negative": 15,
    "toxic": 30,
}
EXACT = {"stage": "exact_dedup", "reason": "exact_duplicate"}
FIXED_FATES = {
    "toxic": {"stage": "toxicity", "reason": "toxic"},
    "non_english": {"stage": "language", "reason": "wrong_language"},
    "exact_dup": EXACT,
    "exact_dup_normalized": EXACT,
    "invalid_utf8": {"stage": "read", "reason": "invalid_utf8"},
    "malformed_json": {"stage": "read", "reason": "malformed_json"},
    "missing_text": {"stage": "read", "reason": "missing_text"},
    "bad_text_type": {"stage": "read", "reason": "bad_text_type"},
    "empty": {"stage": "normalize", "reason": "empty"},
    "giant": {"stage": "normalize", "reason": "too_long"},
}


class Page(NamedTuple):  # a WARC response record
    uri: str
    content_type: str
    html: bytes


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        out[name] = tmp_path_factory.mktemp(f"corpus_{name}")
        generate_corpus(out[name], seed=seed, num_base_docs=NUM_BASE)
    return out


@pytest.fixture(scope="module")
def truth(dirs: dict[str, Path]) -> list[dict]:
    return [json.loads(line) for line in (dirs["a"] / "truth.jsonl").read_text(encoding="utf-8").splitlines()]


def _jsonl_lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    elif path.name.endswith(".zst"):
        import zstandard

        data = zstandard.ZstdDecompressor().decompress(data)
    assert data.endswith(b"\n"), path
    return data.split(b"\n")[:-1]


@pytest.fixture(scope="module")
def records(dirs: dict[str, Path]) -> dict[str, object]:
    """Pipeline id -> parsed record (dict), raw bytes (unparseable line), or text (.txt / HTML)."""
    import pyarrow.parquet as pq
    from warcio.archiveiterator import ArchiveIterator

    raw = dirs["a"] / "raw"
    out: dict[str, object] = {}
    for path in [*sorted((raw / "web").iterdir()), raw / "code" / "part-00000.jsonl"]:
        for line_no, line in enumerate(_jsonl_lines(path), start=1):
            key = f"{path.parent.name}/{path.name}:{line_no}"
            try:
                out[key] = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                out[key] = line
    for row, rec in enumerate(pq.read_table(raw / "books" / "part-00000.parquet").to_pylist()):
        out[f"books/part-00000.parquet#{row}"] = rec
    for path in sorted((raw / "notes").iterdir()):
        out[f"notes/{path.name}"] = path.read_text(encoding="utf-8")
    with open(raw / "crawl" / "crawl-00000.warc.gz", "rb") as fh:
        responses = (r for r in ArchiveIterator(fh) if r.rec_type == "response")
        for k, rec in enumerate(responses):
            uri = rec.rec_headers.get_header("WARC-Target-URI")
            content_type = rec.http_headers.get_header("Content-Type")
            out[f"crawl/crawl-00000.warc.gz#{k}"] = Page(uri, content_type, rec.content_stream().read())
    return out


def _text(records: dict[str, object], doc_id: str) -> str:
    rec = records[doc_id]
    text = rec if isinstance(rec, str) else rec["text"]
    assert isinstance(text, str), (doc_id, rec)
    return text


def _by_category(truth: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in truth:
        out.setdefault(row["category"], []).append(row)
    return out


def test_word_shingles_and_jaccard() -> None:
    assert word_shingles("The quick, brown fox jumps over!") == {
        "the quick brown fox jumps",
        "quick brown fox jumps over",
    }
    assert word_shingles("Too short.") == {"too short"}
    assert word_shingles("") == set()
    a, b = word_shingles("one two three four five six"), word_shingles("one two three four five seven")
    assert jaccard(a, a) == 1.0 and jaccard(a, b) == pytest.approx(1 / 3) and jaccard(a, set()) == 0.0


def test_same_seed_gives_identical_files_other_seed_differs(dirs: dict[str, Path]) -> None:
    def hashes(root: Path) -> dict[str, str]:
        return {
            p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    a, b, c = hashes(dirs["a"]), hashes(dirs["b"]), hashes(dirs["c"])
    assert (
        len(a) == 2 + 8 + 1 + corpus.NUM_NOTES + 1 + 1
    )  # truth + corpus.json, web, books, notes, crawl, code
    assert a == b
    assert a.keys() == c.keys()
    differing = sorted(k for k in a if a[k] != c[k])
    assert "truth.jsonl" in differing and "raw/web/part-00000.jsonl" in differing, differing


def test_summary_matches_truth_and_files(dirs: dict[str, Path], truth: list[dict]) -> None:
    summary = json.loads((dirs["a"] / "corpus.json").read_text())
    assert summary["seed"] == 0 and summary["num_base_docs"] == NUM_BASE
    assert summary["counts"] == EXPECTED_COUNTS == dict(sorted(Counter(r["category"] for r in truth).items()))
    assert summary["num_documents"] == len(truth) == sum(EXPECTED_COUNTS.values())
    for rel, info in summary["files"].items():
        path = dirs["a"] / rel
        assert info == {
            "bytes": path.stat().st_size,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }, rel
    raw_bytes = sum(p.stat().st_size for p in (dirs["a"] / "raw").rglob("*") if p.is_file())
    assert raw_bytes < 6_000_000, raw_bytes


def test_truth_ids_are_unique_and_point_at_their_records(
    truth: list[dict], records: dict[str, object]
) -> None:
    ids = [r["id"] for r in truth]
    assert len(ids) == len(set(ids))
    assert set(ids) == set(records), set(ids) ^ set(records)
    source_ids = [r["source_id"] for r in truth if r["source_id"] is not None]
    assert len(source_ids) == len(set(source_ids))
    for row in truth:
        rec = records[row["id"]]
        if isinstance(rec, bytes):  # unreadable line: the id is still in the raw bytes
            assert row["category"] in ("invalid_utf8", "malformed_json"), row
            assert f'"{row["source_id"]}"'.encode() in rec or f"'{row['source_id']}'".encode() in rec, row
        elif isinstance(rec, dict):
            assert rec["id"] == row["source_id"], row
            assert rec["source"] == row["source"], row
        elif isinstance(rec, str):
            assert row["id"].startswith("notes/") and row["source_id"] is None and rec, row
        else:
            assert row["html"] is True and rec.uri == row["url"], row
            assert rec.content_type == "text/html; charset=utf-8" and b"<article>\n<h1>" in rec.html, row


def test_expected_fates(truth: list[dict]) -> None:
    for row in truth:
        if row["category"] in FIXED_FATES:
            assert row["expect"] == FIXED_FATES[row["category"]], row
        elif row["category"] == "junk":
            assert row["expect"]["stage"] == "quality" and row["expect"]["reason"], row
        elif row["category"] == "code_rejected":
            assert row["expect"]["stage"] == "code_quality" and row["expect"]["reason"].startswith("code_"), (
                row
            )
        else:
            assert row["expect"] == "kept", row
    junk_kinds = Counter(r["junk_kind"] for r in truth if r["category"] == "junk")
    assert junk_kinds == {kind: corpus.NUM_JUNK_PER_KIND for kind in corpus.JUNK_KINDS}
    sources = Counter(r["source"] for r in truth if r["category"] == "base")
    assert sources["books"] == corpus.NUM_BOOKS and sources["notes"] == corpus.NUM_NOTES
    assert sources["crawl"] == corpus.NUM_HTML


def test_base_documents_are_distinct(truth: list[dict], records: dict[str, object]) -> None:
    shingles = {
        r["id"]: word_shingles(_text(records, r["id"]))
        for r in truth
        if r["category"] == "base" and "html" not in r
    }
    assert len(shingles) == EXPECTED_COUNTS["base"] - corpus.NUM_HTML
    ids = list(shingles)
    worst = max(jaccard(shingles[a], shingles[b]) for a, b in itertools.combinations(ids, 2))
    assert worst < 0.1, worst


def test_base_texts_are_the_corpus_base_documents(truth: list[dict], records: dict[str, object]) -> None:
    texts = corpus.base_texts()
    assert texts is corpus.base_texts()  # computed once per process
    assert len(texts) >= corpus.MIN_BASE_DOCS, len(texts)
    for module, text in texts:
        num_sentences = len(re.findall(r"[.!?](?:\s|$)", text))
        assert module and len(text.split()) >= 80 and num_sentences >= 6, (module, text)
    unedited = [r["id"] for r in truth if r["category"] == "base" and r["source"] in ("books", "notes")]
    assert len(unedited) == corpus.NUM_BOOKS + corpus.NUM_NOTES
    assert {_text(records, i) for i in unedited} <= {t for _, t in texts}


def test_exact_duplicates(truth: list[dict], records: dict[str, object]) -> None:
    by_id = {r["id"]: r for r in truth}
    shard = lambda doc_id: doc_id.split(":")[0]  # noqa: E731 - "web/part-00003.jsonl"
    variants = Counter()
    for row in truth:
        if row["category"] not in ("exact_dup", "exact_dup_normalized"):
            continue
        original = by_id[row["dup_of"]]
        assert original["category"] == "base" and original["source"] == "web", row
        assert shard(row["id"]) > shard(original["id"]), row
        copy, text = _text(records, row["id"]), _text(records, original["id"])
        if row["category"] == "exact_dup":
            assert copy == text
            continue
        variants[row["variant"]] += 1
        normalized = "\n".join(line.rstrip() for line in unicodedata.normalize("NFC", copy).split("\n"))
        assert copy != text and normalized == text, row
        if row["variant"] == "nfd":
            assert original["accented"] is True and any(ord(ch) > 127 for ch in text)
    assert variants == {"nfd": 5, "trailing_whitespace": 5}


def test_near_duplicates(truth: list[dict], records: dict[str, object]) -> None:
    by_id = {r["id"]: r for r in truth}
    rows = [r for r in truth if r["category"] == "near_dup"]
    for row in rows:
        assert by_id[row["near_dup_of"]]["category"] == "base", row
        measured = jaccard(
            word_shingles(_text(records, row["id"])), word_shingles(_text(records, row["near_dup_of"]))
        )
        assert measured == pytest.approx(row["jaccard"], abs=1e-12), row
        assert abs(measured - row["target_jaccard"]) <= 0.03, row
    assert sorted({r["target_jaccard"] for r in rows}) == list(corpus.JACCARD_LEVELS)
    assert Counter(r["edit_kind"] for r in rows) == {
        "insert": 7,
        "delete": 7,
        "substitute": 7,
        "boilerplate": 4,
        "reorder": 3,
    }
    assert len({r["near_dup_of"] for r in rows}) == len(rows)


def test_pii_values_and_hard_negatives_are_verbatim(truth: list[dict], records: dict[str, object]) -> None:
    per_type: Counter[str] = Counter()
    negatives: set[str] = set()
    for row in truth:
        if row["category"] not in ("pii", "pii_hard_negative"):
            continue
        text = _text(records, row["id"])
        assert row["pii"] == dict(Counter(kind for kind, _ in row["pii_values"])), row
        for kind, value in row["pii_values"]:
            assert value in text, (kind, value)
            per_type[kind] += 1
            digits = "".join(ch for ch in value if ch.isdigit())
            if kind == "credit_card":
                assert corpus_pii.luhn_ok(digits), value
            if kind == "iban":
                assert corpus_pii.iban_ok(value.replace(" ", "")), value
        for value in row["hard_negatives"]:
            assert value in text, value
            negatives.add(value)
        assert row["category"] == "pii" or (not row["pii"] and row["hard_negatives"]), row
    assert set(per_type) == set(corpus.PII_TYPES) and min(per_type.values()) >= 5, per_type
    assert len(negatives) == len(corpus_pii.HARD_NEGATIVES)
    phones = [v for r in truth if r["category"] == "pii" for k, v in r["pii_values"] if k == "phone"]
    assert any(v.startswith("(") for v in phones) and any(v.startswith("+1 ") for v in phones)
    assert any(v.startswith("+44") for v in phones)
    secrets = " ".join(
        v for r in truth if r["category"] == "pii" for k, v in r["pii_values"] if k == "secret"
    )
    for marker in ("AKIA", "ghp_", "xoxb-", "AIza", "-----BEGIN RSA PRIVATE KEY-----"):
        assert marker in secrets, marker


def test_unreadable_empty_giant_and_mojibake(truth: list[dict], records: dict[str, object]) -> None:
    import ftfy

    cats = _by_category(truth)
    plain_shard = lambda doc_id: doc_id.split(":")[0].endswith(".jsonl")  # noqa: E731
    for row in cats["invalid_utf8"]:
        line = records[row["id"]]
        assert isinstance(line, bytes) and plain_shard(row["id"])
        with pytest.raises(UnicodeDecodeError):
            line.decode("utf-8")
    for row in cats["malformed_json"]:
        line = records[row["id"]]
        assert isinstance(line, bytes) and plain_shard(row["id"])
        with pytest.raises(json.JSONDecodeError):
            json.loads(line.decode("utf-8"))
    for row in cats["missing_text"]:
        assert "text" not in records[row["id"]] and plain_shard(row["id"])
    for row in cats["bad_text_type"]:
        assert not isinstance(records[row["id"]]["text"], str) and plain_shard(row["id"])
    for row in cats["empty"]:
        text = _text(records, row["id"])
        assert not "".join(ch for ch in text if unicodedata.category(ch)[0] != "C" and not ch.isspace())
    giants = cats["giant"]
    assert len({r["id"].split(":")[0] for r in giants}) == 1
    assert all(len(_text(records, r["id"])) == corpus.GIANT_CHARS for r in giants)
    for row in cats["mojibake"]:
        text = _text(records, row["id"])
        assert row["fixed_text_contains"] not in text and row["fixed_text_contains"] in ftfy.fix_text(text)


def test_fates_hold_against_default_filters_and_langid(truth: list[dict], records: dict[str, object]) -> None:
    """Independent of the generator's own checks: fresh datatrove filters with defaults."""
    import ftfy
    from datatrove.data import Document
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    filters = {
        "gopher_quality": GopherQualityFilter(),
        "gopher_repetition": GopherRepetitionFilter(),
        "c4": C4QualityFilter(),
        "fineweb": FineWebQualityFilter(),
    }
    langid = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)

    def first_failure(text: str) -> tuple[str, str] | None:
        for name, f in filters.items():
            doc = Document(text=text, id="t")
            verdict = f.filter(doc)
            if verdict is not True:
                return name, verdict[1]
            if doc.text != text:
                return name, "modified"
        return None

    for row in truth:
        if row["category"] in FIXED_FATES and row["category"] not in ("toxic", "non_english"):
            continue
        if row.get("html") or row["source"] == "code":  # code: the code profile, not the prose rules
            continue
        text = _text(records, row["id"])
        if row["category"] == "mojibake":
            text = ftfy.fix_text(text)
        lang, prob = langid.classify(text)
        if row["category"] == "non_english":
            assert lang == row["lang"] and prob >= 0.65, (row, lang, prob)
            continue
        assert lang == "en" and prob >= 0.65, (row, lang, prob)
        failure = first_failure(text)
        if row["category"] == "junk":
            assert failure is not None, row
            name, reason = failure
            assert (name, stage_reason(name, reason)) == (row["quality_filter"], row["expect"]["reason"]), row
        else:  # kept documents and toxic ones (which must reach the toxicity stage) pass unchanged
            assert failure is None, (row, failure)


def test_refuses_to_overwrite_and_too_few_base_docs(dirs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(FileExistsError, match="overwrite=True"):
        generate_corpus(dirs["a"])
    with pytest.raises(ValueError, match="num_base_docs=10"):
        generate_corpus(tmp_path, num_base_docs=10)
    assert not (tmp_path / "raw").exists()


def test_warc_records_are_deterministic_html(dirs: dict[str, Path]) -> None:
    from warcio.archiveiterator import ArchiveIterator

    data = (dirs["a"] / "raw" / "crawl" / "crawl-00000.warc.gz").read_bytes()
    types = [(r.rec_type, r.rec_headers.get_header("WARC-Date")) for r in ArchiveIterator(io.BytesIO(data))]
    assert types[0] == ("warcinfo", "2024-01-15T12:00:00Z")
    assert [t for t, _ in types[1:]] == ["response"] * corpus.NUM_HTML
