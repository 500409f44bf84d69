"""`pretrain run CONFIG`: raw documents -> document shards -> dedup -> tokenizer -> token shards ->
trained checkpoints -> scores -> one report, resumable.

    pretrain run configs/run_tiny.yaml                     # the embedded default (tiny corpus, CPU)
    pretrain run configs/run_tiny.yaml train.max_steps=40  # dotted overrides into any section
    pretrain run configs/run_tiny.yaml --from tokenizer    # redo tokenizer and everything after it
    pretrain run configs/run_tiny.yaml --dry-run           # print the resolved config and the plan

Each stage writes into run_dir/<stage>/ and, when it finishes, a record run_dir/stages/<stage>.json
with the stage's *key* (a hash of its config section and of its inputs' digests) and its outputs'
digest. A rerun skips a stage whose record has the current key and whose outputs still have the
recorded digest; otherwise the stage runs, and because every stage resumes internally (done records
in the data stages and the encoder, checkpoints in the trainer, results rows in eval), a rerun
after a kill continues where it stopped. A stage whose key changed since it started (config or
upstream data changed) is cleaned first, so stale outputs never mix with new ones.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pretrain.core.config import check, config_hash, dump_yaml, load_config, to_dict
from pretrain.core.files import read_json, write_json

STAGES = ["corpus", "data", "minhash", "split", "tokenizer", "encode", "train", "eval", "report"]


@dataclass
class CorpusConfig:
    """Where the raw documents come from."""

    input: list[str] = field(default_factory=list)
    """Raw files, folders or globs (JSONL/.gz/.zst, Parquet, .txt folders, WARC); empty: generate
    the tiny corpus (deterministic, with planted cases and ground truth) into run_dir/corpus."""
    seed: int = 0
    """Seed of the generated corpus."""
    num_base_docs: int = 600
    """Base documents of the generated corpus (planted cases are added on top)."""

    def __post_init__(self) -> None:
        check(self.num_base_docs >= 1, "corpus.num_base_docs", self.num_base_docs, ">= 1")


@dataclass
class SplitConfig:
    """Held-out documents for eval, taken per source before the tokenizer and trainer see the data."""

    heldout_fraction: float = 0.05
    """Fraction of each source's documents held out (ranked by a seeded hash of the doc id)."""
    min_heldout_per_source: int = 2
    """Hold out at least this many documents of every source that has more than this many."""
    seed: int = 0
    """Seed of the hash ranking."""

    def __post_init__(self) -> None:
        check(0 <= self.heldout_fraction < 1, "split.heldout_fraction", self.heldout_fraction, "[0, 1)")
        check(
            self.min_heldout_per_source >= 0,
            "split.min_heldout_per_source",
            self.min_heldout_per_source,
            ">= 0",
        )


@dataclass
class RunConfig:
    """The whole chain. Stage sections hold that stage's own config fields (validated at load by the
    stage's config class); the run fills in the input/output paths that connect the stages."""

    run_dir: str = "runs/tiny"
    """Everything the run writes goes under this directory."""
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    """Raw input."""
    data: dict[str, Any] = field(default_factory=dict)
    """data_pipeline PipelineConfig fields (not input/output_dir), e.g. quality, pii, ray."""
    minhash: dict[str, Any] = field(default_factory=dict)
    """data_pipeline MinHashConfig fields, e.g. threshold, num_perm."""
    split: SplitConfig = field(default_factory=SplitConfig)
    """Held-out documents for eval."""
    tokenizer: dict[str, Any] = field(default_factory=dict)
    """Tokenizer training config fields, e.g. vocab_size."""
    encode: dict[str, Any] = field(default_factory=dict)
    """Encoder config fields, e.g. add_bos."""
    train: dict[str, Any] = field(default_factory=dict)
    """trainer TrainConfig fields (not run_dir; data.sources defaults to every source), e.g. model,
    model_overrides, curriculum, checkpoint."""
    eval: dict[str, Any] = field(default_factory=dict)
    """Eval config fields."""
    ray: dict[str, Any] = field(default_factory=dict)
    """RayConfig fields for every Ray stage (address, num_cpus, max_in_flight, max_retries)."""
    progress: bool = True
    """Per-stage progress displays."""

    def __post_init__(self) -> None:
        check(bool(self.run_dir), "run_dir", self.run_dir, "a directory path")
        for section in ("data", "minhash", "tokenizer", "encode", "train", "eval"):
            bad = {"input", "output_dir", "input_dir", "run_dir", "out", "output"} & set(
                getattr(self, section)
            )
            check(not bad, section, sorted(bad), "no paths: the run connects the stages itself")


class RunError(RuntimeError):
    """A stage failed; the message names the stage and how to resume."""


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def json_digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Stage:
    name: str
    run: Callable[[Run], None]
    """Do the work (resuming whatever is already there)."""
    digest: Callable[[Run], str | None]
    """Digest of the finished outputs, or None when they are incomplete."""
    inputs: list[str]
    """Upstream stages whose output digests are part of this stage's key."""
    section: Callable[[RunConfig], Any]
    """The config this stage depends on."""


