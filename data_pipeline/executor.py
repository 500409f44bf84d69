"""Schedules the pipeline's tasks on Ray: work units sized by bytes, bounded in flight, resumable.

    from data_pipeline.executor import run_pipeline
    stats = run_pipeline(load_pipeline_config("configs/data_tiny.yaml"))

Phases: chain (per input unit: a file, or a part of a large one; small ones grouped into one task,
see `data_pipeline.units`) -> hash runs of consecutive units merged (when there are many) -> exact
dedup per range of hashes -> duplicate lists per range of units
(both sized from their input: `data_pipeline.shuffle`) -> finalize (per unit, reading its own
list, into `_work/final/`) -> pack (the units' shards cut into `shards/part-NNNNN.parquet` of about
`target_shard_bytes`: `data_pipeline.pack`) -> manifest, stats, summary. Every task writes its
outputs atomically and then a done record; a rerun skips tasks whose record matches, so a killed
driver or worker loses and duplicates nothing. Output is
a pure function of input and config: the same for 1 or N workers. A finished run writes the stage
record `done.json` and removes `_work/` (`keep_work` keeps it); a rerun with the same inputs and
config then does nothing.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from data_pipeline.config import PipelineConfig
from data_pipeline.pack import PackSource, pack_shards
from data_pipeline.quality_classifier import REPORT_FILE
from data_pipeline.readers import InputUnit, SkippedFile, format_skipped, scan_inputs, unit_fingerprints
from data_pipeline.shuffle import (
    DEFAULT_TASK_BUDGET_BYTES,
    merge_groups,
    num_partitions,
    unit_ranges,
    whole_piece,
)
from data_pipeline.summary import write_summary
from data_pipeline.tasks import (
    DUP_ROW_BYTES,
    HASH_ROW_BYTES,
    dedup_partition,
    dup_lists,
    finalize_units,
    hash_run_path,
    merge_hashes,
    run_chain,
    unit_range,
)
from data_pipeline.units import (
    SplitMany,
    group_key,
    group_label,
    group_target_bytes,
    group_units,
    split_unit,
    split_units,
)
from pretrain.core.config import config_hash, dump_yaml, to_dict
from pretrain.core.done import finish_stage, finished_stage, load_done_many
from pretrain.core.files import read_json, write_json
from pretrain.core.progress import Progress
from pretrain.core.runner import cluster_cpus, ensure_ray, raise_errors, run_tasks, task_memory_bytes
from pretrain.core.shards import remove_unlisted, write_manifest
from pretrain.core.storage import stage_path, work_dir

log = logging.getLogger(__name__)


CHAIN_KEEP = ("fingerprint", "num_kept", "num_hash_rows", "rejects")  # of a chain record, for later steps
FINAL_KEEP = ("shards", "rejects")
LOAD_BATCH = 1024  # done records read at once on a resume
FINAL_LAYOUT = 2  # finalize writes its shards into _work/final/ for the pack phase (1: into shards/)
RUN_ONLY_FIELDS = ("ray", "progress", "output_dir", "keep_work", "input_dir")
"""Config fields that say where and how a stage runs, not what it writes: not in its fingerprint."""


def stage_fingerprint(cfg: Any, units: list[InputUnit], fingerprints: list[dict], **identity: Any) -> str:
    """What a whole stage's record (`done.json`) is keyed on: its config less RUN_ONLY_FIELDS,
    `identity` (what else decides the output) and every input unit with its fingerprint."""
    config = {k: v for k, v in to_dict(cfg).items() if k not in RUN_ONLY_FIELDS}
    if isinstance(config.get("input"), dict):
        config["input"] = config["input"] | {"paths": None}  # the units below say what was read
    inputs = [[u.relpath, u.format, fp] for u, fp in zip(units, fingerprints)]
    return config_hash({"config": config, "identity": identity, "inputs": inputs})


def _split_on_ray(cfg: PipelineConfig, progress: Progress) -> SplitMany:
    """`split_units`'s `split_many`: one Ray task per input unit to split (`split_unit`), its
    progress in bytes; a file that cannot be read fails the run with its name."""

    def split_many(todo: list[InputUnit], unit_bytes: int) -> list[list[InputUnit]]:
        keys = [u.stem for u in todo]  # unique per file
        sizes = {k: u.num_bytes for k, u in zip(keys, todo)}
        progress.start("split inputs", total=len(todo), total_bytes=sum(sizes.values()))
        results, errors = run_tasks(
            split_unit,
            [(k, (u, unit_bytes)) for k, u in zip(keys, todo)],
            cfg.ray,
            progress,
            "split inputs",
            sizes=sizes,
            labels={k: f"input {u.label}" for k, u in zip(keys, todo)},
        )
        raise_errors(errors, "split inputs")
        return [results[k]["parts"] for k in keys]

    return split_many


def run_pipeline(cfg: PipelineConfig) -> dict[str, Any]:
    t_start = time.perf_counter()
    out = stage_path(cfg.output_dir)
    scan = scan_inputs(cfg.input)
    input_fps = unit_fingerprints(scan.units)
    stage_fp = stage_fingerprint(cfg, scan.units, input_fps, chain=cfg.chain_identity())
    if (stats := finished_stage(out, stage_fp, cfg.keep_work)) is not None:
        return stats
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_yaml(cfg))
    if scan.skipped:  # said once here and in stats.json / summary.md, never per task
        log.warning("skipped %d input files: %s", len(scan.skipped), format_skipped(scan.skipped))
    progress = Progress(enabled=cfg.progress)
    # large files -> parts, found by a Ray task per file (which reads it), not in the driver
    units = split_units(scan.units, input_fps, cfg.input.unit_bytes, _split_on_ray(cfg, progress))
    file_fp = {u.path: fp for u, fp in zip(scan.units, input_fps)}
    names = [u.stem for u in units]
    # the chain writes hashes when exact dedup is on; how many reducers read them is decided later
    chain_id = config_hash(cfg.chain_identity() | {"exact_dedup": cfg.exact_dedup.enabled})

    # Phase 1: the fused per-document chain, one task per group of units.
    fps = [
        {"input": file_fp[u.path], "part": None if u.part is None else unit_range(u), "config": chain_id}
        for u in units
    ]
    stats_fold = StatsFold(cfg, [u.stem for u in units])
    chain = _run_units(cfg, out, "chain", "chain", run_chain, units, fps, progress, stats_fold.chain)

    # Phase 2: exact dedup per hash partition (depends on every chain output).
    dedup_fp = config_hash(
        {"chain": [chain[n]["fingerprint"] | {"n": chain[n]["num_kept"]} for n in names], "units": names}
    )
    if cfg.exact_dedup.enabled:  # reducers sized by the hashes the chain kept and the task budget
        ensure_ray(cfg.ray)
        budget = task_memory_bytes(cfg.ray) or DEFAULT_TASK_BUDGET_BYTES
        rows = [chain[n]["num_hash_rows"] for n in names]
        groups = merge_groups(rows, HASH_ROW_BYTES)  # many small runs -> pieces by key range
        merge_fp = config_hash([dedup_fp, groups])
        merged = _run_reducers(
            cfg, out, progress, "hash_merge", merge_hashes, "hash_merge",
            [(m, names[a:b], budget, str(out), merge_fp) for m, (a, b) in enumerate(groups) if b - a > 1],
            merge_fp,
        )  # fmt: skip
        pieces = [p for rec in merged for p in rec["pieces"]]
        pieces += [whole_piece(str(hash_run_path(out, names[a]))) for a, b in groups if b - a == 1]
        # a reducer opens about one piece per group: with many groups, it reads several chunks
        Q = num_partitions(sum(rows), HASH_ROW_BYTES, budget, cfg.exact_dedup.num_partitions, len(groups))
        dedup_fp = config_hash([merge_fp, Q])
        dups = _run_reducers(
            cfg, out, progress, "exact_dedup", dedup_partition, "dups",
            [(q, Q, names, pieces, budget, str(out), dedup_fp) for q in range(Q)], dedup_fp,
        )  # fmt: skip
        ranges = unit_ranges(
            len(names), num_partitions(sum(r["num_dups"] for r in dups), DUP_ROW_BYTES, budget, None)
        )
        dedup_fp = config_hash([dedup_fp, ranges])
        runs = [path for rec in dups for path in rec["runs"]]
        _run_reducers(
            cfg, out, progress, "dup_lists", dup_lists, "dup_lists",
            [(r, a, names[a:b], runs, str(out), dedup_fp) for r, (a, b) in enumerate(ranges)], dedup_fp,
        )  # fmt: skip

    # Phase 3: finalize each unit's shard (into _work/final/).
    fps = [
        config_hash([dedup_fp, chain[n]["fingerprint"], cfg.partition_by_language, FINAL_LAYOUT])
        for n in names
    ]
    final = _run_units(cfg, out, "finalize", "final", finalize_units, units, fps, progress, stats_fold.final)

    # Phase 4: the units' shards packed into shards/part-NNNNN.parquet of about target_shard_bytes.
    sources = [
        PackSource(
            str(work_dir(out) / "final" / e["path"]),
            e["rows"],
            e["arrow_bytes"],
            e["sha256"],
            e["path"].rpartition("/")[0],  # lang=xx with partition_by_language
            {"unit": u.stem, "input": u.relpath} | ({} if u.part is None else {"input_part": unit_range(u)}),
        )
        for u in units
        for e in final[u.stem]["shards"]
    ]
    parts = pack_shards(sources, cfg, out, out / "shards", work_dir(out) / "pack", progress)
    progress.stop()

    _remove_stale(out, names, {e["path"] for e in parts})
    stats = stats_fold.stats(scan.skipped, len(parts), time.perf_counter() - t_start)
    write_json(out / "stats.json", stats)
    write_manifest(
        out,
        config_hash=chain_id,
        shards=[entry | {"config_hash": chain_id} for entry in parts],
        rejects=[chain[u.stem]["rejects"] for u in units] + [final[u.stem]["rejects"] for u in units],
    )
    write_summary(out, stats, print_table=cfg.progress)
    finish_stage(out, stage_fp, cfg.keep_work)
    return stats


def _run_units(
    cfg: PipelineConfig,
    out: Path,
    phase: str,
    step_dir: str,
    fn: Callable,
    units: list[InputUnit],
    fingerprints: list,
    progress: Progress,
    keep: Callable[[str, dict], dict],
) -> dict[str, dict]:
    """One per-unit phase: the units whose done record (`_work/<step_dir>/<stem>.done.json`) is
    missing or stale run in groups of about `input.unit_bytes` (largest first; smaller when the input
    is small, so every CPU gets several). Each unit's record, loaded or returned by a task, goes
    through `keep(stem, record)` as it arrives, and what that returns is kept: returns those, by
    stem. Progress counts input bytes."""
    records: dict[str, dict] = {}
    pending: list[tuple[InputUnit, Any]] = []
    for i in range(0, len(units), LOAD_BATCH):  # a batch of full records at a time, then only `keep`'s
        batch = list(zip(units[i : i + LOAD_BATCH], fingerprints[i : i + LOAD_BATCH]))
        done = load_done_many(
            out, [(work_dir(out) / step_dir / f"{u.stem}.done.json", fp) for u, fp in batch]
        )
        for (u, fp), rec in zip(batch, done):
            if rec is None:
                pending.append((u, fp))
            else:
                records[u.stem] = keep(u.stem, rec)
    groups: list[list[InputUnit]] = []
    if pending:
        ensure_ray(cfg.ray)
        target = group_target_bytes([u for u, _ in pending], cfg.input.unit_bytes, cluster_cpus())
        groups = group_units([u for u, _ in pending], target)
    fp_of = {u.stem: fp for u, fp in pending}
    jobs = [(group_key(g), (g, cfg, str(out), [fp_of[u.stem] for u in g])) for g in groups]
    progress.start(
        phase,
        total=len(records) + len(groups),
        done=len(records),
        total_bytes=sum(u.num_bytes for u in units),
        done_bytes=sum(u.num_bytes for u in units if u.stem in records),
    )
    results, errors = run_tasks(
        fn,
        jobs,
        cfg.ray,
        progress,
        phase,
        sizes={group_key(g): sum(u.num_bytes for u in g) for g in groups},
        labels={group_key(g): group_label(g) for g in groups},
        on_result=lambda key, res: res and res.update(units={n: keep(n, r) for n, r in res["units"].items()}),
    )  # each group's records shrunk as it ends: the driver never holds them all
    for res in results.values():
        records.update(res["units"])
    raise_errors(errors, phase)
    return records


def _run_reducers(
    cfg: PipelineConfig,
    out: Path,
    progress: Progress,
    phase: str,
    fn: Callable,
    step_dir: str,
    jobs: list[tuple],
    fingerprint: str,
) -> list[dict]:
    """One reducer task per job (its first argument is its index) whose done record
    (`_work/<step_dir>/q=NNNNN.done.json`) is missing or stale; returns every job's record, in order."""
    done = load_done_many(
        out, [(work_dir(out) / step_dir / f"q={job[0]:05d}.done.json", fingerprint) for job in jobs]
    )
    todo = [(str(job[0]), job) for job, rec in zip(jobs, done) if rec is None]
    progress.start(phase, total=len(jobs), done=len(jobs) - len(todo))
    labels = {k: f"{phase} partition {k} of {len(jobs)}" for k, _ in todo}
    results, errors = run_tasks(fn, todo, cfg.ray, progress, phase, labels=labels)
    raise_errors(errors, phase)
    return [rec if rec is not None else results[str(job[0])] for job, rec in zip(jobs, done)]


