"""`nproc=2`: the trainer starts its own local ranks (trainer/launch.py) with a file rendezvous and
gloo on loopback; no network namespace needed, because nothing listens beyond 127.0.0.1."""

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

from pretrain.core.config import ConfigError, load_config
from tests.pipeline_helpers import REPO
from tests.train_helpers import child_pids, losses, rank_of, slow_steps, write_arith_shards, write_tiny_config
from trainer import checkpoint as ckpt
from trainer.config import TrainConfig

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

TOTAL_STEPS = 12


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_arith_shards(tmp_path_factory.mktemp("launch") / "tok")


_config = write_tiny_config


def _cmd(config: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "trainer", "train", "--config", str(config), *overrides]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return env | {"PYTHONPATH": str(REPO)}


def _losses(run_dir: Path) -> list[float]:
    return losses(run_dir, TOTAL_STEPS)


def _listening(pids: list[int]) -> list[str]:
    """Local addresses of the TCP sockets in LISTEN state that `pids` hold ('127.0.0.1:port', ...)."""
    inodes = set()
    for pid in pids:
        try:
            for fd in (Path("/proc") / str(pid) / "fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            continue
    found = []
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for row in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            cols = row.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A: TCP_LISTEN
                addr, port = cols[1].split(":")
                raw = bytes.fromhex(addr)
                if width == 8:
                    host = ".".join(str(b) for b in raw[::-1])
                else:  # four little-endian 32-bit words
                    host = ":".join(raw[i : i + 4][::-1].hex() for i in range(0, 16, 4))
                found.append(f"{host}:{int(port, 16)}")
    return found


# 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104, as _listening writes them
LOOPBACK = ("127.", "00000000:00000000:00000000:00000001:", "00000000:00000000:0000ffff:7f")


@pytest.fixture(scope="module")
def straight(shards, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("straight") / "run"
    subprocess.run(_cmd(_config(shards, run)), env=_env(), cwd=REPO, check=True, capture_output=True)
    return run


@pytest.fixture(scope="module")
def launched(shards, tmp_path_factory) -> tuple[Path, list[str], str]:
    """An uninterrupted nproc=2 DDP run, with the listening sockets its ranks held mid-run."""
    run = tmp_path_factory.mktemp("launched") / "run"
    proc = subprocess.Popen(
        _cmd(_config(shards, run, nproc=2, parallel="ddp"), slow_steps(0.3)),
        env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    seen: list[str] = []
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    while proc.poll() is None and time.time() < deadline:  # the ranks train and sync meanwhile
        seen += _listening([proc.pid, *child_pids(proc.pid)])
        time.sleep(0.2)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out[-3000:]
    return run, seen, out


def test_two_local_ranks_match_one_process(launched, straight):
    run, _, out = launched
    np.testing.assert_allclose(_losses(run), _losses(straight), rtol=1e-5)
    assert out.count("'last_step': 12") == 1, out  # the launcher prints rank 0's summary once
    meta = json.loads((ckpt.latest_checkpoint(run / "checkpoints") / ckpt.META).read_text())
    assert meta["world_size"] == 2
    assert [p.name for p in (run / "launch").iterdir() if p.name.startswith("store")] == []


def test_ranks_listen_on_loopback_only(launched):
    _, seen, _ = launched
    assert seen, "gloo's pair listeners were never seen: the check looked at nothing"
    assert all(_is_loopback(a) for a in seen), sorted(set(seen))


def test_killed_rank_fails_the_launch_and_rerun_resumes_exactly(shards, launched, tmp_path):
    reference, _, _ = launched
    run = tmp_path / "run"
    config = _config(shards, run, nproc=2, parallel="ddp")
    proc = subprocess.Popen(
        _cmd(config, slow_steps(0.4)),
        env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while ckpt.latest_checkpoint(run / "checkpoints") is None:
            assert proc.poll() is None and time.time() < deadline, "no checkpoint before the run ended"
            time.sleep(0.05)
        ranks = {rank_of(p): p for p in child_pids(proc.pid)}
        os.kill(ranks[1], signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    assert "trainer rank 1 of 2 exited with code -9" in err and "rank1.log" in err, err[-2000:]
    assert not Path(f"/proc/{ranks[0]}").exists()  # the launcher stopped and reaped rank 0
    killed_at = ckpt.complete_checkpoints(run / "checkpoints")[-1][0]
    assert killed_at < TOTAL_STEPS
    res = subprocess.run(_cmd(config), env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert _losses(run) == _losses(reference)  # exact: same world size, deterministic fp32 gloo


def test_nproc_needs_a_data_parallel_mode(shards, tmp_path):
    with pytest.raises(ConfigError, match="unsynchronised"):
        load_config(TrainConfig, _config(shards, tmp_path / "r", nproc=2))


def _is_loopback(addr: str) -> bool:
    return addr.startswith(LOOPBACK)


def test_listening_sockets_are_read_with_their_addresses():
    """The loopback check above can fail: it finds a listener by its inode and decodes its address
    (checked on loopback sockets only; no test listens beyond loopback)."""
    import socket

    with socket.socket() as v4, socket.socket(socket.AF_INET6) as v6:
        v4.bind(("127.0.0.1", 0))
        v6.bind(("::1", 0))
        v4.listen()
        v6.listen()
        # Only the two sockets made here: under xdist this worker may also hold a Ray driver's
        # listeners from an earlier test file.
        ports = (f":{v4.getsockname()[1]}", f":{v6.getsockname()[1]}")
        seen = [a for a in _listening([os.getpid()]) if a.endswith(ports)]
        want = [
            f"127.0.0.1:{v4.getsockname()[1]}",
            f"00000000:00000000:00000000:00000001:{v6.getsockname()[1]}",
        ]
    assert sorted(seen) == sorted(want)
    assert all(_is_loopback(a) for a in seen)
    assert not any(
        _is_loopback(a) for a in ["0.0.0.0:29500", "10.0.0.5:29500", "00000000:00000000:00000000:00000000:1"]
    )


def test_batch_that_cannot_split_fails_before_any_rank_starts(shards, tmp_path):
    run = tmp_path / "r"
    config = _config(shards, run, nproc=3, parallel="ddp")  # 32 and 16 samples per step
    res = subprocess.run(_cmd(config), env=_env(), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "config error: phases[0] (short).global_batch_tokens=512" in res.stderr
    assert "world_size=3" in res.stderr and not (run / "launch").exists()


def test_dry_run_shows_the_timeline_for_nproc_ranks(shards, tmp_path):
    config = _config(shards, tmp_path / "r", nproc=2, parallel="ddp")
    out = subprocess.run(
        _cmd(config, "--dry-run"), env=_env(), cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert "world_size 2" in out
    # short: 32 samples per step, 16 per rank, micro_batch_size 8 -> 2 micro-steps per rank
    assert [line.split()[6:8] for line in out.splitlines() if line.startswith(("short", "long"))] == [
        ["8", "2"],
        ["4", "2"],
    ]
    assert not (tmp_path / "r").exists()


def test_ranks_die_with_a_killed_launcher(shards, tmp_path):
    """kill -9 of the launcher alone (not its group): no orphaned rank keeps training."""
    run = tmp_path / "run"
    proc = subprocess.Popen(
        _cmd(_config(shards, run, nproc=2, parallel="ddp"), slow_steps(5)),  # 60 s to go
        env=_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists():
        assert proc.poll() is None and time.time() < deadline, "no rank started training"
        time.sleep(0.05)
    ranks = child_pids(proc.pid)
    assert sorted(rank_of(p) for p in ranks) == [0, 1]
    proc.kill()
    proc.wait()
    deadline = time.time() + 5  # well before the run could end by itself
    while any(Path(f"/proc/{p}").exists() for p in ranks) and time.time() < deadline:
        time.sleep(0.05)
    alive = [p for p in ranks if Path(f"/proc/{p}").exists()]
    for p in alive:  # clean up before failing
        os.kill(p, signal.SIGKILL)
    assert not alive, "ranks outlived their launcher"


def test_a_stalled_rank_times_out_with_a_message_naming_the_waiting_rank(shards, tmp_path):
    """Rank 1 sleeps 60 s before step 2; rank 0 waits in DDP's all-reduce until dist_timeout_s=4
    and fails naming itself, the step and the setting; the launcher stops rank 1 and says so."""
    run = tmp_path / "run"
    config = _config(shards, run, nproc=2, parallel="ddp")
    stall = "callbacks={tests.train_helpers.StallRank: {rank: 1, step: 2, sleep_s: 60}}"
    t0 = time.time()
    res = subprocess.run(
        _cmd(config, "dist_timeout_s=4", stall),
        env=_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode != 0 and time.time() - t0 < 60  # did not wait for the sleeper
    err = res.stderr
    assert (
        "CollectiveTimeout: rank 0 of 2: a collective did not complete within dist_timeout_s=4 at step 2"
        in err
    ), err[-3000:]
    assert "trainer rank 0 of 2 exited with code 1" in err, err[-3000:]


@pytest.mark.parametrize("parallel", ["ddp", "fsdp2"])
def test_bf16_is_one_regime_per_parallelism(shards, tmp_path, parallel):
    """2 gloo ranks in bf16: FSDP2 computes in bf16 through its MixedPrecisionPolicy with no
    autocast, DDP through autocast; both keep fp32 weights, gradients and AdamW states, and run the
    backward outside autocast."""
    run = tmp_path / "run"
    config = _config(shards, run, nproc=2, parallel=parallel)
    probe = "callbacks={tests.train_helpers.PrecisionProbe: {}}"
    res = subprocess.run(
        _cmd(config, "precision=bf16", "max_steps=2", probe), env=_env(), cwd=REPO, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    for rank in (0, 1):
        seen = json.loads((run / f"precision_rank{rank}.json").read_text())
        assert seen == {
            "forward_out": "torch.bfloat16",
            "forward_autocast": parallel == "ddp",
            "backward_autocast": False,
            "params": ["torch.float32"],
            "grads": ["torch.float32"],
            "optimizer": ["torch.float32"],
        }, (rank, seen)


def test_async_checkpoints_on_two_ranks_resume_to_the_same_losses(shards, launched, tmp_path):
    """nproc=2 DDP with checkpoint.async_save: 6 steps, then a rerun to 12 from the step-6
    checkpoint, gives the uninterrupted 2-rank run's losses exactly."""
    reference, _, _ = launched
    run = tmp_path / "run"
    config = _config(shards, run, nproc=2, parallel="ddp")
    for extra in (["max_steps=6"], []):
        res = subprocess.run(_cmd(config, "checkpoint.async_save=true", *extra), env=_env(), cwd=REPO,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
        assert res.returncode == 0, res.stderr[-3000:]
    assert [s for s, _ in ckpt.complete_checkpoints(run / "checkpoints")] == [8, 12]
    assert _losses(run) == _losses(reference)
