"""The jobs of `pretrain run`: the run's config (RunConfig), its directory and job records (Run),
and for each job how its config is built from RunConfig, how it runs, and what digest marks its
outputs complete. The work itself lives in each folder's own package; this file only connects
outputs to inputs. (A *job* is a step of the run; a *stage* is a per-document data step inside the
data job, e.g. normalize or pii.)

    corpus -> data -> minhash -> split -> tokenizer -> encode -> train -> eval -> report

    run = Run(load_config(RunConfig, "configs/run_tiny.yaml"))
    for job in build_jobs(): run.record(job.name)    # run_dir/jobs/<job>.json, or None
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_pipeline.config import PipelineConfig
from data_pipeline.corpus import generate_corpus
from data_pipeline.executor import run_pipeline
from data_pipeline.minhash.dedup import MinHashRunConfig, run_minhash_dedup
from data_pipeline.quality_classifier import (
    MODEL_FILE,
    REPORT_FILE,
    TrainQualityConfig,
    corpus_training_sets,
    train_quality_model,
)
from data_pipeline.split import split_heldout
from eval.config import EvalConfig
from eval.export import export_checkpoint
from eval.results import scored_checkpoints
from eval.score import score_checkpoint
from pretrain.core.config import check, config_hash, from_dict, to_dict
from pretrain.core.files import read_json, write_json
from pretrain.core.hashing import file_fingerprint, json_digest, sha256_file
from pretrain.core.runner import ensure_ray
from pretrain.core.tokenizer_file import load_tokenizer, tokenizer_hash
from pretrain.report import write_run_report
from tokenizer.config import TokenizerEncodeConfig, TokenizerTrainConfig
from tokenizer.encode import run_encode
from tokenizer.train import train_tokenizer
from trainer.checkpoint import complete_checkpoints, latest_checkpoint
from trainer.config import TrainConfig
from trainer.schedule import Timeline
from trainer.train import train

JOBS = [
    "corpus",
    "quality_model",
    "data",
    "minhash",
    "split",
    "tokenizer",
    "encode",
    "train",
    "eval",
    "report",
]
RECORDS = "jobs"  # run_dir/jobs/<job>.json
OLD_RECORDS = "stages"  # where runs made before the rename keep them


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
class QualityModelRunConfig:
    """A fastText quality classifier trained for this run; the data job scores every document with
    it (metadata.quality_score) and MinHash keeps the best-scoring copy of a cluster."""

    enabled: bool = False
    """Train the classifier and run the data pipeline's quality_model stage with it."""
    positive: list[str] = field(default_factory=list)
    """Documents to keep (JSONL, Parquet, stage dirs); empty: the generated corpus's clean documents."""
    negative: list[str] = field(default_factory=list)
    """Documents to drop; empty: the generated corpus's junk documents."""
    threshold: float | None = None
    """Drop documents scoring below this in the data job (reason low_quality_score); null: only score."""
    train: dict[str, Any] = field(default_factory=dict)
    """TrainQualityConfig fields (epochs, dim, seed, ...)."""

    def __post_init__(self) -> None:
        check(bool(self.positive) == bool(self.negative), "quality_model.positive", self.positive,
              "given together with quality_model.negative (or both empty: the generated corpus's)")  # fmt: skip


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
    """The whole chain. Job sections hold that job's own config fields (validated at load by the
    job's config class); the run fills in the input/output paths that connect the jobs."""

    run_dir: str = "runs/tiny"
    """Everything the run writes goes under this directory."""
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    """Raw input."""
    data: dict[str, Any] = field(default_factory=dict)
    """data_pipeline PipelineConfig fields (not input/output_dir), e.g. quality, pii, ray."""
    minhash: dict[str, Any] = field(default_factory=dict)
    """data_pipeline MinHashConfig fields, e.g. threshold, num_perm."""
    quality_model: QualityModelRunConfig = field(default_factory=QualityModelRunConfig)
    """The quality classifier (off by default)."""
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
    """RayConfig fields for every Ray job (address, num_cpus, max_in_flight, max_retries)."""
    progress: bool = True
    """Per-job progress displays."""

    def __post_init__(self) -> None:
        check(bool(self.run_dir), "run_dir", self.run_dir, "a directory path")
        for section in ("data", "minhash", "tokenizer", "encode", "train", "eval"):
            bad = {"input", "output_dir", "input_dir", "run_dir", "out", "output"} & set(
                getattr(self, section)
            )
            check(not bad, section, sorted(bad), "no paths: the run connects the jobs itself")


