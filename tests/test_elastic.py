"""torchrun elastic restart: kill one rank mid-run, torchrun restarts the worker group, the trainer
resumes from its newest checkpoint, and the per-step losses equal an uninterrupted run.

The same launcher flags as infra/slurm/train.sbatch and infra/k8s/train-torchrun.yaml (c10d
rendezvous on an explicit endpoint, --max-restarts), on 2 local gloo processes. torch's TCPStore
listens on every interface, so torchrun runs in a private network namespace with only loopback up
(as tests/test_trainer.py does); the test skips where `unshare --net` is not permitted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.train_helpers import (
    NETNS,
    child_pids,
    losses,
    private_netns_ok,
    rank_of,
    slow_steps,
    tiny_config_dict,
    write_arith_shards,
)
from trainer import checkpoint as ckpt

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
TOTAL_STEPS = 12


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    """Synthetic token shards (arithmetic runs, learnable) and a tiny 2-phase DDP config."""
    if not private_netns_ok():
        pytest.skip(
            "`unshare --net` not permitted: torchrun's rendezvous store would listen on every interface"
        )
    root = tmp_path_factory.mktemp("elastic")
    cfg = tiny_config_dict(write_arith_shards(root / "tok"), root / "unused", parallel="ddp")
    cfg["data"].pop("seed")  # the seed this test's reference losses were taken with
    path = root / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _torchrun(config: Path, run_dir: Path, *overrides: str) -> list[str]:
    # The launcher flags of the cluster recipes; the port is free because the namespace is private.
    launcher = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:29400", "--rdzv-id", "elastic-test",
        "--max-restarts", "1", "--monitor-interval", "0.2",
    ]  # fmt: skip
    train = ["-m", "trainer", "train", "--config", str(config), f"run_dir={run_dir}", *overrides]
    return [*NETNS, *launcher, *train]


def _env() -> dict[str, str]:
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    # torch >= 2.5 shares the agent's TCPStore with the workers and keeps it across restarts, so
    # the restarted group reads the dead group's keys (gloo dials the killed rank's old port, or
    # hangs): pytorch/pytorch#135712. Every launcher in infra/ sets this too.
    env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    return env


def _losses(run_dir: Path) -> list[float]:
    return losses(run_dir, TOTAL_STEPS)


def _worker_pid(agent_pid: int, rank: int) -> int | None:
    """The pid of torchrun's worker with RANK=rank: a child of the agent process."""
    return next((p for p in child_pids(agent_pid) if rank_of(p) == rank), None)


def test_killed_rank_restarts_and_resumes_exactly(config, tmp_path):
    # Reference: the same 2 processes, uninterrupted.
    ref = tmp_path / "ref"
    res = subprocess.run(
        _torchrun(config, ref), env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]

    run = tmp_path / "run"
    log = tmp_path / "torchrun.log"
    with log.open("w") as out:
        # `unshare` and `sh -c 'exec'` replace themselves, so this pid is torchrun's agent.
        agent = subprocess.Popen(
            _torchrun(config, run, slow_steps(0.4)),
            env=_env(), cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.time() + 120
            while ckpt.latest_checkpoint(run / "checkpoints") is None:
                assert agent.poll() is None, log.read_text()[-3000:]
                assert time.time() < deadline, "no checkpoint after 120 s"
                time.sleep(0.05)
            victim = _worker_pid(agent.pid, rank=1)
            assert victim is not None, "no worker with RANK=1 under torchrun"
            os.kill(victim, signal.SIGKILL)
            killed_after = ckpt.complete_checkpoints(run / "checkpoints")[-1][0]
            assert killed_after < TOTAL_STEPS
            assert agent.wait(timeout=240) == 0, log.read_text()[-3000:]
        finally:
            if agent.poll() is None:  # a failed assert above: take its workers down too
                os.killpg(agent.pid, signal.SIGKILL)
                agent.wait()
    text = log.read_text()
    assert "failed (exitcode: -9) local_rank: 1" in text, text[-3000:]  # the agent saw the kill
    resumed = [line for line in text.splitlines() if "resumed from" in line]
    # Both restarted ranks load the checkpoint that was newest when rank 1 died.
    assert len(resumed) == 2 and all(line.endswith(f"at step {killed_after}") for line in resumed), resumed
    assert _losses(run) == _losses(ref)  # exact: same world size, deterministic fp32 gloo
