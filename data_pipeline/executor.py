"""Schedules the pipeline's tasks on Ray: one task per input unit, bounded in flight, resumable.

    from data_pipeline.executor import run_pipeline
    stats = run_pipeline(load_pipeline_config("configs/data_tiny.yaml"))

Phases: chain (per input unit) -> exact-dedup partitions -> finalize (per unit) -> manifest,
stats, summary. Every task writes its outputs atomically and then a done record; a rerun skips
tasks whose record matches, so a killed driver or worker loses and duplicates nothing. Output is
a pure function of input and config: the same for 1 or N workers.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from data_pipeline.config import PipelineConfig
from data_pipeline.quality_classifier import REPORT_FILE
from data_pipeline.readers import InputUnit, SkippedFile, format_skipped, scan_inputs
from data_pipeline.summary import write_summary
from data_pipeline.tasks import add_examples, dedup_partition, finalize_shard, run_chain
from pretrain.core.config import config_hash, dump_yaml, to_dict
from pretrain.core.done import load_done
from pretrain.core.files import read_json, write_json
from pretrain.core.hashing import file_fingerprint
from pretrain.core.progress import Progress
from pretrain.core.runner import raise_errors, run_tasks
from pretrain.core.shards import remove_unlisted, write_manifest

log = logging.getLogger(__name__)


def run_pipeline(cfg: PipelineConfig) -> dict[str, Any]:
    t_start = time.perf_counter()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_yaml(cfg))
    scan = scan_inputs(cfg.input)
    units = scan.units
    if scan.skipped:  # said once here and in stats.json / summary.md, never per task
        log.warning("skipped %d input files: %s", len(scan.skipped), format_skipped(scan.skipped))
    names = [u.stem for u in units]
    chain_id = config_hash(cfg.chain_identity() | {"exact_dedup": to_dict(cfg.exact_dedup)})
    progress = Progress(enabled=cfg.progress)

    # Phase 1: the fused per-document chain, one task per input unit.
    chain: dict[str, dict] = {}
    jobs = []
    for u in units:
        fp = {
            "input": file_fingerprint(u.path) if u.format != "text" else _dir_fingerprint(u.path),
            "config": chain_id,
        }
        rec = load_done(out, out / "_work" / "chain" / f"{u.stem}.done.json", fp)
        if rec is not None:
            chain[u.stem] = rec
        else:
            jobs.append((u.stem, (u, cfg, str(out), fp)))
    progress.start("chain", total=len(units), done=len(units) - len(jobs))
    results, errors = run_tasks(run_chain, jobs, cfg.ray, progress, "chain")
    chain.update(results)
    raise_errors(errors, "chain")

    # Phase 2: exact dedup per hash partition (depends on every chain output).
    dedup_fp = config_hash(
        {"chain": [chain[n]["fingerprint"] | {"n": chain[n]["num_kept"]} for n in names], "units": names}
    )
    dups: dict[str, dict] = {}
    if cfg.exact_dedup.enabled:
        jobs = []
        for p in range(cfg.exact_dedup.num_partitions):
            rec = load_done(out, out / "_work" / "dups" / f"p={p:05d}.done.json", dedup_fp)
            if rec is not None:
                dups[str(p)] = rec
            else:
                jobs.append((str(p), (p, names, str(out), dedup_fp)))
        progress.start(
            "exact_dedup",
            total=cfg.exact_dedup.num_partitions,
            done=cfg.exact_dedup.num_partitions - len(jobs),
        )
        results, errors = run_tasks(dedup_partition, jobs, cfg.ray, progress, "exact_dedup")
        dups.update(results)
        raise_errors(errors, "exact_dedup")

    # Phase 3: finalize each shard.
    final: dict[str, dict] = {}
    jobs = []
    for n in names:
        fp = config_hash([dedup_fp, chain[n]["fingerprint"], cfg.partition_by_language])
        rec = load_done(out, out / "_work" / "final" / f"{n}.done.json", fp)
        if rec is not None:
            final[n] = rec
        else:
            jobs.append((n, (n, cfg, str(out), fp)))
    progress.start("finalize", total=len(names), done=len(names) - len(jobs))
    results, errors = run_tasks(finalize_shard, jobs, cfg.ray, progress, "finalize")
    final.update(results)
    raise_errors(errors, "finalize")
    progress.stop()

    _remove_stale(out, names, {e["path"] for n in names for e in final[n]["shards"]})
    stats = _aggregate(cfg, units, scan.skipped, chain, final, time.perf_counter() - t_start)
    write_json(out / "stats.json", stats)
    write_manifest(
        out,
        config_hash=chain_id,
        shards=[
            {
                **entry,
                "input": u.relpath,
                "input_fingerprint": chain[u.stem]["fingerprint"]["input"],
                "config_hash": chain_id,
            }
            for u in units
            for entry in final[u.stem]["shards"]
        ],
        rejects=[chain[u.stem]["rejects"] for u in units] + [final[u.stem]["rejects"] for u in units],
    )
    write_summary(out, stats, print_table=cfg.progress)
    return stats


def _dir_fingerprint(path: str) -> dict:
    files = sorted(Path(path).glob("*.txt"))
    return {"files": [[f.name, *file_fingerprint(f).values()] for f in files]}


def _remove_stale(out: Path, names: list[str], shards: set[str]) -> None:
    """Drop outputs of inputs (or languages) no longer in the run and temp files of killed tasks."""
    keep = {f"shards/{s}" for s in shards}
    keep |= {f"rejects/{n}{suffix}.parquet" for n in names for suffix in ("", ".exact_dedup")}
    remove_unlisted(out, keep)
    for f in (out / "_work").rglob(".*.tmp"):
        f.unlink()


def _aggregate(
    cfg: PipelineConfig,
    units: list[InputUnit],
    skipped: list[SkippedFile],
    chain: dict,
    final: dict,
    seconds: float,
) -> dict:
    stages: dict[str, dict] = {}
    order = ["read", *cfg.enabled_stages()]
    if cfg.exact_dedup.enabled:
        order.append("exact_dedup")
    stage_in: Counter = Counter()
    rejected: dict[str, Counter] = defaultdict(Counter)
    by_language: dict[str, Counter] = defaultdict(Counter)
    examples: dict[str, list] = defaultdict(list)
    pii: Counter = Counter()
    num_in = 0
    for u in units:
        for rec in (chain[u.stem], final[u.stem]):
            stage_in.update(rec["stage_in"])
            for s, c in rec["rejected"].items():
                rejected[s].update(c)
            for s, c in rec.get("rejected_by_language", {}).items():  # absent in older done records
                by_language[s].update(c)
            for k, ex in rec["examples"].items():
                add_examples(examples[k], ex, cfg.num_example_rejects)
        pii.update(chain[u.stem]["pii"])
        num_in += chain[u.stem]["num_in"]
    stage_in["read"] = num_in
    for s in order:
        n_rej = sum(rejected[s].values())
        stages[s] = {
            "in": stage_in[s],
            "kept": stage_in[s] - n_rej,
            "rejected": n_rej,
            "reasons": dict(sorted(rejected[s].items())),
        }
    num_kept = sum(final[u.stem]["num_kept"] for u in units)
    num_rejected = sum(v["rejected"] for v in stages.values())
    assert num_in == num_kept + num_rejected, (
        f"accounting broken: in={num_in} kept={num_kept} rejected={num_rejected}"
    )
    chain_seconds = sum(chain[u.stem]["seconds"] for u in units)
    return {
        "num_in": num_in,
        "num_kept": num_kept,
        "num_rejected": num_rejected,
        "stage_order": order,
        "stages": stages,
        "pii": dict(sorted(pii.items())),
        "rejected_by_language": {s: dict(sorted(by_language[s].items())) for s in order if by_language[s]},
        "examples": dict(sorted(examples.items())),
        "num_shards": sum(len(final[u.stem]["shards"]) for u in units),
        "source_profiles": dict(cfg.source_profiles),
        "skipped_files": [{"path": f.path, "reason": f.reason} for f in skipped],
        "seconds": round(seconds, 3),
        "docs_per_second": round(num_in / seconds, 1) if seconds else None,
        "task_seconds_chain": round(chain_seconds, 3),
        "quality_model": quality_model_report(cfg),
    }


def quality_model_report(cfg: PipelineConfig) -> dict | None:
    """The classifier's held-out precision and recall (its report.json), for the summary."""
    if not cfg.quality_model.enabled:
        return None
    report = cfg.quality_model.model_path.parent / REPORT_FILE
    if not report.is_file():
        return {"model": str(cfg.quality_model.model_path), "threshold": cfg.quality_model.threshold}
    r = read_json(report)
    return {"model": str(cfg.quality_model.model_path), "threshold": cfg.quality_model.threshold,
            **{k: r[k] for k in ("precision", "recall", "num_train", "num_heldout")}}  # fmt: skip
