"""`ray job submit` against a local head (dashboard on 127.0.0.1) runs the data stages, then MinHash."""

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
        out = tmp_path / "out"
        cmd = [
            ray_bin,
            "job",
            "submit",
            "--address",
            f"http://127.0.0.1:{dash}",
            "--working-dir",
            str(REPO),
            "--",
            sys.executable,
            "-m",
            "data_pipeline",
            "run",
            "--config",
            "configs/data_tiny.yaml",
            f"input.paths=[{small_corpus / 'raw'}]",
            f"output_dir={out}",
            "progress=false",
        ]
        for _ in range(60):  # the dashboard listens before the head's job agent is ready
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
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
        kept, rejected = read_outputs(out)
        truth = (small_corpus / "truth.jsonl").read_text().count("\n")
        assert len(kept) + len(rejected) == truth and len(kept) > 0
        # MinHash near-dup removal is its own job over the first job's output.
        dedup = tmp_path / "dedup"
        submit = cmd[: cmd.index("--") + 1]
        res = subprocess.run(
            [
                *submit,
                sys.executable,
                "-m",
                "data_pipeline",
                "minhash",
                "--input",
                str(out),
                "--output",
                str(dedup),
                "progress=false",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
        )
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        dkept, drejected = read_outputs(dedup)
        assert len(dkept) + len(drejected) == len(kept) and len(drejected) > 0
        assert {r["reason"] for r in drejected.values()} == {"near_duplicate"}
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
