"""Step guards: skip a non-finite or spiking update, and roll back after repeated spikes.

A non-finite loss or grad norm skips the optimizer step (grads zeroed, LR schedule still
advances). So does a loss spike: a loss above mean + k * std of the recent window of accepted
losses (the window restarts at each phase, whose data legitimately shifts the loss).
`max_consecutive_spikes` spikes in a row roll model, optimizer, scheduler and RNG back to the
newest checkpoint while the data loader keeps going forward, so the batches that spiked are never
replayed. Every rank sees the same all-reduced loss and norm, so all take the same branch.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import deque
from typing import Any

from trainer import checkpoint as ckpt
from trainer.callbacks import Callback, TrainerView
from trainer.config import GuardConfig

log = logging.getLogger(__name__)


class SpikeGuard:
    """Spike test against the recent accepted losses of the current phase; tiny, checkpointed state."""

    def __init__(self, cfg: GuardConfig):
        self.cfg = cfg
        self.losses: deque[float] = deque(maxlen=cfg.spike_window)
        self.phase = -1
        self.consecutive = 0

    def is_spike(self, phase: int, loss: float) -> bool:
        if phase != self.phase:  # a new phase's mixture / seq_len shifts the loss legitimately
            self.losses.clear()
            self.phase = phase
        if self.cfg.spike_num_std <= 0 or len(self.losses) < self.cfg.spike_min_history:
            return False
        mean, std = statistics.fmean(self.losses), statistics.pstdev(self.losses)
        return loss > mean + self.cfg.spike_num_std * std

    def accept(self, loss: float) -> None:
        self.losses.append(loss)
        self.consecutive = 0

    def state_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "losses": list(self.losses), "consecutive": self.consecutive}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self.losses.clear()
        self.phase, self.consecutive = -1, 0
        if state:  # checkpoints from before the guard existed have none
            self.losses.extend(state["losses"])
            self.phase, self.consecutive = state["phase"], state["consecutive"]


class GuardCallback(Callback):
    """Sets metrics["skipped"] ("nonfinite", "loss_spike") before the update; rolls back after it."""

    state_key = "guard"

    def __init__(self, cfg: GuardConfig):
        self.cfg = cfg
        self.guard = SpikeGuard(cfg)
        self.rollbacks = 0

    def pre_optim_step(self, trainer: TrainerView, step: int, metrics: dict[str, Any]) -> None:
        loss, norm, guard = metrics["loss"], metrics["grad_norm"], self.guard
        if not (math.isfinite(loss) and math.isfinite(norm)):
            metrics["skipped"] = "nonfinite"
            log.warning("step %d: non-finite loss=%s grad_norm=%s, skipping the update", step, loss, norm)
        elif guard.is_spike(trainer.timeline.span_at(step).index, loss):
            metrics["skipped"] = "loss_spike"
            guard.consecutive += 1
            log.warning(
                "step %d: loss spike %.4g (spike %d in a row), skipping", step, loss, guard.consecutive
            )
        else:
            guard.accept(loss)

    def post_step(self, trainer: TrainerView, step: int, metrics: dict[str, Any]) -> None:
        if metrics["skipped"] == "loss_spike" and self.guard.consecutive >= self.cfg.max_consecutive_spikes:
            rolled_to = self._rollback(trainer, step)
            if rolled_to is not None:
                metrics["rollback"] = rolled_to  # the checkpoint callback re-saves on seeing it

    def _rollback(self, trainer: TrainerView, step: int) -> int | None:
        """Restore model/optimizer/scheduler/RNG from the newest checkpoint at or before this step;
        the loader is left alone, so the steps re-run from the checkpoint on fresh batches.
        Returns the step rolled back to, or None when there is no checkpoint yet."""
        target = [p for s, p in ckpt.complete_checkpoints(trainer.ckpt_dir) if s <= step]
        if not target:
            log.warning(
                "step %d: %d spikes in a row but no checkpoint to roll back to", step, self.guard.consecutive
            )
            self.guard.consecutive = 0
            return None
        self.rollbacks += 1
        if self.rollbacks > self.cfg.max_rollbacks:
            raise RuntimeError(f"step {step}: loss still spiking after {self.cfg.max_rollbacks} rollbacks")
        trainer.step_num = trainer.restore(target[-1])["step"]
        log.warning(
            "step %d: rolled back to checkpoint step %d, data continues forward", step, trainer.step_num
        )
        return trainer.step_num

    def state_dict(self) -> dict[str, Any]:
        return self.guard.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self.guard.load_state_dict(state)
