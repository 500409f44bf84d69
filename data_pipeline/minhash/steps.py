"""The work of one Ray task in MinHash dedup, as plain functions (no Ray import).

Node ids are `(shard_index << 32) | row`, so a node says where its document lives.
1. `signature_shard`: MinHash signatures of one shard (kept as .npy for verification) and its
   band buckets, written into hash partitions of (band, bucket key).
2. `candidate_partition`: documents sharing a bucket become candidate edges (star to the bucket's
   first member plus a chain through the members: linear in bucket size, connects all of them).
3. `verify_partition`: estimated Jaccard from the two signatures; edges below the threshold drop.
   (Connected components then run in `components.py`.)
4. `member_partition` / `survivor_partition`: gather each cluster's members with their id and
   quality score, pick the survivor (highest score, then smallest id) and list the rest.
5. `finalize_shard`: the shard minus the removed documents; each removed one goes to rejects/ with
   reason `near_duplicate`, its cluster id and survivor id.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_pipeline.document import Reject
from data_pipeline.minhash.components import partition_of
from data_pipeline.minhash.lsh import band_keys
from data_pipeline.minhash.signatures import EMPTY_VALUE, MinHasher
from data_pipeline.tasks import RejectTally, filter_unit
from pretrain.core.done import output_sizes
from pretrain.core.files import write_json
from pretrain.core.shards import write_table

LAYOUT_VERSION = 2  # bump when a step's files change shape, so old _work records are not reused
BAND_SCHEMA = pa.schema([("band", pa.int32()), ("key", pa.uint64()), ("node", pa.int64())])
EDGE_SCHEMA = pa.schema([("src", pa.int64()), ("dst", pa.int64())])
NODE_SCHEMA = pa.schema([("node", pa.int64()), ("id", pa.string()), ("score", pa.float64())])
MEMBER_SCHEMA = pa.schema(
    [("component", pa.int64()), ("node", pa.int64()), ("id", pa.string()), ("score", pa.float64())]
)
REMOVED_SCHEMA = pa.schema(
    [
        ("shard", pa.int64()),
        ("node", pa.int64()),
        ("cluster_id", pa.string()),
        ("survivor_id", pa.string()),
        ("cluster_size", pa.int64()),
    ]
)


def node_ids(shard_index: int, num_rows: int) -> np.ndarray:
    return (np.int64(shard_index) << np.int64(32)) | np.arange(num_rows, dtype=np.int64)


def _done(out: Path, done_path: Path, record: dict, *paths: Path) -> dict:
    record["outputs"] = output_sizes(out, *paths)
    write_json(done_path, record)
    return record


def _quality_score(meta_json: str, field: str) -> float:
    if not field or f'"{field}"' not in meta_json:  # skip the JSON parse for docs without a score
        return 0.0
    value = json.loads(meta_json).get(field)
    return float(value) if isinstance(value, (int, float)) else 0.0


def signature_shard(
    shard_path: str, shard_index: int, cfg, bands: int, rows: int, out_dir: str, fingerprint: Any
) -> dict:
    t0 = time.perf_counter()
    out = Path(out_dir)
    work = out / "_work" / "minhash"
    name = Path(shard_path).stem
    table = pq.read_table(shard_path, columns=["id", "text", "metadata"])
    hasher = MinHasher(num_perm=cfg.num_perm, seed=cfg.seed, ngram=cfg.ngram, mode=cfg.mode)
    sigs = hasher.signatures(table.column("text").to_pylist())
    sig_path = work / "sig" / f"{name}.npy"
    sig_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = sig_path.with_suffix(".tmp.npy")
    np.save(tmp, sigs)
    tmp.replace(sig_path)
    nodes = node_ids(shard_index, table.num_rows)
    scores = [_quality_score(m, cfg.quality_score_field) for m in table.column("metadata").to_pylist()]
    node_path = work / "nodes" / f"{name}.parquet"
    write_table(
        node_path, pa.table({"node": nodes, "id": table.column("id"), "score": scores}, schema=NODE_SCHEMA)
    )
    # A document without shingles has the all-max "empty" signature: it would share every bucket
    # with every other such document, so it takes no part in banding (it is never a near-dup).
    has_shingles = ~(sigs == EMPTY_VALUE).all(axis=1)
    keys = band_keys(sigs[has_shingles], bands, rows)  # (N', bands) uint64
    band = np.broadcast_to(np.arange(bands, dtype=np.int32), keys.shape).ravel()
    flat_keys = keys.ravel()
    flat_nodes = np.repeat(nodes[has_shingles], bands)
    part = partition_of(
        (flat_keys ^ (band.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))).view(np.int64),
        cfg.num_partitions,
    )
    band_paths = []
    for p in range(cfg.num_partitions):
        sel = part == p
        band_paths.append(work / "bands" / f"p={p:05d}" / f"{name}.parquet")
        write_table(
            band_paths[-1],
            pa.table({"band": band[sel], "key": flat_keys[sel], "node": flat_nodes[sel]}, schema=BAND_SCHEMA),
        )
    record = {
        "shard": name,
        "fingerprint": fingerprint,
        "num_in": table.num_rows,
        "scheme": hasher.scheme_id,
        "num_without_shingles": int((~has_shingles).sum()),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return _done(out, work / "sig" / f"{name}.done.json", record, sig_path, node_path, *band_paths)


def candidate_partition(
    p: int, shard_names: list[str], num_partitions: int, out_dir: str, fingerprint: Any
) -> dict:
    out = Path(out_dir)
    work = out / "_work" / "minhash"
    tables = [pq.read_table(work / "bands" / f"p={p:05d}" / f"{n}.parquet") for n in shard_names]
    t = pa.concat_tables(tables) if tables else BAND_SCHEMA.empty_table()
    src = dst = np.empty(0, np.int64)
    num_buckets = 0
    if t.num_rows:
        t = t.sort_by([("band", "ascending"), ("key", "ascending"), ("node", "ascending")])
        band = t.column("band").to_numpy()
        key = t.column("key").to_numpy()
        node = t.column("node").to_numpy()
        same = np.zeros(len(node), dtype=bool)
        same[1:] = (band[1:] == band[:-1]) & (key[1:] == key[:-1])
        idx = np.arange(len(node))
        first = np.maximum.accumulate(np.where(same, 0, idx))
        num_buckets = int(np.sum(same & ~np.r_[False, same[:-1]]))  # buckets with >= 2 members
        members = np.flatnonzero(same)
        # star edges to the bucket's first member, chain edges between neighbours
        src = np.concatenate([node[first[members]], node[members - 1]])
        dst = np.concatenate([node[members], node[members]])
        pairs = np.unique(np.stack([np.minimum(src, dst), np.maximum(src, dst)], axis=1), axis=0)
        pairs = pairs[pairs[:, 0] != pairs[:, 1]]
        src, dst = pairs[:, 0].copy(), pairs[:, 1].copy()
    # The same pair usually turns up in several band partitions: route each pair to one verify
    # partition by a hash of the pair itself, so it is verified (and counted) once.
    target = partition_of(src * np.int64(0x9E3779B97F4A7C1) ^ dst, num_partitions)
    paths = []
    for q in range(num_partitions):
        sel = target == q
        paths.append(work / "cand" / f"q={q:05d}" / f"from-{p:05d}.parquet")
        write_table(paths[-1], pa.table({"src": src[sel], "dst": dst[sel]}, schema=EDGE_SCHEMA))
    record = {
        "partition": p,
        "fingerprint": fingerprint,
        "num_band_rows": t.num_rows,
        "num_buckets_shared": num_buckets,
        "num_pairs_emitted": int(len(src)),
    }
    return _done(out, work / "cand" / f"p={p:05d}.done.json", record, *paths)


def _signatures_of(nodes: np.ndarray, sig_files: list[str]) -> np.ndarray:
    """Signatures of arbitrary nodes, reading each shard's .npy memory-mapped."""
    shard = (nodes >> 32).astype(np.int64)
    row = (nodes & 0xFFFFFFFF).astype(np.int64)
    out = None
    for s in np.unique(shard):
        sigs = np.load(sig_files[s], mmap_mode="r")
        sel = np.flatnonzero(shard == s)
        if out is None:
            out = np.empty((len(nodes), sigs.shape[1]), dtype=sigs.dtype)
        out[sel] = sigs[row[sel]]
    return out if out is not None else np.empty((0, 0), np.uint32)


