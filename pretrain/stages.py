"""The stages of `pretrain run`: how each one's config is built from RunConfig, how it runs, and
what digest marks its outputs complete. The work itself lives in the stage's own package; this file
only connects outputs to inputs.

    corpus -> data -> minhash -> split -> tokenizer -> encode -> train -> eval -> report
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from pretrain.core.config import from_dict
from pretrain.core.files import read_json
from pretrain.core.hashing import file_fingerprint
from pretrain.run import STAGES, RunConfig, Stage, json_digest, sha256_of


def _section(cfg: RunConfig, name: str) -> dict[str, Any]:
    return copy.deepcopy(getattr(cfg, name))


def _with_ray(cfg: RunConfig, section: dict[str, Any]) -> dict[str, Any]:
    section["ray"] = {**cfg.ray, **section.get("ray", {})}
    section.setdefault("progress", cfg.progress)
    return section


def _stage_dir_digest(d: Path) -> str | None:
    """sha256 of a stage directory's manifest.json when every shard it lists is on disk."""
    manifest = d / "manifest.json"
    if not manifest.exists():
        return None
    m = read_json(manifest)
    for kind in ("shards", "rejects"):
        for e in m.get(kind, []):
            p = d / kind / e["path"]
            if not p.exists() or ("bytes" in e and p.stat().st_size != e["bytes"]):
                return None
    return sha256_of(manifest)


# corpus -----------------------------------------------------------------------------------------
def corpus_paths(run) -> list[str]:
    return list(run.cfg.corpus.input) or [str(run.path("corpus") / "raw")]


def _run_corpus(run) -> None:
    if run.cfg.corpus.input:
        return
    from data_pipeline.corpus import generate_corpus

    c = run.cfg.corpus
    generate_corpus(run.path("corpus"), seed=c.seed, num_base_docs=c.num_base_docs, overwrite=True)


def _digest_corpus(run) -> str | None:
    if not run.cfg.corpus.input:
        summary = run.path("corpus") / "corpus.json"
        return sha256_of(summary) if summary.exists() else None
    files = []
    for p in run.cfg.corpus.input:
        root = Path(p)
        found = sorted(x for x in root.rglob("*") if x.is_file()) if root.is_dir() else sorted(Path().glob(p))
        files += [(str(x), file_fingerprint(x)) for x in found]
    return json_digest(files) if files else None


# data + minhash -----------------------------------------------------------------------------------
def pipeline_config(run):
    from data_pipeline.config import PipelineConfig

    d = _with_ray(run.cfg, _section(run.cfg, "data"))
    d["input"] = {**d.get("input", {}), "paths": corpus_paths(run)}
    d["output_dir"] = str(run.path("data"))
    return from_dict(PipelineConfig, d, "data")


def minhash_config(run):
    from data_pipeline.minhash.dedup import MinHashRunConfig

    d = {"minhash": _section(run.cfg, "minhash")}
    d = _with_ray(run.cfg, d)
    d.update(input_dir=str(run.path("data")), output_dir=str(run.path("minhash")))
    return from_dict(MinHashRunConfig, d, "minhash")


def _run_data(run) -> None:
    from data_pipeline.executor import run_pipeline
    from pretrain.core.runner import ensure_ray

    cfg = pipeline_config(run)
    ensure_ray(cfg.ray)
    run_pipeline(cfg)


def _run_minhash(run) -> None:
    from data_pipeline.minhash.dedup import run_minhash_dedup
    from pretrain.core.runner import ensure_ray

    cfg = minhash_config(run)
    ensure_ray(cfg.ray)
    run_minhash_dedup(cfg)


# split ------------------------------------------------------------------------------------------
def _run_split(run) -> None:
    from data_pipeline.split import split_heldout

    s = run.cfg.split
    split_heldout(
        run.path("minhash"), run.path("split"), s.heldout_fraction, s.min_heldout_per_source, s.seed
    )


def _digest_split(run) -> str | None:
    parts = [_stage_dir_digest(run.path("split") / side) for side in ("train", "heldout")]
    return None if None in parts else json_digest(parts)


# tokenizer + encode ---------------------------------------------------------------------------------
def tokenizer_train_config(run):
    from tokenizer.config import TokenizerTrainConfig

    return from_dict(TokenizerTrainConfig, _section(run.cfg, "tokenizer"), "tokenizer")


def encode_config(run):
    from tokenizer.config import TokenizerEncodeConfig

    return from_dict(TokenizerEncodeConfig, _with_ray(run.cfg, _section(run.cfg, "encode")), "encode")


def _run_tokenizer(run) -> None:
    from tokenizer.train import train_tokenizer

    train_tokenizer(run.path("split") / "train", run.path("tokenizer"), tokenizer_train_config(run))


def _digest_tokenizer(run) -> str | None:
    from pretrain.core.tokenizer_file import tokenizer_hash

    d = run.path("tokenizer")
    return tokenizer_hash(d) if (d / "tokenizer.json").exists() and (d / "report.json").exists() else None


def _run_encode(run) -> None:
    from pretrain.core.runner import ensure_ray
    from tokenizer.encode import run_encode

    cfg = encode_config(run)
    ensure_ray(cfg.ray)
    run_encode(run.path("split") / "train", run.path("tokenizer"), run.path("encode"), cfg)


def _digest_encode(run) -> str | None:
    d = run.path("encode")
    manifest = d / "manifest.json"
    if not manifest.exists():
        return None
    m = read_json(manifest)
    if not all((d / e["path"]).exists() for e in m["shards"]):
        return None
    return sha256_of(manifest)


