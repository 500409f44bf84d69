"""Connected components: union-find, a BFS reference and Ray large-star/small-star agree; resume; determinism."""

from __future__ import annotations

import math
from collections import defaultdict, deque
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline.minhash.components import (
    ComponentsNotConverged,
    components,
    partition_of,
    ray_components,
    union_find_components,
)


def chain(n: int, rng: np.random.Generator, permute: bool = False) -> tuple[np.ndarray, np.ndarray]:
    ids = rng.permutation(n) if permute else np.arange(n)
    return ids[:-1], ids[1:]


def star(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    leaves = rng.choice(np.arange(1000), size=200, replace=False)
    return np.full(200, 500), leaves  # centre 500 is not the smallest id


def small_clusters(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    src, dst, base = [], [], 0
    for _ in range(300):
        size = int(rng.integers(2, 7))
        members = base + rng.permutation(size)
        src += list(members[:-1]) + list(rng.choice(members, 2))  # spanning path + extra edges
        dst += list(members[1:]) + list(rng.choice(members, 2))
        base += size
    return np.array(src), np.array(dst)


def big_cluster(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    path = rng.permutation(2000)
    extra_src, extra_dst = rng.integers(0, 2000, 4000), rng.integers(0, 2000, 4000)
    return np.r_[path[:-1], extra_src], np.r_[path[1:], extra_dst]


def pairs_loops_duplicates(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    pairs = rng.permutation(400).reshape(-1, 2)  # 200 isolated pairs
    loops = np.arange(400, 450)  # 50 nodes with only a self-loop
    src = np.r_[pairs[:, 0], loops, pairs[:20, 1], pairs[:10, 0], 0]  # duplicates, reversed, loop in a pair
    dst = np.r_[pairs[:, 1], loops, pairs[:20, 0], pairs[:10, 1], 0]
    return src, dst


def random_graph(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return rng.integers(0, 3000, 2000), rng.integers(0, 3000, 2000)


FAMILIES = {
    "chain": lambda rng: chain(1000, rng),
    "permuted_chain": lambda rng: chain(1000, rng, permute=True),
    "star": star,
    "small_clusters": small_clusters,
    "big_cluster": big_cluster,
    "pairs_loops_duplicates": pairs_loops_duplicates,
    "random": random_graph,
}
NUM_COMPONENTS = {"chain": 1, "permuted_chain": 1, "star": 1, "small_clusters": 300, "big_cluster": 1}
NUM_COMPONENTS["pairs_loops_duplicates"] = 200 + 50  # pairs + self-loop-only nodes


def composite_graph(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Every family on disjoint ids (some huge, some negative), edges shuffled and randomly flipped."""
    rng = np.random.default_rng(seed)
    offsets = [0, 10_000, -20_000, 30_000, 2**40, 2**62, 50_000]
    src, dst = [], []
    for offset, make in zip(offsets, FAMILIES.values()):
        s, d = make(rng)
        src.append(s + offset)
        dst.append(d + offset)
    src, dst = np.concatenate(src), np.concatenate(dst)
    order, flip = rng.permutation(len(src)), rng.random(len(src)) < 0.5
    return np.where(flip, dst, src)[order], np.where(flip, src, dst)[order]


def bfs_components(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    adjacency = defaultdict(set)
    for a, b in zip(src.tolist(), dst.tolist()):
        adjacency[a].add(b)
        adjacency[b].add(a)
    component = {}
    for start in sorted(adjacency):
        if start in component:
            continue
        component[start] = start  # sorted order: the first node reached is the component's minimum
        queue = deque([start])
        while queue:
            for nxt in adjacency[queue.popleft()]:
                if nxt not in component:
                    component[nxt] = start
                    queue.append(nxt)
    nodes = sorted(component)
    return np.array(nodes, dtype=np.int64), np.array([component[n] for n in nodes], dtype=np.int64)


def write_edge_files(directory: Path, src: np.ndarray, dst: np.ndarray) -> list[str]:
    """Four input files of unequal sizes, one of them empty."""
    directory.mkdir(parents=True, exist_ok=True)
    cuts = [0, 0, len(src) // 5, len(src) // 2, len(src)]
    files = []
    for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        files.append(str(directory / f"edges-{i}.parquet"))
        pq.write_table(
            pa.table({"src": src[a:b].astype(np.int64), "dst": dst[a:b].astype(np.int64)}), files[-1]
        )
    return files


def read_components(summary: dict) -> tuple[np.ndarray, np.ndarray]:
    tables = [pq.read_table(f) for f in summary["component_files"]]
    for path, table in zip(summary["component_files"], tables):
        node = table.column("node").to_numpy()
        assert np.all(np.diff(node) > 0), f"{path} is not sorted by node or repeats a node"
        part = int(Path(path).stem.split("-")[1])
        assert np.all(partition_of(node, len(tables)) == part), f"{path} holds nodes of other partitions"
    table = pa.concat_tables(tables).sort_by("node")
    return table.column("node").to_numpy(), table.column("component").to_numpy()


def file_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.parquet"))}


def mtimes(work: Path) -> dict[str, int]:
    return {str(p.relative_to(work)): p.stat().st_mtime_ns for p in sorted(work.glob("iter_*/*"))}


@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> dict:
    src, dst = composite_graph()
    files = write_edge_files(tmp_path_factory.mktemp("edges"), src, dst)
    return {"src": src, "dst": dst, "files": files, "expected": union_find_components(src, dst)}


@pytest.fixture(scope="module")
def ray_runs(ray_local, graph, tmp_path_factory) -> dict[int, tuple[dict, Path]]:
    runs = {}
    for num_partitions in (1, 3, 8):
        work = tmp_path_factory.mktemp(f"cc{num_partitions}")
        runs[num_partitions] = (ray_components(graph["files"], str(work), num_partitions), work)
    return runs


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_union_find_matches_bfs(family):
    src, dst = FAMILIES[family](np.random.default_rng(1))
    nodes, comp = union_find_components(src, dst)
    ref_nodes, ref_comp = bfs_components(src, dst)
    np.testing.assert_array_equal(nodes, ref_nodes)
    np.testing.assert_array_equal(comp, ref_comp)
    if family in NUM_COMPONENTS:
        assert len(np.unique(comp)) == NUM_COMPONENTS[family]


def test_union_find_on_composite_and_empty(graph):
    nodes, comp = graph["expected"]
    ref_nodes, ref_comp = bfs_components(graph["src"], graph["dst"])
    np.testing.assert_array_equal(nodes, ref_nodes)
    np.testing.assert_array_equal(comp, ref_comp)
    empty_nodes, empty_comp = union_find_components(np.array([], np.int64), np.array([], np.int64))
    assert empty_nodes.size == 0 and empty_comp.size == 0


@pytest.mark.parametrize("num_partitions", [1, 3, 8])
def test_ray_matches_union_find(graph, ray_runs, num_partitions):
    summary, _ = ray_runs[num_partitions]
    nodes, comp = read_components(summary)
    np.testing.assert_array_equal(nodes, graph["expected"][0])
    np.testing.assert_array_equal(comp, graph["expected"][1])
    assert summary["num_nodes"] == len(nodes)
    assert summary["num_components"] == len(np.unique(comp))
    assert summary["method"] == "ray_star"
    assert len(summary["component_files"]) == num_partitions


def test_iterations_same_for_every_partition_count(ray_runs):
    counts = {p: (s["num_iterations"], s["changed_edges_per_iteration"]) for p, (s, _) in ray_runs.items()}
    assert len(set(map(str, counts.values()))) == 1, counts
    num_iterations, changed = counts[1]
    assert num_iterations == len(changed) and changed[-2:] == [0, 0], changed


def test_chain_needs_logarithmic_iterations(ray_local, tmp_path):
    n = 1000  # ids in path order: the slowest case for label propagation (n - 1 rounds)
    src, dst = chain(n, np.random.default_rng(0))
    summary = ray_components(write_edge_files(tmp_path / "edges", src, dst), str(tmp_path / "work"), 3)
    bound = 2 * math.ceil(math.log2(n)) + 2
    assert summary["num_iterations"] <= bound, summary["changed_edges_per_iteration"]
    assert (summary["num_nodes"], summary["num_components"]) == (n, 1)
    nodes, comp = read_components(summary)
    np.testing.assert_array_equal(nodes, np.arange(n))
    assert not comp.any()


def test_byte_identical_across_runs(ray_local, graph, ray_runs, tmp_path):
    summary, work = ray_runs[3]
    again = ray_components(graph["files"], str(tmp_path), 3)
    assert file_bytes(work / "components") == file_bytes(tmp_path / "components")
    for step in range(again["num_iterations"] + 1):
        name = f"iter_{step:04d}"
        assert file_bytes(work / name) == file_bytes(tmp_path / name), name
    assert {k: v for k, v in again.items() if k != "component_files"} == {
        k: v for k, v in summary.items() if k != "component_files"
    }


def test_resume_after_unconverged_run(ray_local, graph, ray_runs, tmp_path):
    with pytest.raises(ComponentsNotConverged, match="rerun with a larger max_iterations"):
        ray_components(graph["files"], str(tmp_path), 3, max_iterations=4)
    assert sorted(p.parent.name for p in tmp_path.glob("iter_*/done.json")) == [
        f"iter_{i:04d}" for i in range(5)
    ]
    assert not (tmp_path / "components").exists()
    before = mtimes(tmp_path)

    summary = ray_components(graph["files"], str(tmp_path), 3)
    after = mtimes(tmp_path)
    assert {k: after[k] for k in before} == before, "finished iterations were recomputed"
    assert summary["num_iterations"] == ray_runs[3][0]["num_iterations"]
    assert file_bytes(tmp_path / "components") == file_bytes(ray_runs[3][1] / "components")


def test_resume_after_kill_inside_a_step(ray_local, graph, ray_runs, tmp_path):
    """A driver killed while the last step ran: its done.json, one part file and the output are missing."""
    summary = ray_components(graph["files"], str(tmp_path), 3)
    expected = file_bytes(tmp_path / "components")
    last = tmp_path / f"iter_{summary['num_iterations']:04d}"
    (last / "done.json").unlink()
    (last / "part-00001.parquet").unlink()
    for path in (tmp_path / "components").iterdir():
        path.unlink()
    before = mtimes(tmp_path)

    again = ray_components(graph["files"], str(tmp_path), 3)
    after = mtimes(tmp_path)
    assert {k: after[k] for k in before} == before, "finished steps or partitions were recomputed"
    assert (last / "part-00001.parquet").exists() and (last / "done.json").exists()
    assert file_bytes(tmp_path / "components") == expected
    assert again["num_iterations"] == summary["num_iterations"]


def test_finished_run_is_not_redone(ray_local, ray_runs, graph):
    summary, work = ray_runs[8]
    stamps = {p: p.stat().st_mtime_ns for p in work.rglob("*")}
    assert ray_components(graph["files"], str(work), 8) == summary
    assert {p: p.stat().st_mtime_ns for p in work.rglob("*")} == stamps


def test_threshold_picks_path_with_same_output(ray_local, graph, ray_runs, tmp_path):
    fast = components(graph["files"], str(tmp_path / "fast"), 3, small_edge_limit=len(graph["src"]))
    assert fast["method"] == "union_find" and fast["num_iterations"] == 0
    assert file_bytes(tmp_path / "fast" / "components") == file_bytes(ray_runs[3][1] / "components")
    assert (fast["num_nodes"], fast["num_components"]) == (
        ray_runs[3][0]["num_nodes"],
        ray_runs[3][0]["num_components"],
    )

    distributed = components(graph["files"], str(tmp_path / "ray"), 3, small_edge_limit=len(graph["src"]) - 1)
    assert distributed["method"] == "ray_star"
    assert file_bytes(tmp_path / "ray" / "components") == file_bytes(ray_runs[3][1] / "components")


def test_work_dir_of_other_run_is_refused(ray_local, graph, ray_runs):
    with pytest.raises(ValueError, match="use a fresh work_dir"):
        ray_components(graph["files"], str(ray_runs[3][1]), 8)


def test_bad_edge_file_is_named(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"src": [1, 2], "target": [2, 3]}), path)
    with pytest.raises(ValueError, match=r"bad\.parquet: .*missing \[.dst.\] \(columns: \['src', 'target'\]"):
        components([str(path)], str(tmp_path / "work"), 2)
    pq.write_table(pa.table({"src": [1.0, 2.0], "dst": [2, None]}), path)
    with pytest.raises(ValueError, match=r"bad\.parquet: column src must be non-null integers, got double"):
        components([str(path)], str(tmp_path / "work2"), 2)


def test_partition_of_is_splitmix64():
    # 0xE220A8397B1DCDAF is splitmix64's first output from state 0 (Vigna's reference implementation)
    assert partition_of(np.array([0]), 1_000_003).tolist() == [0xE220A8397B1DCDAF % 1_000_003]
    parts = partition_of(np.arange(80_000), 8)
    assert np.bincount(parts, minlength=8).min() > 9_500, np.bincount(parts)
