"""What the loop does around a step, as callbacks: `Trainer.step()` calls each hook of each one in turn.

    class LogGradNorm(Callback):
        def post_step(self, trainer, step, metrics):
            print(step, metrics["grad_norm"])

    train(cfg, callbacks=[LogGradNorm()])               # objects, in-process
    train(cfg with callbacks={mypkg.hooks.LogGradNorm: {}})   # import paths, also in launched ranks

One step's order: `pre_step` (batch fetched, before forward) -> forward/backward/clip ->
`pre_optim_step` (metrics hold loss and grad_norm; a callback may set metrics["skipped"] to veto the
update) -> optimizer and scheduler step -> `post_step` (step_num is advanced; the metrics row is
complete after the built-in metrics callback). Extra callbacks run before the built-in ones (guard,
metrics, progress, checkpoint, profiler), so they see and may change a step's figures before the
guard judges them and the logger writes them. A callback with a `state_key` is checkpointed: its
`state_dict()` goes into meta.json under that key and comes back through `load_state_dict` on
resume and rollback. Files: guard.py, metrics.py, progress.py, checkpointing.py, profiler.py.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol

from trainer.config import TrainConfig
from trainer.parallelize import DistEnv
from trainer.schedule import PhaseSpan, Timeline


class TrainerView(Protocol):
    """What callbacks may read and call on the Trainer (trainer/train.py)."""

    cfg: TrainConfig
    env: DistEnv
    device: Any
    run_dir: Path
    ckpt_dir: Path
    timeline: Timeline
    step_num: int
    last_step: int
    model: Any
    flops_per_token: dict[int, float]  # seq_len -> FLOPs per token, PaLM convention (full attention square)
    flops_per_token_causal: dict[int, float]  # the causal half of the attention square

    @property
    def done(self) -> bool: ...

    def save(self, span: PhaseSpan) -> Path: ...

    def restore(self, path: Path) -> dict[str, Any]: ...


class Callback:
    """Base class: every hook is a no-op; override the ones you need."""

    state_key: str | None = None
    """meta.json key of this callback's checkpointed state; None: it keeps no state."""

    def on_train_start(self, trainer: TrainerView) -> None:
        """Once, after the model is built and a checkpoint (if any) restored."""

    def pre_step(self, trainer: TrainerView, step: int, batch: dict[str, Any]) -> None:
        """Optimizer step `step` is about to run on `batch` (input_ids and labels already on the GPU
        under CUDA, copied by the loader's side stream; index and source on the host)."""

    def pre_optim_step(self, trainer: TrainerView, step: int, metrics: dict[str, Any]) -> None:
        """Loss and grad norm are known; set metrics["skipped"] to a reason to skip the update."""

    def post_step(self, trainer: TrainerView, step: int, metrics: dict[str, Any]) -> None:
        """Step `step` is done; `metrics` is its row for metrics.jsonl (callbacks may add to it)."""

    def on_save(self, trainer: TrainerView, step: int, path: Path) -> None:
        """A complete checkpoint of `step` was written to `path` (every rank)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """`state` is None when the checkpoint predates this callback."""

    def close(self) -> None:
        """The run ends (also after an error): release files, stop threads."""


def build_callbacks(specs: dict[str, dict[str, Any]]) -> list[Callback]:
    """Instantiate `{package.module.ClassName: kwargs}` (TrainConfig.callbacks), in order."""
    out = []
    for path, kwargs in specs.items():
        module_name, _, attr = path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"callbacks: cannot import {path!r}: {e}") from None
        cb = cls(**kwargs)
        if not isinstance(cb, Callback):
            raise ValueError(f"callbacks: {path} made a {type(cb).__name__}, not a trainer Callback")
        out.append(cb)
    return out
