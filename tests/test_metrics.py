"""Metrics: peak-FLOPs lookup, MFU arithmetic, JSONL rows on rank 0 only, throughput window, memory."""

from __future__ import annotations

import json
import logging
import sys

import pytest
import torch

from pretrain.core import accel
from pretrain.core.accel import mfu
from trainer.callbacks.metrics import MetricsLogger
from trainer.callbacks.progress import ProgressLine
from trainer.metrics import Throughput, detect_peak_flops, memory_snapshot, read_metrics
from trainer.model import Transformer, preset


@pytest.mark.parametrize(
    "name, dtype, expected",
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989.4e12),
        ("NVIDIA H100 PCIe", "bf16", 756e12),
        ("NVIDIA H100 NVL", "bf16", 835.5e12),
        ("NVIDIA H200", "bf16", 989.4e12),
        ("NVIDIA H200 NVL", "bf16", 835.5e12),
        ("NVIDIA A100-SXM4-80GB", "bf16", 312e12),
        ("NVIDIA A100-PCIE-40GB", torch.bfloat16, 312e12),
        ("NVIDIA A100 80GB PCIe", "fp16", 312e12),
        ("NVIDIA A100-SXM4-40GB", "tf32", 156e12),
        ("NVIDIA A100-SXM4-40GB", "fp32", 19.5e12),
        ("NVIDIA L4", "bf16", 121e12),
        ("NVIDIA L40S", "bf16", 362.05e12),
        ("NVIDIA A10G", "bf16", 70e12),
        ("NVIDIA A10", "bf16", 125e12),
        ("NVIDIA GeForce RTX 4090", "bf16", 165.2e12),
        ("NVIDIA B200", "bf16", 2.25e15),
        ("NVIDIA H800", "bf16", 989.4e12),
        ("NVIDIA H800 PCIe", "bf16", 756e12),
        ("NVIDIA H20", "bf16", 148e12),
        ("NVIDIA A800-SXM4-80GB", "bf16", 312e12),
        ("NVIDIA GB200", "bf16", 2.5e15),
        ("NVIDIA B100", "bf16", 1.75e15),
        ("NVIDIA GH200 480GB", "bf16", 989.4e12),
        ("AMD Instinct MI300X", "bf16", 1307.4e12),
        ("AMD Instinct MI325X", "fp16", 1307.4e12),
    ],
)
def test_peak_table_lookup_by_device_name(name, dtype, expected):
    assert detect_peak_flops(name, dtype) == expected


def test_torch_float32_follows_the_tf32_switch():
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert detect_peak_flops("NVIDIA H100 80GB HBM3", torch.float32) == 66.9e12
        torch.set_float32_matmul_precision("high")
        assert detect_peak_flops("NVIDIA H100 80GB HBM3", torch.float32) == 494.7e12
    finally:
        torch.set_float32_matmul_precision(before)


def test_unknown_device_is_none_with_one_notice(caplog):
    accel._warned.discard("Some Future GPU")
    with caplog.at_level(logging.WARNING, logger="trainer.metrics"):
        assert detect_peak_flops("Some Future GPU", "bf16") is None
        assert detect_peak_flops("Some Future GPU", "bf16") is None
    notices = [r for r in caplog.records if "Some Future GPU" in r.getMessage()]
    assert len(notices) == 1, [r.getMessage() for r in caplog.records]
    assert "MFU will not be reported" in notices[0].getMessage()


def test_cpu_has_no_peak_and_no_mfu():
    assert detect_peak_flops("cpu", "bf16") is None
    assert detect_peak_flops(torch.device("cpu"), torch.float32) is None
    assert mfu(1e9, 1e4, None) is None
    with pytest.raises(ValueError, match="dtype='int8'"):
        detect_peak_flops("NVIDIA H100 80GB HBM3", "int8")


def test_mfu_of_124m_on_h100():
    with torch.device("meta"):
        model = Transformer(preset("124m"))
    # 6N + 12 L d T with N = 123,587,328 - embedding rows + lm_head matmul (tied: same 38.6M):
    # 6 * 123,587,328 = 741,523,968; attention 12 * 12 * 768 * 1024 = 113,246,208.
    flops_per_token = model.flops_per_token(1024)
    assert flops_per_token == 854_770_176
    # 500k tokens/s on one H100 SXM: 4.2739e14 / 9.894e14 = 43.20 %.
    assert mfu(flops_per_token, 500_000, 989.4e12) == pytest.approx(0.431964, abs=1e-6)
    # The same global throughput over 8 GPUs is 1/8 of the utilisation.
    assert mfu(flops_per_token, 500_000, 989.4e12, num_devices=8) == pytest.approx(0.431964 / 8, abs=1e-6)


