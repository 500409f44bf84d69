"""Unreadable-record cases: JSONL lines the reader must reject with a reason and never crash on
(invalid UTF-8, malformed JSON, no text field, a text that is not a string). `broken_line` builds
the raw bytes of the first two kinds around the record's id.
"""

from __future__ import annotations

from data_pipeline.corpus.planted import Builder, Planted, expect, json_line

_INVALID_BYTES = (b"\xff\xfe", b"\x80", b"\xc0\xaf", b"\xe2\x82", b"\xed\xa0\x80")
_MISSING_TEXT = (
    {"body": "The text lives under the wrong key."},
    {"url": "https://example.com/no-text"},
    {"content": ""},
)
_BAD_TEXT_VALUES = (12345, ["a list", "of strings"])


def plant_unreadable(b: Builder) -> None:
    for kind in ("invalid_utf8", "malformed_json"):
        for variant in range(5):
            b.add(Planted(kind, expect=expect("read", kind), raw_kind=kind, variant=variant))
    for fields in _MISSING_TEXT:
        b.add(Planted("missing_text", expect=expect("read", "missing_text"), fields=fields))
    for value in _BAD_TEXT_VALUES:
        b.add(Planted("bad_text_type", expect=expect("read", "bad_text_type"), fields={"text": value}))


def broken_line(doc: Planted) -> bytes:
    """The raw JSONL line of an invalid_utf8 or malformed_json record (no newline)."""
    sid = doc.source_id or ""
    if doc.raw_kind == "invalid_utf8":
        text = (
            b"The menu of the caf"
            + _INVALID_BYTES[doc.variant]
            + b" changes every week, and the notes describe each dish."
        )
        return b'{"id": "' + sid.encode() + b'", "text": "' + text + b'", "source": "web"}'
    if doc.raw_kind == "malformed_json":
        broken = (
            json_line(
                {"id": sid, "text": "This record was cut off in the middle of the text.", "source": "web"}
            )[:48],
            f'{{"id": "{sid}", "text": "Trailing commas are not allowed in JSON.", "source": "web",}}'.encode(),
            f"{{'id': '{sid}', 'text': 'Single quotes are not valid JSON.', 'source': 'web'}}".encode(),
            f'{{"id": "{sid}", "text": "An unescaped "quote" ends the string early.", "source": "web"}}'.encode(),
            f'{{"id": "{sid}" "text": "A comma between members is missing.", "source": "web"}}'.encode(),
        )
        return broken[doc.variant]
    raise ValueError(
        f"{doc.category} record {sid!r} has raw_kind={doc.raw_kind!r}; expected invalid_utf8 or malformed_json"
    )
