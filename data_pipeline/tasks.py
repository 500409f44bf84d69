"""The work of one Ray task, as plain functions (no Ray import): testable in-process.

Phase 1 `run_chain(units)`: for each input unit of a group (a file, or a part of one: see
`data_pipeline.units`), read it, run the fused per-document stages, write the kept docs (with their
row ordinal) to `_work/chain/`, rejects to `rejects/`, and the exact-dedup hashes of kept docs to
one run `_work/hashes/<unit>.arrow` (see `data_pipeline.shuffle`). Phase 2 `dedup_partition(q)`:
within one range of hashes, mark every doc whose text hash was seen earlier (by input order) as a
duplicate of the first; `dup_lists(r)` then routes them to the unit that holds them, one small
file per unit. Phase 3 `finalize_units(units)`: drop each unit's duplicates (reading its shard and
its own list, nothing else) and write `_work/final/`, which `data_pipeline.pack` cuts into `shards/`.
Each unit ends with a `.done.json` record (a part's holds its range); a rerun, or the retry of a
group whose worker died, skips the units whose record matches.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_pipeline.document import Doc, Reject
from data_pipeline.pack import arrow_bytes
from data_pipeline.readers import InputError, InputUnit, read_unit
from data_pipeline.shuffle import (
    RunSet,
    chunk_rows,
    key_range,
    merge_runs,
    pieces_in,
    write_run,
    write_unit_lists,
)
from pretrain.core.config import config_hash
from pretrain.core.done import load_done, output_fingerprints
from pretrain.core.files import write_json
from pretrain.core.runner import maybe_crash
from pretrain.core.shards import DOC_SCHEMA, REJECT_SCHEMA, ShardWriter, parquet_file
from pretrain.core.storage import stage_path, work_dir

CHAIN_SCHEMA = pa.schema(list(DOC_SCHEMA) + [pa.field("_ord", pa.int64(), nullable=False)])
HASH_SCHEMA = pa.schema(
    [
        ("key", pa.uint64()),
        ("hash", pa.binary(16)),
        ("shard", pa.string()),
        ("ord", pa.int64()),
        ("id", pa.string()),
    ]
)
DUP_LIST_SCHEMA = pa.schema([("ord", pa.int64()), ("survivor_id", pa.string())])
# Peak task memory per row of exact dedup's reducers, temporaries included, measured here with
# MemoryGuard on bench/data_scale.py's documents (200,000 in 200 files, one reducer): 282 bytes per
# hash row (key, digest, unit stem, row, id and their sort), 540 per duplicate in the removal lists
# (mostly fixed costs at 5,000 of them). The driver sizes the shuffle with them, rounded up.
HASH_ROW_BYTES = 300
DUP_ROW_BYTES = 500
EXAMPLE_CHARS = 160

_STAGE_CACHE: dict[str, list] = {}  # Ray reuses worker processes: build models once per process


def _build_stages(cfg) -> dict[str, list]:
    """Per profile, its chain of built stages (cached per process and config)."""
    key = config_hash(cfg.chain_identity())
    if key not in _STAGE_CACHE:
        _STAGE_CACHE.clear()
        _STAGE_CACHE[key] = {
            p: [(name, stage_cfg.build()) for name, stage_cfg in cfg.stage_configs(p)]
            for p in cfg.used_profiles()
        }
    return _STAGE_CACHE[key]


def run_stages(stages: list, batch: list[tuple[int, Doc]], tally: RejectTally) -> tuple[list, list]:
    """Run `batch` ((ordinal, doc) pairs) through `stages`; returns (kept pairs, reject rows)."""
    docs = [d for _, d in batch]
    ords = [o for o, _ in batch]
    rej_rows = []
    for name, stage in stages:
        tally.stage_in[name] += len(docs)
        results = stage.process_batch(docs) if docs else []
        keep_docs, keep_ords = [], []
        for o, doc, res in zip(ords, docs, results):
            if isinstance(res, Reject):
                rej_rows.append(tally.reject(name, doc, res))
            else:
                keep_docs.append(res)
                keep_ords.append(o)
        docs, ords = keep_docs, keep_ords
    return list(zip(ords, docs)), rej_rows


def text_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def hash_table(rows: list[tuple[bytes, int, str]], unit: str) -> pa.Table:
    """(hash, row, id) of a unit's kept documents as HASH_SCHEMA rows, keyed by the hash's first
    8 bytes."""
    digests = [r[0] for r in rows]
    key = np.frombuffer(b"".join(d[:8] for d in digests), dtype=">u8").astype(np.uint64)
    return pa.table(
        {
            "key": key,
            "hash": pa.array(digests, pa.binary(16)),
            "shard": pa.array([unit] * len(rows), pa.string()),
            "ord": pa.array([r[1] for r in rows], pa.int64()),
            "id": pa.array([r[2] for r in rows], pa.string()),
        },
        schema=HASH_SCHEMA,
    )


def hash_run_path(out: Path, unit: str) -> Path:
    return work_dir(out) / "hashes" / f"{unit}.arrow"


def dup_list_path(out: Path, unit: str) -> Path:
    """The exact duplicates of one unit: its rows that exact dedup drops, and their survivors."""
    return work_dir(out) / "dup_lists" / f"{unit}.parquet"


def doc_language(metadata: dict) -> str:
    """The language a document is counted and partitioned under: metadata.language, else its profile
    (a profile without a language stage, e.g. `code`), else `und` (not identified)."""
    return metadata.get("language") or metadata.get("profile") or "und"


class RejectTally:
    """Counts per stage and reason (in all and per language), plus a few example rejects per reason
    and language."""

    def __init__(self, num_examples: int):
        self.num_examples = num_examples
        self.stage_in: Counter = Counter()
        self.rejected: dict[str, Counter] = defaultdict(Counter)
        # stage -> "language/reason" -> count; "und" before the language stage has run
        self.by_language: dict[str, Counter] = defaultdict(Counter)
        self.examples: dict[str, list] = defaultdict(list)
        self.pii: Counter = Counter()

    def reject(self, stage: str, doc: Doc, rej: Reject) -> dict:
        lang = doc_language(doc.metadata)
        self.rejected[stage][rej.reason] += 1
        self.by_language[stage][f"{lang}/{rej.reason}"] += 1
        example = {"id": doc.id, "language": lang, "detail": rej.detail, "text": doc.text[:EXAMPLE_CHARS]}
        add_examples(self.examples[f"{stage}/{rej.reason}"], [example], self.num_examples)
        return doc.to_row() | {"stage": stage, "reason": rej.reason, "detail": rej.detail}

    def as_dict(self) -> dict:
        return {
            "stage_in": dict(self.stage_in),
            "rejected": {s: dict(c) for s, c in self.rejected.items()},
            "rejected_by_language": {s: dict(c) for s, c in self.by_language.items()},
            "examples": dict(self.examples),
            "pii": dict(self.pii),
        }


def add_examples(dst: list[dict], src: list[dict], per_language: int) -> None:
    """Append the examples of `src` to `dst` while their language has fewer than `per_language`."""
    have = Counter(e.get("language", "und") for e in dst)
    for e in src:
        lang = e.get("language", "und")
        if have[lang] < per_language:
            dst.append(e)
            have[lang] += 1


def run_group(
    step: Callable[[InputUnit, Any, Path, Any], dict],
    step_dir: str,
    units: list[InputUnit],
    cfg,
    out_dir: str,
    fingerprints: list,
) -> dict[str, Any]:
    """`step(unit, cfg, out, fingerprint)` for each unit of a group whose done record
    (`_work/<step_dir>/<stem>.done.json`) is missing or stale. A unit that cannot be read does not stop
    the others: the group fails after them, naming every such file. Returns {"units": {stem:
    record}, "num_in": documents read}."""
    out = stage_path(out_dir)
    records: dict[str, dict] = {}
    bad: list[str] = []
    for unit, fp in zip(units, fingerprints):
        done = work_dir(out) / step_dir / f"{unit.stem}.done.json"
        if (rec := load_done(out, done, fp)) is None:
            try:
                rec = step(unit, cfg, out, fp)
            except InputError as e:
                bad.append(str(e))
                continue
        records[unit.stem] = rec
    if bad:
        raise InputError("; ".join(bad))
    return {"units": records, "num_in": sum(r["num_in"] for r in records.values())}


def run_chain(units: list[InputUnit], cfg, out_dir: str, fingerprints: list[dict]) -> dict[str, Any]:
    """Phase 1 for a group of units (one Ray task)."""
    return run_group(chain_unit, "chain", units, cfg, out_dir, fingerprints)


def finalize_units(units: list[InputUnit], cfg, out_dir: str, fingerprints: list[str]) -> dict[str, Any]:
    """Phase 3 for a group of units (one Ray task)."""
    return run_group(finalize_unit, "final", units, cfg, out_dir, fingerprints)


def chain_unit(unit: InputUnit, cfg, out: Path, fingerprint: dict) -> dict[str, Any]:
    t0, started_at = time.perf_counter(), time.time()
    stages = _build_stages(cfg)
    tally = RejectTally(cfg.num_example_rejects)
    hashes: list[tuple] = []
    num_in = num_kept = 0
    chain_w = ShardWriter(work_dir(out) / "chain" / f"{unit.stem}.parquet", CHAIN_SCHEMA)
    rej_w = ShardWriter(out / "rejects" / f"{unit.stem}.parquet", REJECT_SCHEMA)
    try:
        batch: list[tuple[int, Doc]] = []
        reader = read_unit(unit, cfg.input, cfg.batch_rows)

        def flush() -> None:
            nonlocal num_kept
            groups: dict[str, list] = defaultdict(list)
            for o, doc in batch:
                profile = cfg.profile_of(doc.source)
                if profile != "prose":
                    doc.metadata["profile"] = profile
                groups[profile].append((o, doc))
            kept, rej_rows = [], []
            for profile, group in groups.items():
                k, r = run_stages(stages[profile], group, tally)
                kept += k
                rej_rows += r
            kept.sort(key=lambda od: od[0])  # input order, whatever the profiles
            rows = []
            for o, doc in kept:
                for k, v in (doc.metadata.get("pii") or {}).items():
                    tally.pii[k] += v
                rows.append(doc.to_row() | {"_ord": o})
                if cfg.exact_dedup.enabled:
                    h = text_hash(doc.text)
                    hashes.append((h, o, doc.id))
            chain_w.write_rows(rows)
            rej_w.write_rows(rej_rows)
            num_kept += len(rows)
            batch.clear()

        for doc, rej in reader:
            if rej is not None:
                rej_w.write_rows([tally.reject("read", doc, rej)])
            else:
                batch.append((num_in, doc))
            num_in += 1
            if len(batch) >= cfg.batch_rows:
                flush()
                maybe_crash(unit.stem, num_in)
        if batch:
            flush()
        chain_entry = chain_w.close()
        rej_entry = rej_w.close()
    except BaseException:
        chain_w.abort()
        rej_w.abort()
        raise
    hash_entries, hash_paths = [], []
    if cfg.exact_dedup.enabled:  # one run per unit, keyed by the hash: see data_pipeline.shuffle
        hash_paths.append(hash_run_path(out, unit.stem))
        hash_entries.append(write_run(hash_paths[-1], hash_table(hashes, unit.stem), "key"))
    record = {
        "unit": unit.stem,
        "input": unit.path,
        "relpath": unit.relpath,
        "part": None if unit.part is None else unit_range(unit),
        "fingerprint": fingerprint,
        "num_in": num_in,
        "num_kept": num_kept,
        "num_bytes": unit.num_bytes,
        "chain": chain_entry,
        "rejects": rej_entry,
        "num_hash_rows": sum(e["rows"] for e in hash_entries),
        "seconds": round(time.perf_counter() - t0, 3),
        "started_at": started_at,  # wall clock and process: how busy each worker was (bench)
        "finished_at": time.time(),
        "pid": os.getpid(),
        "outputs": output_fingerprints(out, chain_w.path, rej_w.path, *hash_paths),
        **tally.as_dict(),
    }
    write_json(work_dir(out) / "chain" / f"{unit.stem}.done.json", record)
    return record


def merge_hashes(
    m: int, unit_names: list[str], budget: int, out_dir: str, fingerprint: str
) -> dict[str, Any]:
    """The hash runs of a group of consecutive units merged into pieces of one key range each
    (`shuffle.merge_runs`), so that a reducer opens about one piece per group, not one run per unit."""
    out = stage_path(out_dir)
    prefix = work_dir(out) / "hash_merge" / f"m={m:05d}"
    paths = [str(hash_run_path(out, n)) for n in unit_names]
    pieces = merge_runs(paths, "key", str(prefix), chunk_rows(budget, HASH_ROW_BYTES))
    record = {
        "partition": m,
        "fingerprint": fingerprint,
        "num_rows": sum(p["rows"] for p in pieces),
        "pieces": pieces,
        "outputs": output_fingerprints(out, *(Path(p["path"]) for p in pieces)),
    }
    write_json(work_dir(out) / "hash_merge" / f"q={m:05d}.done.json", record)
    return record


def dedup_partition(
    q: int,
    num_partitions: int,
    unit_names: list[str],
    pieces: list[dict],
    budget: int,
    out_dir: str,
    fingerprint: str,
) -> dict[str, Any]:
    """Within hash key range q, the first doc (by input order, then row) of each hash survives. The
    others go to runs keyed by their unit's index, for `dup_lists`. Reads the hash runs' `pieces`
    (merged or not: `merge_hashes`) whose range meets q."""
    out = stage_path(out_dir)
    runs = RunSet(pieces_in(pieces, *key_range(q, num_partitions)), "key")
    order = {n: i for i, n in enumerate(unit_names)}
    paths, num_rows, num_dups = [], 0, 0
    for c, (lo, hi) in enumerate(
        runs.chunks(*key_range(q, num_partitions), chunk_rows(budget, HASH_ROW_BYTES))
    ):
        table = runs.read(lo, hi)
        if table is None:
            continue
        num_rows += table.num_rows
        unit_idx = pa.array([order[s] for s in table.column("shard").to_pylist()], pa.uint64())
        table = table.append_column("unit", unit_idx)
        table = table.take(
            pc.sort_indices(table, [("hash", "ascending"), ("unit", "ascending"), ("ord", "ascending")])
        )
        digests = table.column("hash").combine_chunks()  # fixed 16 bytes: compared as two uint64
        h = np.frombuffer(digests.buffers()[1], dtype=np.uint64)[2 * digests.offset :][: 2 * len(digests)]
        h = h.reshape(-1, 2)
        same_as_prev = np.zeros(len(h), dtype=bool)
        same_as_prev[1:] = (h[1:] == h[:-1]).all(axis=1)
        group_start = np.maximum.accumulate(np.where(same_as_prev, 0, np.arange(len(h))))
        dup_rows = np.flatnonzero(same_as_prev)
        ids = table.column("id")
        dups = pa.table(
            {
                "unit": table.column("unit").take(dup_rows),
                "ord": table.column("ord").take(dup_rows),
                "survivor_id": ids.take(group_start[dup_rows]),
            }
        )
        num_dups += dups.num_rows
        paths.append(work_dir(out) / "dups" / f"q={q:05d}.c{c:04d}.arrow")
        write_run(paths[-1], dups, "unit")
    record = {
        "partition": q,
        "fingerprint": fingerprint,
        "num_rows": num_rows,
        "num_dups": num_dups,
        "runs": [str(p) for p in paths],
        "outputs": output_fingerprints(out, *paths),
    }
    write_json(work_dir(out) / "dups" / f"q={q:05d}.done.json", record)
    return record


def dup_lists(
    r: int, first: int, unit_names: list[str], runs: list[str], out_dir: str, fingerprint: str
) -> dict:
    """The duplicate lists of units first .. first + len(unit_names) - 1, one file each."""
    out = stage_path(out_dir)
    paths = [dup_list_path(out, n) for n in unit_names]
    num_rows = write_unit_lists(runs, first, paths, DUP_LIST_SCHEMA, "ord")
    record = {"partition": r, "fingerprint": fingerprint, "num_dups": num_rows}
    record["outputs"] = output_fingerprints(out, *paths)
    write_json(work_dir(out) / "dup_lists" / f"q={r:05d}.done.json", record)
    return record


def filter_shard(
    src: Path,
    shard_path: Path,
    reject_path: Path,
    stage: str,
    drop: dict[int, tuple[Reject, dict]],
    tally: RejectTally,
    batch_rows: int,
    key_column: str | None = None,
) -> tuple[dict, dict, int]:
    """Copy the document shard `src` to `shard_path` minus the rows in `drop` (keyed by `key_column`,
    or by row number when None), which go to `reject_path` as rejects of `stage` with their Reject
    and metadata additions. Returns (shard entry, reject entry, rows read); the shard entry also
    holds the kept rows' `arrow_bytes` (what `data_pipeline.pack` sizes parts by)."""
    shard_w = ShardWriter(shard_path, DOC_SCHEMA)
    rej_w = ShardWriter(reject_path, REJECT_SCHEMA)
    num_in = size = 0
    try:
        for batch in parquet_file(src).iter_batches(batch_size=batch_rows):
            table = pa.Table.from_batches([batch])
            keys = (
                table.column(key_column).to_pylist() if key_column else range(num_in, num_in + table.num_rows)
            )
            is_gone = np.fromiter((k in drop for k in keys), dtype=bool, count=table.num_rows)
            kept = table.filter(pa.array(~is_gone))
            kept = kept.drop_columns([key_column]) if key_column else kept
            shard_w.write_table(kept)
            size += arrow_bytes(kept)
            rej_rows = []
            for i in np.flatnonzero(is_gone):
                row = table.slice(int(i), 1).to_pylist()[0]
                rej, meta = drop[row[key_column] if key_column else num_in + int(i)]
                doc = Doc.from_row(row)
                doc.metadata.update(meta)
                rej_rows.append(tally.reject(stage, doc, rej))
            rej_w.write_rows(rej_rows)
            num_in += table.num_rows
        return shard_w.close() | {"arrow_bytes": size}, rej_w.close(), num_in
    except BaseException:
        shard_w.abort()
        rej_w.abort()
        raise


