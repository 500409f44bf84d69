"""Step guards: skip a non-finite or spiking update on the device, roll back after repeated spikes.

A non-finite loss or grad norm skips the optimizer step (the LR schedule still advances). So does a
loss spike: a loss above mean + k * std of the recent window of accepted losses (the window
restarts at each phase, whose data legitimately shifts the loss). Both decisions are made on the
device, with no host sync: the window lives in a device tensor and the verdict reaches the fused
AdamW kernel as its `found_inf` flag, which leaves parameters and moments untouched. The host reads
the verdicts with the loss at the next logging step (`metrics.log_every`): warnings, the skipped
count and the rollback come then, at most one log window late. `max_consecutive_spikes` spikes in
a row roll model, optimizer, scheduler and RNG back to the newest checkpoint while the data loader
keeps going forward, so the batches that spiked are never replayed. Every rank sees the same
all-reduced loss and norm, so all take the same branch.
"""

from __future__ import annotations

import logging
import statistics
from collections import deque
from typing import Any

import torch

from trainer import checkpoint as ckpt
from trainer.callbacks import Callback, TrainerView
from trainer.config import GuardConfig

log = logging.getLogger(__name__)

SKIP_REASONS = {0: False, 1: "nonfinite", 2: "loss_spike", 3: "overflow"}  # the device verdict's codes
"""3: fp16 gradients overflowed at the current loss scale (the trainer's GradScaler, not the guard)."""


class SpikeGuard:
    """Spike test against the recent accepted losses of the current phase: the reference
    implementation on host floats (DeviceSpikeGuard makes the same decisions on the device)."""

    def __init__(self, cfg: GuardConfig):
        self.cfg = cfg
        self.losses: deque[float] = deque(maxlen=cfg.spike_window)
        self.phase = -1

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


class DeviceSpikeGuard:
    """The spike window as a float64 ring buffer on the device; `verdict` returns a 0-dim int code
    (0 accept, 1 non-finite, 2 spike) and updates the window, all without leaving the device."""

    def __init__(self, cfg: GuardConfig, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.buf = torch.zeros(cfg.spike_window, dtype=torch.float64, device=device)
        self.count = torch.zeros((), dtype=torch.int64, device=device)
        self.pos = torch.zeros((), dtype=torch.int64, device=device)
        self.slots = torch.arange(cfg.spike_window, device=device)
        self.phase = -1

    def verdict(self, phase: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
        if phase != self.phase:  # the host knows the phase: no sync
            self.count.zero_()
            self.pos.zero_()
            self.phase = phase
        loss = loss.detach().to(self.device, torch.float64)
        finite = torch.isfinite(loss) & torch.isfinite(grad_norm.detach().to(self.device))
        spike = torch.zeros((), dtype=torch.bool, device=self.device)
        if self.cfg.spike_num_std > 0:
            valid = self.slots < self.count
            n = self.count.clamp(min=1).to(torch.float64)
            mean = torch.where(valid, self.buf, 0.0).sum() / n
            var = torch.where(valid, (self.buf - mean) ** 2, 0.0).sum() / n
            threshold = mean + self.cfg.spike_num_std * var.sqrt()
            spike = finite & (self.count >= self.cfg.spike_min_history) & (loss > threshold)
        accept = finite & ~spike
        self.buf.index_put_((self.pos,), torch.where(accept, loss, self.buf[self.pos]))
        self.pos.copy_(torch.where(accept, (self.pos + 1) % self.cfg.spike_window, self.pos))
        self.count.copy_(torch.where(accept, (self.count + 1).clamp(max=self.cfg.spike_window), self.count))
        return torch.where(finite, torch.where(spike, 2, 0), 1)

    def state_dict(self) -> dict[str, Any]:
        """The accepted losses oldest first (a host read: checkpoints are sync points anyway)."""
        n, pos = int(self.count), int(self.pos)
        buf = self.buf.tolist()
        losses = buf[pos - n : pos] if pos >= n else buf[pos - n :] + buf[:pos]
        return {"phase": self.phase, "losses": losses}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self.count.zero_()
        self.pos.zero_()
        self.phase = -1
        if state:  # checkpoints from before the guard existed have none
            losses = state["losses"][-self.cfg.spike_window :]
            if losses:
                self.buf[: len(losses)] = torch.tensor(losses, dtype=torch.float64)
            self.count.fill_(len(losses))
            self.pos.fill_(len(losses) % self.cfg.spike_window)
            self.phase = state["phase"]


class GuardCallback(Callback):
    """Puts the device verdict in metrics["skip_code"] before the update (the trainer hands it to
    the optimizer); on logging steps counts spikes in a row from the read verdicts and rolls back."""

    state_key = "guard"

    def __init__(self, cfg: GuardConfig):
        self.cfg = cfg
        self.guard: DeviceSpikeGuard | None = None
        self.consecutive = 0
        self.rollbacks = 0
        self._state: dict[str, Any] | None = None

    def on_train_start(self, trainer: TrainerView) -> None:
        if self.guard is None:
            self.guard = DeviceSpikeGuard(self.cfg, trainer.device)
            self.guard.load_state_dict(self._state)

    def pre_optim_step(self, trainer: TrainerView, step: int, metrics: dict[str, Any]) -> None:
        if metrics["skipped"]:  # vetoed by a callback before us: the update is off anyway
            return
        device = trainer.device
        loss = torch.as_tensor(metrics["loss"], device=device)
        norm = torch.as_tensor(metrics["grad_norm"], device=device)
        metrics["skip_code"] = self._guard(trainer).verdict(trainer.timeline.span_at(step).index, loss, norm)

    def _guard(self, trainer: TrainerView) -> DeviceSpikeGuard:
        if self.guard is None:  # restore() before on_train_start
            self.on_train_start(trainer)
        return self.guard

    def observe(self, rows: list[dict[str, Any]]) -> None:
        """The read rows of a log window, in step order: warnings and the spikes-in-a-row count."""
        for row in rows:
            if row["skipped"] == "nonfinite":
                log.warning("step %d: non-finite loss=%s grad_norm=%s, update skipped", row["step"],
                            row["loss"], row["grad_norm"])  # fmt: skip
            elif row["skipped"] == "loss_spike":
                self.consecutive += 1
                log.warning("step %d: loss spike %.4g (spike %d in a row), update skipped", row["step"],
                            row["loss"], self.consecutive)  # fmt: skip
            elif not row["skipped"]:
                self.consecutive = 0

    def post_step(self, trainer: TrainerView, step: int, metrics: dict[str, Any]) -> None:
        if metrics.get("log") and self.consecutive >= self.cfg.max_consecutive_spikes:
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
                "step %d: %d spikes in a row but no checkpoint to roll back to", step, self.consecutive
            )
            self.consecutive = 0
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
        state = self.guard.state_dict() if self.guard is not None else {"phase": -1, "losses": []}
        return state | {"consecutive": self.consecutive}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self._state = state
        self.consecutive = state["consecutive"] if state else 0
        if self.guard is not None:
            self.guard.load_state_dict(state)
