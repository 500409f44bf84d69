"""The work of one Ray task in MinHash dedup, as plain functions (no Ray import).

Node ids are `(shard_index << 32) | row`, so a node says where its document lives. Every shuffle
goes through sorted runs (`data_pipeline.shuffle`): a map task writes one run, a reducer reads its
key range of every run in chunks its memory budget holds, and the number of reducers of each step
is chosen by the driver from the rows of that step's input.
1. `signature_shard`: MinHash signatures of one shard (kept as .npy for verification), its nodes'
   ids and quality scores, and its band buckets as runs keyed by the bucket key, one per run of
   documents its memory budget holds; the shard is read by record batches, so a task's memory is
   bounded whatever the shard's size.
2. `candidate_partition`: documents sharing a bucket become candidate edges (star to the bucket's
   first member plus a chain through the members: linear in bucket size, connects all of them),
   one run per chunk keyed by the shard of the pair's `src` node, then a hash of the pair
   (`shard_key`), so each pair is verified once, by the task that owns its `src` shard.
3. Verification, a join with the signatures by shard in two steps, so a task reads the signature
   files of its own range of shards only (never one file per (shard, reducer) pair):
   `verify_src_partition` takes the distinct pairs whose `src` lies in its shards, attaches the
   `src` signatures from those shards' files, and writes them as one run per chunk keyed by the
   `dst` node's shard; `verify_dst_partition` attaches the `dst` signatures the same way, and keeps
   the pairs whose estimated Jaccard reaches the threshold. (Connected components then run in
   `components.py`.)
4. `member_runs` / `member_partition` / `survivor_partition`: the clustered nodes, joined with
   their id and quality score per range of shards (each shard's node file is read once), then per
   range of clusters the survivor (highest score, then smallest id) and the rest, removed.
5. `removal_lists`: the removed documents routed to the shard that holds them: one small file
   per shard, so `finalize_shard` reads the shard and its own list, nothing else; each removed
   document goes to rejects/ with reason `near_duplicate`, its cluster id and survivor id.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_pipeline.document import Reject
from data_pipeline.minhash.lsh import band_keys
from data_pipeline.minhash.signatures import EMPTY_VALUE, MinHasher
from data_pipeline.shuffle import (
    RunSet,
    chunk_rows,
    key_range,
    mix64,
    sort_order,
    write_run,
    write_unit_lists,
)
from data_pipeline.tasks import RejectTally, filter_unit
from pretrain.core.done import output_fingerprints
from pretrain.core.files import atomic_path, write_json
from pretrain.core.memory import release_freed_memory
from pretrain.core.shards import ShardWriter, parquet_file, write_table
from pretrain.core.storage import stage_path, stat, work_dir

LAYOUT_VERSION = 5  # bump when a step's files change shape, so old _work records are not reused
EDGE_SCHEMA = pa.schema([("src", pa.int64()), ("dst", pa.int64())])
NODE_SCHEMA = pa.schema([("node", pa.int64()), ("id", pa.string()), ("score", pa.float64())])
LIST_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("cluster_id", pa.string()),
        ("survivor_id", pa.string()),
        ("cluster_size", pa.int64()),
    ]
)
# Peak task memory per input row of each reducer step, temporaries included, measured here with
# MemoryGuard on bench/data_scale.py's documents (200,000 of them; one reducer per step): candidates
# 77 bytes per band row, member ids 650 and survivors 490 per clustered node, removal lists 510 per
# removed document (the last three mostly fixed costs at that size). The two verify steps per
# candidate pair at 128 permutations, on 250k and 1M random pairs over 20 shards of 10,000
# signatures: the src step 640 (the pair read and sorted, its src signature gathered into the run it
# writes), the dst step 1,170 when it reads several runs (their mapped pages and the copy that joins
# them, each 536 bytes a pair; 560 from one run), the dst signatures compared in blocks. Both grow by
# 8 bytes per pair for each permutation over 128 (`pair_row_bytes`; measured 5 and 8 at 256).
# The driver sizes each shuffle and each task its chunks with them, rounded up.
BAND_ROW_BYTES = 100
SRC_PAIR_ROW_BYTES = 700
DST_PAIR_ROW_BYTES = 1200
MEMBER_ROW_BYTES = 650
REMOVED_ROW_BYTES = 500
SIG_BLOCK_ROWS = 16384  # signatures gathered at once (8 MiB at 128 permutations)
# The signature step reads its shard by batches of about SIG_BATCH_TEXT_BYTES of text, at most
# SIG_BATCH_ROWS documents (the hasher's own pass), and writes node files NODE_GROUP_ROWS rows at a
# time (Parquet's default row group: the bytes of one write of the whole table). Its peak grows by
# SIG_BAND_ROW_BYTES per band row while it sorts a band run (340 a document at 17 bands), plus 4 a
# document; measured with MemoryGuard on 200k and 880k short documents (a 100 MB shard; 128
# permutations): 330 bytes a document over ~100 MiB of fixed costs (61 of them since the task gets
# its hasher from the driver). A band run holds the documents that fit what is left of the budget
# (`chunk_rows`), so a shard of any size is held to it.
SIG_BAND_ROW_BYTES = 20
SIG_BATCH_TEXT_BYTES = 8 << 20
SIG_BATCH_ROWS = 2048
NODE_GROUP_ROWS = 1 << 20


def node_ids(shard_index: int, num_rows: int) -> np.ndarray:
    return (np.int64(shard_index) << np.int64(32)) | np.arange(num_rows, dtype=np.int64)


def _done(out: Path, done_path: Path, record: dict, *paths: Path) -> dict:
    record["outputs"] = output_fingerprints(out, *paths)
    write_json(done_path, record)
    return record


def _quality_score(meta_json: str, field: str) -> float:
    if not field or f'"{field}"' not in meta_json:  # skip the JSON parse for docs without a score
        return 0.0
    value = json.loads(meta_json).get(field)
    return float(value) if isinstance(value, (int, float)) else 0.0


def _chunk_path(work: Path, step: str, q: int, c: int, suffix: str = "arrow") -> Path:
    return work / step / f"q={q:05d}.c{c:04d}.{suffix}"


def _open_shard(path: str) -> pq.ParquetFile:
    try:
        return parquet_file(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"cannot read Parquet shard {path}: {e}") from None


def _shard_batches(pf: pq.ParquetFile, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """The shard's record batches, read by sets of consecutive row groups that hold about
    SIG_BATCH_TEXT_BYTES of text (the footer's uncompressed sizes), in batches of at most
    SIG_BATCH_ROWS documents and about that much text. One `iter_batches` call per set: a reader
    keeps every column chunk it pre-buffered until it is done, so one call over the whole file would
    hold the file's (compressed) columns until the last batch."""
    md = pf.metadata
    text = md.schema.names.index("text")
    groups, rows, size = [], 0, 0
    for g in range(md.num_row_groups):
        groups.append(g)
        rows += md.row_group(g).num_rows
        size += md.row_group(g).column(text).total_uncompressed_size
        if size >= SIG_BATCH_TEXT_BYTES or g == md.num_row_groups - 1:
            batch_rows = max(1, min(SIG_BATCH_ROWS, SIG_BATCH_TEXT_BYTES * rows // max(1, size)))
            yield from pf.iter_batches(batch_size=batch_rows, row_groups=groups, columns=columns)
            groups, rows, size = [], 0, 0


def signature_shard(
    shard_path: str,
    shard_index: int,
    cfg,
    bands: int,
    rows: int,
    out_dir: str,
    fingerprint: Any,
    hasher: MinHasher | None = None,
    budget: int = 0,
) -> dict:
    """The shard read by record batches (`_shard_batches`): each batch's signatures are appended to
    the .npy (whose header comes first: the footer gives the rows), its ids and quality scores go to
    the node file (in row groups of NODE_GROUP_ROWS), and its band keys into one array, written as
    a sorted band run each time it holds as many documents as `budget` allows (at least a batch).
    Only that array is held across batches: key, band and node (18 bytes a band row; 20 while
    sorting) and 4 bytes per document; never the shard's texts or signatures. `hasher`: the
    driver's MinHasher of `cfg` (it carries its permutations, so the task does not import
    datasketch and scipy: 39 MiB of a worker's memory, measured here); built when None."""
    t0 = time.perf_counter()
    out = stage_path(out_dir)
    work = work_dir(out) / "minhash"
    name = stage_path(shard_path).stem
    pf = _open_shard(shard_path)
    num_rows = pf.metadata.num_rows
    if hasher is None:
        hasher = MinHasher(num_perm=cfg.num_perm, seed=cfg.seed, ngram=cfg.ngram, mode=cfg.mode)
    # Band keys of the documents with shingles, in order, and those documents' rows: at most a run's
    # worth (what the budget holds, at least a batch), written as one band run each time it fills.
    run_docs = min(num_rows, max(SIG_BATCH_ROWS, chunk_rows(budget, SIG_BAND_ROW_BYTES * bands + 4)))
    keys = np.empty(run_docs * bands, np.uint64)
    banded = np.empty(run_docs, np.uint32)
    shard_bits = np.int64(shard_index) << np.int64(32)
    band_runs: list[dict] = []
    num_banded = num_read = 0
    sig_path = work / "sig" / f"{name}.npy"
    node_path = work / "nodes" / f"{name}.parquet"
    header = np.lib.format.header_data_from_array_1_0(np.empty((0, cfg.num_perm), np.uint32))
    header["shape"] = (int(num_rows), int(cfg.num_perm))
    with (
        atomic_path(sig_path) as tmp,
        open(tmp, "wb") as sig_file,
        ShardWriter(node_path, NODE_SCHEMA) as node_file,
    ):
        np.lib.format.write_array_header_1_0(sig_file, header)  # what np.save writes, then the rows
        group: list[pa.Table] = []  # node rows not written yet
        group_rows = 0
        for batch in _shard_batches(pf, ["id", "text", "metadata"]):
            n = batch.num_rows
            sigs = hasher.signatures(batch.column("text").to_pylist())
            sig_file.write(sigs.data)
            # A document without shingles has the all-max "empty" signature: it would share every
            # bucket with every other such document, so it takes no part in banding (never a near-dup).
            has_shingles = np.flatnonzero(~(sigs == EMPTY_VALUE).all(axis=1))
            m = len(has_shingles)
            if num_banded + m > run_docs:
                path = work / "bands" / f"{name}.{len(band_runs):04d}.arrow"
                band_runs.append(_write_band_run(path, keys[: num_banded * bands], banded, bands, shard_bits))
                num_banded = 0
            keys[num_banded * bands : (num_banded + m) * bands] = band_keys(
                sigs[has_shingles], bands, rows
            ).ravel()
            banded[num_banded : num_banded + m] = num_read + has_shingles
            num_banded += m
            del sigs
            meta = batch.column("metadata").to_pylist()
            scores = np.fromiter((_quality_score(x, cfg.quality_score_field) for x in meta), np.float64, n)
            nodes = shard_bits | np.arange(num_read, num_read + n, dtype=np.int64)
            group.append(
                pa.table({"node": nodes, "id": batch.column("id"), "score": scores}, schema=NODE_SCHEMA)
            )
            group_rows += n
            num_read += n
            del batch, meta
            while group_rows >= NODE_GROUP_ROWS:
                table = pa.concat_tables(group)
                node_file.write_table(table.slice(0, NODE_GROUP_ROWS))
                group, group_rows = [table.slice(NODE_GROUP_ROWS)], group_rows - NODE_GROUP_ROWS
        if group_rows:
            node_file.write_table(pa.concat_tables(group))
        del group
        if num_read != num_rows:
            raise ValueError(f"Parquet shard {shard_path}: read {num_read} rows, its footer says {num_rows}")
    if num_banded or not band_runs:
        path = work / "bands" / f"{name}.{len(band_runs):04d}.arrow"
        band_runs.append(_write_band_run(path, keys[: num_banded * bands], banded, bands, shard_bits))
    del keys, banded
    record = {
        "shard": name,
        "fingerprint": fingerprint,
        "num_in": num_rows,
        "num_band_rows": sum(r["rows"] for r in band_runs),
        "band_runs": [r["path"] for r in band_runs],
        "scheme": hasher.scheme_id,
        "num_without_shingles": num_rows - int(sum(r["docs"] for r in band_runs)),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    paths = [Path(r["path"]) for r in band_runs]
    return _done(out, work / "sig" / f"{name}.done.json", record, sig_path, node_path, *paths)


def _write_band_run(
    path: Path, keys: np.ndarray, banded: np.ndarray, bands: int, shard_bits: np.int64
) -> dict:
    """One band run: `keys` (each banded document's `bands` keys, in order; overwritten) sorted as
    `write_run` sorts a table (stably: equal keys stay in row, then band order), with each row's band
    and node. A position in `keys` is (index among the banded documents) * bands + band. Returns
    write_run's entry and "docs", the documents it bands."""
    release_freed_memory()  # the batches' temporaries, before the sort allocates its arrays
    order = sort_order(keys)
    keys.sort()  # in place: the values of keys[order], without a third array
    band = np.empty(len(order), np.uint16)
    for i in range(0, len(order), SIG_BLOCK_ROWS):
        pos = order[i : i + SIG_BLOCK_ROWS]
        band[i : i + len(pos)] = pos % bands
        order[i : i + len(pos)] = shard_bits | banded[pos // bands]  # the node ids, in place
    run = write_run(path, pa.table({"key": keys, "band": band, "node": order}), "key")
    return run | {"docs": len(keys) // bands if bands else 0}


def _distinct_rows(*cols: np.ndarray) -> tuple[np.ndarray, ...]:
    """The distinct rows of equal-length columns, sorted by the first column, then the next."""
    order = sort_order(*cols)
    cols = tuple(c[order] for c in cols)
    keep = np.ones(len(order), dtype=bool)
    if len(order):
        keep[1:] = np.any([c[1:] != c[:-1] for c in cols], axis=0)
    return tuple(c[keep] for c in cols)


def pair_key(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    return mix64(mix64(src) ^ dst.view(np.uint64))


def shard_key(node: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The key that routes pair (src, dst) to the shard of `node` (one of the two): the shard index
    in the high 32 bits, the high half of `pair_key` below. So the pairs of shards [a, b) are the
    keys [a << 32, b << 32), a pair's copies share a key (a chunk never splits them), and the pairs
    of one shard spread evenly over its key range (a node in many pairs does not make one key)."""
    shard = (node >> np.int64(32)).astype(np.uint64) << np.uint64(32)
    return shard | (pair_key(src, dst) >> np.uint64(32))


def shard_key_range(first_shard: int, end_shard: int) -> tuple[int, int]:
    """The keys of `shard_key` of shards [first_shard, end_shard)."""
    return first_shard << 32, end_shard << 32


def pair_row_bytes(bytes_per_row: int, num_perm: int) -> int:
    """Task memory per candidate pair of a verify step with `num_perm` permutations, from its
    figure at 128 (SRC_PAIR_ROW_BYTES, DST_PAIR_ROW_BYTES): 8 bytes more per pair for each
    permutation over 128, never less than a third of it."""
    return max(bytes_per_row // 3, bytes_per_row + 8 * (num_perm - 128))


def candidate_partition(
    q: int, num_partitions: int, band_runs: list[str], budget: int, out_dir: str, fingerprint: Any
) -> dict:
    """Bucket keys in range q: candidate pairs, one run per chunk keyed by the shard of their
    `src` node (`shard_key`)."""
    out = stage_path(out_dir)
    work = work_dir(out) / "minhash"
    runs = RunSet(band_runs, "key")
    paths, num_rows, num_buckets, num_pairs = [], 0, 0, 0
    for c, (lo, hi) in enumerate(
        runs.chunks(*key_range(q, num_partitions), chunk_rows(budget, BAND_ROW_BYTES))
    ):
        t = runs.read(lo, hi)
        if t is None:
            continue
        num_rows += t.num_rows
        key, band, node = (t.column(n).to_numpy() for n in ("key", "band", "node"))
        del t
        order = sort_order(key, band, node)
        key, band, node = key[order], band[order], node[order]
        same = np.zeros(len(node), dtype=bool)
        same[1:] = (band[1:] == band[:-1]) & (key[1:] == key[:-1])
        del key, band, order
        first = np.maximum.accumulate(np.where(same, 0, np.arange(len(node))))
        num_buckets += int(np.sum(same & ~np.r_[False, same[:-1]]))  # buckets with >= 2 members
        members = np.flatnonzero(same)
        # star edges to the bucket's first member, chain edges between neighbours
        src = np.concatenate([node[first[members]], node[members - 1]])
        dst = np.concatenate([node[members], node[members]])
        src, dst = np.minimum(src, dst), np.maximum(src, dst)
        loop = src == dst
        src, dst = _distinct_rows(src[~loop], dst[~loop])
        num_pairs += len(src)
        paths.append(_chunk_path(work, "cand", q, c))
        write_run(paths[-1], pa.table({"key": shard_key(src, src, dst), "src": src, "dst": dst}), "key")
    record = {
        "partition": q,
        "fingerprint": fingerprint,
        "num_band_rows": num_rows,
        "num_buckets_shared": num_buckets,
        "num_pairs_emitted": num_pairs,
        "runs": [str(p) for p in paths],
    }
    return _done(out, work / "cand" / f"q={q:05d}.done.json", record, *paths)


def _signature_blocks(
    nodes: np.ndarray, sig_files: list[str], first_shard: int, end_shard: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(positions in `nodes`, their signatures) for `nodes`, all in shards [first_shard,
    end_shard), in blocks of at most SIG_BLOCK_ROWS, shard by shard in row order: each of those
    shards' .npy files is memory-mapped once, read where needed, and unmapped after its last block
    (its pages then no longer count in this task's memory)."""
    shard = nodes >> np.int64(32)
    if len(nodes) and (shard.min() < first_shard or shard.max() >= end_shard):
        raise ValueError(f"nodes outside shards [{first_shard}, {end_shard}): {np.unique(shard)}")
    order = np.argsort(nodes, kind="stable")
    bounds = np.searchsorted(shard[order], np.arange(first_shard, end_shard + 1))
    for i, s in enumerate(range(first_shard, end_shard)):
        if bounds[i] == bounds[i + 1]:
            continue
        sigs = np.load(sig_files[s], mmap_mode="r")
        for j in range(bounds[i], bounds[i + 1], SIG_BLOCK_ROWS):
            sel = order[j : min(j + SIG_BLOCK_ROWS, bounds[i + 1])]
            yield sel, sigs[nodes[sel] & 0xFFFFFFFF]  # a copy: the mapping goes with `sigs`
        del sigs


def _signatures_in(nodes: np.ndarray, sig_files: list[str], first_shard: int, end_shard: int) -> np.ndarray:
    """The signatures of `nodes`, all in shards [first_shard, end_shard), in their order."""
    out = None
    for sel, sigs in _signature_blocks(nodes, sig_files, first_shard, end_shard):
        if out is None:
            out = np.empty((len(nodes), sigs.shape[1]), dtype=sigs.dtype)
        out[sel] = sigs
    return out if out is not None else np.empty((0, 0), np.uint32)


def _estimated_jaccard(
    src_sigs: np.ndarray, dst: np.ndarray, sig_files: list[str], first_shard: int, end_shard: int
) -> np.ndarray:
    """The share of equal values between each row of `src_sigs` and the signature of the node in
    `dst` at the same position (in shards [first_shard, end_shard)): `(a == b).mean(axis=1)`, the
    same floats, without holding the dst signatures or a (rows, num_perm) float temporary."""
    same = np.zeros(len(dst), np.int64)
    for sel, sigs in _signature_blocks(dst, sig_files, first_shard, end_shard):
        same[sel] = np.count_nonzero(src_sigs[sel] == sigs, axis=1)
    return same / max(1, src_sigs.shape[1])


def verify_src_partition(
    r: int,
    first_shard: int,
    end_shard: int,
    cand_runs: list[str],
    sig_files: list[str],
    verify: bool,
    budget: int,
    bytes_per_row: int,
    out_dir: str,
    fingerprint: Any,
) -> dict:
    """The distinct candidate pairs whose `src` is in shards [first_shard, end_shard), with the
    `src` signature (read from those shards' files only; none when not `verify`), one run per chunk
    keyed by the shard of `dst` (`shard_key`)."""
    out = stage_path(out_dir)
    work = work_dir(out) / "minhash"
    runs = RunSet(cand_runs, "key")
    paths, num_rows, num_pairs = [], 0, 0
    lo, hi = shard_key_range(first_shard, end_shard)
    for c, (a, b) in enumerate(runs.chunks(lo, hi, chunk_rows(budget, bytes_per_row))):
        t = runs.read(a, b, ["src", "dst"])
        if t is None:  # the same pair has the same key: it is in this chunk or not at all
            continue
        num_rows += t.num_rows
        src, dst = (t.column(n).to_numpy() for n in ("src", "dst"))
        del t
        key, src, dst = _distinct_rows(shard_key(dst, src, dst), src, dst)  # sorted by the new key
        num_pairs += len(src)
        cols = {"key": key, "src": src, "dst": dst}
        if verify:
            sigs = _signatures_in(src, sig_files, first_shard, end_shard)
            cols["sig"] = pa.FixedSizeListArray.from_arrays(pa.array(sigs.ravel()), sigs.shape[1])
            del sigs
        paths.append(_chunk_path(work, "vsrc", r, c))
        write_run(paths[-1], pa.table(cols), "key")
        del cols
    record = {
        "partition": r,
        "shards": [first_shard, end_shard],
        "fingerprint": fingerprint,
        "num_rows": num_rows,
        "num_pairs": num_pairs,
        "runs": [str(p) for p in paths],
    }
    return _done(out, work / "vsrc" / f"r={r:05d}.done.json", record, *paths)


def verify_dst_partition(
    r: int,
    first_shard: int,
    end_shard: int,
    src_runs: list[str],
    sig_files: list[str],
    threshold: float | None,
    budget: int,
    bytes_per_row: int,
    out_dir: str,
    fingerprint: Any,
) -> dict:
    """The pairs whose `dst` is in shards [first_shard, end_shard) (each pair once), with the `dst`
    signature read from those shards' files only: the edges whose estimated Jaccard reaches
    `threshold` (all of them when it is None: no verification), one Parquet file per chunk (at
    least one, maybe empty)."""
    out = stage_path(out_dir)
    work = work_dir(out) / "minhash"
    runs = RunSet(src_runs, "key")
    paths, num_candidates, num_edges = [], 0, 0
    lo, hi = shard_key_range(first_shard, end_shard)
    for c, (a, b) in enumerate(runs.chunks(lo, hi, chunk_rows(budget, bytes_per_row))):
        t = runs.read(a, b)
        src = dst = np.empty(0, np.int64)
        if t is not None:
            src, dst = (t.column(n).to_numpy() for n in ("src", "dst"))
            num_candidates += len(src)
            if threshold is not None:
                sig = t.column("sig").chunk(0)  # one chunk (`read` combines them): not copied
                src_sigs = sig.flatten().to_numpy().reshape(len(sig), sig.type.list_size)
                est = _estimated_jaccard(src_sigs, dst, sig_files, first_shard, end_shard)
                del sig, src_sigs
                src, dst = src[est >= threshold], dst[est >= threshold]
            del t
        num_edges += len(src)
        paths.append(_chunk_path(work, "edges", r, c, "parquet"))
        write_table(paths[-1], pa.table({"src": src, "dst": dst}, schema=EDGE_SCHEMA))
    record = {
        "partition": r,
        "shards": [first_shard, end_shard],
        "fingerprint": fingerprint,
        "num_candidates": num_candidates,
        "num_edges": num_edges,
        "num_dropped": num_candidates - num_edges,
        "edge_files": [str(p) for p in paths],
    }
    return _done(out, work / "edges" / f"r={r:05d}.done.json", record, *paths)


def member_runs(component_file: str, p: int, out_dir: str, fingerprint: Any) -> dict:
    """One components file (sorted by node) as a run keyed by node, for reads by range of shards."""
    out = stage_path(out_dir)
    work = work_dir(out) / "minhash"
    t = pq.read_table(component_file, columns=["node", "component"])
    path = work / "members" / f"from-{p:05d}.arrow"
    run = write_run(path, t, "node")
    record = {"partition": p, "fingerprint": fingerprint, "num_nodes": run["rows"], "run": str(path)}
    return _done(out, work / "members" / f"from-{p:05d}.done.json", record, path)


def member_partition(
    r: int,
    first_shard: int,
    end_shard: int,
    runs: list[str],
    node_files: list[str],
    out_dir: str,
    fingerprint: Any,
) -> dict:
    """The clustered nodes of shards [first_shard, end_shard) with their id and quality score (each
    shard's node file read once, here), as a run keyed by a hash of the component."""
    out = stage_path(out_dir)
    work = work_dir(out) / "minhash"
    t = RunSet(runs, "node").read(first_shard << 32, end_shard << 32)
    node = t.column("node").to_numpy() if t is not None else np.empty(0, np.int64)
    comp = t.column("component").to_numpy() if t is not None else np.empty(0, np.int64)
    order = np.argsort(node, kind="stable")
    node, comp = node[order], comp[order]
    ids, scores = [], []
    shard = node >> 32
    for s in np.unique(shard):
        a, b = np.searchsorted(shard, [s, s + 1])
        info = pq.read_table(node_files[s], columns=["id", "score"])
        rows = pa.array(node[a:b] & 0xFFFFFFFF)
        ids.append(info.column("id").take(rows))
        scores.append(info.column("score").take(rows))
    table = pa.table(
        {
            "key": mix64(comp),
            "component": comp,
            "node": node,
            "id": pa.chunked_array([c for x in ids for c in x.chunks], pa.string()),
            "score": pa.chunked_array([c for x in scores for c in x.chunks], pa.float64()),
        }
    )
    path = work / "members" / f"r={r:05d}.arrow"
    run = write_run(path, table, "key")
    record = {"partition": r, "fingerprint": fingerprint, "num_nodes": run["rows"], "run": str(path)}
    return _done(out, work / "members" / f"r={r:05d}.done.json", record, path)


def survivor_partition(
    q: int, num_partitions: int, runs: list[str], survivor: str, budget: int, out_dir: str, fingerprint: Any
) -> dict:
    """Per cluster in key range q: the survivor is the highest score, then the smallest id; the rest
    are removed, written as runs keyed by their shard (`unit`)."""
    out = stage_path(out_dir)
    work = work_dir(out) / "minhash"
    members = RunSet(runs, "key")
    sizes: Counter = Counter()
    paths, num_removed = [], 0
    for c, (lo, hi) in enumerate(
        members.chunks(*key_range(q, num_partitions), chunk_rows(budget, MEMBER_ROW_BYTES))
    ):
        t = members.read(lo, hi)
        if t is None:
            continue
        order = [("component", "ascending")]
        if survivor == "quality_then_id":
            order.append(("score", "descending"))
        order += [("id", "ascending")]
        t = t.sort_by(order)
        comp = t.column("component").to_numpy()
        start = np.ones(len(comp), dtype=bool)
        start[1:] = comp[1:] != comp[:-1]
        idx = np.arange(len(comp))
        first = np.maximum.accumulate(np.where(start, idx, 0))
        group_sizes = np.diff(np.r_[np.flatnonzero(start), len(comp)])
        size_of = np.repeat(group_sizes, group_sizes)
        sizes.update(group_sizes.tolist())
        ids = t.column("id")
        # The cluster id is the id of the component's smallest node (the component label itself),
        # so it does not change with the survivor rule.
        nodes = t.column("node").to_numpy()
        group = np.cumsum(start) - 1
        anchor_of_group = np.empty(len(group_sizes), dtype=np.int64)
        anchors = np.flatnonzero(nodes == comp)
        anchor_of_group[group[anchors]] = anchors
        cluster_rows = anchor_of_group[group]
        gone = np.flatnonzero(~start)
        removed = pa.table(
            {
                "unit": (nodes[gone] >> 32).astype(np.uint64),
                "row": nodes[gone] & 0xFFFFFFFF,
                "cluster_id": ids.take(pa.array(cluster_rows[gone])),
                "survivor_id": ids.take(pa.array(first[gone])),
                "cluster_size": size_of[gone],
            }
        )
        num_removed += removed.num_rows
        paths.append(_chunk_path(work, "removed", q, c))
        write_run(paths[-1], removed, "unit")
    record = {
        "partition": q,
        "fingerprint": fingerprint,
        "num_removed": num_removed,
        "cluster_sizes": {str(k): v for k, v in sorted(sizes.items())},
        "runs": [str(p) for p in paths],
    }
    return _done(out, work / "removed" / f"q={q:05d}.done.json", record, *paths)


def list_path(out: Path, name: str) -> Path:
    """The removal list of one shard: its rows that near-duplicate removal drops."""
    return work_dir(out) / "minhash" / "lists" / f"{name}.parquet"


def removal_lists(
    r: int, first_shard: int, names: list[str], runs: list[str], out_dir: str, fingerprint: Any
) -> dict:
    """The removal lists of shards first_shard .. first_shard + len(names) - 1."""
    out = stage_path(out_dir)
    paths = [list_path(out, n) for n in names]
    num_rows = write_unit_lists(runs, first_shard, paths, LIST_SCHEMA, "row")
    record = {"partition": r, "fingerprint": fingerprint, "num_removed": num_rows}
    return _done(out, work_dir(out) / "minhash" / "lists" / f"r={r:05d}.done.json", record, *paths)


def finalize_shard(
    src_shard: str,
    rel: str,
    batch_rows: int,
    num_examples: int,
    out_dir: str,
    fingerprint: Any,
) -> dict:
    """The shard minus the rows of its removal list, to `_work/minhash/final/<rel>` (the pack phase
    then cuts those into shards/): reads the shard and that list, nothing else."""
    t0 = time.perf_counter()
    out = stage_path(out_dir)
    work = work_dir(out) / "minhash"
    name = stage_path(src_shard).stem
    removed = list_path(out, name)
    r = pq.ParquetFile(removed).read()  # not read_table: its dataset layer costs a first import
    tally = RejectTally(num_examples)
    drop = {
        row: (
            Reject("near_duplicate", sid),
            {"near_dup_cluster": cid, "duplicate_of": sid, "near_dup_cluster_size": size},
        )
        for row, cid, sid, size in zip(*(r.column(n).to_pylist() for n in LIST_SCHEMA.names))
    }
    record = filter_unit(
        name,
        fingerprint,
        t0,
        stage_path(src_shard),
        out,
        work / "final" / rel,
        out / "rejects" / f"{name}.parquet",
        None,
        "minhash_dedup",
        drop,
        tally,
        batch_rows,
    )
    record["bytes_read"] = stat(src_shard)["size"] + removed.stat().st_size  # each read whole
    write_json(work / "final" / f"{name}.done.json", record)
    return record
