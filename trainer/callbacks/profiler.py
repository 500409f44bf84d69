"""torch.profiler traces of chosen steps (`metrics.profile_steps`), off by default.

    pretrain train --config X metrics.profile_steps=[10,11,12]   # -> run_dir/profile/*.pt.trace.json

Each run of consecutive listed steps is one trace per rank, `steps_<first>-<last>_rank<r>.pt.trace.json`,
in Chrome trace format: open it in Perfetto or chrome://tracing, or point TensorBoard's PyTorch
profiler plugin at run_dir/profile (it reads `*.pt.trace.json`). CUDA activity is recorded on a GPU.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from trainer.callbacks import Callback, TrainerView

log = logging.getLogger(__name__)


class ProfilerCallback(Callback):
    def __init__(self, steps: list[int]):
        self.steps = set(steps)
        self._prof: profile | None = None
        self._first = -1

    def pre_step(self, trainer: TrainerView, step: int, batch: dict[str, Any]) -> None:
        if self._prof is None and step in self.steps:
            activities = [ProfilerActivity.CPU]
            if trainer.device.type == "cuda":
                activities.append(ProfilerActivity.CUDA)
            self._prof = profile(activities=activities, record_shapes=True)
            self._prof.__enter__()
            self._first = step

    def post_step(self, trainer: TrainerView, step: int, metrics: dict[str, Any]) -> None:
        if self._prof is not None and (trainer.step_num not in self.steps or trainer.done):
            self._finish(trainer, step)

    def _finish(self, trainer: TrainerView, last: int) -> None:
        prof, self._prof = self._prof, None
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)
        prof.__exit__(None, None, None)
        out = trainer.run_dir / "profile" / f"steps_{self._first}-{last}_rank{trainer.env.rank}.pt.trace.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(out))
        log.info("profile of steps %d-%d written to %s", self._first, last, out)

    def close(self) -> None:
        if self._prof is not None:  # an error inside a profiled range: no trace of the cut range
            self._prof.__exit__(None, None, None)
            self._prof = None
