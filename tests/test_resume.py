"""Crash safety: a killed worker is retried, a killed driver resumes, a bad file is named;
outputs always equal an uninterrupted run's (nothing lost, nothing duplicated)."""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_pipeline.executor import run_pipeline
from tests.pipeline_helpers import REPO, pipeline_config, read_outputs, shard_digests

pytestmark = pytest.mark.slow


def _cli(out: Path, corpus: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "data_pipeline",
        "run",
        "--config",
        str(REPO / "configs" / "data_tiny.yaml"),
        f"input.paths=[{corpus / 'raw'}]",
        f"output_dir={out}",
        "progress=false",
        *extra,
    ]


def _env(**extra: str) -> dict:
    env = os.environ | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONPATH": str(REPO), **extra}
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture(scope="module")
def reference(small_corpus, ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    run_pipeline(pipeline_config(small_corpus, out))
    return out


@pytest.mark.parametrize("kill_after", ["chain", "final"])
def test_killed_driver_resumes_to_identical_output(small_corpus, reference, tmp_path, kill_after):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        _cli(out, small_corpus, "ray.max_in_flight=1"),
        env=_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if list((out / "_work" / kill_after).glob("*.done.json")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local Ray, like a lost machine
    proc.wait()
    assert not (out / "manifest.json").exists()
    finished = {p: p.stat().st_mtime_ns for p in (out / "_work").rglob("*.done.json")}
    res = subprocess.run(
        _cli(out, small_corpus, "--keep-work"), env=_env(), capture_output=True, text=True, timeout=400
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert finished and all(p.stat().st_mtime_ns == t for p, t in finished.items()), (
        "finished tasks were redone"
    )
    assert shard_digests(out) == shard_digests(reference)


def test_killed_worker_is_retried_without_loss(small_corpus, reference, tmp_path):
    out = tmp_path / "out"
    marker = tmp_path / "crashed"
    unit = "web__part-00000.jsonl"
    res = subprocess.run(
        _cli(out, small_corpus, "batch_rows=20"),
        capture_output=True,
        text=True,
        timeout=400,
        env=_env(DATA_PIPELINE_CRASH=f"{unit}:20:{marker}"),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert marker.exists(), "the fault was never injected"
    kept, rejected = read_outputs(out)  # asserts no id twice
    ref_kept, ref_rejected = read_outputs(reference)
    assert kept.keys() == ref_kept.keys() and rejected.keys() == ref_rejected.keys()
    assert all(kept[k]["text"] == ref_kept[k]["text"] for k in kept)


def test_unreadable_file_is_named_and_other_shards_finish(small_corpus, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(small_corpus / "raw", corpus / "raw")
    data = gzip.compress(b'{"text": "hello"}\n' * 5000)
    (corpus / "raw" / "web" / "zz-broken.jsonl.gz").write_bytes(data[: len(data) // 3])
    out = tmp_path / "out"
    res = subprocess.run(_cli(out, corpus), env=_env(), capture_output=True, text=True, timeout=400)
    assert res.returncode == 1
    assert "zz-broken.jsonl.gz" in res.stderr and "cannot read" in res.stderr
    done = {p.name for p in (out / "_work" / "chain").glob("*.done.json")}
    assert "web__part-00000.jsonl.done.json" in done and not any("broken" in d for d in done)
