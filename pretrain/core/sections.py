"""Config fields that every folder's sharded Ray work repeats, defined once.

    @dataclass
    class PipelineConfig(TaskConfig):   # gains ray:, batch_rows and progress
        output_dir: str = "runs/data"

A subclass with its own `__post_init__` calls `super().__post_init__()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pretrain.core.config import check
from pretrain.core.runner import RayConfig


@dataclass
class TaskConfig:
    """Where the tasks run, how many rows one task holds at a time, and the progress display."""

    ray: RayConfig = field(default_factory=RayConfig)
    batch_rows: int = 1000
    """Documents per batch inside a task: bounds its memory, and is the row-group size of the
    Parquet shards it writes."""
    progress: bool = True
    """Show a live progress display (a plain line per update when not on a terminal)."""

    def __post_init__(self) -> None:
        check(self.batch_rows >= 1, "batch_rows", self.batch_rows, ">= 1")