def filter_unit(
    unit: str,
    fingerprint: Any,
    t0: float,
    src: Path,
    out: Path,
    shard_path: Path,
    reject_path: Path,
    done_path: Path | None,
    stage: str,
    drop: dict[int, tuple[Reject, dict]],
    tally: RejectTally,
    batch_rows: int,
    key_column: str | None = None,
    count_in: bool = True,
) -> dict[str, Any]:
    """The last step of a dedup stage for one unit: `filter_shard`, then the unit's done record
    (counts, shard and reject entries, the tally, output sizes for resume) written to `done_path`
    (None: the caller writes it).
    `count_in` False leaves `stage` out of the tally's stage_in (a disabled step)."""
    shard_entry, rej_entry, num_in = filter_shard(
        src, shard_path, reject_path, stage, drop, tally, batch_rows, key_column
    )
    if count_in:
        tally.stage_in[stage] = num_in
    record = {
        "unit": unit,
        "fingerprint": fingerprint,
        "num_in": num_in,
        "num_kept": shard_entry["rows"],
        "shard": shard_entry,
        "rejects": rej_entry,
        "seconds": round(time.perf_counter() - t0, 3),
        "outputs": output_fingerprints(out, shard_path, reject_path),
        **tally.as_dict(),
    }
    if done_path is not None:
        write_json(done_path, record)
    return record


