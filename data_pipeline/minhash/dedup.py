"""MinHash near-duplicate removal over document shards, on Ray.

    pretrain data minhash --input runs/data --output runs/dedup [minhash.threshold=0.8 ...]
    pretrain data minhash --input raw/web.jsonl 'raw/books/*.parquet' --output runs/dedup

The input is what every data stage takes: a stage directory, or files, folders and globs of raw
documents, read first into `_work/input/` by the pipeline's `read` step (same ids and sources as
`pretrain data run`; its rejects go to rejects/read/ and the stats' `read` row).
Steps (each a set of Ray tasks writing atomically under `_work/minhash/`, then a done record, so a
rerun continues after the last complete task): signatures + band buckets per shard -> candidate
pairs per range of buckets -> verification, a join with the signatures per range of the pairs' src
shards, then of their dst shards -> connected components (one union-find task while the edges fit a
task's memory, large-star/small-star otherwise; never in the driver) -> cluster members with
their ids per range of shards -> survivors per range of clusters -> removal lists per range of
shards -> finalize per shard (its shard and its own list, into `_work/minhash/final/`) -> pack
(those cut into `shards/part-NNNNN.parquet` of about `target_shard_bytes`, keeping the input's
language folders: `data_pipeline.pack`). Each shuffle's reducers are derived
from the rows of its input and the task memory budget (`data_pipeline.shuffle`). The result is the
same for any number of workers. A finished run writes `done.json` and removes `_work/` (kept with
`keep_work`); a rerun on the same input then does nothing.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from data_pipeline.executor import FINAL_LAYOUT, stage_fingerprint
from data_pipeline.inputs import carry_read_rejects, stage_dir_of_inputs
from data_pipeline.minhash import steps
from data_pipeline.minhash.components import COMPONENT_EDGE_BYTES, components, union_find_limit
from data_pipeline.minhash.lsh import choose_bands_rows, format_s_curve
from data_pipeline.minhash.signatures import MinHasher
from data_pipeline.pack import PackSource, ShardSizeConfig, pack_shards
from data_pipeline.readers import InputConfig, scan_inputs, unit_fingerprints
from data_pipeline.shuffle import DEFAULT_TASK_BUDGET_BYTES, num_partitions, unit_ranges
from data_pipeline.summary import write_summary
from data_pipeline.tasks import add_examples
from pretrain.core.config import check, config_hash, dump_yaml, load_config, to_dict
from pretrain.core.done import finish_stage, finished_stage, load_done_many
from pretrain.core.files import io_map, read_json, write_json
from pretrain.core.hashing import file_fingerprint
from pretrain.core.progress import Progress
from pretrain.core.runner import ensure_ray, raise_errors, run_tasks, task_memory_bytes
from pretrain.core.shards import list_shards, remove_unlisted, shard_relpath, write_manifest
from pretrain.core.storage import stage_path, work_dir

SHUFFLE_STEPS = ("candidates", "verify", "components", "members", "survivors", "lists")
RUN_ONLY = ("num_partitions", "partitions", "union_find_max_edges")  # how it runs, not what it gives


@dataclass
class MinHashConfig:
    threshold: float = 0.8
    """Jaccard similarity (word n-gram sets) above which two documents are near-duplicates."""
    num_perm: int = 128
    """MinHash permutations per signature."""
    bands: int | None = None
    """LSH bands; None derives bands x rows from threshold and num_perm (printed with the S-curve)."""
    rows: int | None = None
    """Rows per band; set together with `bands`."""
    ngram: int = 5
    """Shingle size (words, or characters with mode=char)."""
    mode: Literal["word", "char"] = "word"
    """Word n-grams over normalised text, or character n-grams."""
    seed: int = 1
    """Seed of datasketch's permutations (part of the signature scheme)."""
    verify: bool = True
    """Drop candidate pairs whose signature-estimated Jaccard is below `verify_threshold`."""
    verify_threshold: float = 0.75
    """Cut on the signature estimate. Below `threshold` on purpose: at 128 permutations the
    estimate's standard deviation at J=0.85 is 0.03, so a cut at 0.8 would drop about 6% of true
    J=0.85 pairs, while 0.75 still keeps J<=0.5 pairs out with probability ~1e-8 (see lsh.py)."""
    num_partitions: int | None = None
    """Reducers of every shuffle (buckets, pairs, components, clusters, removal lists); null: each
    step derives its own from the rows of its input and the task memory budget (`ray.task_memory_mb`):
    each reducer holds at most 64 MiB, or half the budget when that is less, at the peak bytes per
    row measured for its step (`steps.BAND_ROW_BYTES` ...; `data_pipeline.shuffle.num_partitions`)."""
    partitions: dict[str, int] = field(default_factory=dict)
    """Reducers of one step, over `num_partitions` and the derived count: `candidates`, `verify`,
    `components`, `members`, `survivors`, `lists` (e.g. `minhash.partitions.verify=64`)."""
    union_find_max_edges: int | None = None
    """Up to this many verified edges, components run as one union-find Ray task; above, as
    large-star/small-star over many tasks. null: the size measured on a 2-core machine where the
    distributed path's fixed costs are paid back, lowered so the task fits the memory budget
    (`components.union_find_limit`)."""
    survivor: Literal["quality_then_id", "id"] = "quality_then_id"
    """Which member of a cluster is kept: highest quality score then smallest id, or smallest id."""
    quality_score_field: str = "quality_score"
    """Metadata field holding a document's quality score (missing counts as 0)."""

    def __post_init__(self) -> None:
        check(0.0 < self.threshold <= 1.0, "minhash.threshold", self.threshold, "a Jaccard in (0, 1]")
        check(8 <= self.num_perm <= 1024, "minhash.num_perm", self.num_perm, "8..1024")
        check(
            (self.bands is None) == (self.rows is None),
            "minhash.bands",
            self.bands,
            "set together with minhash.rows (or both null)",
        )
        if self.bands is not None:
            check(
                self.bands >= 1 and self.rows >= 1 and self.bands * self.rows <= self.num_perm,
                "minhash.bands",
                f"{self.bands}x{self.rows}",
                f"bands x rows <= num_perm ({self.num_perm})",
            )
        check(0.0 < self.verify_threshold <= 1.0, "minhash.verify_threshold", self.verify_threshold, "(0, 1]")
        check(self.ngram >= 1, "minhash.ngram", self.ngram, ">= 1")
        check(
            self.num_partitions is None or 1 <= self.num_partitions <= 65536,
            "minhash.num_partitions",
            self.num_partitions,
            "1..65536 or null",
        )
        for step, n in self.partitions.items():
            check(
                step in SHUFFLE_STEPS,
                f"minhash.partitions.{step}",
                n,
                f"a step among {', '.join(SHUFFLE_STEPS)}",
            )
            check(1 <= n <= 65536, f"minhash.partitions.{step}", n, "1..65536")
        check(
            self.union_find_max_edges is None or self.union_find_max_edges >= 0,
            "minhash.union_find_max_edges",
            self.union_find_max_edges,
            ">= 0 or null",
        )

    def partitions_of(self, step: str) -> int | None:
        """The reducers set for `step` (per step, else for all), or None: derive them."""
        return self.partitions.get(step) or self.num_partitions

    def bands_rows(self) -> tuple[int, int]:
        if self.bands is not None:
            return self.bands, self.rows
        return choose_bands_rows(self.threshold, self.num_perm)