# train ------------------------------------------------------------------------------------------
def train_config(run, validate_only: bool = False):
    """TrainConfig for the run: the run's token shards as sources (every source the curriculum
    names), the run's tokenizer, and the model's vocab sized to the tokenizer (padded to 64)."""
    from trainer.train import TrainConfig

    d = _section(run.cfg, "train")
    d["run_dir"] = str(run.path("train"))
    data = d.setdefault("data", {})
    phases = d.get("curriculum", {}).get("phases") or []
    names = sorted({s for p in phases for s in p.get("mixture", {})}) or ["web"]
    data.setdefault("sources", {n: str(run.path("encode")) for n in names})
    if not validate_only:
        from pretrain.core.tokenizer_file import load_tokenizer

        tok = load_tokenizer(run.path("tokenizer"))
        data["tokenizer_dir"] = str(run.path("tokenizer"))
        overrides = d.setdefault("model_overrides", {})
        overrides.setdefault("vocab_size", -(-tok.vocab_size // 64) * 64)
    return from_dict(TrainConfig, d, "train")


def _train_identity(cfg: RunConfig) -> dict[str, Any]:
    """The train section minus what cannot change a number beyond fp32 reduction order (test
    hooks, console progress, local process count), so toggling those never restarts training: a
    changed nproc resumes from the newest checkpoint in the new world size."""
    d = _section(cfg, "train")
    d.pop("debug", None)
    d.pop("nproc", None)
    d.get("metrics", {}).pop("progress", None)
    return d


def _run_train(run) -> None:
    from trainer.train import train

    summary = train(train_config(run))
    print(f"train: {summary}", flush=True)


def _digest_train(run) -> str | None:
    from trainer.checkpoint import latest_checkpoint
    from trainer.schedule import Timeline

    cfg = train_config(run)
    timeline = Timeline.build(cfg.curriculum.phases, cfg.curriculum.schedule, 1)
    last_step = min(cfg.max_steps or timeline.total_steps, timeline.total_steps)
    ckpt = latest_checkpoint(Path(cfg.run_dir) / "checkpoints")
    if ckpt is None or read_json(ckpt / "meta.json")["step"] != last_step:
        return None
    return sha256_of(ckpt / "meta.json")


# eval + report ------------------------------------------------------------------------------------
def eval_config(run):
    from eval.config import EvalConfig

    d = _section(run.cfg, "eval")
    d.setdefault("heldout", str(run.path("split") / "heldout"))
    return from_dict(EvalConfig, d, "eval")


def _run_eval(run) -> None:
    """Score every complete checkpoint once (scored ones are skipped), then export the newest."""
    from eval.export import export_checkpoint
    from eval.score import score_checkpoint
    from trainer.checkpoint import complete_checkpoints

    cfg = eval_config(run)
    ckpts = complete_checkpoints(run.path("train") / "checkpoints")
    for step, path in ckpts:
        rows = score_checkpoint(path, out_dir=run.path("eval"), cfg=cfg)
        bpb = [r["value"] for r in rows if r["task"] == "heldout/all" and r["metric"] == "bits_per_byte"]
        print(
            f"eval: step {step} scored ({len(rows)} rows{f', held-out bits/byte {bpb[0]:.3f}' if bpb else ''})"
        )
    export_checkpoint(ckpts[-1][1], run.path("eval") / "hf", overwrite=True)


def _digest_eval(run) -> str | None:
    from eval.score import scored_checkpoints
    from trainer.checkpoint import complete_checkpoints

    results, hf = run.path("eval") / "results.jsonl", run.path("eval") / "hf" / "model.safetensors"
    names = {p.name for _, p in complete_checkpoints(run.path("train") / "checkpoints")}
    if not results.exists() or not hf.exists() or not names <= scored_checkpoints(run.path("eval")):
        return None
    return json_digest([sha256_of(results), sha256_of(hf)])


def _run_report(run) -> None:
    from pretrain.report import write_run_report

    facts = write_run_report(run.dir)
    t = facts.get("train", {})
    print(f"report: {run.path('report') / 'report.md'} (loss {t.get('first_loss')} -> {t.get('final_loss')})")


def _digest_report(run) -> str | None:
    facts = run.path("report") / "facts.json"
    return sha256_of(facts) if facts.exists() else None


def build_stages() -> list[Stage]:
    return [
        Stage("corpus", _run_corpus, _digest_corpus, [], lambda c: c.corpus),
        Stage("data", _run_data, lambda r: _stage_dir_digest(r.path("data")), ["corpus"], lambda c: c.data),
        Stage(
            "minhash",
            _run_minhash,
            lambda r: _stage_dir_digest(r.path("minhash")),
            ["data"],
            lambda c: c.minhash,
        ),
        Stage("split", _run_split, _digest_split, ["minhash"], lambda c: c.split),
        Stage("tokenizer", _run_tokenizer, _digest_tokenizer, ["split"], lambda c: c.tokenizer),
        Stage("encode", _run_encode, _digest_encode, ["split", "tokenizer"], lambda c: c.encode),
        Stage("train", _run_train, _digest_train, ["encode", "tokenizer"], _train_identity),
        Stage("eval", _run_eval, _digest_eval, ["train", "split"], lambda c: c.eval),
        Stage("report", _run_report, _digest_report, [s for s in STAGES if s != "report"], lambda c: None),
    ]


def validate(cfg: RunConfig) -> None:
    """Build every stage's config from `cfg` so a bad field is reported at load, naming its section."""
    from pretrain.run import Run

    run = Run(cfg)
    pipeline_config(run)
    minhash_config(run)
    tokenizer_train_config(run)
    encode_config(run)
    train_config(run, validate_only=True)
    eval_config(run)