def unit_range(unit: InputUnit) -> dict[str, int]:
    """What a part's done record and manifest entry say of its range: bytes (JSONL, WARC) or row
    groups (Parquet), and the records of the file before it."""
    kind = "row_groups" if unit.format in ("parquet", "shards") else "bytes"
    return {"index": unit.part, kind: [unit.start, unit.end], "records_before": unit.first_record}


def finalize_unit(unit: InputUnit, cfg, out: Path, fingerprint: str) -> dict[str, Any]:
    """Write _work/final/<unit>.parquet: the chain output minus exact duplicates (rejected with
    survivor); with `partition_by_language`, _work/final/lang=xx/<unit>.xx.parquet, one per language
    present. The pack phase (`data_pipeline.pack`) then cuts them into shards/ of a target size."""
    t0 = time.perf_counter()
    unit_name = unit.stem
    dup_of: dict[int, str] = {}
    bytes_read = (work_dir(out) / "chain" / f"{unit_name}.parquet").stat().st_size
    if cfg.exact_dedup.enabled:  # its own list only: dup_lists routed every unit's rows to it
        t = pq.ParquetFile(dup_list_path(out, unit_name)).read()
        bytes_read += dup_list_path(out, unit_name).stat().st_size
        dup_of.update(zip(t.column("ord").to_pylist(), t.column("survivor_id").to_pylist()))
    tally = RejectTally(cfg.num_example_rejects)
    drop = {o: (Reject("exact_duplicate", sid), {"duplicate_of": sid}) for o, sid in dup_of.items()}
    partition = cfg.partition_by_language
    shard_path = work_dir(out) / "final" / f"{unit_name}.parquet"
    reject_path = out / "rejects" / f"{unit_name}.exact_dedup.parquet"
    done_path = work_dir(out) / "final" / f"{unit_name}.done.json"
    record = filter_unit(
        unit_name,
        fingerprint,
        t0,
        work_dir(out) / "chain" / f"{unit_name}.parquet",
        out,
        shard_path,
        reject_path,
        None,
        "exact_dedup",
        drop,
        tally,
        cfg.batch_rows,
        key_column="_ord",
        count_in=cfg.exact_dedup.enabled,
    )
    entry = record.pop("shard")
    record["bytes_read"] = bytes_read  # each file read whole
    if partition:
        record["shards"], paths = split_by_language(shard_path, shard_path.parent, unit_name, cfg.batch_rows)
        shard_path.unlink()
        record["outputs"] = output_fingerprints(out, *paths, reject_path)
    else:
        record["shards"] = [entry]
    write_json(done_path, record)
    return record