@dataclass
class Job:
    name: str
    run: Callable[[Run], None]
    """Do the work (resuming whatever is already there)."""
    digest: Callable[[Run], str | None]
    """Digest of the finished outputs, or None when they are incomplete."""
    inputs: list[str]
    """Upstream jobs whose output digests are part of this job's key."""
    section: Callable[[RunConfig], Any]
    """The config this job depends on."""


class Run:
    """One run directory: paths, job records, and the job configs built from RunConfig."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.dir = Path(cfg.run_dir)
        self.records = self.dir / RECORDS
        old = self.dir / OLD_RECORDS
        if old.is_dir() and not self.records.exists():
            old.rename(self.records)  # a run made before "stage" became "job" resumes as it was

    def path(self, job: str) -> Path:
        return self.dir / job

    # Job records ----------------------------------------------------------------------------
    def record(self, job: str) -> dict[str, Any] | None:
        p = self.records / f"{job}.json"
        return read_json(p) if p.exists() else None

    def write_record(self, job: str, **fields: Any) -> None:
        self.records.mkdir(parents=True, exist_ok=True)
        write_json(self.records / f"{job}.json", {"job": job, **fields})

    def key(self, job: Job) -> str:
        upstream = {}
        for name in job.inputs:
            rec = self.record(name)
            upstream[name] = rec and rec.get("digest")
        return config_hash({"config": to_dict(job.section(self.cfg)), "inputs": upstream})


def _section(cfg: RunConfig, name: str) -> dict[str, Any]:
    return copy.deepcopy(getattr(cfg, name))


def _with_ray(cfg: RunConfig, section: dict[str, Any]) -> dict[str, Any]:
    section["ray"] = {**cfg.ray, **section.get("ray", {})}
    section.setdefault("progress", cfg.progress)
    return section


def _shard_dir_digest(d: Path) -> str | None:
    """sha256 of a document-shard directory's manifest.json when every shard it lists is on disk."""
    manifest = d / "manifest.json"
    if not manifest.exists():
        return None
    m = read_json(manifest)
    for kind in ("shards", "rejects"):
        for e in m.get(kind, []):
            p = d / kind / e["path"]
            if not p.exists() or ("bytes" in e and p.stat().st_size != e["bytes"]):
                return None
    return sha256_file(manifest)


# corpus -----------------------------------------------------------------------------------------
def corpus_paths(run: Run) -> list[str]:
    return list(run.cfg.corpus.input) or [str(run.path("corpus") / "raw")]


def _run_corpus(run: Run) -> None:
    if run.cfg.corpus.input:
        return
    c = run.cfg.corpus
    generate_corpus(run.path("corpus"), seed=c.seed, num_base_docs=c.num_base_docs, overwrite=True)


def _digest_corpus(run: Run) -> str | None:
    if not run.cfg.corpus.input:
        summary = run.path("corpus") / "corpus.json"
        return sha256_file(summary) if summary.exists() else None
    files = []
    for p in run.cfg.corpus.input:
        root = Path(p)
        found = sorted(x for x in root.rglob("*") if x.is_file()) if root.is_dir() else sorted(Path().glob(p))
        files += [(str(x), file_fingerprint(x)) for x in found]
    return json_digest(files) if files else None


# quality model ------------------------------------------------------------------------------------
def _run_quality_model(run: Run) -> None:
    q = run.cfg.quality_model
    if not q.enabled:
        return
    out = run.path("quality_model")
    if q.positive:
        positive, negative = list(q.positive), list(q.negative)
    elif run.cfg.corpus.input:
        raise ValueError("quality_model.positive/negative: name the documents to keep and to drop "
                         "(only the generated corpus brings its own)")  # fmt: skip
    else:
        positive, negative = (str(p) for p in corpus_training_sets(run.path("corpus"), out / "sets"))
        positive, negative = [positive], [negative]
    train_quality_model(
        positive, negative, out, from_dict(TrainQualityConfig, q.train, "quality_model.train")
    )


def _digest_quality_model(run: Run) -> str | None:
    if not run.cfg.quality_model.enabled:
        return "disabled"
    files = [run.path("quality_model") / MODEL_FILE, run.path("quality_model") / REPORT_FILE]
    if not all(f.exists() for f in files):
        return None
    # the threshold is the data job's business: part of the digest so that changing it redoes data
    return json_digest([*(sha256_file(f) for f in files), run.cfg.quality_model.threshold])