class Run:
    """One run directory: paths, stage records, and the stage configs built from RunConfig."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.dir = Path(cfg.run_dir)
        self.records = self.dir / "stages"

    def path(self, stage: str) -> Path:
        return self.dir / stage

    # Stage records ---------------------------------------------------------------------------
    def record(self, stage: str) -> dict[str, Any] | None:
        p = self.records / f"{stage}.json"
        return read_json(p) if p.exists() else None

    def write_record(self, stage: str, **fields: Any) -> None:
        self.records.mkdir(parents=True, exist_ok=True)
        write_json(self.records / f"{stage}.json", {"stage": stage, **fields})

    def key(self, stage: Stage) -> str:
        upstream = {}
        for name in stage.inputs:
            rec = self.record(name)
            upstream[name] = rec and rec.get("digest")
        return config_hash({"config": to_dict(stage.section(self.cfg)), "inputs": upstream})


def _clean(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def run_all(cfg: RunConfig, from_stage: str | None = None, until: str | None = None) -> dict[str, Any]:
    """Run (or resume) every stage in order; returns {stage: record}."""
    from pretrain.stages import build_stages

    run = Run(cfg)
    run.dir.mkdir(parents=True, exist_ok=True)
    (run.dir / "config.yaml").write_text(dump_yaml(cfg))
    stages = build_stages()
    names = [s.name for s in stages]
    if from_stage is not None:
        if from_stage not in names:
            raise ValueError(f"--from {from_stage!r}: stages are {names}")
        for s in stages[names.index(from_stage) :]:
            _clean(run.path(s.name))
            _clean(run.records / f"{s.name}.json")
    last = names.index(until) if until else len(names) - 1
    out: dict[str, Any] = {}
    t_run = time.perf_counter()
    for i, stage in enumerate(stages[: last + 1]):
        key = run.key(stage)
        rec = run.record(stage.name)
        label = f"[{i + 1}/{len(stages)}] {stage.name}"
        if (
            rec
            and rec.get("key") == key
            and rec.get("status") == "done"
            and stage.digest(run) == rec["digest"]
        ):
            print(f"{label}: up to date ({rec['seconds']:.1f}s when it ran)", flush=True)
            out[stage.name] = rec
            continue
        if rec and rec.get("key") != key:
            # Config or upstream data changed since this stage started: its partial or finished
            # outputs belong to other inputs, so start it clean.
            print(f"{label}: inputs or config changed, restarting the stage", flush=True)
            _clean(run.path(stage.name))
        print(f"{label}: running", flush=True)
        run.write_record(stage.name, key=key, status="started", started_at=time.time())
        t0 = time.perf_counter()
        try:
            stage.run(run)
        except Exception as e:
            raise RunError(
                f"stage {stage.name} failed: {e}\n(rerun the same command to resume; "
                f"--from {stage.name} redoes it from scratch)"
            ) from e
        seconds = time.perf_counter() - t0
        digest = stage.digest(run)
        if digest is None:
            raise RunError(
                f"stage {stage.name} finished but its outputs in {run.path(stage.name)} are incomplete"
            )
        run.write_record(
            stage.name, key=key, status="done", digest=digest, seconds=seconds, finished_at=time.time()
        )
        out[stage.name] = run.record(stage.name)
        print(f"{label}: done in {seconds:.1f}s", flush=True)
    print(f"run {run.dir}: {time.perf_counter() - t_run:.1f}s", flush=True)
    return out


def load_run_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    cfg = load_config(RunConfig, path, overrides)
    from pretrain.stages import validate

    validate(cfg)  # build every stage's config now: a bad field fails before hours of work
    return cfg


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", default=None, help="YAML RunConfig (default: configs/run_tiny.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=20 run_dir=runs/x")
    p.add_argument("--from", dest="from_stage", choices=STAGES, help="redo this stage and every later one")
    p.add_argument("--until", choices=STAGES, help="stop after this stage")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and stage status")
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
        from pretrain.stages import build_stages

        print(dump_yaml(cfg), end="")
        run = Run(cfg)
        for s in build_stages():
            rec = run.record(s.name)
            state = "not run" if rec is None else rec.get("status")
            if rec and rec.get("status") == "done" and rec.get("key") != run.key(s):
                state = "stale (config or inputs changed)"
            print(f"# {s.name:10s} {state}")
        return 0
    try:
        run_all(cfg, args.from_stage, args.until)
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    report = Path(cfg.run_dir) / "report" / "report.md"
    if report.exists():
        print(f"report: {report}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from pretrain.core.cli import dispatch

    parser = argparse.ArgumentParser(prog="pretrain run")
    configure(parser)
    return dispatch(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
