"""`pretrain run`: the CI smoke pipeline on the tiny corpus, and kill -9 at five points resuming to
the same shards, tokenizer, final loss and eval numbers as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pretrain.jobs import JOBS
from tests.pipeline_helpers import REPO
from tests.train_helpers import slow_steps

pytestmark = pytest.mark.slow

# A smaller chain for the kill test: fewer documents, a 2-layer model, 24 steps over two phases,
# a checkpoint every 6 steps; step_sleep_s slows training so a kill lands mid-phase (it changes
# no number).
SMALL = [
    "corpus.num_base_docs=300",
    "tokenizer.vocab_size=1024",
    "train.model_overrides={dim: 64, num_layers: 2, num_heads: 4, num_kv_heads: 2, max_seq_len: 128}",
    "train.curriculum.phases.0.num_tokens=49152",
    "train.curriculum.phases.0.global_batch_tokens=4096",
    "train.curriculum.phases.1.num_tokens=49152",
    "train.curriculum.phases.1.seq_len=128",
    "train.curriculum.phases.1.micro_batch_size=32",
    "train.curriculum.schedule.warmup_steps=4",
    "train.checkpoint.every_steps=6",
    "train.metrics.progress=false",
    "eval.max_docs_per_source=4",
    "eval.prompts=[]",
    "ray.max_in_flight=1",
]


def _env() -> dict:
    env = os.environ | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    return env


def _cmd(run_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pretrain.run",
        str(REPO / "configs" / "run_tiny.yaml"),
        f"run_dir={run_dir}",
        "progress=false",
        *extra,
    ]


def _run(run_dir: Path, *extra: str, timeout: int = 900) -> subprocess.CompletedProcess:
    res = subprocess.run(_cmd(run_dir, *extra), env=_env(), capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def _final_state(run_dir: Path) -> dict:
    """What must not depend on kills: shards, tokenizer, token shards, losses, eval values."""
    from pretrain.core.files import read_json
    from pretrain.core.tokenizer_file import tokenizer_hash
    from pretrain.report import metrics_by_step

    def shards(d: Path) -> dict:
        m = read_json(d / "manifest.json")
        return {e["path"]: e["sha256"] for e in m["shards"]}

    rows = [json.loads(x) for x in (run_dir / "eval" / "results.jsonl").read_text().splitlines()]
    return {
        "data": shards(run_dir / "data"),
        "minhash": shards(run_dir / "minhash"),
        "train_docs": shards(run_dir / "split" / "train"),
        "heldout_docs": shards(run_dir / "split" / "heldout"),
        "tokenizer": tokenizer_hash(run_dir / "tokenizer"),
        "tokens": shards(run_dir / "encode"),
        "losses": [m["loss"] for m in metrics_by_step(run_dir / "train" / "metrics.jsonl")],
        "eval": sorted(
            (r["step"], r["task"], r["metric"], r["value"]) for r in rows if r["metric"] != "seconds"
        ),
    }


@pytest.fixture(scope="module")
def small_reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    _run(run_dir, *SMALL)
    return run_dir


def _kill_when(run_dir: Path, ready, what: str) -> None:
    """Start `pretrain run`, SIGKILL its whole process group (driver + local Ray) once ready()."""
    proc = subprocess.Popen(
        _cmd(run_dir, *SMALL, slow_steps(0.25, "train.")),
        env=_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before the kill point: {what}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _started(run_dir: Path, stage: str) -> bool:
    rec = run_dir / "jobs" / f"{stage}.json"
    return rec.exists() and json.loads(rec.read_text())["status"] == "started"


def _ckpt_steps(run_dir: Path) -> list[int]:
    root = run_dir / "train" / "checkpoints"
    return sorted(
        int(p.name[5:]) for p in root.glob("step_*") if p.name[5:].isdigit() and (p / "meta.json").exists()
    )


def test_killed_at_five_points_resumes_to_the_same_results(small_reference, tmp_path):
    run_dir = tmp_path / "run"
    points = [
        ("mid data stage", lambda: any((run_dir / "data" / "_work" / "chain").glob("*.done.json"))),
        ("start of encode", lambda: _started(run_dir, "encode")),
        ("mid train, phase 1", lambda: _ckpt_steps(run_dir)[-1:] == [6]),
        ("mid train, phase 2 after a resume", lambda: _ckpt_steps(run_dir)[-1:] == [18]),
        ("start of eval", lambda: _started(run_dir, "eval")),
    ]
    for what, ready in points:
        _kill_when(run_dir, ready, what)
    res = _run(run_dir, *SMALL)
    for stage in ("corpus", "data", "minhash", "split", "tokenizer", "encode", "train"):
        assert f"{stage}: up to date" in res.stdout, res.stdout  # only eval and report were left
    got, want = _final_state(run_dir), _final_state(small_reference)
    assert got == want
    assert len(want["losses"]) == 24


def test_rerun_skips_and_from_redoes_a_stage(small_reference, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(small_reference, run_dir)
    res = _run(run_dir, *SMALL)
    assert res.stdout.count("up to date") == len(JOBS), res.stdout
    before = (run_dir / "tokenizer" / "tokenizer.json").stat().st_mtime_ns
    res = _run(run_dir, *SMALL, "--from", "eval")
    assert (
        f"[{JOBS.index('eval') + 1}/{len(JOBS)}] eval: running" in res.stdout
        and "train: up to date" in res.stdout
    )
    assert (run_dir / "tokenizer" / "tokenizer.json").stat().st_mtime_ns == before
    # A changed config section restarts that stage and everything downstream of it.
    res = _run(run_dir, *SMALL, "eval.max_docs_per_source=3")
    assert "eval: inputs or config changed" in res.stdout and "train: up to date" in res.stdout


def test_train_stage_in_two_local_processes(small_reference, tmp_path):
    """train.nproc=2: the train stage starts two DDP ranks (trainer/launch.py) over the same token
    shards; losses equal one process's within fp32 reduction order, and no upstream stage reruns."""
    import shutil

    from pretrain.report import metrics_by_step

    run_dir = tmp_path / "run"
    shutil.copytree(small_reference, run_dir)
    res = _run(run_dir, *SMALL, "train.nproc=2", "train.parallel=ddp", "--from", "train", "--until", "train")
    assert f"[{JOBS.index('train') + 1}/{len(JOBS)}] train: running" in res.stdout, res.stdout
    assert "encode: up to date" in res.stdout, res.stdout
    got = [m["loss"] for m in metrics_by_step(run_dir / "train" / "metrics.jsonl")]
    want = [m["loss"] for m in metrics_by_step(small_reference / "train" / "metrics.jsonl")]
    assert len(got) == len(want) == 24
    np.testing.assert_allclose(got, want, rtol=1e-5)
    ckpts = sorted((run_dir / "train" / "checkpoints").glob("step_*/meta.json"))
    assert json.loads(ckpts[-1].read_text())["world_size"] == 2