# data + minhash -----------------------------------------------------------------------------------
def pipeline_config(run: Run) -> PipelineConfig:
    d = _with_ray(run.cfg, _section(run.cfg, "data"))
    d["input"] = {**d.get("input", {}), "paths": corpus_paths(run)}
    d["output_dir"] = str(run.path("data"))
    q = run.cfg.quality_model
    if q.enabled:  # the classifier this run trains (the quality_model job)
        d["quality_model"] = {
            "enabled": True,
            "model": str(run.path("quality_model")),
            "threshold": q.threshold,
        }
    deco, eval_tasks = d.get("decontaminate") or {}, _section(run.cfg, "eval").get("tasks")
    if deco.get("enabled") and not deco.get("paths") and eval_tasks not in (None, "auto"):
        d["decontaminate"] = {**deco, "paths": [eval_tasks]}  # the eval sets this run will score
    return from_dict(PipelineConfig, d, "data")


def minhash_config(run: Run) -> MinHashRunConfig:
    d = {"minhash": _section(run.cfg, "minhash")}
    d = _with_ray(run.cfg, d)
    d.update(input_dir=str(run.path("data")), output_dir=str(run.path("minhash")))
    return from_dict(MinHashRunConfig, d, "minhash")


def _run_data(run: Run) -> None:
    cfg = pipeline_config(run)
    ensure_ray(cfg.ray)
    run_pipeline(cfg)


def _run_minhash(run: Run) -> None:
    cfg = minhash_config(run)
    ensure_ray(cfg.ray)
    run_minhash_dedup(cfg)


# split ------------------------------------------------------------------------------------------
def _run_split(run: Run) -> None:
    s = run.cfg.split
    ray = minhash_config(run).ray  # the run's Ray settings, for the split's pack tasks
    split_heldout(
        run.path("minhash"), run.path("split"), s.heldout_fraction, s.min_heldout_per_source, s.seed, ray
    )


def _digest_split(run: Run) -> str | None:
    parts = [_shard_dir_digest(run.path("split") / side) for side in ("train", "heldout")]
    return None if None in parts else json_digest(parts)


# tokenizer + encode ---------------------------------------------------------------------------------
def tokenizer_train_config(run: Run) -> TokenizerTrainConfig:
    return from_dict(TokenizerTrainConfig, _section(run.cfg, "tokenizer"), "tokenizer")


def encode_config(run: Run) -> TokenizerEncodeConfig:
    return from_dict(TokenizerEncodeConfig, _with_ray(run.cfg, _section(run.cfg, "encode")), "encode")


def _run_tokenizer(run: Run) -> None:
    train_tokenizer(run.path("split") / "train", run.path("tokenizer"), tokenizer_train_config(run))


def _digest_tokenizer(run: Run) -> str | None:
    d = run.path("tokenizer")
    return tokenizer_hash(d) if (d / "tokenizer.json").exists() and (d / "report.json").exists() else None


def _run_encode(run: Run) -> None:
    cfg = encode_config(run)
    ensure_ray(cfg.ray)
    run_encode(run.path("split") / "train", run.path("tokenizer"), run.path("encode"), cfg)


def _digest_encode(run: Run) -> str | None:
    d = run.path("encode")
    manifest = d / "manifest.json"
    if not manifest.exists():
        return None
    m = read_json(manifest)
    if not all((d / e["path"]).exists() for e in m["shards"]):
        return None
    return sha256_file(manifest)


