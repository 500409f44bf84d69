"""MinHash near-duplicate removal over a stage directory of document shards, on Ray.

    pretrain data minhash --input runs/data --output runs/dedup [minhash.threshold=0.8 ...]

Steps (each a set of Ray tasks writing atomically under `_work/minhash/`, then a done record, so a
rerun continues after the last complete task): signatures + band buckets per shard -> candidate
edges per bucket partition -> verification per edge partition -> connected components (union-find
for small graphs, large-star/small-star on Ray otherwise) -> cluster members -> survivors ->
finalize per shard. The result is the same for any number of workers.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from data_pipeline.minhash import steps
from data_pipeline.minhash.components import components
from data_pipeline.minhash.lsh import choose_bands_rows, format_s_curve
from data_pipeline.summary import write_summary
from data_pipeline.tasks import add_examples
from pretrain.core.config import check, config_hash, dump_yaml, load_config, to_dict
from pretrain.core.done import load_done
from pretrain.core.files import read_json, write_json
from pretrain.core.hashing import file_fingerprint
from pretrain.core.progress import Progress
from pretrain.core.runner import ensure_ray, raise_errors, run_tasks
from pretrain.core.sections import TaskConfig
from pretrain.core.shards import list_shards, remove_unlisted, shard_relpath, write_manifest


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
    num_partitions: int = 8
    """Hash partitions of the bucket shuffle, the edges and the clusters."""
    union_find_max_edges: int = 5_000_000
    """Up to this many verified edges, components run as one union-find task; above, on Ray."""
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
        check(1 <= self.num_partitions <= 65536, "minhash.num_partitions", self.num_partitions, "1..65536")

    def bands_rows(self) -> tuple[int, int]:
        if self.bands is not None:
            return self.bands, self.rows
        return choose_bands_rows(self.threshold, self.num_perm)


@dataclass
class MinHashRunConfig(TaskConfig):
    """MinHash dedup of one stage directory; `ray`, `batch_rows` (rows per batch when rewriting
    shards) and `progress` come from TaskConfig."""

    input_dir: str = "runs/data"
    """A finished stage directory (shards/ + manifest.json), e.g. the output of `pretrain data run`."""
    output_dir: str = "runs/dedup"
    """Where shards/, rejects/, manifest.json, stats.json and summary.md go."""
    minhash: MinHashConfig = field(default_factory=MinHashConfig)
    num_example_rejects: int = 3
    """Example rejects per reason in the summary."""


def load_minhash_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> MinHashRunConfig:
    return load_config(MinHashRunConfig, path, overrides)


def run_minhash_dedup(cfg: MinHashRunConfig) -> dict[str, Any]:
    t_start = time.perf_counter()
    mh = cfg.minhash
    bands, rows = mh.bands_rows()
    inp, out = Path(cfg.input_dir), Path(cfg.output_dir)
    shards = list_shards(inp)
    if not shards:
        raise FileNotFoundError(f"no document shards under {inp}/shards")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_yaml(cfg))
    work = out / "_work" / "minhash"
    names = [s.stem for s in shards]
    rels = [shard_relpath(inp, s) for s in shards]  # outputs keep the input's folders (lang=xx/)
    progress = Progress(enabled=cfg.progress)
    if cfg.progress:
        print(f"MinHash: {mh.num_perm} permutations, {bands} bands x {rows} rows, threshold {mh.threshold}")
        print(format_s_curve(bands, rows, mh.num_perm, mh.verify_threshold if mh.verify else None))

    def phase(name: str, fn, keyed_jobs: list[tuple[str, Path, Any, tuple]]) -> dict[str, dict]:
        """Run the jobs whose done record is missing or stale; return every job's record."""
        done, todo = {}, []
        for key, done_path, fp, args in keyed_jobs:
            rec = load_done(out, done_path, fp)
            if rec is not None:
                done[key] = rec
            else:
                todo.append((key, args))
        progress.start(name, total=len(keyed_jobs), done=len(keyed_jobs) - len(todo))
        results, errors = run_tasks(fn, todo, cfg.ray, progress, name)
        raise_errors(errors, name)
        return done | results

    scheme = config_hash(
        {k: v for k, v in to_dict(mh).items() if k not in ("survivor", "quality_score_field")}
        | {"bands": bands, "rows": rows}
    )
    sig_fp = {
        n: {"input": file_fingerprint(s), "scheme": scheme, "index": i}
        for i, (n, s) in enumerate(zip(names, shards))
    }
    sig = phase(
        "signatures",
        steps.signature_shard,
        [
            (n, work / "sig" / f"{n}.done.json", sig_fp[n], (str(s), i, mh, bands, rows, str(out), sig_fp[n]))
            for i, (n, s) in enumerate(zip(names, shards))
        ],
    )
    fp = config_hash([steps.LAYOUT_VERSION, *(sig_fp[n] for n in names)])
    P = mh.num_partitions
    cand = phase(
        "candidates",
        steps.candidate_partition,
        [(str(p), work / "cand" / f"p={p:05d}.done.json", fp, (p, names, P, str(out), fp)) for p in range(P)],
    )
    sig_files = [str(work / "sig" / f"{n}.npy") for n in names]
    vfp = config_hash([fp, mh.verify, mh.verify_threshold])
    ver = phase(
        "verify",
        steps.verify_partition,
        [
            (
                str(p),
                work / "edges" / f"p={p:05d}.done.json",
                vfp,
                (p, sig_files, mh.verify_threshold, mh.verify, str(out), vfp),
            )
            for p in range(P)
        ],
    )
    edge_files = [str(work / "edges" / f"p={p:05d}.parquet") for p in range(P)]
    ensure_ray(cfg.ray)
    cc_dir = work / f"cc-{vfp}"
    cc = components(edge_files, str(cc_dir), P, small_edge_limit=mh.union_find_max_edges)
    comp_files = cc["component_files"]
    node_files = [str(work / "nodes" / f"{n}.parquet") for n in names]
    mfp = config_hash([vfp, cc.get("num_components"), cc.get("num_nodes")])
    phase(
        "members",
        steps.member_partition,
        [
            (str(p), work / "members" / f"from-{p:05d}.done.json", mfp, (f, p, node_files, P, str(out), mfp))
            for p, f in enumerate(comp_files)
        ],
    )
    sfp = config_hash([mfp, mh.survivor, mh.quality_score_field])
    surv = phase(
        "survivors",
        steps.survivor_partition,
        [
            (str(q), work / "removed" / f"q={q:05d}.done.json", sfp, (q, P, mh.survivor, str(out), sfp))
            for q in range(P)
        ],
    )
    final = phase(
        "finalize",
        steps.finalize_shard,
        [
            (
                n,
                work / "final" / f"{n}.done.json",
                config_hash([sfp, sig_fp[n]]),
                (
                    str(s),
                    rel,
                    i,
                    P,
                    cfg.batch_rows,
                    cfg.num_example_rejects,
                    str(out),
                    config_hash([sfp, sig_fp[n]]),
                ),
            )
            for i, (n, s, rel) in enumerate(zip(names, shards, rels))
        ],
    )
    progress.stop()

    keep = {f"shards/{r}" for r in rels} | {f"rejects/{n}.parquet" for n in names}
    remove_unlisted(out, keep)
    sizes: Counter = Counter()
    for rec in surv.values():
        sizes.update({int(k): v for k, v in rec["cluster_sizes"].items()})
    examples: dict[str, list] = {}
    for n in names:
        for k, ex in final[n]["examples"].items():
            add_examples(examples.setdefault(k, []), ex, cfg.num_example_rejects)
    num_in = sum(final[n]["num_in"] for n in names)
    num_kept = sum(final[n]["num_kept"] for n in names)
    upstream = read_json(inp / "stats.json") if (inp / "stats.json").exists() else {}
    seconds = time.perf_counter() - t_start
    stats = {
        "num_in": num_in,
        "num_kept": num_kept,
        "num_rejected": num_in - num_kept,
        "stage_order": ["minhash_dedup"],
        "stages": {
            "minhash_dedup": {
                "in": num_in,
                "kept": num_kept,
                "rejected": num_in - num_kept,
                "reasons": {"near_duplicate": num_in - num_kept} if num_in > num_kept else {},
            }
        },
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
        "examples": examples,
        "num_shards": len(names),
        "seconds": round(seconds, 3),
        "docs_per_second": round(num_in / seconds, 1) if seconds else None,
    }
    assert num_in == num_kept + stats["num_rejected"]
    write_json(out / "stats.json", stats)
    write_manifest(
        out,
        config_hash=sfp,
        shards=[
            {**final[n]["shard"], "path": rel, "input": str(s), "config_hash": sfp}
            for n, s, rel in zip(names, shards, rels)
        ],
        rejects=[final[n]["rejects"] for n in names],
    )
    write_summary(out, stats, print_table=cfg.progress)
    return stats
