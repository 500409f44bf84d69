"""`pretrain run CONFIG`: raw documents -> document shards -> dedup -> tokenizer -> token shards ->
trained checkpoints -> scores -> one report, resumable.

    pretrain run configs/run_tiny.yaml                     # the embedded default (tiny corpus, CPU)
    pretrain run configs/run_tiny.yaml train.max_steps=40  # dotted overrides into any section
    pretrain run configs/run_tiny.yaml --from tokenizer    # redo the tokenizer job and every later one
    pretrain run configs/run_tiny.yaml --dry-run           # print the resolved config and the plan

The run is a list of jobs (pretrain/jobs.py). Each job writes into run_dir/<job>/ and, when it
finishes, a record run_dir/jobs/<job>.json with the job's *key* (a hash of its config section and
of its inputs' digests) and its outputs' digest. A rerun skips a job whose record has the current
key and whose outputs still have the recorded digest; otherwise the job runs, and because every job
resumes internally (done records in the data stages and the encoder, checkpoints in the trainer,
results rows in eval), a rerun after a kill continues where it stopped. A job whose key changed
since it started (config or upstream data changed) is cleaned first, so stale outputs never mix
with new ones.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from pretrain.core.cli import dispatch
from pretrain.core.config import dump_yaml, load_config
from pretrain.jobs import JOBS, Run, RunConfig, build_jobs, validate


class RunError(RuntimeError):
    """A job failed; the message names the job and how to resume."""


def _clean(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def run_all(cfg: RunConfig, from_job: str | None = None, until: str | None = None) -> dict[str, Any]:
    """Run (or resume) every job in order; returns {job: record}."""
    run = Run(cfg)
    run.dir.mkdir(parents=True, exist_ok=True)
    (run.dir / "config.yaml").write_text(dump_yaml(cfg))
    jobs = build_jobs()
    names = [j.name for j in jobs]
    if from_job is not None:
        if from_job not in names:
            raise ValueError(f"--from {from_job!r}: jobs are {names}")
        for j in jobs[names.index(from_job) :]:
            _clean(run.path(j.name))
            _clean(run.records / f"{j.name}.json")
    last = names.index(until) if until else len(names) - 1
    out: dict[str, Any] = {}
    t_run = time.perf_counter()
    for i, job in enumerate(jobs[: last + 1]):
        key = run.key(job)
        rec = run.record(job.name)
        label = f"[{i + 1}/{len(jobs)}] {job.name}"
        if rec and rec.get("key") == key and rec.get("status") == "done" and job.digest(run) == rec["digest"]:
            print(f"{label}: up to date ({rec['seconds']:.1f}s when it ran)", flush=True)
            out[job.name] = rec
            continue
        if rec and rec.get("key") != key:
            # Config or upstream data changed since this job started: its partial or finished
            # outputs belong to other inputs, so start it clean.
            print(f"{label}: inputs or config changed, restarting the job", flush=True)
            _clean(run.path(job.name))
        print(f"{label}: running", flush=True)
        if job.name == "train":  # watch it live; the scalars are written by default
            print(f"  tensorboard --logdir {run.path('train') / 'tensorboard'} --host 127.0.0.1", flush=True)
        run.write_record(job.name, key=key, status="started", started_at=time.time())
        t0 = time.perf_counter()
        try:
            job.run(run)
        except Exception as e:
            raise RunError(
                f"job {job.name} failed: {e}\n(rerun the same command to resume; "
                f"--from {job.name} redoes it from scratch)"
            ) from e
        seconds = time.perf_counter() - t0
        digest = job.digest(run)
        if digest is None:
            raise RunError(f"job {job.name} finished but its outputs in {run.path(job.name)} are incomplete")
        run.write_record(
            job.name, key=key, status="done", digest=digest, seconds=seconds, finished_at=time.time()
        )
        out[job.name] = run.record(job.name)
        print(f"{label}: done in {seconds:.1f}s", flush=True)
    print(f"run {run.dir}: {time.perf_counter() - t_run:.1f}s", flush=True)
    return out


def load_run_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    cfg = load_config(RunConfig, path, overrides)
    validate(cfg)  # build every job's config now: a bad field fails before hours of work
    return cfg


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", default=None, help="YAML RunConfig (default: configs/run_tiny.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=20 run_dir=runs/x")
    p.add_argument(
        "--from",
        dest="from_job",
        choices=JOBS,
        metavar="JOB",
        help=f"redo this job and every later one ({', '.join(JOBS)})",
    )
    p.add_argument("--until", choices=JOBS, metavar="JOB", help="stop after this job")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and each job's status")
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    config = args.config
    overrides = list(args.overrides)
    if config is not None and "=" in config:  # `pretrain run key=value` without a file
        overrides.insert(0, config)
        config = None
    if config is None:
        default = Path(__file__).resolve().parent.parent / "configs" / "run_tiny.yaml"
        config = str(default) if default.exists() else None
    cfg = load_run_config(config, overrides)
    if args.dry_run:
        print(dump_yaml(cfg), end="")
        run = Run(cfg)
        for j in build_jobs():
            rec = run.record(j.name)
            state = "not run" if rec is None else rec.get("status")
            if rec and rec.get("status") == "done" and rec.get("key") != run.key(j):
                state = "stale (config or inputs changed)"
            print(f"# {j.name:10s} {state}")
        return 0
    try:
        run_all(cfg, args.from_job, args.until)
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    report = Path(cfg.run_dir) / "report" / "report.md"
    if report.exists():
        print(f"report: {report}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pretrain run")
    configure(parser)
    return dispatch(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
