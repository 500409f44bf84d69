"""Each step's row: throughput, MFU, data wait and memory added, then written to metrics.jsonl
(rank 0; strict JSON, non-finite values as null) and, with `metrics.tensorboard`, TensorBoard.

MFU: `mfu` uses the PaLM convention (6N + 12 * layers * dim * seq FLOPs per token, the attention
square counted whole), comparable with nanoGPT's and torchtitan's figures; `mfu_causal` counts the
half a causal kernel computes, the work actually done. Both over the device's dense peak at the
training dtype from pretrain/core/accel.py's table (null on CPU and unlisted GPUs).

    log = MetricsLogger(run_dir, rank, tensorboard=True)
    log.log(step, loss=loss, lr=lr)              # {"step", "time", "loss", "lr"}, one line
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from pretrain.core.accel import mfu
from trainer.callbacks import Callback, TrainerView
from trainer.config import MetricsConfig
from trainer.metrics import Throughput, detect_peak_flops, memory_snapshot


def _scalar(v: Any) -> Any:
    """Tensors / numpy scalars -> Python numbers; non-finite floats -> None (strict JSON)."""
    if hasattr(v, "item") and callable(v.item):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class MetricsLogger:
    """One JSON row per log() call to run_dir/metrics.jsonl (rank 0 only), plus TensorBoard scalars.

    Each row is one write() of one line to a file opened for append, flushed at once, so a crash
    loses at most the row being written and a reader never sees half a row from an earlier step.
    """

    def __init__(self, run_dir: str | Path, rank: int = 0, tensorboard: bool = False):
        self.rank = rank
        self.path = Path(run_dir) / "metrics.jsonl"
        self._file = None
        self._tb = None
        if rank != 0:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # optional: needs the tensorboard package
            except ImportError:
                print(
                    "metrics: tensorboard not installed (pip install tensorboard); writing metrics.jsonl only"
                )
            else:
                self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def log(self, step: int, **values: Any) -> dict[str, Any] | None:
        """Write {"step", "time", **values}; returns the row on rank 0, None elsewhere."""
        if self._file is None:
            return None
        row = {"step": int(step), "time": time.time(), **{k: _scalar(v) for k, v in values.items()}}
        self._file.write(json.dumps(row, allow_nan=False) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, global_step=int(step))
            if isinstance(row.get("phase"), str) and isinstance(row.get("loss"), float):
                self._tb.add_scalar(f"loss_by_phase/{row['phase']}", row["loss"], global_step=int(step))
        return row

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MetricsCallback(Callback):
    """Adds tokens/s, MFU, FLOPs per token, data-wait fraction (rolling over `metrics.window` steps)
    and every `memory_every`-th step a memory snapshot to the row, then writes it."""

    def __init__(self, cfg: MetricsConfig):
        self.cfg = cfg
        self.tput = Throughput(cfg.window)
        self.peak_flops: float | None = None
        self.logger: MetricsLogger | None = None
        self._rows: list[tuple[int, dict[str, Any]]] = []  # complete but for values still on the device

    def on_train_start(self, trainer: TrainerView) -> None:
        dtype = "bf16" if trainer.device.type == "cuda" else "fp32"  # no CPU peak: MFU is null there
        self.peak_flops = detect_peak_flops(trainer.device, dtype)
        self.logger = MetricsLogger(trainer.run_dir, trainer.env.rank, tensorboard=self.cfg.tensorboard)

    def post_step(self, trainer: TrainerView, step: int, metrics: dict[str, Any]) -> None:
        phase = trainer.timeline.span_at(step).config
        self.tput.update(phase.global_batch_tokens, metrics["step_time_s"], metrics["data_wait_s"])
        fpt = trainer.flops_per_token[phase.seq_len]
        metrics["tokens_per_s"] = self.tput.tokens_per_s
        metrics["mfu"] = mfu(fpt, self.tput.tokens_per_s, self.peak_flops, trainer.env.world_size)
        causal = trainer.flops_per_token_causal[phase.seq_len]
        metrics["mfu_causal"] = mfu(causal, self.tput.tokens_per_s, self.peak_flops, trainer.env.world_size)
        metrics["flops_per_token"] = fpt
        metrics["data_wait_fraction"] = self.tput.data_wait_fraction
        if self.cfg.memory_every and step % self.cfg.memory_every == 0:
            metrics.update(memory_snapshot(trainer.device))
        self._rows.append((step, metrics))
        if metrics["log"]:  # the trainer has read this window's device values: write its rows
            for s, row in self._rows:
                self.logger.log(s, **{k: v for k, v in row.items() if k not in ("step", "log")})
            self._rows.clear()

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()
