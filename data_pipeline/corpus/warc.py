"""The crawl source: one gzipped WARC file of HTML pages (nav, header and footer around the
document's paragraphs), with record ids and dates drawn from the seed so the file is byte-stable.
"""

from __future__ import annotations

import html
import io
import random
import uuid
from pathlib import Path

from data_pipeline.corpus.planted import Planted


def html_page(title: str, paragraphs: list[str]) -> bytes:
    body = "\n".join(f"<p>{html.escape(p)}</p>" for p in paragraphs)
    page = f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>{html.escape(title)} - Example Docs</title></head>
<body>
<header><nav><ul><li><a href="/">Home</a></li><li><a href="/docs/">Documentation</a></li><li><a href="/blog/">Blog</a></li><li><a href="/about/">About</a></li></ul></nav></header>
<main><article>
<h1>{html.escape(title)}</h1>
{body}
</article></main>
<footer><p>Copyright 2024 Example Docs. All rights reserved.</p><p><a href="/privacy/">Privacy</a> | <a href="/contact/">Contact</a></p></footer>
</body>
</html>
"""
    return page.encode("utf-8")


def write_warc(path: Path, docs: list[Planted], rng: random.Random) -> None:
    from warcio import StatusAndHeaders, WARCWriter  # data extra; only the crawl source needs it

    def headers(k: int) -> dict[str, str]:  # fixed from the seed, so the file is byte-stable
        record_id = uuid.UUID(int=rng.getrandbits(128), version=4)
        return {"WARC-Record-ID": f"<urn:uuid:{record_id}>", "WARC-Date": f"2024-01-15T12:{k:02d}:00Z"}

    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        info = b"software: data_pipeline.corpus\r\nformat: WARC File Format 1.0\r\n"
        writer.write_record(
            writer.create_warc_record(
                "",
                "warcinfo",
                payload=io.BytesIO(info),
                warc_content_type="application/warc-fields",
                warc_headers_dict={**headers(0), "WARC-Filename": path.name},
            )
        )
        for k, doc in enumerate(docs):
            page = html_page(doc.title, doc.text.split("\n"))
            http = StatusAndHeaders(
                "200 OK",
                [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(page)))],
                protocol="HTTP/1.1",
            )
            record = writer.create_warc_record(
                doc.url,
                "response",
                payload=io.BytesIO(page),
                http_headers=http,
                warc_headers_dict=headers(k + 1),
            )
            writer.write_record(record)
