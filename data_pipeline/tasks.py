"""The work of one Ray task, as plain functions (no Ray import): testable in-process.

Phase 1 `run_chain(unit)`: read one input unit, run the fused per-document stages, write the kept
docs (with their row ordinal) to `_work/chain/`, rejects to `rejects/`, and the exact-dedup hashes
of kept docs to `_work/hashes/p=NNNNN/`. Phase 2 `dedup_partition(p)`: within one hash partition,
mark every doc whose text hash was seen earlier (by input order) as a duplicate of the first.
Phase 3 `finalize_shard(unit)`: drop the duplicates of one shard and write `shards/`.
Each task ends by writing a `.done.json` record; a rerun skips tasks whose record matches.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_pipeline.document import Doc, Reject
from data_pipeline.readers import InputUnit, read_unit
from pretrain.core.config import config_hash
from pretrain.core.done import output_sizes
from pretrain.core.files import write_json
from pretrain.core.runner import maybe_crash
from pretrain.core.shards import DOC_SCHEMA, REJECT_SCHEMA, ShardWriter, write_table

CHAIN_SCHEMA = pa.schema(list(DOC_SCHEMA) + [pa.field("_ord", pa.int64(), nullable=False)])
HASH_SCHEMA = pa.schema(
    [("hash", pa.binary(16)), ("shard", pa.string()), ("ord", pa.int64()), ("id", pa.string())]
)
DUP_SCHEMA = pa.schema(
    [("shard", pa.string()), ("ord", pa.int64()), ("id", pa.string()), ("survivor_id", pa.string())]
)
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


def partition_of(h: bytes, num_partitions: int) -> int:
    return int.from_bytes(h[:8], "big") % num_partitions


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


def run_chain(unit: InputUnit, cfg, out_dir: str, fingerprint: dict) -> dict[str, Any]:
    t0 = time.perf_counter()
    out = Path(out_dir)
    stages = _build_stages(cfg)
    tally = RejectTally(cfg.num_example_rejects)
    num_parts = cfg.exact_dedup.num_partitions
    hashes: dict[int, list] = defaultdict(list)
    num_in = num_kept = 0
    chain_w = ShardWriter(out / "_work" / "chain" / f"{unit.stem}.parquet", CHAIN_SCHEMA)
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
                    hashes[partition_of(h, num_parts)].append((h, unit.stem, o, doc.id))
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
    for p in range(num_parts) if cfg.exact_dedup.enabled else []:
        rows = hashes.get(p, [])
        table = pa.Table.from_arrays(
            [pa.array([r[i] for r in rows], type=HASH_SCHEMA.field(i).type) for i in range(4)],
            schema=HASH_SCHEMA,
        )
        hash_paths.append(out / "_work" / "hashes" / f"p={p:05d}" / f"{unit.stem}.parquet")
        hash_entries.append(write_table(hash_paths[-1], table))
    record = {
        "unit": unit.stem,
        "input": unit.path,
        "relpath": unit.relpath,
        "fingerprint": fingerprint,
        "num_in": num_in,
        "num_kept": num_kept,
        "chain": chain_entry,
        "rejects": rej_entry,
        "num_hash_rows": sum(e["rows"] for e in hash_entries),
        "seconds": round(time.perf_counter() - t0, 3),
        "outputs": output_sizes(out, chain_w.path, rej_w.path, *hash_paths),
        **tally.as_dict(),
    }
    write_json(out / "_work" / "chain" / f"{unit.stem}.done.json", record)
    return record


def dedup_partition(p: int, unit_names: list[str], out_dir: str, fingerprint: str) -> dict[str, Any]:
    """Within one hash partition, the first doc (by input order, then row) of each hash survives."""
    out = Path(out_dir)
    part_dir = out / "_work" / "hashes" / f"p={p:05d}"
    tables = [pq.read_table(part_dir / f"{n}.parquet") for n in unit_names]
    table = pa.concat_tables(tables) if tables else HASH_SCHEMA.empty_table()
    order = {n: i for i, n in enumerate(unit_names)}
    num_dups = 0
    if table.num_rows:
        unit_idx = pa.array([order[s] for s in table.column("shard").to_pylist()], pa.int64())
        table = table.append_column("unit_idx", unit_idx)
        table = table.take(
            pc.sort_indices(table, [("hash", "ascending"), ("unit_idx", "ascending"), ("ord", "ascending")])
        )
        h = table.column("hash").to_numpy(zero_copy_only=False)
        same_as_prev = np.zeros(len(h), dtype=bool)
        same_as_prev[1:] = h[1:] == h[:-1]
        idx = np.arange(len(h))
        group_start = np.maximum.accumulate(np.where(same_as_prev, 0, idx))
        dup_rows = np.nonzero(same_as_prev)[0]
        ids = table.column("id")
        dups = pa.table(
            {
                "shard": table.column("shard").take(dup_rows),
                "ord": table.column("ord").take(dup_rows),
                "id": ids.take(dup_rows),
                "survivor_id": ids.take(group_start[dup_rows]),
            },
            schema=DUP_SCHEMA,
        )
        num_dups = dups.num_rows
    else:
        dups = DUP_SCHEMA.empty_table()
    dup_path = out / "_work" / "dups" / f"p={p:05d}.parquet"
    entry = write_table(dup_path, dups.sort_by([("shard", "ascending"), ("ord", "ascending")]))
    record = {
        "partition": p,
        "fingerprint": fingerprint,
        "num_rows": table.num_rows,
        "num_dups": num_dups,
        "dups": entry,
        "outputs": output_sizes(out, dup_path),
    }
    write_json(out / "_work" / "dups" / f"p={p:05d}.done.json", record)
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
    and metadata additions. Returns (shard entry, reject entry, rows read)."""
    shard_w = ShardWriter(shard_path, DOC_SCHEMA)
    rej_w = ShardWriter(reject_path, REJECT_SCHEMA)
    num_in = 0
    try:
        for batch in pq.ParquetFile(src).iter_batches(batch_size=batch_rows):
            table = pa.Table.from_batches([batch])
            keys = (
                table.column(key_column).to_pylist() if key_column else range(num_in, num_in + table.num_rows)
            )
            is_gone = np.fromiter((k in drop for k in keys), dtype=bool, count=table.num_rows)
            kept = table.filter(pa.array(~is_gone))
            shard_w.write_table(kept.drop_columns([key_column]) if key_column else kept)
            rej_rows = []
            for i in np.flatnonzero(is_gone):
                row = table.slice(int(i), 1).to_pylist()[0]
                rej, meta = drop[row[key_column] if key_column else num_in + int(i)]
                doc = Doc.from_row(row)
                doc.metadata.update(meta)
                rej_rows.append(tally.reject(stage, doc, rej))
            rej_w.write_rows(rej_rows)
            num_in += table.num_rows
        return shard_w.close(), rej_w.close(), num_in
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
        "outputs": output_sizes(out, shard_path, reject_path),
        **tally.as_dict(),
    }
    if done_path is not None:
        write_json(done_path, record)
    return record


