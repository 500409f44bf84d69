"""Shared by the trainer tests: learnable synthetic token shards, the tiny two-phase config, losses
per step from metrics.jsonl, the ranks under a launcher, the private loopback-only network
namespace multi-process torchrun runs go into, and the test-only trainer callbacks (a NaN loss, a
loss spike, slow steps) that reach the Trainer through `train(cfg, callbacks=[...])` or, in a
subprocess, through the config's `callbacks` (SLOW_STEPS)."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pretrain.core.config import load_config
from pretrain.core.token_shards import write_token_manifest, write_token_shard
from pretrain.report import metrics_by_step
from trainer.callbacks import Callback
from trainer.config import TrainConfig

VOCAB = 512
# torch's TCPStore (torchrun's rendezvous) listens on every interface whatever host it is given,
# so multi-process runs go into a private network namespace that has nothing but loopback.
NETNS = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]


def arith_docs(rng, n: int, lo: int, hi: int) -> list[np.ndarray]:
    """Documents with learnable structure: runs of an arithmetic progression mod a band of ids."""
    out = []
    for _ in range(n):
        length = int(rng.integers(8, 60))
        start, stride = int(rng.integers(lo, hi)), int(rng.integers(1, 4))
        out.append(lo + (start + stride * np.arange(length)) % (hi - lo))
    return out


def write_arith_shards(root: Path, tokenizer_hash: str = "tok-test") -> Path:
    """web: 2 shards of ids 1..299, code: 1 shard of ids 300..511; returns root."""
    rng = np.random.default_rng(0)
    entries = []
    for i, (source, lo, hi) in enumerate([("web", 1, 300), ("code", 300, 512), ("web", 1, 300)]):
        entry = write_token_shard(root / f"{i:05d}.arrow", arith_docs(rng, 80, lo, hi), VOCAB)
        entries.append({**entry, "source": source})
    write_token_manifest(root, tokenizer_hash=tokenizer_hash, shards=entries)
    return root


def tiny_config_dict(shards: Path, run_dir: Path, **top) -> dict:
    """12 steps: phase "short" (seq 16, steps 0-5) then "long" (seq 32, steps 6-11), 512 tokens each."""
    phases = [
        dict(name="short", num_tokens=6 * 512, mixture={"web": 0.8, "code": 0.2}, seq_len=16,
             global_batch_tokens=512, micro_batch_size=8, lr_max=3e-3),
        dict(name="long", num_tokens=6 * 512, mixture={"web": 0.4, "code": 0.6}, seq_len=32,
             global_batch_tokens=512, micro_batch_size=4, lr_max=3e-3),
    ]  # fmt: skip
    cfg = {
        "run_dir": str(run_dir),
        "model": "tiny",
        "model_overrides": {"dim": 64, "num_layers": 2, "vocab_size": VOCAB, "max_seq_len": 64},
        "curriculum": {"phases": phases, "schedule": {"warmup_steps": 2, "decay_fraction": 0.3}},
        "data": {
            "sources": {"web": str(shards), "code": str(shards)},
            "tokenizer_hash": "tok-test",
            "seed": 3,
        },
        "checkpoint": {"every_steps": 4, "keep_last": 2},
        "seed": 7,
        "device": "cpu",
        "metrics": {"progress": False},
    }
    cfg.update(top)
    return cfg


@functools.cache
def private_netns_ok() -> bool:
    try:
        return subprocess.run([*NETNS[:-1], "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def write_tiny_config(shards: Path, run_dir: Path, **top) -> Path:
    """tiny_config_dict as YAML beside run_dir (<run_dir>.yaml); returns its path."""
    path = run_dir.parent / f"{run_dir.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(tiny_config_dict(shards, run_dir, **top)))
    return path


def tiny_train_config(shards: Path, run_dir: Path, overrides=(), **top):
    """The tiny TrainConfig, loaded from its YAML with dotted overrides like the CLI does."""
    return load_config(TrainConfig, write_tiny_config(shards, run_dir, **top), list(overrides))


def metrics_rows(run_dir: Path) -> dict[int, dict]:
    """step -> the last row logged for it (a resumed run re-logs the steps after its checkpoint)."""
    path = run_dir / "metrics.jsonl"
    assert path.exists(), f"{path} was never written"
    return {r["step"]: r for r in metrics_by_step(path)}


def losses(run_dir: Path, num_steps: int | None = None) -> list[float]:
    """Loss per step; every step 0..num_steps-1 (or 0..last) must have been logged."""
    m = metrics_rows(run_dir)
    want = list(range(len(m) if num_steps is None else num_steps))
    assert sorted(m) == want, sorted(m)
    return [m[s]["loss"] for s in want]


def child_pids(pid: int) -> list[int]:
    """The live children of process `pid` (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue  # exited meanwhile
    return out


def rank_of(pid: int) -> int | None:
    """The RANK in process `pid`'s environment (a launcher's worker), None if unset or gone."""
    try:
        env = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for var in env:
        if var.startswith(b"RANK="):
            return int(var[5:])
    return None


# --- test-only trainer callbacks ------------------------------------------------------------------


class NanLoss(Callback):
    """The loss of each listed optimizer step becomes NaN (and so its gradients): the guard's
    non-finite path. A forward hook on the model for that one step, removed before the update."""

    def __init__(self, steps: list[int]):
        self.steps = set(steps)
        self._hook = None

    def pre_step(self, trainer, step: int, batch: dict[str, Any]) -> None:
        if step in self.steps:
            self._hook = trainer.model.register_forward_hook(
                lambda m, args, out: (out[0], out[1] * float("nan"))
            )

    def pre_optim_step(self, trainer, step: int, metrics: dict[str, Any]) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


class SpikeLoss(Callback):
    """Multiplies the loss the guard sees at each listed step by 1000, once per step, so a step
    re-run after a rollback is clean."""

    def __init__(self, steps: list[int], factor: float = 1000.0):
        self.steps, self.factor = set(steps), factor
        self.fired: set[int] = set()

    def pre_optim_step(self, trainer, step: int, metrics: dict[str, Any]) -> None:
        if step in self.steps and step not in self.fired:
            self.fired.add(step)
            metrics["loss"] *= self.factor


class SlowSteps(Callback):
    """Sleeps after each step, so a test can kill a training process mid-run."""

    def __init__(self, sleep_s: float):
        self.sleep_s = sleep_s

    def post_step(self, trainer, step: int, metrics: dict[str, Any]) -> None:
        time.sleep(self.sleep_s)


class StallRank(Callback):
    """Rank `rank` sleeps `sleep_s` before step `step`'s forward: its peers wait in the first
    collective of that step (the process-group timeout test)."""

    def __init__(self, rank: int, step: int, sleep_s: float):
        self.rank, self.step, self.sleep_s = rank, step, sleep_s

    def pre_step(self, trainer, step: int, batch: dict[str, Any]) -> None:
        if step == self.step and trainer.env.rank == self.rank:
            time.sleep(self.sleep_s)


class PrecisionProbe(Callback):
    """Records, on its first step, the dtypes a precision regime produces: a block's matmul output
    and whether autocast was on in the forward and in the backward, then the parameters, gradients
    and AdamW states. Writes run_dir/precision_rank<r>.json (launched ranks report through it)."""

    def __init__(self):
        self.seen: dict[str, Any] = {}
        self._hooks: list = []

    def pre_step(self, trainer, step: int, batch: dict[str, Any]) -> None:
        if step != 0:
            return
        import torch

        dev = trainer.device.type
        mlp = getattr(trainer.model, "module", trainer.model).layers["0"].mlp  # DDP wraps the model

        def fwd(module, args, out):
            self.seen["forward_out"] = str(out.dtype)
            self.seen["forward_autocast"] = torch.is_autocast_enabled(dev)

        def bwd(module, grad_in, grad_out):
            self.seen["backward_autocast"] = torch.is_autocast_enabled(dev)

        self._hooks = [
            mlp.down_proj.register_forward_hook(fwd),
            mlp.down_proj.register_full_backward_hook(bwd),
        ]

    def pre_optim_step(self, trainer, step: int, metrics: dict[str, Any]) -> None:
        if step != 0:
            return
        for h in self._hooks:
            h.remove()
        local = lambda t: t.to_local() if hasattr(t, "to_local") else t  # noqa: E731 (FSDP2: DTensor)
        params = [p for p in trainer.model.parameters() if p.requires_grad]
        self.seen["params"] = sorted({str(local(p).dtype) for p in params})
        self.seen["grads"] = sorted({str(local(p.grad).dtype) for p in params if p.grad is not None})

    def post_step(self, trainer, step: int, metrics: dict[str, Any]) -> None:
        if step != 0:
            return
        states = trainer.optimizer.state.values()
        self.seen["optimizer"] = sorted({str(v.to_local().dtype if hasattr(v, "to_local") else v.dtype)
                                         for s in states for k, v in s.items() if k in ("exp_avg", "exp_avg_sq")})  # fmt: skip
        (trainer.run_dir / f"precision_rank{trainer.env.rank}.json").write_text(json.dumps(self.seen))


def slow_steps(sleep_s: float, prefix: str = "") -> str:
    """The dotted override that adds SlowSteps(sleep_s) to a config run in a subprocess (every rank
    imports it by name), e.g. `slow_steps(0.3)` or `slow_steps(0.25, "train.")` for `pretrain run`."""
    return f"{prefix}callbacks={{tests.train_helpers.SlowSteps: {{sleep_s: {sleep_s}}}}}"


class RecordStorage(Callback):
    """Writes run_dir/storage_rank<R>.json at the start: this rank's local parameter elements (a
    DTensor's own shard) and the full model's, to tell FSDP2's sharding from DDP's replicas."""

    def on_train_start(self, trainer):
        local = full = 0
        for p in trainer.model.parameters():
            local += (p.to_local() if hasattr(p, "to_local") else p).numel()
            full += p.numel()
        path = Path(trainer.run_dir) / f"storage_rank{trainer.env.rank}.json"
        path.write_text(json.dumps({"local": local, "full": full}))


# Issue 14's layouts (tests/test_mesh.py, bench/parallel_layouts.py): name -> (nproc, parallel, other
# top-level settings). Each trains the same 20 steps as one process; see layout_config.
STEPS = 20
LAYOUTS = {
    "ddp": (2, "ddp"),
    "fsdp2": (2, "fsdp2"),
    "hsdp_2x2": (4, {"dp_replicate": 2, "dp_shard": 2}),
    "fsdp2_x_tp_2x2": (4, {"dp_shard": 2, "tp": 2}),
    "pp2_gpipe": (2, {"dp_shard": 1, "pp": 2, "pp_schedule": "gpipe"}),
    "pp2_1f1b": (2, {"dp_shard": 1, "pp": 2, "pp_schedule": "1f1b"}),
    "pp2_interleaved_x_fsdp2": (
        4,
        {"dp_shard": 2, "pp": 2, "pp_schedule": "interleaved_1f1b", "pp_stages_per_rank": 2},
    ),
    # the other FSDP2 regimes: reduce-scatter every micro-batch, ZeRO-2 (no reshard after the
    # forward), and selective activation checkpointing of every 2nd block
    "fsdp2_micro_sync_zero2_ac2": (
        2,
        {"dp_shard": 2, "grad_sync": "micro", "reshard_after_forward": False},
        {"activation_checkpointing": True, "ac_every": 2},
    ),
}


def layout_config(shards: Path, run_dir: Path, nproc: int = 1, parallel="none", **top) -> dict:
    """20 steps: "short" (seq 16, 32 samples: accumulation 4 / 2 / 1 at dp 1 / 2 / 4) then "long"
    (seq 32, 16 samples) from step 10; a checkpoint at 10 and 20."""
    phases = [
        dict(name="short", num_tokens=10 * 512, mixture={"web": 0.8, "code": 0.2}, seq_len=16,
             global_batch_tokens=512, micro_batch_size=8, lr_max=3e-3),
        dict(name="long", num_tokens=10 * 512, mixture={"web": 0.4, "code": 0.6}, seq_len=32,
             global_batch_tokens=512, micro_batch_size=4, lr_max=3e-3),
    ]  # fmt: skip
    cfg = {
        "run_dir": str(run_dir),
        "model": "tiny",
        "model_overrides": {"dim": 64, "num_layers": 4, "vocab_size": VOCAB, "max_seq_len": 64,
                            "tie_embeddings": False},
        "curriculum": {"phases": phases, "schedule": {"warmup_steps": 2, "decay_fraction": 0.3}},
        "data": {"sources": {"web": str(shards), "code": str(shards)}, "tokenizer_hash": "tok-test", "seed": 3},
        "optim": {"eps": 1e-6},
        "checkpoint": {"every_steps": 10, "keep_last": 3},
        "seed": 7,
        "device": "cpu",
        "nproc": nproc,
        "parallel": parallel,
        "metrics": {"progress": False, "tensorboard": False},
        "callbacks": {"tests.train_helpers.RecordStorage": {}},
    }  # fmt: skip
    cfg.update(top)
    return cfg


def layout_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def build_report(
    root: Path, model: str = "1b", nproc: int = 2, parallel: str = "fsdp2", timeout: float = 600
):
    """`python -m trainer build` for `model` under `parallel` on `nproc` local ranks (no data is
    read); returns its JSON report (tests/test_meta_init.py, bench/parallel_layouts.py)."""
    config = root / f"build_{model}.yaml"
    config.write_text(
        yaml.safe_dump({
            "run_dir": str(root / f"build_{model}"), "model": model, "device": "cpu", "nproc": nproc,
            "parallel": parallel,
            "data": {"sources": {"web": str(root / "unused"), "books": str(root / "unused")}},
        })
    )  # fmt: skip
    res = subprocess.run(
        [sys.executable, "-m", "trainer", "build", "--config", str(config)],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])
