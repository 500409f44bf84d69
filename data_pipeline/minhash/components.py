"""Connected components of the near-duplicate graph: numpy union-find or Ray large-star/small-star.

Input: Parquet files with int64 columns `src`, `dst` (candidate edges; self-loops and duplicates
allowed). Output: `work_dir/components/part-PPPPP.parquet` with `node`, `component` (the smallest
node id of its component), each node of some edge exactly once, sorted by node, node in partition
`splitmix64(node) % num_partitions`; plus `components/done.json` with the summary.

`components()` picks the single-process union-find for small inputs and `ray_components()`
otherwise; both write the same bytes. `ray_components` alternates large-star and small-star
(Kiveris et al. 2014, "Connected Components in MapReduce and Beyond"): every step is one Ray task per
hash partition, writes `iter_NNNN/part-PPPPP.parquet` atomically plus `iter_NNNN/done.json`, and a
rerun resumes after the last finished step (and keeps finished partitions of an unfinished one).
Ray must already be initialised by the caller (see pretrain.core.runner.ensure_ray).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_pipeline.shuffle import mix64, sort_order
from pretrain.core.files import atomic_path, read_json, write_json
from pretrain.core.hashing import file_fingerprint
from pretrain.core.runner import raise_errors, ray_map

log = logging.getLogger(__name__)

EDGE_SCHEMA = pa.schema(
    [pa.field("hi", pa.int64(), nullable=False), pa.field("lo", pa.int64(), nullable=False)]
)
COMPONENT_SCHEMA = pa.schema(
    [pa.field("node", pa.int64(), nullable=False), pa.field("component", pa.int64(), nullable=False)]
)
PARQUET_OPTS: dict[str, Any] = {"compression": "zstd", "compression_level": 3, "use_dictionary": False}
OFFSETS_KEY = b"partition_offsets"  # rows [off[p], off[p+1]) of a step file are routed to partition p
STATS_KEY = b"step_stats"
# Measured here (2 CPUs, random pair-like graphs in 4 files, bench and tests idle otherwise): one
# union-find task takes 1.4 s for 1M edges and 10.2 s for 4M at 112 bytes of peak memory per edge;
# large-star/small-star takes 12.9 s and 40.5 s (9 star steps). Union-find wins at every size that
# fits one task, so the distributed path starts where it no longer fits: half a task's budget at
# UNION_FIND_EDGE_BYTES per edge (DEFAULT_SMALL_EDGE_LIMIT when the budget is unknown).
DEFAULT_SMALL_EDGE_LIMIT = 5_000_000
UNION_FIND_EDGE_BYTES = 120
COMPONENT_EDGE_BYTES = 100  # peak task memory per routed edge of a star step


class ComponentsNotConverged(RuntimeError):
    """max_iterations star steps ran without convergence; finished steps are kept for a rerun."""


class ComponentTooLarge(RuntimeError):
    """One task of the distributed path would hold more edges than its memory budget."""


def partition_of(nodes: np.ndarray, num_partitions: int) -> np.ndarray:
    """splitmix64(node) % num_partitions: deterministic across processes, unlike Python's hash()."""
    return (mix64(nodes) % np.uint64(num_partitions)).astype(np.int64)


def union_find_limit(budget_bytes: int) -> int:
    """Edges up to which components run as one union-find task: as many as half a task's memory
    budget (bytes) holds at UNION_FIND_EDGE_BYTES each; DEFAULT_SMALL_EDGE_LIMIT when it is
    unknown (0)."""
    return int(budget_bytes / 2 / UNION_FIND_EDGE_BYTES) if budget_bytes else DEFAULT_SMALL_EDGE_LIMIT