def partition_dir(language: str) -> str:
    return f"lang={language}"


def split_by_language(
    src: Path, shards_dir: Path, unit: str, batch_rows: int
) -> tuple[list[dict], list[Path]]:
    """Split document shard `src` into `shards_dir/lang=xx/<unit>.xx.parquet` (row order kept within
    each); returns their manifest entries (paths relative to shards_dir) and paths."""
    writers: dict[str, ShardWriter] = {}
    sizes: Counter = Counter()
    try:
        for batch in parquet_file(src).iter_batches(batch_size=batch_rows):
            table = pa.Table.from_batches([batch])
            langs = [doc_language(json.loads(m) if m else {}) for m in table.column("metadata").to_pylist()]
            for lang in sorted(set(langs)):
                if lang not in writers:
                    writers[lang] = ShardWriter(shards_dir / partition_dir(lang) / f"{unit}.{lang}.parquet")
                rows = table.filter(pa.array([x == lang for x in langs]))
                writers[lang].write_table(rows)
                sizes[lang] += arrow_bytes(rows)
        entries = []
        for lang in sorted(writers):
            entry = writers[lang].close() | {"arrow_bytes": sizes[lang], "language": lang}
            entries.append(entry | {"path": f"{partition_dir(lang)}/{entry['path']}"})
        return entries, [writers[lang].path for lang in sorted(writers)]
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
