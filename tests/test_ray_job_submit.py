"""infra/README.md's `ray job submit` recipe against a local head (dashboard on 127.0.0.1): the repo as
working_dir, infra/ray/runtime_env.yaml, and infra/ray/data_stages.sh (clean -> MinHash -> tokenizer
train -> encode) in one job; every stage's output is checked."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pretrain.core.token_shards import read_token_manifest
from pretrain.core.tokenizer_file import load_tokenizer
from tests.pipeline_helpers import REPO, read_outputs

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


def test_ray_job_submit_runs_pipeline(small_corpus, tmp_path):
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    gcs, dash, client, agent, agent_grpc, env_agent, metrics = (_free_port() for _ in range(7))
    # Loopback only; token auth off because this head is reachable from this machine only.
    env = os.environ | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    # Ray's socket paths must stay short (AF_UNIX limit), so not under pytest's long tmp_path.
    temp_dir = tempfile.mkdtemp(prefix="rayjob", dir="/tmp")
    # --block keeps every Ray process of this head in one process group we can kill afterwards,
    # without `ray stop` (which would also stop the test session's own Ray).
    ports = {
        "--port": gcs,
        "--dashboard-port": dash,
        "--ray-client-server-port": client,
        # The agents' fixed default ports would collide with the test session's own Ray.
        "--dashboard-agent-listen-port": agent,
        "--dashboard-agent-grpc-port": agent_grpc,
        "--runtime-env-agent-port": env_agent,
        "--metrics-export-port": metrics,
    }
    args = [
        ray_bin,
        "start",
        "--head",
        "--block",
        "--node-ip-address",
        "127.0.0.1",
        "--dashboard-host",
        "127.0.0.1",
    ]
    args += [str(x) for kv in ports.items() for x in kv]
    args += ["--num-cpus", "2", "--disable-usage-stats", "--temp-dir", temp_dir]
    head = subprocess.Popen(
        args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        _wait_port(dash, 90)
        out = tmp_path / "runs"
        minhash_cfg = tmp_path / "minhash.yaml"  # the cluster config's 256 partitions are overkill here
        minhash_cfg.write_text("minhash: {num_partitions: 4}\nprogress: false\n")
        # The README's recipe: the repo as working_dir, infra/ray/runtime_env.yaml, the data stages
        # script; tiny configs through its env variables, this interpreter through PYTHON.
        cmd = [
            ray_bin, "job", "submit", "--address", f"http://127.0.0.1:{dash}",
            "--working-dir", str(REPO), "--runtime-env", str(REPO / "infra/ray/runtime_env.yaml"), "--",
            f"PYTHON={sys.executable}", "DATA_CONFIG=configs/data_tiny.yaml",
            f"MINHASH_CONFIG={minhash_cfg}", "TOKENIZER_CONFIG=configs/tokenizer_tiny.yaml",
            "bash", "infra/ray/data_stages.sh", str(small_corpus / "raw"), str(out),
        ]  # fmt: skip
        for _ in range(60):  # the dashboard listens before the head's job agent is ready
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            if "No available agent" not in res.stderr:
                break
            time.sleep(2)
        logs = Path(temp_dir) / "session_latest" / "logs"
        agent_log = (
            (logs / "dashboard_agent.log").read_text()[-3000:]
            if (logs / "dashboard_agent.log").exists()
            else ""
        )
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:] + agent_log
        assert "succeeded" in res.stdout + res.stderr
        assert "TOKENIZERS_PARALLELISM=false" in res.stdout  # runtime_env.yaml's env_vars reached the job
        kept, rejected = read_outputs(out / "data")
        truth = (small_corpus / "truth.jsonl").read_text().count("\n")
        assert len(kept) + len(rejected) == truth and len(kept) > 0
        # MinHash ran over the cleaned shards: every document either kept or a near duplicate.
        dkept, drejected = read_outputs(out / "dedup")
        assert len(dkept) + len(drejected) == len(kept) and len(drejected) > 0
        assert {r["reason"] for r in drejected.values()} == {"near_duplicate"}
        # The tokenizer trained on the deduplicated shards encoded every surviving document.
        tok = load_tokenizer(out / "tokenizer")
        manifest = read_token_manifest(out / "tokens")
        assert manifest.raw["tokenizer_hash"] == tok.hash
        assert manifest.raw["num_docs"] == len(dkept)
        assert set(manifest.raw["sources"]) == {d["source"] for d in dkept.values()}
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        time.sleep(1)
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shutil.rmtree(temp_dir, ignore_errors=True)
