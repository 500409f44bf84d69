"""The trainer on CUDA (skipped without a GPU): bf16 autocast, fused AdamW and torch.compile learn,
resume and report MFU against the detected GPU's peak; with 2+ GPUs, nproc=2 ranks on NCCL match
one GPU. Tolerances are loose where bf16 and non-deterministic kernels make exact equality moot."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.train_helpers import metrics_rows, tiny_train_config, write_arith_shards
from trainer import checkpoint as ckpt
from trainer.config import TrainConfig
from trainer.metrics import detect_peak_flops
from trainer.train import train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

TOTAL_STEPS = 12


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_arith_shards(tmp_path_factory.mktemp("tok"))


def _cfg(shards: Path, run_dir: Path, overrides: list[str] = (), **top) -> TrainConfig:
    return tiny_train_config(shards, run_dir, overrides, device="cuda", **top)


def _metrics(run_dir: Path) -> dict[int, dict]:
    m = metrics_rows(run_dir)
    assert sorted(m) == list(range(TOTAL_STEPS)), sorted(m)
    return m


@pytest.fixture(scope="module")
def straight(shards, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("gpu") / "run"
    train(_cfg(shards, run, compile=True))
    return run


def test_compiled_bf16_run_learns_and_reports_mfu(straight):
    m = _metrics(straight)
    losses = [m[s]["loss"] for s in range(TOTAL_STEPS)]
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 0.5
    peak = detect_peak_flops(torch.device("cuda"))
    if peak is None:  # a GPU missing from the peak table: MFU is not made up
        assert all(r["mfu"] is None for r in m.values())
    else:
        assert all(0 < r["mfu"] < 1 for r in m.values())
    assert [s for s in m if "mem_max_alloc_gib" in m[s]] == [0, 10]  # metrics.memory_every=10
    assert ckpt.read_meta(ckpt.latest_checkpoint(straight / "checkpoints"))["step"] == TOTAL_STEPS


def test_resume_on_gpu_continues_the_same_run(shards, straight, tmp_path):
    run = tmp_path / "run"
    train(_cfg(shards, run, compile=True, max_steps=8))
    train(_cfg(shards, run, compile=True))
    m, ref = _metrics(run), _metrics(straight)
    # Same data order exactly; losses as close as bf16 and atomics-based kernels allow.
    assert [m[s]["sample_index"] for s in range(TOTAL_STEPS)] == [
        ref[s]["sample_index"] for s in range(TOTAL_STEPS)
    ]
    np.testing.assert_allclose(
        [m[s]["loss"] for s in range(TOTAL_STEPS)], [ref[s]["loss"] for s in range(TOTAL_STEPS)], rtol=2e-2
    )


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
@pytest.mark.parametrize(
    "parallel",
    [
        "ddp",
        "fsdp2",
        # FSDP2's CPUOffloadPolicy (needs a GPU: pinned host memory) and ZeRO-2
        {"dp_shard": 2, "cpu_offload": True},
        {"dp_shard": 2, "reshard_after_forward": False, "grad_sync": "micro"},
        {"dp_shard": 1, "tp": 2},  # tensor parallelism on NCCL
    ],
    ids=["ddp", "fsdp2", "fsdp2_cpu_offload", "zero2_micro_sync", "tp2"],
)
def test_two_gpu_ranks_match_one_gpu(shards, straight, tmp_path, parallel):
    run = tmp_path / "run"
    summary = train(_cfg(shards, run, nproc=2, parallel=parallel))  # trainer/launch.py, NCCL on loopback
    assert summary["last_step"] == TOTAL_STEPS
    m, ref = _metrics(run), _metrics(straight)
    np.testing.assert_allclose(
        [m[s]["loss"] for s in range(TOTAL_STEPS)], [ref[s]["loss"] for s in range(TOTAL_STEPS)], rtol=2e-2
    )
    assert ckpt.read_meta(ckpt.latest_checkpoint(run / "checkpoints"))["world_size"] == 2


def test_steps_that_do_not_log_make_no_cuda_sync(shards, tmp_path):
    """log_every=5 on a GPU: the non-logging steps run under set_sync_debug_mode("error") (any
    synchronizing CUDA call raises) and make no item/cpu/tolist call; the input arrives through the
    loader's pinned side-stream copy; a NaN at a non-logging step is still skipped on the device."""
    from tests.train_helpers import NanLoss
    from trainer.callbacks.syncwatch import HostSyncWatch

    watch = HostSyncWatch(cuda_sync_debug=True)
    try:
        summary = train(
            _cfg(shards, tmp_path / "run", ["metrics.log_every=5"]), callbacks=[watch, NanLoss([3])]
        )
    finally:
        watch.close()
    assert watch.non_log_calls == 0 and watch.log_calls > 0, watch.calls
    assert summary["last_step"] == TOTAL_STEPS and summary["skipped_steps"] == 1
    m = _metrics(tmp_path / "run")
    assert m[3]["skipped"] == "nonfinite" and all(math.isfinite(m[s]["loss"]) for s in m if s != 3)