def finalize_shard(unit_name: str, cfg, out_dir: str, fingerprint: str) -> dict[str, Any]:
    """Write shards/<unit>.parquet: the chain output minus exact duplicates (rejected with survivor);
    with `partition_by_language`, shards/lang=xx/<unit>.xx.parquet, one per language present."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    dup_of: dict[int, str] = {}
    if cfg.exact_dedup.enabled:
        for p in range(cfg.exact_dedup.num_partitions):
            t = pq.read_table(
                out / "_work" / "dups" / f"p={p:05d}.parquet", filters=[("shard", "=", unit_name)]
            )
            dup_of.update(zip(t.column("ord").to_pylist(), t.column("survivor_id").to_pylist()))
    tally = RejectTally(cfg.num_example_rejects)
    drop = {o: (Reject("exact_duplicate", sid), {"duplicate_of": sid}) for o, sid in dup_of.items()}
    partition = cfg.partition_by_language
    shard_path = out / ("_work/final" if partition else "shards") / f"{unit_name}.parquet"
    reject_path = out / "rejects" / f"{unit_name}.exact_dedup.parquet"
    done_path = out / "_work" / "final" / f"{unit_name}.done.json"
    record = filter_unit(
        unit_name,
        fingerprint,
        t0,
        out / "_work" / "chain" / f"{unit_name}.parquet",
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
    if partition:
        record["shards"], paths = split_by_language(shard_path, out / "shards", unit_name, cfg.batch_rows)
        shard_path.unlink()
        record["outputs"] = output_sizes(out, *paths, reject_path)
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
    try:
        for batch in pq.ParquetFile(src).iter_batches(batch_size=batch_rows):
            table = pa.Table.from_batches([batch])
            langs = [doc_language(json.loads(m) if m else {}) for m in table.column("metadata").to_pylist()]
            for lang in sorted(set(langs)):
                if lang not in writers:
                    writers[lang] = ShardWriter(shards_dir / partition_dir(lang) / f"{unit}.{lang}.parquet")
                writers[lang].write_table(table.filter(pa.array([x == lang for x in langs])))
        entries = []
        for lang in sorted(writers):
            entry = writers[lang].close()
            entries.append(entry | {"path": f"{partition_dir(lang)}/{entry['path']}", "language": lang})
        return entries, [writers[lang].path for lang in sorted(writers)]
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