def union_find_components(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nodes, component) for every node of an edge, sorted by node; component = smallest node id.

    Vectorised hook-and-compress: each round hooks every tree root to the smallest root across its
    edges (so parents only ever point to smaller ids) and then pointer-jumps to stars. Each round at
    least halves the number of trees per component, so there are O(log n) rounds.
    """
    src, dst = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
    if src.shape != dst.shape or src.ndim != 1:
        raise ValueError(f"src and dst must be 1-D of equal length, got {src.shape} and {dst.shape}")
    nodes, index = np.unique(np.concatenate([src, dst]), return_inverse=True)
    u, v = index[: len(src)], index[len(src) :]
    parent = np.arange(len(nodes))
    while True:
        pu, pv = parent[u], parent[v]
        differ = pu != pv
        if not differ.any():
            break
        u, v, pu, pv = u[differ], v[differ], pu[differ], pv[differ]  # joined edges stay joined
        np.minimum.at(parent, np.maximum(pu, pv), np.minimum(pu, pv))
        while not np.array_equal(grand := parent[parent], parent):
            parent = grand
    return nodes, nodes[parent]


def large_star(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """One large-star reducer over directed pairs (u, v) of the nodes u it owns.

    For each u with m = min(u, neighbours): link every larger neighbour v > u to m. A node whose only
    neighbour is itself keeps its self-loop (that is how a self-loop-only node stays in the output).
    Returns edges as (hi, lo) with hi >= lo and the number of edges moved (those with m != u).
    """
    u, v = _unique_pairs(u, v)
    starts, counts = _groups(u)
    node, first = u[starts], v[starts]  # v is sorted within a group: first is the smallest neighbour
    m = np.repeat(np.minimum(node, first), counts)
    larger = v > u
    isolated = (counts == 1) & (first == node)
    hi = np.concatenate([v[larger], node[isolated]])
    lo = np.concatenate([m[larger], node[isolated]])
    return hi, lo, int(np.count_nonzero(larger & (m != u)))


def small_star(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """One small-star reducer over pairs (u, v), v <= u, of the nodes u it owns.

    For each u with m = min(smaller-or-equal neighbours): link u and those neighbours to m. Returns
    edges as (hi, lo) with hi >= lo and the number of edges moved (all of u's but the one to m).
    """
    u, v = _unique_pairs(u, v)
    starts, counts = _groups(u)
    node, m = u[starts], v[starts]
    m_per_edge = np.repeat(m, counts)
    moved = v != m_per_edge
    hi = np.concatenate([v[moved], node])
    lo = np.concatenate([m_per_edge[moved], m])
    return hi, lo, int(len(u) - len(starts))


def components(
    edge_files: list[str],
    work_dir: str,
    num_partitions: int,
    small_edge_limit: int = DEFAULT_SMALL_EDGE_LIMIT,
    max_iterations: int = 100,
    budget_bytes: int = 0,
) -> dict:
    """One union-find Ray task when the edge files hold <= small_edge_limit rows (read from
    footers), else large-star/small-star over many; the driver never reads the edges.

    Both paths write the same component files (byte for byte) and return the same summary keys.
    """
    num_edges = sum(_edge_file_rows(f) for f in edge_files)
    if num_edges > small_edge_limit:
        return ray_components(edge_files, work_dir, num_partitions, max_iterations, budget_bytes)
    work = Path(work_dir)
    if (summary := _start(edge_files, work, num_partitions)) is not None:
        return summary
    (res,) = _run(_union_find_task, [(edge_files, work, num_partitions)])
    return _finish(work, num_partitions, res["num_nodes"], res["num_components"], [], "union_find")


def _union_find_task(edge_files: list[str], work: Path, num_partitions: int) -> dict:
    edges = [_read_edge_file(f) for f in edge_files]
    src = np.concatenate([np.empty(0, np.int64), *(e[0] for e in edges)])
    dst = np.concatenate([np.empty(0, np.int64), *(e[1] for e in edges)])
    nodes, comp = union_find_components(src, dst)
    parts = partition_of(nodes, num_partitions)
    order = np.argsort(parts, kind="stable")  # stable: nodes stay sorted within a partition
    bounds = np.searchsorted(parts[order], np.arange(num_partitions + 1))
    for p in range(num_partitions):
        rows = order[bounds[p] : bounds[p + 1]]
        _write_components(_part_path(work / "components", p), nodes[rows], comp[rows])
    return {"num_nodes": len(nodes), "num_components": int(np.sum(nodes == comp))}


def ray_components(
    edge_files: list[str],
    work_dir: str,
    num_partitions: int,
    max_iterations: int = 100,
    budget_bytes: int = 0,
) -> dict:
    """Distributed components: large-star / small-star steps until two in a row move no edge.

    Memory: the driver only sees per-task counts; each task holds the edges of one partition. A
    large component ends as a star on its smallest node, whose partition then holds all of its
    edges: a task whose edges would pass `budget_bytes` (0: no check) at COMPONENT_EDGE_BYTES each
    fails before reading them with ComponentTooLarge, which gives the figures.
    Returns {"num_iterations" (star steps), "num_nodes", "num_components", "component_files", ...};
    raises ComponentsNotConverged after max_iterations star steps (a rerun with more continues).
    """
    import ray  # heavy; only the distributed path needs it

    if not ray.is_initialized():
        raise RuntimeError(
            "ray_components needs Ray initialised by the caller (ray.init or pretrain.core.runner.ensure_ray)"
        )
    if max_iterations < 2:
        raise ValueError(
            f"max_iterations must be >= 2 (one large-star, one small-star), got {max_iterations}"
        )
    work = Path(work_dir)
    if (summary := _start(edge_files, work, num_partitions)) is not None:
        return summary

    def route_jobs(out_dir: Path) -> list[tuple]:
        return [(str(f), _part_path(out_dir, i), num_partitions) for i, f in enumerate(edge_files)]

    num_files = _step(work, 0, lambda d: _run(_route_input_task, route_jobs(d)))["num_files"]
    changed: list[int] = []
    while not (len(changed) >= 2 and changed[-1] == changed[-2] == 0):
        step = len(changed) + 1
        if step > max_iterations:
            raise ComponentsNotConverged(
                f"not converged after {max_iterations} star steps (edges moved per step: {changed}); "
                f"rerun with a larger max_iterations to continue from {work}"
            )
        task = _large_star_task if step % 2 else _small_star_task
        jobs = _reduce_jobs(work, step - 1, num_files, num_partitions, _iter_dir(work, step), budget_bytes)
        done = _step(work, step, lambda d, task=task, jobs=jobs: _run(task, jobs))
        changed.append(done["changed_edges"])
        num_files = num_partitions
        log.info(
            "components step %d (%s): %d edges, %d moved", step, task.__name__, done["num_edges"], changed[-1]
        )
    # Two still steps in a row leave stars centred on each component's minimum. A still large-star
    # step outputs its input unchanged, so the last small-star output (routed by both endpoints, as
    # the final step needs) already holds them.
    last_small = len(changed) - len(changed) % 2
    jobs = _reduce_jobs(work, last_small, num_partitions, num_partitions, work / "components", budget_bytes)
    results = _run(_components_task, jobs)
    num_nodes = sum(r["num_nodes"] for r in results)
    return _finish(
        work, num_partitions, num_nodes, sum(r["num_components"] for r in results), changed, "ray_star"
    )


# --- Ray tasks: one partition each, atomic output, a finished partition file is reused on rerun ---


def _route_input_task(path: str, out: Path, num_partitions: int) -> dict:
    if (stats := _existing_stats(out)) is not None:
        return stats
    src, dst = _read_edge_file(path)
    hi, lo = _unique_pairs(np.maximum(src, dst), np.minimum(src, dst))
    _write_routed(
        out, *_route_both(hi, lo, num_partitions), num_partitions, {"changed_edges": 0, "num_edges": len(hi)}
    )
    return _existing_stats(out)


def _large_star_task(
    inputs: list[str], partition: int, num_partitions: int, out: Path, budget: int = 0
) -> dict:
    if (stats := _existing_stats(out)) is not None:
        return stats
    a, b = _read_routed(inputs, partition, budget)
    u, v = np.concatenate([a, b]), np.concatenate([b, a])
    mine = partition_of(u, num_partitions) == partition
    hi, lo, moved = large_star(u[mine], v[mine])
    hi, lo = _unique_pairs(hi, lo)
    # small-star is keyed by the larger endpoint
    dest = partition_of(hi, num_partitions)
    _write_routed(out, hi, lo, dest, num_partitions, {"changed_edges": moved, "num_edges": len(hi)})
    return _existing_stats(out)


def _small_star_task(
    inputs: list[str], partition: int, num_partitions: int, out: Path, budget: int = 0
) -> dict:
    if (stats := _existing_stats(out)) is not None:
        return stats
    hi, lo, moved = small_star(*_read_routed(inputs, partition, budget))
    hi, lo = _unique_pairs(hi, lo)
    # large-star (and the final step) need each edge at both endpoints
    _write_routed(
        out,
        *_route_both(hi, lo, num_partitions),
        num_partitions,
        {"changed_edges": moved, "num_edges": len(hi)},
    )
    return _existing_stats(out)


def _components_task(
    inputs: list[str], partition: int, num_partitions: int, out: Path, budget: int = 0
) -> dict:
    hi, lo = _read_routed(inputs, partition, budget)
    # converged: every edge is (leaf, centre) or a (node, node) self-loop of a single-node component
    hi_here = partition_of(hi, num_partitions) == partition
    lo_here = partition_of(lo, num_partitions) == partition
    node, comp = _unique_pairs(np.r_[hi[hi_here], lo[lo_here]], np.r_[lo[hi_here], lo[lo_here]])
    if (dup := node[1:][node[1:] == node[:-1]]).size:
        raise RuntimeError(
            f"partition {partition}: node {dup[0]} is in two components; star steps did not converge"
        )
    _write_components(out, node, comp)
    return {"num_nodes": len(node), "num_components": int(np.sum(node == comp))}


# --- driver helpers ---


def _run(fn: Callable, jobs: list[tuple]) -> list[dict]:
    """Ray tasks fn(*job), results in job order; any failure raises PipelineError naming each."""
    results, errors = ray_map(fn, [(f"{fn.__name__}[{i}]", job) for i, job in enumerate(jobs)])
    raise_errors(errors, fn.__name__)
    return [results[f"{fn.__name__}[{i}]"] for i in range(len(jobs))]


def _step(work: Path, step: int, compute: Callable[[Path], list[dict]]) -> dict:
    """Run one step unless its done.json exists; a recomputed step invalidates everything after it."""
    out_dir = _iter_dir(work, step)
    if (out_dir / "done.json").exists():
        return read_json(out_dir / "done.json")
    for later in sorted(work.glob("iter_*")):
        if int(later.name[5:]) > step:
            shutil.rmtree(later)
    shutil.rmtree(work / "components", ignore_errors=True)
    results = compute(out_dir)
    done = {
        "step": step,
        "num_files": len(results),
        "changed_edges": sum(r["changed_edges"] for r in results),
        "num_edges": sum(r["num_edges"] for r in results),
    }
    write_json(out_dir / "done.json", done)
    return done


def _reduce_jobs(
    work: Path, in_step: int, num_inputs: int, num_partitions: int, out_dir: Path, budget: int
) -> list[tuple]:
    """One job per partition: read its rows from every file of step `in_step`, write out_dir/part-P."""
    inputs = [str(_part_path(_iter_dir(work, in_step), i)) for i in range(num_inputs)]
    return [(inputs, p, num_partitions, _part_path(out_dir, p), budget) for p in range(num_partitions)]


def _start(edge_files: list[str], work: Path, num_partitions: int) -> dict | None:
    """Check the work dir belongs to these inputs; return the summary if it is already finished."""
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    run = {
        "num_partitions": num_partitions,
        "edge_files": [{"path": str(Path(f).resolve()), **file_fingerprint(f)} for f in edge_files],
    }
    if (work / "run.json").exists():
        if (previous := read_json(work / "run.json")) != run:
            raise ValueError(
                f"{work} holds a components run for other inputs or partitions ({previous}, now {run}); "
                "use a fresh work_dir or delete it"
            )
    else:
        write_json(work / "run.json", run)
    if (work / "components" / "done.json").exists():
        return _with_paths(work, read_json(work / "components" / "done.json"))
    return None


def _finish(
    work: Path, num_partitions: int, num_nodes: int, num_components: int, changed: list[int], method: str
) -> dict:
    summary = {
        "method": method,
        "num_partitions": num_partitions,
        "num_iterations": len(changed),
        "changed_edges_per_iteration": changed,
        "num_nodes": num_nodes,
        "num_components": num_components,
        "component_files": [_part_path(Path("."), p).name for p in range(num_partitions)],
    }
    write_json(work / "components" / "done.json", summary)
    return _with_paths(work, summary)


def _with_paths(work: Path, summary: dict) -> dict:
    return {**summary, "component_files": [str(work / "components" / n) for n in summary["component_files"]]}


def _iter_dir(work: Path, step: int) -> Path:
    return work / f"iter_{step:04d}"


def _part_path(out_dir: Path, partition: int) -> Path:
    return out_dir / f"part-{partition:05d}.parquet"


# --- array and file helpers ---


def _unique_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (a, b) pairs sorted by a then b."""
    order = sort_order(a, b)
    a, b = a[order], b[order]
    keep = np.ones(len(a), dtype=bool)
    keep[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    return a[keep], b[keep]


def _groups(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start index and length of each run of equal keys."""
    starts = (
        np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        if len(sorted_keys)
        else np.empty(0, np.int64)
    )
    return starts, np.diff(np.r_[starts, len(sorted_keys)])


def _route_both(
    hi: np.ndarray, lo: np.ndarray, num_partitions: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Send each edge to the partitions of both endpoints (once when they share one)."""
    p_hi, p_lo = partition_of(hi, num_partitions), partition_of(lo, num_partitions)
    other = p_lo != p_hi
    return np.r_[hi, hi[other]], np.r_[lo, lo[other]], np.r_[p_hi, p_lo[other]]


def _edge_file(path: str) -> pq.ParquetFile:
    """An edge file, opened and checked from its footer alone (columns, types, null counts)."""
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"cannot read edge file {path}: {e}") from None
    names = pf.schema_arrow.names
    if missing := {"src", "dst"} - set(names):
        raise ValueError(
            f"{path}: edge files need integer columns src, dst; missing {sorted(missing)} (columns: {names})"
        )
    for name in ("src", "dst"):
        tp = pf.schema_arrow.field(name).type
        i = names.index(name)
        groups = (pf.metadata.row_group(g).column(i).statistics for g in range(pf.num_row_groups))
        nulls = sum(s.null_count for s in groups if s is not None and s.has_null_count)
        if not pa.types.is_integer(tp) or nulls:
            raise ValueError(f"{path}: column {name} must be non-null integers, got {tp} with {nulls} nulls")
    return pf


def _edge_file_rows(path: str) -> int:
    return _edge_file(path).metadata.num_rows


def _read_edge_file(path: str) -> tuple[np.ndarray, np.ndarray]:
    pf = _edge_file(path)
    table = pf.read(columns=["src", "dst"])
    for name in ("src", "dst"):
        column = table.column(name)
        if not pa.types.is_integer(column.type) or column.null_count:
            raise ValueError(
                f"{path}: column {name} must be non-null integers, got {column.type} with {column.null_count} nulls"
            )
    return tuple(table.column(n).cast(pa.int64()).to_numpy() for n in ("src", "dst"))


def _write_routed(
    out: Path, hi: np.ndarray, lo: np.ndarray, dest: np.ndarray, num_partitions: int, stats: dict
) -> None:
    """One file sorted by destination partition, one run of row groups per partition, offsets in the footer."""
    # stable, so rows keep their (deterministic) order within a partition; uint16 sorts by radix
    order = np.argsort(dest.astype(np.uint16) if num_partitions <= 1 << 16 else dest, kind="stable")
    table = pa.table({"hi": hi[order], "lo": lo[order]}, schema=EDGE_SCHEMA)
    offsets = np.searchsorted(dest[order], np.arange(num_partitions + 1)).tolist()
    schema = EDGE_SCHEMA.with_metadata({OFFSETS_KEY: json.dumps(offsets), STATS_KEY: json.dumps(stats)})
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, schema, **PARQUET_OPTS) as writer:
        for start, end in zip(offsets[:-1], offsets[1:]):
            if end > start:  # a separate write keeps row groups from spanning partitions
                writer.write_table(table.slice(start, end - start).replace_schema_metadata(schema.metadata))


def _existing_stats(out: Path) -> dict | None:
    if not out.exists():
        return None
    return json.loads(pq.ParquetFile(out).schema_arrow.metadata[STATS_KEY])


def _read_routed(inputs: list[str], partition: int, budget: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The rows routed to `partition` from each step file, reading only their row groups; raises
    ComponentTooLarge first when they would not fit `budget` bytes (0: no check)."""
    files = [pq.ParquetFile(path) for path in inputs]
    all_offsets = [json.loads(pf.schema_arrow.metadata[OFFSETS_KEY]) for pf in files]
    num_rows = sum(o[partition + 1] - o[partition] for o in all_offsets)
    if budget and num_rows * COMPONENT_EDGE_BYTES > budget:
        raise ComponentTooLarge(
            f"connected components: partition {partition} of {num_partitions_of(all_offsets)} would hold "
            f"{num_rows:,} edges, about {num_rows * COMPONENT_EDGE_BYTES / 2**20:,.0f} MiB at "
            f"{COMPONENT_EDGE_BYTES} bytes each, over the task budget of {budget / 2**20:,.0f} MiB. When a "
            "step's other partitions are much smaller, one near-duplicate cluster holds most of these "
            "edges (a document repeated about that many times; exact dedup first removes verbatim "
            "copies); raise ray.task_memory_mb, or minhash.partitions.components when they are not"
        )
    his, los = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for path, pf, offsets in zip(inputs, files, all_offsets):
        start, end = offsets[partition], offsets[partition + 1]
        groups, row = [], 0
        for i in range(pf.num_row_groups):
            if start <= row < end:
                groups.append(i)
            row += pf.metadata.row_group(i).num_rows
        if groups:
            table = pf.read_row_groups(groups)
            if table.num_rows != end - start:
                raise RuntimeError(f"{path}: row groups do not match partition offsets {offsets}")
            his.append(table.column("hi").to_numpy())
            los.append(table.column("lo").to_numpy())
    return np.concatenate(his), np.concatenate(los)


def num_partitions_of(all_offsets: list[list[int]]) -> int:
    return len(all_offsets[0]) - 1 if all_offsets else 0


def _write_components(out: Path, node: np.ndarray, comp: np.ndarray) -> None:
    table = pa.table({"node": node, "component": comp}, schema=COMPONENT_SCHEMA)
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp, **PARQUET_OPTS)
