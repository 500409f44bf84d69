"""Write the planted documents as the raw sources the pipeline reads: books (Parquet), notes
(.txt), crawl (WARC), code (JSONL) and web (JSONL, .jsonl.gz, .jsonl.zst), and give each its
pipeline id.
"""

from __future__ import annotations

import gzip
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from data_pipeline.corpus.planted import Planted, json_line
from data_pipeline.corpus.unreadable import broken_line
from data_pipeline.corpus.warc import write_warc
from data_pipeline.corpus.web_layout import layout_web, web_shard_name


def raw_line(doc: Planted) -> bytes:
    """The document's JSONL line (no newline): its record, or the broken bytes of an unreadable one."""
    if doc.raw_kind is not None:
        return broken_line(doc)
    record: dict[str, Any] = {"id": doc.source_id or ""}
    record.update(doc.fields if doc.fields is not None else {"text": doc.text})
    if doc.url:
        record["url"] = doc.url
    record["source"] = doc.source
    return json_line(record)


def write_files(raw: Path, docs: list[Planted], rng: random.Random) -> None:
    """Write every document and set its pipeline id (`doc_id`) and record id (`source_id`)."""
    import zstandard  # data extra; only the .jsonl.zst shard needs it

    books = [d for d in docs if d.source == "books"]
    for row, doc in enumerate(books):
        doc.doc_id, doc.source_id = f"books/part-00000.parquet#{row}", f"book-{row:05d}"
    (raw / "books").mkdir(parents=True)
    table = pa.table(
        {
            "id": [d.source_id for d in books],
            "text": [d.text for d in books],
            "source": ["books"] * len(books),
        }
    )
    pq.write_table(table, raw / "books" / "part-00000.parquet", compression="zstd")

    (raw / "notes").mkdir()
    for i, doc in enumerate(d for d in docs if d.source == "notes"):
        doc.doc_id = f"notes/note-{i:03d}.txt"
        (raw / doc.doc_id).write_bytes(doc.text.encode("utf-8"))

    (raw / "crawl").mkdir()
    pages = [d for d in docs if d.source == "crawl"]
    for k, doc in enumerate(pages):
        doc.doc_id = f"crawl/crawl-00000.warc.gz#{k}"
    write_warc(raw / "crawl" / "crawl-00000.warc.gz", pages, rng)

    code = [d for d in docs if d.source == "code"]
    if code:
        (raw / "code").mkdir()
        for line, doc in enumerate(code, start=1):
            doc.doc_id, doc.source_id = f"code/part-00000.jsonl:{line}", f"code-{line - 1:05d}"
        (raw / "code" / "part-00000.jsonl").write_bytes(b"".join(raw_line(d) + b"\n" for d in code))

    (raw / "web").mkdir()
    shards = layout_web([d for d in docs if d.source == "web"], rng)
    num_records = 0
    for i, shard in enumerate(shards):
        name = web_shard_name(i)
        for line, doc in enumerate(shard, start=1):
            doc.doc_id, doc.source_id = f"{name}:{line}", f"doc-{num_records:06d}"
            num_records += 1
        data = b"".join(raw_line(d) + b"\n" for d in shard)
        if name.endswith(".gz"):
            data = gzip.compress(data, mtime=0)
        elif name.endswith(".zst"):
            data = zstandard.ZstdCompressor(level=3).compress(data)
        (raw / name).write_bytes(data)