# train ------------------------------------------------------------------------------------------
def train_config(run: Run, validate_only: bool = False) -> TrainConfig:
    """TrainConfig for the run: the run's token shards as sources (every source the curriculum
    names), the run's tokenizer, and the model's vocab sized to the tokenizer (padded to 64)."""
    d = _section(run.cfg, "train")
    d["run_dir"] = str(run.path("train"))
    data = d.setdefault("data", {})
    phases = d.get("curriculum", {}).get("phases") or []
    names = sorted({s for p in phases for s in p.get("mixture", {})}) or ["web"]
    data.setdefault("sources", {n: str(run.path("encode")) for n in names})
    if not validate_only:
        tok = load_tokenizer(run.path("tokenizer"))
        data["tokenizer_dir"] = str(run.path("tokenizer"))
        overrides = d.setdefault("model_overrides", {})
        overrides.setdefault("vocab_size", -(-tok.vocab_size // 64) * 64)
    return from_dict(TrainConfig, d, "train")


def _train_identity(cfg: RunConfig) -> dict[str, Any]:
    """The train section minus what cannot change a number beyond fp32 reduction order (extra
    callbacks such as test hooks, console progress, local process count), so toggling those never
    restarts training: a changed nproc resumes from the newest checkpoint in the new world size."""
    d = _section(cfg, "train")
    d.pop("callbacks", None)
    d.pop("nproc", None)
    d.get("metrics", {}).pop("progress", None)
    return d


def _run_train(run: Run) -> None:
    summary = train(train_config(run))
    print(f"train: {summary}", flush=True)


def _digest_train(run: Run) -> str | None:
    cfg = train_config(run)
    timeline = Timeline.build(cfg.curriculum.phases, cfg.curriculum.schedule, 1)
    last_step = min(cfg.max_steps or timeline.total_steps, timeline.total_steps)
    ckpt = latest_checkpoint(Path(cfg.run_dir) / "checkpoints")
    if ckpt is None or read_json(ckpt / "meta.json")["step"] != last_step:
        return None
    return sha256_file(ckpt / "meta.json")


# eval + report ------------------------------------------------------------------------------------
def eval_config(run: Run) -> EvalConfig:
    d = _section(run.cfg, "eval")
    d.setdefault("heldout", str(run.path("split") / "heldout"))
    return from_dict(EvalConfig, d, "eval")


def _run_eval(run: Run) -> None:
    """Score every complete checkpoint once (scored ones are skipped), then export the newest."""
    cfg = eval_config(run)
    ckpts = complete_checkpoints(run.path("train") / "checkpoints")
    for step, path in ckpts:
        rows = score_checkpoint(path, out_dir=run.path("eval"), cfg=cfg)
        bpb = [r["value"] for r in rows if r["task"] == "heldout/all" and r["metric"] == "bits_per_byte"]
        print(
            f"eval: step {step} scored ({len(rows)} rows{f', held-out bits/byte {bpb[0]:.3f}' if bpb else ''})"
        )
    export_checkpoint(ckpts[-1][1], run.path("eval") / "hf", overwrite=True)


def _digest_eval(run: Run) -> str | None:
    results, hf = run.path("eval") / "results.jsonl", run.path("eval") / "hf" / "model.safetensors"
    names = {p.name for _, p in complete_checkpoints(run.path("train") / "checkpoints")}
    if not results.exists() or not hf.exists() or not names <= scored_checkpoints(run.path("eval")):
        return None
    return json_digest([sha256_file(results), sha256_file(hf)])


def _run_report(run: Run) -> None:
    records = {name: run.record(name) for name in JOBS[:-1]}  # the report job is still running
    facts = write_run_report(run.dir, records)
    t = facts.get("train", {})
    print(f"report: {run.path('report') / 'report.md'} (loss {t.get('first_loss')} -> {t.get('final_loss')})")


def _digest_report(run: Run) -> str | None:
    facts = run.path("report") / "facts.json"
    return sha256_file(facts) if facts.exists() else None


def build_jobs() -> list[Job]:
    return [
        Job("corpus", _run_corpus, _digest_corpus, [], lambda c: c.corpus),
        Job(
            "quality_model", _run_quality_model, _digest_quality_model, ["corpus"], lambda c: c.quality_model
        ),
        Job(
            "data",
            _run_data,
            lambda r: _shard_dir_digest(r.path("data")),
            ["corpus", "quality_model"],
            lambda c: c.data,
        ),
        Job(
            "minhash",
            _run_minhash,
            lambda r: _shard_dir_digest(r.path("minhash")),
            ["data"],
            lambda c: c.minhash,
        ),
        Job("split", _run_split, _digest_split, ["minhash"], lambda c: c.split),
        Job("tokenizer", _run_tokenizer, _digest_tokenizer, ["split"], lambda c: c.tokenizer),
        Job("encode", _run_encode, _digest_encode, ["split", "tokenizer"], lambda c: c.encode),
        Job("train", _run_train, _digest_train, ["encode", "tokenizer"], _train_identity),
        Job("eval", _run_eval, _digest_eval, ["train", "split"], lambda c: c.eval),
        Job("report", _run_report, _digest_report, [j for j in JOBS if j != "report"], lambda c: None),
    ]


def validate(cfg: RunConfig) -> None:
    """Build every job's config from `cfg` so a bad field is reported at load, naming its section."""
    run = Run(cfg)
    pipeline_config(run)
    minhash_config(run)
    tokenizer_train_config(run)
    encode_config(run)
    train_config(run, validate_only=True)
    eval_config(run)
