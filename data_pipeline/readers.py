"""Readers: turn input files into Docs, or into rejects that say what was wrong and where.

Formats: JSONL (.jsonl/.ndjson, optionally .gz/.zst), Parquet (raw records or our own document
shards), directories of .txt files (one document per file), and WARC (.warc/.warc.gz) whose HTML
responses go through trafilatura. A malformed line or record becomes a reject with reason and
`file:line`; an unreadable file raises `InputError` naming the file. A file inside an input folder
that is no known format is skipped and named, with why, in `InputScan.skipped` (the run's summary).

Document ids are positional and stable: `relpath:line` (JSONL, 1-based), `relpath#row` (Parquet,
0-based), `relpath` (.txt), `relpath#k` (k-th WARC response, 0-based). A record's own id is kept
in metadata as `source_id`. A part of a split file (`data_pipeline.units`) knows the records
before it, so its ids are those the whole file gives.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from data_pipeline.document import Doc, Reject
from pretrain.core.config import check
from pretrain.core.files import io_map
from pretrain.core.hashing import file_fingerprint
from pretrain.core.shards import list_shards, parquet_file, shard_relpath
from pretrain.core.storage import (
    exists,
    find_files,
    glob_files,
    is_dir,
    is_file,
    is_remote,
    open_binary,
    stage_path,
)

log = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz", ".jsonl.zst", ".ndjson.zst")
WARC_SUFFIXES = (".warc", ".warc.gz")
REJECT_TEXT_CHARS = 2000  # how much of a malformed record we keep in rejects/ for debugging
SNIFF_BYTES = 4096  # a NUL byte in a skipped file's first bytes marks it binary


class InputError(RuntimeError):
    """An input file cannot be read at all (not one bad record: the file itself)."""


@dataclass
class InputConfig:
    paths: list[str] = field(default_factory=list)
    """Files, directories (searched recursively) or glob patterns."""
    format: Literal["auto", "jsonl", "parquet", "text", "warc", "shards"] = "auto"
    """`auto` picks by file suffix; `shards` reads our own document shards (keeps ids and metadata)."""
    text_field: str = "text"
    """Record field holding the document text (JSONL and Parquet)."""
    id_field: str = "id"
    """Record field kept as metadata.source_id when present."""
    url_field: str = "url"
    """Record field holding the URL, when present."""
    source_field: str = "source"
    """Record field naming the source/domain; falls back to `source`, then the top-level folder name."""
    source: str | None = None
    """Source name for every document (overrides the record's own field)."""
    keep_fields: list[str] = field(default_factory=list)
    """Extra record fields copied into metadata."""
    unit_bytes: int = 64 << 20
    """Input bytes of one task (a work unit), about. A larger file is split into parts of about
    this size (uncompressed JSONL at line boundaries, Parquet at row groups, WARC at records;
    .gz/.zst JSONL, one-member .warc.gz and .txt folders stay whole), each with its own output
    shard (`<name>@00001.parquet`); smaller files are grouped into tasks of up to this size, each
    keeping its own shard. Ids stay positional (`relpath:line`, `relpath#k`) whatever the split
    (`data_pipeline.units`)."""

    def __post_init__(self) -> None:
        check(
            all(isinstance(p, str) and p for p in self.paths),
            "input.paths",
            self.paths,
            "a list of non-empty paths",
        )
        check(self.unit_bytes >= 1, "input.unit_bytes", self.unit_bytes, ">= 1 (bytes)")


@dataclass(frozen=True)
class InputUnit:
    """One input: a file, or a folder of .txt files, or a part of a file split by
    `data_pipeline.units` (`part` set). `name` is filesystem-safe and unique per file."""

    path: str
    relpath: str
    format: str
    name: str
    part: int | None = None
    """Index of this part of a split file; None: the whole file."""
    start: int = 0
    """First byte (JSONL, WARC) or row group (Parquet) of the part."""
    end: int = -1
    """End (exclusive) byte or row group of the part; -1: the end of the file."""
    first_record: int = 0
    """Records of the file before the part: lines (JSONL, blank ones too), rows (Parquet) or
    response records (WARC)."""
    num_bytes: int = 0
    """Input bytes of the unit (0: not measured yet)."""

    @property
    def stem(self) -> str:
        """What the unit's output files are named after: `name` without a `.parquet` suffix, so a
        Parquet input's shard is `part-00000.parquet`, not `part-00000.parquet.parquet`; a part of
        a split file adds `@NNNNN`."""
        stem = self.name.removesuffix(".parquet")
        return stem if self.part is None else f"{stem}@{self.part:05d}"

    @property
    def label(self) -> str:
        """The unit in messages: its path, and the part's range."""
        if self.part is None:
            return self.relpath
        what = "row groups" if self.format in ("parquet", "shards") else "bytes"
        return f"{self.relpath} {what} {self.start}-{self.end}"


@dataclass(frozen=True)
class SkippedFile:
    """A file inside an input folder or glob that is not read, and why."""

    path: str
    reason: str


@dataclass
class InputScan:
    units: list[InputUnit]
    skipped: list[SkippedFile]


def _format_of(path: str) -> str | None:
    p = path.lower()
    if p.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if p.endswith(".parquet"):
        return "parquet"
    if p.endswith(WARC_SUFFIXES):
        return "warc"
    if p.endswith(".txt"):
        return "text"
    return None


def _safe_name(relpath: str) -> str:
    return relpath.replace(os.sep, "__").replace("/", "__").replace(":", "_")


def _glob_root(spec: str):
    """The folder part of a glob before its first wildcard: ids are relative to it."""
    if is_remote(spec):
        head, rest = spec.split("://", 1)
        parts = rest.split("/")
        i = next(i for i, part in enumerate(parts) if glob.has_magic(part))
        return stage_path(f"{head}://{'/'.join(parts[:i])}")
    parts = Path(spec).parts
    for i, part in enumerate(parts):
        if glob.has_magic(part):
            return Path(*parts[:i]) if i else Path(".")
    return Path(spec).parent


def _skip_reason(path) -> str:
    if path.name.startswith("."):
        return "hidden file"
    try:
        with open_binary(path) as f:
            head = f.read(SNIFF_BYTES)
    except OSError as e:
        return f"unreadable ({e.strerror})"
    kind = "binary file" if b"\0" in head else "unknown format"
    suffix = f"suffix {path.suffix!r}" if path.suffix else "no suffix"
    return f"{kind} ({suffix}; known: .jsonl/.ndjson[.gz|.zst], .parquet, .txt, .warc[.gz])"


def discover_inputs(cfg: InputConfig) -> list[InputUnit]:
    """Expand paths into sorted input units (see `scan_inputs`)."""
    return scan_inputs(cfg).units


def scan_inputs(cfg: InputConfig) -> InputScan:
    """Expand paths into sorted input units, and list the files found but not read (with why).
    `.txt` files are grouped per folder (one unit each).

    Relative paths (the base of document ids) are taken from the folder given, or the folder of a
    file or glob.
    """
    if not cfg.paths:
        raise InputError("input.paths is empty: give at least one file, folder or glob")
    units: dict[str, InputUnit] = {}
    skipped: dict[str, SkippedFile] = {}
    for spec in cfg.paths:
        spec_path = stage_path(spec)
        if is_dir(spec_path) and exists(spec_path / "manifest.json") and is_dir(spec_path / "shards"):
            for shard in list_shards(spec_path):
                rel = f"shards/{shard_relpath(spec_path, shard)}"
                units[str(shard)] = InputUnit(str(shard), rel, "shards", _safe_name(shard.stem))
            continue
        if is_dir(spec_path):
            root, files = spec_path, find_files(spec_path)
        elif is_file(spec_path):
            if (cfg.format if cfg.format != "auto" else _format_of(spec)) is None:
                # a file named on its own is an error, not skipped like one found in a folder
                raise InputError(f"input file {spec} cannot be read: {_skip_reason(spec_path)}")
            root, files = spec_path.parent, [spec_path]
        elif not glob.has_magic(spec):
            raise InputError(f"input path {spec} does not exist")
        else:
            files = glob_files(spec)
            if not files:
                raise InputError(f"input glob {spec} matches no file")
            root = _glob_root(spec)
        text_dirs: set = set()
        for f in sorted(files, key=str):
            fmt = cfg.format if cfg.format != "auto" else _format_of(str(f))
            if fmt is None or f.name.startswith("."):
                skipped[str(f)] = SkippedFile(str(f), _skip_reason(f))
                continue
            if fmt == "text":
                text_dirs.add(f.parent)
                continue
            rel = f.relative_to(root).as_posix()
            units[str(f)] = InputUnit(str(f), rel, fmt, _safe_name(rel))
        for d in sorted(text_dirs, key=str):
            rel = d.relative_to(root).as_posix()
            rel = d.name if rel == "." else rel
            units[str(d) + "/"] = InputUnit(str(d), rel, "text", _safe_name(rel) + "__txt")
    if not units:
        raise InputError(
            f"no readable input files under {cfg.paths} (looked for {JSONL_SUFFIXES}, .parquet, .txt, .warc)"
            + (f"; skipped {len(skipped)}: {format_skipped(list(skipped.values()))}" if skipped else "")
        )
    out = sorted(units.values(), key=lambda u: (u.relpath, u.path))
    dupes = {n for n, c in Counter(u.stem for u in out).items() if c > 1}
    if dupes:
        raise InputError(f"two inputs map to the same shard name {sorted(dupes)[0]!r}: give distinct folders")
    return InputScan(out, sorted(skipped.values(), key=lambda s: s.path))


def unit_fingerprint(unit: InputUnit) -> dict:
    """What a unit's done records are keyed on: its file's `file_fingerprint` (size, mtime, sampled
    sha256), or for a folder of .txt files the name and fingerprint of each."""
    if unit.format != "text":
        return file_fingerprint(unit.path)
    return {"files": [[f.name, *file_fingerprint(f).values()] for f in _text_files(unit.path)]}


def _text_files(folder: str) -> list:
    """The .txt files directly in `folder` (a text unit), sorted by name."""
    return sorted(glob_files(str(folder).rstrip("/") + "/*.txt"), key=lambda f: f.name)


def unit_fingerprints(units: list[InputUnit]) -> list[dict]:
    """`unit_fingerprint` of every unit, on a thread pool (a run over thousands of files)."""
    return io_map(unit_fingerprint, units)


def format_skipped(skipped: list[SkippedFile], max_shown: int = 5) -> str:
    """One line naming the skipped files and why (the first `max_shown`, then a count)."""
    shown = "; ".join(f"{s.path} ({s.reason})" for s in skipped[:max_shown])
    more = len(skipped) - max_shown
    return shown + (f"; and {more} more" if more > 0 else "")


def _default_source(relpath: str) -> str:
    parts = Path(relpath).parts
    return parts[0] if len(parts) > 1 else "default"


# --- record -> Doc ------------------------------------------------------------------------------


class _RecordConverter:
    """Shared field handling for JSONL and Parquet records. A record without the text field is
    rejected; the first one in a file is also logged with its place and the fields it has (a wrong
    `input.text_field` shows at once, not as one line per record)."""

    def __init__(self, cfg: InputConfig, unit: InputUnit):
        self.cfg, self.unit = cfg, unit
        self.default_source = cfg.source or _default_source(unit.relpath)
        self._warned = False

    def convert(self, rec: object, doc_id: str, where: str) -> tuple[Doc, Reject | None]:
        """`where` is the record's place for messages: `path:line` or `path row N`."""
        cfg = self.cfg
        if not isinstance(rec, dict):
            return Doc(doc_id, str(rec)[:REJECT_TEXT_CHARS], self.default_source), Reject(
                "malformed_record", f"{doc_id}: expected a JSON object, got {type(rec).__name__}"
            )
        source = cfg.source or rec.get(cfg.source_field) or self.default_source
        meta: dict = {}
        if rec.get(cfg.id_field) is not None:
            meta["source_id"] = str(rec[cfg.id_field])
        for k in cfg.keep_fields:
            if k in rec:
                meta[k] = rec[k]
        url = rec.get(cfg.url_field)
        doc = Doc(doc_id, "", str(source), url if isinstance(url, str) else None, meta)
        text = rec.get(cfg.text_field)
        if text is None:
            if not self._warned:
                what = "a null" if cfg.text_field in rec else "no"
                log.warning(
                    "%s: record has %s %r field (input.text_field); fields present: %s. Records "
                    "without it are rejected as missing_text (said once per file).",
                    where,
                    what,
                    cfg.text_field,
                    sorted(rec),
                )
                self._warned = True
            doc.text = json.dumps(rec, ensure_ascii=False, default=str)[:REJECT_TEXT_CHARS]
            return doc, Reject("missing_text", f"{doc_id}: no {cfg.text_field!r}; fields: {sorted(rec)}")
        if not isinstance(text, str):
            doc.text = repr(text)[:REJECT_TEXT_CHARS]
            return doc, Reject("bad_text_type", f"{doc_id}: {cfg.text_field!r} is {type(text).__name__}")
        doc.text = text
        return doc, None


def _open_binary(path: str) -> io.BufferedIOBase:
    if path.endswith(".gz"):
        return gzip.open(open_binary(path), "rb")
    if path.endswith(".zst"):
        import zstandard  # [data] extra, needed only for .zst inputs

        return zstandard.ZstdDecompressor().stream_reader(
            open_binary(path), closefd=True, read_across_frames=True
        )
    return open_binary(path)


def read_jsonl_docs(unit: InputUnit, cfg: InputConfig) -> Iterator[tuple[Doc, Reject | None]]:
    """Docs from a JSONL file, read as bytes: each bad line becomes a reject (unlike
    pretrain.core.jsonl, which reads our own files and raises on a bad line)."""
    import orjson  # [data] extra; the config and CLI import this module without it

    conv = _RecordConverter(cfg, unit)
    pos, end = unit.start, unit.end if unit.end >= 0 else float("inf")
    try:
        with _open_binary(unit.path) as raw:
            stream = io.BufferedReader(raw) if not isinstance(raw, io.BufferedReader) else raw
            if unit.start:
                stream.seek(unit.start)  # a part starts at a line's first byte (units.split_units)
            for line_no, line in enumerate(stream, unit.first_record + 1):
                if pos >= end:
                    break
                pos += len(line)
                if not line.strip():
                    continue
                doc_id = f"{unit.relpath}:{line_no}"
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield (
                        Doc(doc_id, line.decode("utf-8", "replace")[:REJECT_TEXT_CHARS], conv.default_source),
                        Reject("invalid_utf8", f"{doc_id}: {e.reason} at byte {e.start}"),
                    )
                    continue
                try:
                    rec = orjson.loads(line)
                except orjson.JSONDecodeError as e:
                    yield (
                        Doc(doc_id, line.decode("utf-8")[:REJECT_TEXT_CHARS], conv.default_source),
                        Reject("malformed_json", f"{doc_id}: {e}"),
                    )
                    continue
                yield conv.convert(rec, doc_id, f"{unit.path}:{line_no}")
    except (OSError, EOFError, ValueError) as e:  # truncated gzip, bad zstd frame, unreadable file
        if isinstance(e, UnicodeDecodeError):
            raise
        raise InputError(f"cannot read {unit.path}: {type(e).__name__}: {e}") from None


def read_parquet(
    unit: InputUnit, cfg: InputConfig, batch_rows: int = 1024
) -> Iterator[tuple[Doc, Reject | None]]:
    try:
        pf = parquet_file(unit.path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise InputError(f"cannot read {unit.path}: {e}") from None
    names = pf.schema_arrow.names
    groups = None if unit.part is None else range(unit.start, unit.end)
    if unit.format == "shards":
        for batch in pf.iter_batches(batch_size=batch_rows, row_groups=groups):
            for rec in batch.to_pylist():
                yield Doc.from_row(rec), None
        return
    if cfg.text_field not in names:
        raise InputError(f"{unit.path}: no column {cfg.text_field!r} (input.text_field); columns: {names}")
    conv = _RecordConverter(cfg, unit)
    wanted = [
        c
        for c in {cfg.text_field, cfg.id_field, cfg.url_field, cfg.source_field, *cfg.keep_fields}
        if c in names
    ]
    row = unit.first_record
    try:
        for batch in pf.iter_batches(batch_size=batch_rows, columns=wanted, row_groups=groups):
            for rec in batch.to_pylist():
                yield conv.convert(rec, f"{unit.relpath}#{row}", f"{unit.path} row {row}")
                row += 1
    except Exception as e:  # noqa: BLE001
        raise InputError(f"cannot read {unit.path} at row {row}: {e}") from None


def read_text_dir(unit: InputUnit, cfg: InputConfig) -> Iterator[tuple[Doc, Reject | None]]:
    source = cfg.source or Path(unit.relpath).parts[0]
    for path in _text_files(unit.path):
        doc_id = f"{unit.relpath}/{path.name}"
        data = path.read_bytes()
        meta = {"source_id": path.stem}
        try:
            yield Doc(doc_id, data.decode("utf-8"), source, None, meta), None
        except UnicodeDecodeError as e:
            yield (
                Doc(doc_id, data.decode("utf-8", "replace")[:REJECT_TEXT_CHARS], source, None, meta),
                Reject("invalid_utf8", f"{doc_id}: {e.reason} at byte {e.start}"),
            )


class _ByteRange:
    """Bytes [start, end) of an open binary file, read as a whole file: past `end` it is at its
    end, and `tell` gives offsets in the file (what warcio reads a part of a split WARC through)."""

    def __init__(self, f, start: int, end: int):
        f.seek(start)
        self.f, self.pos, self.end = f, start, end

    def tell(self) -> int:
        return self.pos

    def read(self, size: int | None = -1) -> bytes:
        left = self.end - self.pos
        size = left if size is None or size < 0 else min(size, left)
        data = self.f.read(size) if size > 0 else b""
        self.pos += len(data)
        return data


def read_warc(unit: InputUnit, cfg: InputConfig) -> Iterator[tuple[Doc, Reject | None]]:
    """Docs from the HTML responses of a WARC file, or of the records of a part of one (it starts
    at a record, `units.split_units`, and its responses are numbered from `first_record`)."""
    import trafilatura  # heavy (lxml, ~0.5 s); only WARC inputs need it
    from warcio.archiveiterator import ArchiveIterator  # [data] extra, only for WARC inputs

    source = cfg.source or _default_source(unit.relpath)
    k = unit.first_record
    try:
        with open_binary(unit.path) as f:
            stream = f if unit.part is None else _ByteRange(f, unit.start, unit.end)
            for record in ArchiveIterator(stream):
                if record.rec_type != "response":
                    continue
                doc_id = f"{unit.relpath}#{k}"
                k += 1
                url = record.rec_headers.get_header("WARC-Target-URI")
                meta = {"source_id": record.rec_headers.get_header("WARC-Record-ID")}
                ctype = (record.http_headers.get_header("Content-Type") if record.http_headers else "") or ""
                body = record.content_stream().read()
                if "html" not in ctype.lower():
                    yield (
                        Doc(doc_id, "", source, url, meta),
                        Reject("not_html", f"{doc_id}: Content-Type {ctype!r}"),
                    )
                    continue
                html = body.decode("utf-8", "replace")
                text = trafilatura.extract(
                    html, include_comments=False, include_tables=False, deduplicate=False
                )
                if not text:
                    yield (
                        Doc(doc_id, html[:REJECT_TEXT_CHARS], source, url, meta),
                        Reject("no_extractable_text", f"{doc_id}: trafilatura found no main text"),
                    )
                    continue
                yield Doc(doc_id, text, source, url, meta), None
    except Exception as e:  # noqa: BLE001 - warcio raises assorted errors on corrupt archives
        part = "" if unit.part is None else f" (bytes {unit.start}-{unit.end})"
        raise InputError(
            f"cannot read {unit.path}{part} after {k} responses: {type(e).__name__}: {e}"
        ) from None


def read_unit(
    unit: InputUnit, cfg: InputConfig, batch_rows: int = 1024
) -> Iterator[tuple[Doc, Reject | None]]:
    if not exists(unit.path):
        raise InputError(f"input {unit.path} does not exist")
    if unit.format == "jsonl":
        return read_jsonl_docs(unit, cfg)
    if unit.format in ("parquet", "shards"):
        return read_parquet(unit, cfg, batch_rows)
    if unit.format == "text":
        return read_text_dir(unit, cfg)
    if unit.format == "warc":
        return read_warc(unit, cfg)
    raise InputError(f"unknown input format {unit.format!r} for {unit.path}")
