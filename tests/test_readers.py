"""Readers: every format, positional ids, malformed records rejected with file:line, bad files named."""

from __future__ import annotations

import gzip
import io
import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from data_pipeline.readers import InputConfig, InputError, discover_inputs, read_unit, scan_inputs

LINES = [
    json.dumps({"id": "a", "text": "first doc", "url": "https://x.org/a"}).encode(),
    b"",  # blank line: not a record
    json.dumps({"id": "b", "text": "second doc", "source": "wiki"}).encode(),
    b'{"id": "c", "text": "truncated',
    b'{"id": "d", "text": "bad \xff\xfe bytes"}',
    json.dumps({"id": "e", "body": "no text field"}).encode(),
    json.dumps({"id": "f", "text": 42}).encode(),
    json.dumps(["not", "an", "object"]).encode(),
]


def _read_all(path_spec, **kw):
    cfg = InputConfig(paths=[str(path_spec)], **kw)
    out = []
    for unit in discover_inputs(cfg):
        out += [
            (d.id, d.text, d.source, d.url, d.metadata, r.reason if r else None)
            for d, r in read_unit(unit, cfg)
        ]
    return out


@pytest.mark.parametrize("suffix", ["jsonl", "jsonl.gz", "jsonl.zst"])
def test_jsonl_formats_and_malformed_lines(tmp_path, suffix):
    raw = b"\n".join(LINES) + b"\n"
    d = tmp_path / "web"
    d.mkdir()
    path = d / f"part.{suffix}"
    if suffix.endswith("gz"):
        raw = gzip.compress(raw)
    elif suffix.endswith("zst"):
        raw = zstandard.ZstdCompressor().compress(raw)
    path.write_bytes(raw)
    rows = _read_all(tmp_path)
    assert [(r[0], r[5]) for r in rows] == [
        (f"web/part.{suffix}:1", None),
        (f"web/part.{suffix}:3", None),
        (f"web/part.{suffix}:4", "malformed_json"),
        (f"web/part.{suffix}:5", "invalid_utf8"),
        (f"web/part.{suffix}:6", "missing_text"),
        (f"web/part.{suffix}:7", "bad_text_type"),
        (f"web/part.{suffix}:8", "malformed_record"),
    ]
    first, second = rows[0], rows[1]
    assert first[1:5] == ("first doc", "web", "https://x.org/a", {"source_id": "a"})
    assert second[2] == "wiki"  # the record's own source field wins over the folder name


def test_override_source_and_keep_fields(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "t", "lang": "en", "score": 3}) + "\n")
    rows = _read_all(tmp_path / "a.jsonl", source="mine", keep_fields=["lang", "score"])
    assert rows == [("a.jsonl:1", "t", "mine", None, {"lang": "en", "score": 3}, None)]


def test_parquet_rows_and_missing_column(tmp_path):
    pq.write_table(
        pa.table({"id": ["x", "y"], "text": ["one", None], "url": [None, "u"]}), tmp_path / "p.parquet"
    )
    rows = _read_all(tmp_path / "p.parquet")
    assert [(r[0], r[5]) for r in rows] == [("p.parquet#0", None), ("p.parquet#1", "missing_text")]
    pq.write_table(pa.table({"content": ["one"]}), tmp_path / "q.parquet")
    with pytest.raises(InputError, match=r"q\.parquet: no column 'text'.*\['content'\]"):
        _read_all(tmp_path / "q.parquet")


def test_text_dir_one_doc_per_file(tmp_path):
    d = tmp_path / "notes"
    d.mkdir()
    (d / "b.txt").write_text("bee")
    (d / "a.txt").write_text("ay")
    (d / "c.txt").write_bytes(b"bad \xc3\x28 utf8")
    rows = _read_all(tmp_path)
    assert [(r[0], r[1], r[2], r[5]) for r in rows] == [
        ("notes/a.txt", "ay", "notes", None),
        ("notes/b.txt", "bee", "notes", None),
        ("notes/c.txt", "bad \ufffd( utf8", "notes", "invalid_utf8"),
    ]


def _warc(path, pages):
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=True)
        for url, ctype, body in pages:
            headers = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.1")
            w.write_record(
                w.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=headers)
            )


def test_warc_html_extraction(tmp_path):
    para = "The interpreter reads the whole file before it runs the first statement of the program. " * 3
    html = (
        f"<html><body><nav>Home | About | Login</nav><article><p>{para}</p><p>{para}</p></article>"
        "<footer>Copyright 2024 All rights reserved</footer></body></html>"
    )
    _warc(
        tmp_path / "c.warc.gz",
        [
            ("https://e.org/1", "text/html; charset=utf-8", html.encode()),
            ("https://e.org/img", "image/png", b"\x89PNG"),
            ("https://e.org/2", "text/html", b"<html><body></body></html>"),
        ],
    )
    rows = _read_all(tmp_path / "c.warc.gz")
    assert [(r[0], r[3], r[5]) for r in rows] == [
        ("c.warc.gz#0", "https://e.org/1", None),
        ("c.warc.gz#1", "https://e.org/img", "not_html"),
        ("c.warc.gz#2", "https://e.org/2", "no_extractable_text"),
    ]
    assert "interpreter reads the whole file" in rows[0][1]
    assert "Login" not in rows[0][1] and "All rights reserved" not in rows[0][1]