def _remove_stale(out: Path, names: list[str], shards: set[str]) -> None:
    """Drop outputs of inputs (or languages) no longer in the run and temp files of killed tasks."""
    keep = {f"shards/{s}" for s in shards}
    keep |= {f"rejects/{n}{suffix}.parquet" for n in names for suffix in ("", ".exact_dedup")}
    remove_unlisted(out, keep)
    for f in work_dir(out).rglob(".*.tmp"):
        f.unlink()


class StatsFold:
    """The run's stats, folded from each unit's done records as they arrive (`_run_units`' `keep`),
    which keeps of a record only what the driver needs later (CHAIN_KEEP, FINAL_KEEP): the driver's
    memory grows with the number of units by a few hundred bytes each, not by their records (counts
    per stage, language and reason, example rejects). Example rejects are those the units give in
    input order (the first `num_example_rejects` per language and reason), whatever order their
    tasks finish in."""

    def __init__(self, cfg: PipelineConfig, stems: list[str]):
        self.cfg = cfg
        self.index = {s: i for i, s in enumerate(stems)}
        self.stage_in: Counter = Counter()
        self.rejected: dict[str, Counter] = defaultdict(Counter)
        self.by_language: dict[str, Counter] = defaultdict(Counter)
        self.examples: dict[tuple[str, str], list] = defaultdict(list)  # (reason, language) -> sorted
        self.pii: Counter = Counter()
        self.num_in = self.num_kept = 0
        self.chain_seconds = 0.0

    def _add(self, stem: str, phase: int, rec: dict) -> None:
        self.stage_in.update(rec["stage_in"])
        for s, c in rec["rejected"].items():
            self.rejected[s].update(c)
        for s, c in rec.get("rejected_by_language", {}).items():  # absent in older done records
            self.by_language[s].update(c)
        n = self.cfg.num_example_rejects
        for k, exs in rec["examples"].items():
            for pos, e in enumerate(exs):
                kept = self.examples[k, e.get("language", "und")]
                bisect.insort(kept, ((self.index[stem], phase, pos), e), key=lambda x: x[0])
                del kept[n:]

    def chain(self, stem: str, rec: dict) -> dict:
        self._add(stem, 0, rec)
        self.pii.update(rec["pii"])
        self.num_in += rec["num_in"]
        self.chain_seconds += rec["seconds"]
        return {k: rec[k] for k in CHAIN_KEEP}

    def final(self, stem: str, rec: dict) -> dict:
        self._add(stem, 1, rec)
        self.num_kept += rec["num_kept"]
        return {k: rec[k] for k in FINAL_KEEP}

    def stats(self, skipped: list[SkippedFile], num_shards: int, seconds: float) -> dict:
        cfg = self.cfg
        order = ["read", *cfg.enabled_stages()]
        if cfg.exact_dedup.enabled:
            order.append("exact_dedup")
        stage_in = Counter(self.stage_in)
        stage_in["read"] = self.num_in
        stages: dict[str, dict] = {}
        for s in order:
            n_rej = sum(self.rejected[s].values())
            stages[s] = {
                "in": stage_in[s],
                "kept": stage_in[s] - n_rej,
                "rejected": n_rej,
                "reasons": dict(sorted(self.rejected[s].items())),
            }
        num_rejected = sum(v["rejected"] for v in stages.values())
        assert self.num_in == self.num_kept + num_rejected, (
            f"accounting broken: in={self.num_in} kept={self.num_kept} rejected={num_rejected}"
        )
        merged: dict[str, list] = defaultdict(list)  # each reason's examples, every language's
        for (k, _), kept in self.examples.items():
            merged[k] += kept
        examples = {k: [e for _, e in sorted(v, key=lambda x: x[0])] for k, v in sorted(merged.items())}
        by_language = self.by_language
        return {
            "num_in": self.num_in,
            "num_kept": self.num_kept,
            "num_rejected": num_rejected,
            "stage_order": order,
            "stages": stages,
            "pii": dict(sorted(self.pii.items())),
            "rejected_by_language": {
                s: dict(sorted(by_language[s].items())) for s in order if by_language[s]
            },
            "examples": examples,
            "num_shards": num_shards,
            "source_profiles": dict(cfg.source_profiles),
            "skipped_files": [{"path": f.path, "reason": f.reason} for f in skipped],
            "seconds": round(seconds, 3),
            "docs_per_second": round(self.num_in / seconds, 1) if seconds else None,
            "task_seconds_chain": round(self.chain_seconds, 3),
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
