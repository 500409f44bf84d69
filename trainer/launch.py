"""Local multi-process training on one machine, with nothing listening beyond loopback.

    pretrain train --config train.yaml nproc=2 parallel=ddp
    pretrain run configs/run_tiny.yaml train.nproc=2 train.parallel=ddp

`train(cfg)` with `cfg.nproc > 1` (and no launcher around it: WORLD_SIZE unset) comes here. It
starts `nproc` copies of `python -m trainer train` with torchrun's variables (RANK, LOCAL_RANK,
WORLD_SIZE, LOCAL_WORLD_SIZE) and a rendezvous through a file in run_dir/launch/ instead of
torchrun's TCP store, which listens on every interface whatever host it is given. gloo and NCCL
are pinned to the loopback interface, so a laptop or a single multi-GPU node trains data-parallel
with the same config and no open port. Across nodes use torchrun (infra/slurm, infra/k8s).

Ranks 1.. write their output to run_dir/launch/rank<N>.log; rank 0 writes to this console. When a
rank fails the others are stopped and the error names the rank, its exit code and its log's tail;
when the launcher itself dies (even by kill -9) the ranks die with it (Linux). Rerunning resumes
from the newest complete checkpoint like any other run.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from pretrain.core.config import dump_yaml
from trainer.config import TrainConfig
from trainer.schedule import Timeline

INIT_ENV = "PRETRAIN_DIST_INIT"
"""The process-group init method the launched ranks use (a file:// URL); read by init_distributed."""
SUMMARY = "summary.json"


class LaunchError(RuntimeError):
    """A launched trainer rank failed."""


def loopback_interface() -> str:
    """The loopback interface's name ('lo' on Linux, 'lo0' on macOS and the BSDs)."""
    names = [name for _, name in socket.if_nameindex()]
    for name in ("lo", "lo0"):
        if name in names:
            return name
    raise LaunchError(f"no loopback interface among {names}: cannot keep the process group on loopback")


def rank_env(rank: int, nproc: int, init_method: str, threads: int) -> dict[str, str]:
    lo = loopback_interface()
    env = dict(os.environ)
    for var in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        env.pop(var, None)
    env.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(nproc),
        LOCAL_WORLD_SIZE=str(nproc),
        GLOO_SOCKET_IFNAME=lo,
        NCCL_SOCKET_IFNAME=lo,
        PYTHONPATH=os.pathsep.join(
            filter(None, [str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH")])
        ),
    )
    env[INIT_ENV] = init_method
    env.setdefault("OMP_NUM_THREADS", str(threads))
    return env


def _die_with_parent() -> None:
    """In each rank before exec (Linux): SIGKILL when the launcher dies, even by kill -9, so no
    orphaned rank keeps writing checkpoints beside the ranks of a rerun."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(procs: list[subprocess.Popen], grace_s: float = 10.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def launch_local(cfg: TrainConfig, poll_s: float = 0.2, command: str = "train") -> dict[str, Any]:
    """Train `cfg` in `cfg.nproc` local processes; returns rank 0's summary. `command`: the
    `python -m trainer` subcommand the ranks run (`build`: build the model only and report memory)."""
    nproc = cfg.nproc
    if nproc < 2:
        raise ValueError(f"launch_local needs nproc >= 2, got {nproc}")
    if cfg.device != "cpu":
        gpus = torch.cuda.device_count()
        if gpus and nproc > gpus:
            raise LaunchError(f"nproc={nproc} but this machine has {gpus} GPUs (one process per GPU)")
    # A batch that cannot split over the data-parallel ranks fails here, once, not in every rank.
    d = cfg.parallel.degrees(nproc)
    Timeline.build(cfg.curriculum.phases, cfg.curriculum.schedule, d["dp_replicate"] * d["dp_shard"])
    work = Path(cfg.run_dir) / "launch"
    work.mkdir(parents=True, exist_ok=True)
    config = work / "config.yaml"
    config.write_text(dump_yaml(cfg))
    (work / SUMMARY).unlink(missing_ok=True)
    # A fresh store file per launch: FileStore must not find a dead group's keys.
    store = work / f"store-{os.getpid()}-{time.time_ns()}"
    threads = max(1, (os.cpu_count() or 1) // nproc)
    cmd = [sys.executable, "-m", "trainer", command, "--config", str(config)]
    procs: list[subprocess.Popen] = []
    logs: list[Path | None] = []
    # Elsewhere (macOS) a kill -9 of the launcher leaves the ranks running; stop them by group.
    tie = _die_with_parent if sys.platform.startswith("linux") else None
    try:
        for rank in range(nproc):
            env = rank_env(rank, nproc, f"file://{store}", threads)
            if rank == 0:
                procs.append(subprocess.Popen(cmd, env=env, preexec_fn=tie))
                logs.append(None)
            else:
                log = work / f"rank{rank}.log"
                with open(log, "wb") as f:
                    procs.append(
                        subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, preexec_fn=tie)
                    )
                logs.append(log)
        while True:
            codes = [p.poll() for p in procs]
            failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                rank, code = failed[0]
                _stop(procs)
                where = f"its log {logs[rank]}:\n{_tail(logs[rank])}" if logs[rank] else "its output is above"
                raise LaunchError(f"trainer rank {rank} of {nproc} exited with code {code}; {where}")
            if all(c == 0 for c in codes):
                break
            time.sleep(poll_s)
    finally:
        _stop(procs)  # on KeyboardInterrupt or any error: no orphaned ranks
        store.unlink(missing_ok=True)
    summary = work / SUMMARY
    if not summary.exists():
        raise LaunchError(f"all {nproc} ranks exited 0 but rank 0 wrote no {summary}")
    return json.loads(summary.read_text())


def write_summary(run_dir: str | Path, summary: dict[str, Any]) -> None:
    """Rank 0 of a local launch hands its summary back to the launcher."""
    path = Path(run_dir) / "launch" / SUMMARY
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary))
    tmp.replace(path)
