"""WARC files split into work units at record starts (`data_pipeline.units`): each part starts a
record (a gzip member of its own in a .warc.gz), knows the responses before it, and gives the ids,
documents and rejects that reading the whole file gives."""

from __future__ import annotations

import gzip
import io

import pyarrow.parquet as pq
import pytest

from data_pipeline.executor import run_pipeline
from data_pipeline.readers import InputError, read_unit
from pretrain.core.files import read_json
from pretrain.core.shards import read_manifest
from tests.pipeline_helpers import pipeline_config, read_outputs
from tests.test_data_units import _parts, _read_all


def _page(i: int) -> bytes:
    """An HTML page (nav, header and footer around the text) of real English prose, a different
    text for each page."""
    from data_pipeline.corpus.base_texts import base_texts
    from data_pipeline.corpus.warc import html_page

    texts = base_texts()
    title, text = texts[(37 * i) % len(texts)]
    return html_page(f"{title} {i}", text.split("\n"))


def _reason(i: int) -> str | None:
    """What reading page i of `write_warc` gives: a document, or a reject's reason."""
    return "not_html" if i % 5 == 2 else "no_extractable_text" if i % 9 == 7 else None


def write_warc(path, num_pages: int = 24, gzip_records: bool = True, first_page: int = 0) -> None:
    """A crawl: a warcinfo record, then per page a request, a response (HTML; every 5th an image,
    every 9th an empty page) and every 4th a metadata record."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=gzip_records)
        w.write_record(
            w.create_warc_record(
                path.name,
                "warcinfo",
                payload=io.BytesIO(b"software: test\r\n"),
                warc_content_type="application/warc-fields",
            )
        )
        for i in range(first_page, first_page + num_pages):
            url = f"https://example.org/{i}"
            req = StatusAndHeaders(f"GET /{i} HTTP/1.1", [("Host", "example.org")], is_http_request=True)
            w.write_record(w.create_warc_record(url, "request", payload=io.BytesIO(b""), http_headers=req))
            if _reason(i) == "not_html":
                ctype, body = "image/png", b"\x89PNG\r\n" + bytes(range(256)) * 4
            elif _reason(i) == "no_extractable_text":
                ctype, body = "text/html", b"<html><body></body></html>"
            else:
                ctype, body = "text/html; charset=utf-8", _page(i)
            headers = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.1")
            w.write_record(
                w.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=headers)
            )
            if i % 4 == 0:
                meta = io.BytesIO(f"fetchTimeMs: {i}\r\n".encode())
                w.write_record(
                    w.create_warc_record(
                        url, "metadata", payload=meta, warc_content_type="application/warc-fields"
                    )
                )


def _record_starts(path) -> dict[int, int]:
    """Byte offset of each record -> responses before it, read independently of units.py."""
    from warcio.archiveiterator import ArchiveIterator

    out, responses = {}, 0
    with open(path, "rb") as f:
        records = ArchiveIterator(f)
        for record in records:
            is_response = record.rec_type == "response"
            out[records.get_record_offset()] = responses
            responses += is_response
    return out


@pytest.mark.parametrize("gzip_records", [True, False])
def test_warc_parts_start_at_records_and_keep_the_ids_of_the_whole_file(tmp_path, gzip_records):
    name = "crawl.warc.gz" if gzip_records else "crawl.warc"
    path = tmp_path / "crawl" / name
    write_warc(path, gzip_records=gzip_records)
    data = path.read_bytes()
    cfg, whole, parts = _parts([tmp_path], len(data) // 4)
    assert len(parts) >= 4 and [p.part for p in parts] == list(range(len(parts)))
    assert parts[0].start == 0 and parts[-1].end == len(data)
    assert sum(p.num_bytes for p in parts) == len(data)
    starts = _record_starts(path)
    for a, b in zip(parts, parts[1:]):
        assert a.end == b.start and b.start in starts  # cut at a record's first byte
        assert data[b.start :].startswith(b"\x1f\x8b" if gzip_records else b"WARC/1.0\r\n")
        assert b.first_record == starts[b.start] > a.first_record
    assert parts[1].label == f"crawl/{name} bytes {parts[1].start}-{parts[1].end}"
    assert parts[0].stem == f"crawl__{name}@00000"
    got, want = _read_all(parts, cfg), _read_all(whole, cfg)
    assert got == want and [w[0] for w in want] == [f"crawl/{name}#{k}" for k in range(24)]
    assert [w[2] for w in want] == [_reason(i) for i in range(24)]
    assert want[0][1] and want[0][1].split("\n")[0] in _page(0).decode()


def test_one_member_gzip_warc_stays_whole(tmp_path):
    plain = tmp_path / "plain.warc"
    write_warc(plain, gzip_records=False)
    one = tmp_path / "one" / "whole.warc.gz"  # the whole file in one gzip member: no record starts
    one.parent.mkdir()
    one.write_bytes(gzip.compress(plain.read_bytes()))
    plain.unlink()
    cfg, whole, parts = _parts([tmp_path], one.stat().st_size // 5)
    assert [(p.part, p.start, p.end) for p in parts] == [(None, 0, -1)]
    assert parts[0].label == "one/whole.warc.gz"
    # warcio cannot read such a file at all (it asks for `warcio recompress`): its task names it
    with pytest.raises(InputError, match="whole.warc.gz"):
        _read_all(parts, cfg)


def test_small_warc_and_one_record_warc_stay_whole(tmp_path):
    write_warc(tmp_path / "small.warc.gz", num_pages=2)
    write_warc(tmp_path / "single.warc", num_pages=0)  # only the warcinfo record
    _, _, parts = _parts([tmp_path], 100)
    by_name = {p.relpath: p.part for p in parts}
    assert by_name["single.warc"] is None and by_name["small.warc.gz"] is not None
    _, _, parts = _parts([tmp_path], 1 << 20)
    assert [p.part for p in parts] == [None, None]


def test_a_part_stops_at_its_end_byte(tmp_path):
    path = tmp_path / "c.warc.gz"
    write_warc(path)
    cfg, whole, parts = _parts([path], path.stat().st_size // 3)
    ids = [[d.id for d, _ in read_unit(p, cfg)] for p in parts]
    assert [len(i) for i in ids] == [b.first_record - a.first_record for a, b in zip(parts, parts[1:])] + [
        24 - parts[-1].first_record
    ]
    assert sum(ids, []) == [f"c.warc.gz#{k}" for k in range(24)]


@pytest.mark.slow
def test_split_warc_run_gives_the_documents_ids_and_rejects_of_one_unit_per_file(ray_local, tmp_path):
    corpus = tmp_path / "corpus"
    write_warc(corpus / "raw" / "crawl" / "a.warc.gz", num_pages=30)
    write_warc(corpus / "raw" / "crawl" / "b.warc", num_pages=20, gzip_records=False, first_page=30)
    write_warc(corpus / "raw" / "other" / "small.warc.gz", num_pages=3, first_page=50)
    unit_bytes = (corpus / "raw" / "crawl" / "a.warc.gz").stat().st_size // 3
    whole_out, split_out = tmp_path / "whole", tmp_path / "split"
    whole_stats = run_pipeline(pipeline_config(corpus, whole_out))
    split_stats = run_pipeline(
        pipeline_config(corpus, split_out, f"input.unit_bytes={unit_bytes}", "keep_work=true")
    )
    (kept, rejected), (want_kept, want_rejected) = read_outputs(split_out), read_outputs(whole_out)
    assert kept == want_kept and len(kept) > 10
    assert {k: (v["stage"], v["reason"]) for k, v in rejected.items()} == {
        k: (v["stage"], v["reason"]) for k, v in want_rejected.items()
    }
    assert {v["reason"] for v in rejected.values()} >= {"not_html", "no_extractable_text"}

    def in_order(d):
        return [
            r["id"]
            for e in read_manifest(d)["shards"]
            for r in pq.read_table(d / "shards" / e["path"], columns=["id"]).to_pylist()
        ]

    assert in_order(split_out) == in_order(whole_out)
    skip = {"seconds", "docs_per_second", "task_seconds_chain", "num_shards"}
    assert {k: v for k, v in split_stats.items() if k not in skip} == {
        k: v for k, v in whole_stats.items() if k not in skip
    }
    sources = [s for e in read_manifest(split_out)["shards"] for s in e["sources"]]
    parts = [s for s in sources if "input_part" in s]
    assert {s["input"] for s in parts} == {"crawl/a.warc.gz", "crawl/b.warc"}
    second = next(s for s in parts if s["input"] == "crawl/a.warc.gz" and s["input_part"]["index"] == 1)
    rec = read_json(split_out / "_work" / "chain" / f"{second['unit']}.done.json")
    assert rec["part"] == second["input_part"] and rec["relpath"] == "crawl/a.warc.gz"
    a, b = rec["part"]["bytes"]
    assert (
        b > a and rec["part"]["records_before"] == _record_starts(corpus / "raw" / "crawl" / "a.warc.gz")[a]
    )