def test_default_run_smoke(tmp_path):
    """The README's main command on the embedded default, asserting the report's key facts."""
    run_dir = tmp_path / "tiny"
    res = _run(run_dir, timeout=1500)
    facts = json.loads((run_dir / "report" / "facts.json").read_text())
    docs = facts["documents"]
    assert docs["docs_in"] == 816  # the generated corpus: 800 prose documents and 16 Python files
    assert docs["docs_after_data"] + docs["docs_rejected_data"] == docs["docs_in"]
    assert docs["docs_after_minhash"] + docs["docs_rejected_minhash"] == docs["docs_after_data"]
    assert docs["docs_train"] + docs["docs_heldout"] == docs["docs_after_minhash"]
    assert docs["docs_heldout"] > 0 and facts["dedup_clusters"] and sum(facts["pii"].values()) > 0
    # The demo's quality classifier (clean vs junk documents of the corpus) scored every kept document.
    from data_pipeline.groundtruth import read_outputs

    report = json.loads((run_dir / "quality_model" / "report.json").read_text())
    assert report["num_heldout"] > 0 and 0 <= report["precision"] <= 1
    kept, _ = read_outputs(run_dir / "data")
    prose = [d for d in kept.values() if d["source"] != "code"]
    assert prose and all(0 <= d["metadata"]["quality_score"] <= 1 for d in prose)
    # the code source went through the code profile (no prose classifier) into its own partition
    code = [d for d in kept.values() if d["source"] == "code"]
    assert len(code) == 13 and all(d["metadata"]["profile"] == "code" for d in code)
    shard_dirs = {p.parent.name for p in (run_dir / "data" / "shards").rglob("*.parquet")}
    assert shard_dirs == {"lang=en", "lang=code"}
    assert "## Quality classifier" in (run_dir / "data" / "summary.md").read_text()
    assert {"heldout_complete"} <= set(facts["eval"]["tasks"])  # the generation task ran too
    train = facts["train"]
    assert train["phases"] == ["short", "long"] and train["skipped_steps"] == 0
    # Loss falls well below the unigram entropy of the training tokens.
    from pretrain.core.token_shards import open_token_shard, read_token_manifest

    m = read_token_manifest(run_dir / "encode")
    tokens = np.concatenate([open_token_shard(m.shard_path(e)).tokens for e in m.shards])
    p = np.bincount(tokens.astype(np.int64)) / tokens.size
    unigram = float(-(p[p > 0] * np.log(p[p > 0])).sum())
    assert train["last_losses_mean"] < unigram - 1.0, (train, unigram)
    ev = facts["eval"]
    steps = [40, 80, 120, 160]
    assert ev["checkpoints"] == steps
    assert {"heldout/all", "heldout/web", "heldout_next_sentence", "heldout_cloze"} <= set(ev["tasks"])
    rows = [json.loads(x) for x in (run_dir / "eval" / "results.jsonl").read_text().splitlines()]
    bpb = [r["value"] for r in sorted(rows, key=lambda r: r["step"]) if r["task"] == "heldout/all" and r["metric"] == "bits_per_byte"]  # fmt: skip
    assert len(bpb) == 4 and bpb[-1] < bpb[0]
    assert (run_dir / "report" / "report.html").exists() and (run_dir / "report" / "training.png").exists()
    # The export loads offline in transformers and continues a prompt.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = run_dir / "eval" / "hf"
    model = AutoModelForCausalLM.from_pretrained(hf)
    tok = AutoTokenizer.from_pretrained(hf)
    ids = tok("The function returns", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 5
    assert "report:" in res.stdout