def test_truncated_gzip_names_the_file(tmp_path):
    data = gzip.compress(b"\n".join(json.dumps({"text": f"doc {i}" * 50}).encode() for i in range(2000)))
    (tmp_path / "broken.jsonl.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cannot read .*broken\.jsonl\.gz"):
        _read_all(tmp_path / "broken.jsonl.gz")


def test_missing_inputs_are_clear(tmp_path):
    with pytest.raises(InputError, match="matches no file"):
        discover_inputs(InputConfig(paths=[str(tmp_path / "nothing*.jsonl")]))
    (tmp_path / "readme.md").write_text("x")
    with pytest.raises(InputError, match="no readable input files"):
        discover_inputs(InputConfig(paths=[str(tmp_path)]))


def test_units_sorted_and_named(tmp_path):
    for rel in ["b/x.jsonl", "a/y.jsonl.gz", "a/z.parquet", "t/1.txt", "t/2.txt"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    units = discover_inputs(InputConfig(paths=[str(tmp_path)]))
    assert [(u.relpath, u.format, u.name) for u in units] == [
        ("a/y.jsonl.gz", "jsonl", "a__y.jsonl.gz"),
        ("a/z.parquet", "parquet", "a__z.parquet"),
        ("b/x.jsonl", "jsonl", "b__x.jsonl"),
        ("t", "text", "t__txt"),
    ]


def test_missing_text_field_is_warned_once_per_file_with_its_place(tmp_path, caplog):
    d = tmp_path / "web"
    d.mkdir()
    recs = [{"id": "a", "text": "fine"}, {"id": "b", "body": "x"}, {"id": "c", "body": "y"}]
    for name in ("one.jsonl", "two.jsonl"):
        (d / name).write_text("".join(json.dumps(r) + "\n" for r in recs))
    with caplog.at_level(logging.WARNING, logger="data_pipeline.readers"):
        rows = _read_all(tmp_path)
    assert [r[5] for r in rows].count("missing_text") == 4
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2, warnings  # once per file, not once per record
    for name, msg in zip(("one.jsonl", "two.jsonl"), warnings):
        assert msg.startswith(f"{d / name}:2: record has no 'text' field"), msg
        assert "fields present: ['body', 'id']" in msg, msg


def test_null_text_in_parquet_is_warned_with_its_row(tmp_path, caplog):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"text": ["ok", None, None], "tag": ["x", "y", "z"]}), path)
    with caplog.at_level(logging.WARNING, logger="data_pipeline.readers"):
        rows = _read_all(path)
    assert [r[5] for r in rows] == [None, "missing_text", "missing_text"]
    [msg] = [r.getMessage() for r in caplog.records]
    assert msg.startswith(f"{path} row 1: record has a null 'text' field"), msg
    assert "fields present: ['text']" in msg, msg


def test_skipped_files_are_listed_with_why(tmp_path):
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "a.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    (tmp_path / "web" / "README.md").write_text("notes about the crawl\n")
    (tmp_path / "web" / "blob.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (tmp_path / "web" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    scan = scan_inputs(InputConfig(paths=[str(tmp_path)]))
    assert [u.relpath for u in scan.units] == ["web/a.jsonl"]
    reasons = {s.path: s.reason for s in scan.skipped}
    assert sorted(reasons) == sorted(
        str(tmp_path / "web" / n) for n in (".DS_Store", "README.md", "blob.bin")
    )
    assert reasons[str(tmp_path / "web" / ".DS_Store")] == "hidden file"
    assert reasons[str(tmp_path / "web" / "blob.bin")].startswith("binary file (suffix '.bin'")
    assert reasons[str(tmp_path / "web" / "README.md")].startswith("unknown format (suffix '.md'")
    with pytest.raises(
        InputError, match=r"no readable input files.*skipped 1: .*README\.md \(unknown format"
    ):
        (tmp_path / "web" / "a.jsonl").unlink()
        (tmp_path / "web" / "blob.bin").unlink()
        (tmp_path / "web" / ".DS_Store").unlink()
        discover_inputs(InputConfig(paths=[str(tmp_path)]))


def test_parquet_input_shard_has_one_extension(tmp_path):
    (tmp_path / "books").mkdir()
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "books" / "part-00000.parquet")
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "part-00000.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    units = discover_inputs(InputConfig(paths=[str(tmp_path)]))
    assert [(u.name, u.stem) for u in units] == [
        ("books__part-00000.parquet", "books__part-00000"),  # rejects/books__part-00000.parquet
        ("web__part-00000.jsonl", "web__part-00000.jsonl"),
    ]
    rows = _read_all(tmp_path)
    assert [r[0] for r in rows] == ["books/part-00000.parquet#0", "web/part-00000.jsonl:1"]  # ids unchanged