@dataclass
class MinHashRunConfig(ShardSizeConfig):
    """MinHash dedup of a stage directory or raw inputs; `ray`, `batch_rows` (rows per batch when
    rewriting shards), `progress` and the output shards' size (`target_shard_bytes`,
    `target_shard_rows`) come from ShardSizeConfig."""

    input: InputConfig = field(default_factory=InputConfig)
    """What to deduplicate, as every data stage takes it (`input.paths`: a finished stage directory
    such as the output of `pretrain data run`, or files, folders and globs of raw documents, read
    with these settings as `pretrain data run` reads them)."""
    input_dir: str | None = None
    """One input path: the same as `input.paths: [input_dir]` (set one of the two)."""
    output_dir: str = "runs/dedup"
    """Where shards/, rejects/, manifest.json, stats.json and summary.md go."""
    minhash: MinHashConfig = field(default_factory=MinHashConfig)
    num_example_rejects: int = 3
    """Example rejects per reason in the summary."""
    keep_work: bool = False
    """Keep `_work/` (signatures, buckets, edges, task records; raw inputs read into document
    shards) after the run finishes (`--keep-work`); by default it is removed, and a rerun knows the
    run is done from `done.json` and the outputs."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(
            not (self.input_dir and self.input.paths),
            "input_dir",
            self.input_dir,
            f"null when input.paths is set ({self.input.paths})",
        )

    def input_config(self) -> InputConfig:
        """`input`, with `input_dir` as its one path when that is the one set."""
        if self.input_dir:
            return dataclasses.replace(self.input, paths=[self.input_dir])
        return self.input


def load_minhash_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> MinHashRunConfig:
    return load_config(MinHashRunConfig, path, overrides)


def run_minhash_dedup(cfg: MinHashRunConfig) -> dict[str, Any]:
    t_start = time.perf_counter()
    mh = cfg.minhash
    bands, rows = mh.bands_rows()
    out = stage_path(cfg.output_dir)
    input_cfg = cfg.input_config()
    scan = scan_inputs(input_cfg)  # raises InputError naming a missing or unreadable path
    input_fps = unit_fingerprints(scan.units)
    stage_fp = stage_fingerprint(cfg, scan.units, input_fps, layout=steps.LAYOUT_VERSION)
    if (stats := finished_stage(out, stage_fp, cfg.keep_work)) is not None:
        return stats
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_yaml(cfg))
    read_dir = work_dir(out) / "input"
    inp = stage_dir_of_inputs(input_cfg, read_dir, cfg.ray, cfg.progress, scan)
    read_step = read_json(inp / "stats.json") if inp == read_dir else None  # raw inputs were read
    shards = list_shards(inp)
    if not shards:
        raise FileNotFoundError(f"no document shards under {inp}/shards")
    known = {u.path: fp for u, fp in zip(scan.units, input_fps)}  # fingerprinted above already
    shard_fps = io_map(lambda s: known.get(str(s)) or file_fingerprint(s), shards)
    work = work_dir(out) / "minhash"
    names = [s.stem for s in shards]
    rels = [shard_relpath(inp, s) for s in shards]  # outputs keep the input's folders (lang=xx/)
    progress = Progress(enabled=cfg.progress)
    if cfg.progress:
        print(f"MinHash: {mh.num_perm} permutations, {bands} bands x {rows} rows, threshold {mh.threshold}")
        print(format_s_curve(bands, rows, mh.num_perm, mh.verify_threshold if mh.verify else None))

    shard_label = {n: f"shard {rel}" for n, rel in zip(names, rels)}
    shard_bytes = {n: fp["size"] for n, fp in zip(names, shard_fps)}

    def phase(name: str, fn, keyed_jobs: list[tuple[str, Path, Any, tuple]]) -> dict[str, dict]:
        """Run the jobs whose done record is missing or stale; return every job's record. Jobs
        keyed by shard count their shard's bytes in the progress display."""
        done, todo = {}, []
        recs = load_done_many(out, [(done_path, fp) for _, done_path, fp, _ in keyed_jobs])
        for (key, _, _, args), rec in zip(keyed_jobs, recs):
            if rec is not None:
                done[key] = rec
            else:
                todo.append((key, args))
        keys = [k for k, *_ in keyed_jobs]
        labels = {k: shard_label.get(k) or f"{name} partition {k}" for k in keys}
        sizes = {k: shard_bytes[k] for k in keys if k in shard_bytes}
        progress.start(
            name,
            total=len(keyed_jobs),
            done=len(keyed_jobs) - len(todo),
            total_bytes=sum(sizes.values()),
            done_bytes=sum(sizes[k] for k in done if k in sizes),
        )
        results, errors = run_tasks(fn, todo, cfg.ray, progress, name, sizes=sizes, labels=labels)
        raise_errors(errors, name)
        return done | results

    scheme = config_hash(
        {k: v for k, v in to_dict(mh).items() if k not in ("survivor", "quality_score_field", *RUN_ONLY)}
        | {"bands": bands, "rows": rows}
    )
    sig_fp = {
        n: {"input": fp, "scheme": scheme, "index": i, "layout": steps.LAYOUT_VERSION}
        for i, (n, fp) in enumerate(zip(names, shard_fps))
    }
    hasher = MinHasher(num_perm=mh.num_perm, seed=mh.seed, ngram=mh.ngram, mode=mh.mode)  # sent to the tasks
    ensure_ray(cfg.ray)
    budget = task_memory_bytes(cfg.ray) or DEFAULT_TASK_BUDGET_BYTES  # bytes one task may hold
    sig = phase(
        "signatures",
        steps.signature_shard,
        [
            (
                n,
                work / "sig" / f"{n}.done.json",
                sig_fp[n],
                (str(s), i, mh, bands, rows, str(out), sig_fp[n], hasher, budget),
            )
            for i, (n, s) in enumerate(zip(names, shards))
        ],
    )
    fp = config_hash([steps.LAYOUT_VERSION, *(sig_fp[n] for n in names)])

    def reducers(step: str, num_rows: int, bytes_per_row: float, num_runs: int = 0) -> int:
        return num_partitions(num_rows, bytes_per_row, budget, mh.partitions_of(step), num_runs)

    band_runs = [p for n in names for p in sig[n]["band_runs"]]  # one or more per shard
    num_band_rows = sum(sig[n]["num_band_rows"] for n in names)
    Q = reducers("candidates", num_band_rows, steps.BAND_ROW_BYTES, len(band_runs))  # each reads every run
    cfp = config_hash([fp, Q])
    cand = phase(
        "candidates",
        steps.candidate_partition,
        [
            (str(q), work / "cand" / f"q={q:05d}.done.json", cfp, (q, Q, band_runs, budget, str(out), cfp))
            for q in range(Q)
        ],
    )
    cand_runs = [r for q in range(Q) for r in cand[str(q)]["runs"]]
    sig_files = [str(work / "sig" / f"{n}.npy") for n in names]
    # Verification joins the pairs with their signatures by shard: per range of src shards, then
    # per range of dst shards, each task reading the signature files of its own shards only.
    num_pairs = sum(r["num_pairs_emitted"] for r in cand.values())
    row_bytes = steps.pair_row_bytes(steps.SRC_PAIR_ROW_BYTES, mh.num_perm)
    src_ranges = unit_ranges(len(names), reducers("verify", num_pairs, row_bytes))
    v1fp = config_hash([cfp, mh.verify, src_ranges])
    vsrc = phase(
        "verify src",
        steps.verify_src_partition,
        [
            (
                str(r),
                work / "vsrc" / f"r={r:05d}.done.json",
                v1fp,
                (r, a, b, cand_runs, sig_files, mh.verify, budget, row_bytes, str(out), v1fp),
            )
            for r, (a, b) in enumerate(src_ranges)
        ],
    )
    src_runs = [p for r in range(len(src_ranges)) for p in vsrc[str(r)]["runs"]]
    num_pairs = sum(r["num_pairs"] for r in vsrc.values())  # distinct now
    row_bytes = steps.pair_row_bytes(steps.DST_PAIR_ROW_BYTES, mh.num_perm)
    dst_ranges = unit_ranges(len(names), reducers("verify", num_pairs, row_bytes))
    threshold = mh.verify_threshold if mh.verify else None
    vfp = config_hash([v1fp, threshold, dst_ranges])
    ver = phase(
        "verify dst",
        steps.verify_dst_partition,
        [
            (
                str(r),
                work / "edges" / f"r={r:05d}.done.json",
                vfp,
                (r, a, b, src_runs, sig_files, threshold, budget, row_bytes, str(out), vfp),
            )
            for r, (a, b) in enumerate(dst_ranges)
        ],
    )
    edge_files = [f for r in range(len(dst_ranges)) for f in ver[str(r)]["edge_files"]]
    num_edges = sum(r["num_edges"] for r in ver.values())
    P = reducers("components", num_edges, COMPONENT_EDGE_BYTES)
    cc_dir = work / f"cc-{config_hash([vfp, P])}"
    limit = mh.union_find_max_edges if mh.union_find_max_edges is not None else union_find_limit(budget)
    cc = components(edge_files, str(cc_dir), P, small_edge_limit=limit, budget_bytes=budget)
    mfp = config_hash([vfp, P, cc.get("num_components"), cc.get("num_nodes")])
    runs = phase(
        "members",
        steps.member_runs,
        [
            (str(p), work / "members" / f"from-{p:05d}.done.json", mfp, (f, p, str(out), mfp))
            for p, f in enumerate(cc["component_files"])
        ],
    )
    member_runs = [runs[str(p)]["run"] for p in range(len(cc["component_files"]))]
    shard_ranges = unit_ranges(len(names), reducers("members", cc["num_nodes"], steps.MEMBER_ROW_BYTES))
    node_files = [str(work / "nodes" / f"{n}.parquet") for n in names]
    ifp = config_hash([mfp, shard_ranges])
    info = phase(
        "member ids",
        steps.member_partition,
        [
            (
                str(r),
                work / "members" / f"r={r:05d}.done.json",
                ifp,
                (r, a, b, member_runs, node_files, str(out), ifp),
            )
            for r, (a, b) in enumerate(shard_ranges)
        ],
    )
    info_runs = [info[str(r)]["run"] for r in range(len(shard_ranges))]
    Q = reducers("survivors", cc["num_nodes"], steps.MEMBER_ROW_BYTES)
    sfp = config_hash([ifp, mh.survivor, mh.quality_score_field, Q])
    surv = phase(
        "survivors",
        steps.survivor_partition,
        [
            (
                str(q),
                work / "removed" / f"q={q:05d}.done.json",
                sfp,
                (q, Q, info_runs, mh.survivor, budget, str(out), sfp),
            )
            for q in range(Q)
        ],
    )
    removed_runs = [r for q in range(Q) for r in surv[str(q)]["runs"]]
    num_removed = sum(r["num_removed"] for r in surv.values())
    shard_ranges = unit_ranges(len(names), reducers("lists", num_removed, steps.REMOVED_ROW_BYTES))
    lfp = config_hash([sfp, shard_ranges])
    phase(
        "removal lists",
        steps.removal_lists,
        [
            (
                str(r),
                work / "lists" / f"r={r:05d}.done.json",
                lfp,
                (r, a, names[a:b], removed_runs, str(out), lfp),
            )
            for r, (a, b) in enumerate(shard_ranges)
        ],
    )
    final = phase(
        "finalize",
        steps.finalize_shard,
        [
            (
                n,
                work / "final" / f"{n}.done.json",
                config_hash([lfp, sig_fp[n], FINAL_LAYOUT]),
                (
                    str(s),
                    rel,
                    cfg.batch_rows,
                    cfg.num_example_rejects,
                    str(out),
                    config_hash([lfp, sig_fp[n], FINAL_LAYOUT]),
                ),
            )
            for n, s, rel in zip(names, shards, rels)
        ],
    )
    # the shards finalize wrote to _work/minhash/final/, packed into shards/part-NNNNN.parquet
    sources = [
        PackSource(
            str(work / "final" / rel),
            final[n]["shard"]["rows"],
            final[n]["shard"]["arrow_bytes"],
            final[n]["shard"]["sha256"],
            rel.rpartition("/")[0],  # the input's language folder, kept
            {"unit": n, "input": str(s)},
        )
        for n, s, rel in zip(names, shards, rels)
    ]
    parts = pack_shards(sources, cfg, out, out / "shards", work / "pack", progress)
    progress.stop()

    read_rejects = carry_read_rejects(inp, out) if read_step else []
    keep = {f"shards/{e['path']}" for e in parts} | {f"rejects/{n}.parquet" for n in names}
    remove_unlisted(out, keep | {f"rejects/{e['path']}" for e in read_rejects})
    sizes: Counter = Counter()
    for rec in surv.values():
        sizes.update({int(k): v for k, v in rec["cluster_sizes"].items()})
    examples: dict[str, list] = {}
    for n in names:
        for k, ex in final[n]["examples"].items():
            add_examples(examples.setdefault(k, []), ex, cfg.num_example_rejects)
    dedup_in = sum(final[n]["num_in"] for n in names)
    num_kept = sum(final[n]["num_kept"] for n in names)
    upstream = read_json(inp / "stats.json") if (inp / "stats.json").exists() else {}
    stages = {
        "minhash_dedup": {
            "in": dedup_in,
            "kept": num_kept,
            "rejected": dedup_in - num_kept,
            "reasons": {"near_duplicate": dedup_in - num_kept} if dedup_in > num_kept else {},
        }
    }
    num_in = dedup_in
    if read_step:  # raw inputs: the records the read step rejected count as this run's rejects
        assert read_step["num_kept"] == dedup_in, (read_step["num_kept"], dedup_in)
        num_in = read_step["num_in"]
        stages = {"read": read_step["stages"]["read"], **stages}
        for k, ex in read_step["examples"].items():
            add_examples(examples.setdefault(k, []), ex, cfg.num_example_rejects)
    seconds = time.perf_counter() - t_start
    stats = {
        "num_in": num_in,
        "num_kept": num_kept,
        "num_rejected": num_in - num_kept,
        "stage_order": list(stages),
        "stages": stages,
        "minhash": {
            "scheme": sig[names[0]]["scheme"],
            "bands": bands,
            "rows": rows,
            "threshold": mh.threshold,
            "verify_threshold": mh.verify_threshold if mh.verify else None,
            "num_band_pairs": sum(r["num_pairs_emitted"] for r in cand.values()),
            "num_candidates": sum(r["num_candidates"] for r in ver.values()),
            "num_verified_edges": sum(r["num_edges"] for r in ver.values()),
            "num_dropped_by_verification": sum(r["num_dropped"] for r in ver.values()),
            "components_method": cc.get("method"),
            "num_iterations": cc.get("num_iterations"),
            "num_clustered_docs": cc.get("num_nodes"),
            "num_clusters": cc.get("num_components"),
            "cluster_size_histogram": {str(k): v for k, v in sorted(sizes.items())},
        },
        "upstream": {"num_in": upstream.get("num_in"), "num_kept": upstream.get("num_kept")},
        "pii": {},
        "examples": dict(sorted(examples.items())),
        "skipped_files": read_step["skipped_files"] if read_step else [],
        "num_shards": len(parts),
        "seconds": round(seconds, 3),
        "docs_per_second": round(num_in / seconds, 1) if seconds else None,
    }
    assert num_in == num_kept + stats["num_rejected"]
    write_json(out / "stats.json", stats)
    write_manifest(
        out,
        config_hash=sfp,
        shards=[entry | {"config_hash": sfp} for entry in parts],
        rejects=[final[n]["rejects"] for n in names] + read_rejects,
    )
    write_summary(out, stats, print_table=cfg.progress)
    finish_stage(out, stage_fp, cfg.keep_work)
    return stats
