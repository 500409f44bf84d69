"""Counts host syncs: calls of Tensor.item / .cpu / .tolist on the main thread (the calls that make
the host wait for a GPU), split into steps that log and steps that do not (which should make none).

    watch = HostSyncWatch()
    trainer = Trainer(cfg, callbacks=[watch])   # ... steps ...
    watch.non_log_calls                         # 0 when no non-logging step waited for the device
    watch.close()                               # restores torch.Tensor

A non-logging step is watched from its pre_step to the next step's pre_step, so the callbacks after
it and the next batch's fetch count too. Patching torch.Tensor is global: one watch at a time, and
close() it (the trainer does, on close).
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from trainer.callbacks import Callback, TrainerView

WATCHED = ("item", "cpu", "tolist")


class HostSyncWatch(Callback):
    """`cuda_sync_debug`: on a GPU also run the non-logging steps under
    torch.cuda.set_sync_debug_mode("error"), so any synchronizing CUDA call raises there."""

    def __init__(self, cuda_sync_debug: bool = False):
        self.cuda_sync_debug = cuda_sync_debug and torch.cuda.is_available()
        self.non_log_calls = 0
        self.log_calls = 0
        self.calls: list[tuple[int, str]] = []  # (step, name) of each call on a non-logging step
        self._step: int | None = None  # the non-logging step being watched
        self._orig = {n: getattr(torch.Tensor, n) for n in WATCHED}
        main = threading.main_thread()

        def wrap(name: str, fn: Any) -> Any:
            def watched(t: torch.Tensor, *a: Any, **k: Any) -> Any:
                if threading.current_thread() is main:
                    if self._step is None:
                        self.log_calls += 1
                    else:
                        self.non_log_calls += 1
                        self.calls.append((self._step, name))
                return fn(t, *a, **k)

            return watched

        for n, fn in self._orig.items():
            setattr(torch.Tensor, n, wrap(n, fn))

    def pre_step(self, trainer: TrainerView, step: int, batch: dict[str, Any]) -> None:
        self._step = None if trainer._is_log_step(step) else step
        if self.cuda_sync_debug:
            torch.cuda.set_sync_debug_mode("default" if self._step is None else "error")

    def close(self) -> None:
        self._step = None
        if self.cuda_sync_debug:
            torch.cuda.set_sync_debug_mode("default")
        for n, fn in self._orig.items():
            setattr(torch.Tensor, n, fn)
