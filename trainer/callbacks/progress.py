"""Rank 0's console progress: step, loss, LR, tokens/s and ETA (`metrics.progress`).

    line = ProgressLine(total_steps=160, start_step=40)
    line.update(41, loss=4.2, lr=3e-3)            # a rich bar on a terminal, else a line every 10 steps

The ETA comes from this process's mean step time, so a resumed run estimates from its own steps.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from trainer.callbacks import Callback, TrainerView


def format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class ProgressLine:
    """Console progress with ETA on rank 0: a rich bar on a terminal, a plain line every
    `every` steps otherwise (log files get readable lines, not bar redraws)."""

    def __init__(self, total_steps: int, start_step: int = 0, enabled: bool = True, every: int = 10):
        self.total_steps, self.start_step, self.every = total_steps, start_step, every
        self.enabled = enabled
        self._t0 = time.perf_counter()
        self._bar = None
        if enabled and sys.stdout.isatty():
            # rich's live display only on a terminal
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}")
            )
            self._task = self._bar.add_task("train", total=total_steps, completed=start_step, info="")
            self._bar.start()

    def eta_s(self, step: int) -> float:
        """Seconds left, from the mean step time since this process started (resume-aware)."""
        done = step - self.start_step
        if done <= 0:
            return math.inf
        return (time.perf_counter() - self._t0) / done * (self.total_steps - step)

    def line(self, step: int, **fields: Any) -> str:
        eta = self.eta_s(step)
        parts = [f"step {step}/{self.total_steps}"]
        parts += [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items()]
        parts.append(f"eta {format_eta(eta) if math.isfinite(eta) else '?'}")
        return " | ".join(parts)

    def update(self, step: int, **fields: Any) -> None:
        """`step` = optimizer steps completed."""
        if not self.enabled:
            return
        if self._bar is not None:
            info = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
            self._bar.update(self._task, completed=step, info=info)
        elif step % self.every == 0 or step == self.total_steps:
            print(self.line(step, **fields), flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class ProgressCallback(Callback):
    """Updates the progress line after each step with the step count the run stands at."""

    def __init__(self) -> None:
        self.line: ProgressLine | None = None

    def on_train_start(self, trainer: TrainerView) -> None:
        enabled = trainer.cfg.metrics.progress and trainer.env.is_main
        self.line = ProgressLine(trainer.last_step, trainer.step_num, enabled=enabled)

    def post_step(self, trainer: TrainerView, step: int, metrics: dict[str, Any]) -> None:
        if not metrics["log"]:  # the loss is still on the device
            return
        self.line.update(
            trainer.step_num, loss=metrics["loss"], lr=metrics["lr"], tok_s=metrics["tokens_per_s"]
        )

    def close(self) -> None:
        if self.line is not None:
            self.line.close()