def verify_partition(
    p: int, sig_files: list[str], threshold: float, verify: bool, out_dir: str, fingerprint: Any
) -> dict:
    out = Path(out_dir)
    work = out / "_work" / "minhash"
    files = sorted((work / "cand" / f"q={p:05d}").glob("from-*.parquet"))
    t = pa.concat_tables([pq.read_table(f) for f in files]) if files else EDGE_SCHEMA.empty_table()
    pairs = np.stack([t.column("src").to_numpy(), t.column("dst").to_numpy()], axis=1).reshape(-1, 2)
    pairs = np.unique(pairs, axis=0)
    src, dst = pairs[:, 0].copy(), pairs[:, 1].copy()
    num_candidates = int(len(src))
    if verify and len(src):
        est = (_signatures_of(src, sig_files) == _signatures_of(dst, sig_files)).mean(axis=1)
        keep = est >= threshold
        src, dst = src[keep], dst[keep]
    path = work / "edges" / f"p={p:05d}.parquet"
    write_table(path, pa.table({"src": src, "dst": dst}, schema=EDGE_SCHEMA))
    record = {
        "partition": p,
        "fingerprint": fingerprint,
        "num_candidates": num_candidates,
        "num_edges": int(len(src)),
        "num_dropped": num_candidates - int(len(src)),
    }
    return _done(out, work / "edges" / f"p={p:05d}.done.json", record, path)