def test_jsonl_rows_round_trip_on_rank0_only(tmp_path):
    with MetricsLogger(tmp_path / "run", rank=0, tensorboard=False) as logger:
        logger.log(1, loss=torch.tensor(2.5), lr=3e-4, tokens_per_s=1234.5, phase="short")
        logger.log(2, loss=float("nan"), lr=2e-4, skipped="nonfinite_loss")
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["loss"] == 2.5 and rows[0]["lr"] == 3e-4 and rows[0]["phase"] == "short"
    assert rows[1]["loss"] is None and rows[1]["skipped"] == "nonfinite_loss"  # strict JSON, no NaN
    # appending from a second logger (a resumed run) keeps the earlier rows
    with MetricsLogger(tmp_path / "run", rank=0) as logger:
        logger.log(3, loss=1.0)
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2, 3]

    other = tmp_path / "rank1"
    with MetricsLogger(other, rank=1, tensorboard=True) as logger:
        assert logger.log(1, loss=1.0) is None
    assert not other.exists()


def test_torn_last_line_is_skipped(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 3.0}) + '\n{"step": 2, "lo')
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 3.0}]


def test_tensorboard_missing_prints_one_notice(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now fails, as on a bare box
    with MetricsLogger(tmp_path, rank=0, tensorboard=True) as logger:
        logger.log(1, loss=1.0)
    assert capsys.readouterr().out.count("tensorboard not installed") == 1
    assert read_metrics(tmp_path)[0]["loss"] == 1.0


def test_throughput_window():
    tp = Throughput(window=3)
    tp.update(1000, 1.0, 0.1)
    tp.update(3000, 1.0, 0.0)
    assert tp.tokens_per_s == 2000.0
    assert tp.data_wait_fraction == pytest.approx(0.05)
    tp.update(2000, 2.0, 0.4)
    tp.update(4000, 1.0, 0.0)  # evicts the first step
    assert tp.tokens_per_s == (3000 + 2000 + 4000) / 4.0
    assert tp.data_wait_fraction == pytest.approx(0.4 / 4.0)
    assert tp.total_tokens == 10_000
    assert Throughput().tokens_per_s == 0.0 and Throughput().data_wait_fraction == 0.0


def test_memory_snapshot_on_cpu_is_positive():
    snap = memory_snapshot("cpu")
    assert set(snap) >= {"mem_rss_gib", "mem_peak_rss_gib"}
    assert 0 < snap["mem_rss_gib"] <= snap["mem_peak_rss_gib"] * 1.01


def test_progress_line_eta(capsys):
    p = ProgressLine(total_steps=100, start_step=20, enabled=True, every=10)
    p._t0 -= 10.0  # pretend 10 s have passed
    assert p.eta_s(30) == pytest.approx(10.0 / 10 * 70, rel=0.01)
    assert p.line(30, loss=2.0).startswith("step 30/100 | loss 2 | eta 01:1")
    p.update(30, loss=2.0)
    p.update(31, loss=2.0)  # not a multiple of `every`: no line
    assert capsys.readouterr().out.count("step 3") == 1
    p.close()


def test_mfu_from_a_fake_peak_and_a_fixed_step_time():
    """The metrics callback's MFU, exactly: 2 layers x dim 32, seq 16, 1,000 matmul params (by
    construction of the fake), 4,096 tokens per step in 0.5 s on 2 devices of 1 GFLOP/s."""
    from types import SimpleNamespace

    from pretrain.core.accel import flops_per_token
    from trainer.callbacks.metrics import MetricsCallback
    from trainer.config import MetricsConfig

    full = flops_per_token(1000, num_layers=2, dim=32, seq_len=16)
    causal = flops_per_token(1000, num_layers=2, dim=32, seq_len=16, causal=True)
    assert (full, causal) == (6000 + 12 * 2 * 32 * 16, 6000 + 6 * 2 * 32 * 16) == (18288, 12144)
    phase = SimpleNamespace(global_batch_tokens=4096, seq_len=16)
    trainer = SimpleNamespace(
        timeline=SimpleNamespace(span_at=lambda step: SimpleNamespace(config=phase)),
        flops_per_token={16: full},
        flops_per_token_causal={16: causal},
        env=SimpleNamespace(world_size=2),
        device=torch.device("cpu"),
    )
    cb = MetricsCallback(MetricsConfig(window=1, memory_every=0))
    cb.peak_flops = 1e9  # fake: a 1 GFLOP/s device
    row = {"step_time_s": 0.5, "data_wait_s": 0.0, "log": False}
    cb.post_step(trainer, 0, row)
    assert row["tokens_per_s"] == 8192.0
    assert row["mfu"] == full * 8192 / (1e9 * 2) == pytest.approx(0.07490765)
    assert row["mfu_causal"] == causal * 8192 / (1e9 * 2)
    assert row["mfu_causal"] / row["mfu"] == pytest.approx(12144 / 18288)


def test_planner_offers_every_gpu_of_the_peak_table():
    from pretrain.core.accel import GPUS, PEAK_FLOPS

    assert {"gh200", "h800", "h20", "a800", "b100", "gb200", "mi300x", "mi325x"} <= set(GPUS)
    assert {key for key, _ in GPUS.values()} == set(PEAK_FLOPS)  # no row without a --gpu name
