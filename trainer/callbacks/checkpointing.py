"""Checkpoint cadence: save every `checkpoint.every_steps`, after the last step and after a rollback.

Retention (`keep_last`, `keep_every`) is applied by trainer/checkpoint.py's save, which prunes on
rank 0 once the new checkpoint is complete, so a crash never leaves fewer than `keep_last`.
"""

from __future__ import annotations

from typing import Any

from trainer.callbacks import Callback, TrainerView
from trainer.config import CheckpointConfig


class CheckpointCallback(Callback):
    def __init__(self, cfg: CheckpointConfig):
        self.every_steps = cfg.every_steps

    def post_step(self, trainer: TrainerView, step: int, metrics: dict[str, Any]) -> None:
        done = trainer.step_num
        # Re-saving right after a rollback records the forward data position, so a crash now
        # resumes past the spiking batches instead of replaying them.
        if (
            done == trainer.last_step
            or (self.every_steps and done % self.every_steps == 0)
            or "rollback" in metrics
        ):
            trainer.save(trainer.timeline.span_at(step))