def member_partition(
    component_file: str, p: int, node_files: list[str], num_partitions: int, out_dir: str, fingerprint: Any
) -> dict:
    """Attach id and score to the clustered nodes of one component file; route rows by component."""
    out = Path(out_dir)
    work = out / "_work" / "minhash"
    t = pq.read_table(component_file)
    node, comp = t.column("node").to_numpy(), t.column("component").to_numpy()
    ids = np.empty(len(node), dtype=object)
    scores = np.zeros(len(node))
    shard = node >> 32
    for s in np.unique(shard):
        sel = np.flatnonzero(shard == s)
        info = pq.read_table(node_files[s], columns=["id", "score"])
        rows = pa.array(node[sel] & 0xFFFFFFFF)
        ids[sel] = info.column("id").take(rows).to_numpy(zero_copy_only=False)
        scores[sel] = info.column("score").take(rows).to_numpy()
    target = partition_of(comp, num_partitions)
    paths = []
    for q in range(num_partitions):
        sel = target == q
        paths.append(work / "members" / f"q={q:05d}" / f"from-{p:05d}.parquet")
        write_table(
            paths[-1],
            pa.table(
                {"component": comp[sel], "node": node[sel], "id": list(ids[sel]), "score": scores[sel]},
                schema=MEMBER_SCHEMA,
            ),
        )
    record = {"partition": p, "fingerprint": fingerprint, "num_nodes": len(node)}
    return _done(out, work / "members" / f"from-{p:05d}.done.json", record, *paths)


def survivor_partition(q: int, num_partitions: int, survivor: str, out_dir: str, fingerprint: Any) -> dict:
    """Per cluster: the survivor is the highest score, then the smallest id; the rest are removed."""
    out = Path(out_dir)
    work = out / "_work" / "minhash"
    files = [work / "members" / f"q={q:05d}" / f"from-{p:05d}.parquet" for p in range(num_partitions)]
    t = pa.concat_tables([pq.read_table(f) for f in files])
    sizes: Counter = Counter()
    removed = REMOVED_SCHEMA.empty_table()
    if t.num_rows:
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
                "shard": nodes[gone] >> 32,
                "node": nodes[gone],
                "cluster_id": ids.take(pa.array(cluster_rows[gone])),
                "survivor_id": ids.take(pa.array(first[gone])),
                "cluster_size": size_of[gone],
            },
            schema=REMOVED_SCHEMA,
        ).sort_by([("shard", "ascending"), ("node", "ascending")])
    path = work / "removed" / f"q={q:05d}.parquet"
    write_table(path, removed)
    record = {
        "partition": q,
        "fingerprint": fingerprint,
        "num_removed": removed.num_rows,
        "cluster_sizes": {str(k): v for k, v in sorted(sizes.items())},
    }
    return _done(out, work / "removed" / f"q={q:05d}.done.json", record, path)


def finalize_shard(
    src_shard: str,
    rel: str,
    shard_index: int,
    num_partitions: int,
    batch_rows: int,
    num_examples: int,
    out_dir: str,
    fingerprint: Any,
) -> dict:
    t0 = time.perf_counter()
    out = Path(out_dir)
    work = out / "_work" / "minhash"
    name = Path(src_shard).stem
    gone: dict[int, tuple[str, str, int]] = {}
    for q in range(num_partitions):
        r = pq.read_table(work / "removed" / f"q={q:05d}.parquet", filters=[("shard", "=", shard_index)])
        for node, cid, sid, size in zip(
            r.column("node").to_pylist(),
            r.column("cluster_id").to_pylist(),
            r.column("survivor_id").to_pylist(),
            r.column("cluster_size").to_pylist(),
        ):
            gone[node & 0xFFFFFFFF] = (cid, sid, size)
    tally = RejectTally(num_examples)
    drop = {
        row: (
            Reject("near_duplicate", sid),
            {"near_dup_cluster": cid, "duplicate_of": sid, "near_dup_cluster_size": size},
        )
        for row, (cid, sid, size) in gone.items()
    }
    return filter_unit(
        name,
        fingerprint,
        t0,
        Path(src_shard),
        out,
        out / "shards" / rel,
        out / "rejects" / f"{name}.parquet",
        work / "final" / f"{name}.done.json",
        "minhash_dedup",
        drop,
        tally,
        batch_rows,
    )
