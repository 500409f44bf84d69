"""Score each new complete checkpoint of a run once, beside training or after it.

    watch("runs/x", cfg, interval_s=60, until_step=2000)   # returns the steps it scored

A checkpoint counts once its directory is `step_NNNNNN/` with meta.json (trainer/checkpoint.py
writes into `step_NNNNNN.tmp/` and renames when done), so a save in progress is never read; it
is picked up on a later pass. Checkpoints already in RUN_DIR/eval/results.jsonl are skipped. One
pruned by the trainer's retention while being scored, or a corrupt one, is logged and skipped.
Stops after one pass (once), when a checkpoint at or past until_step is scored, or after
timeout_s; with none of these it runs until interrupted.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from eval.checkpoint import CheckpointError
from eval.config import EvalConfig
from eval.results import RESULTS, read_rows, scored_checkpoints
from eval.score import score_checkpoint
from trainer.checkpoint import complete_checkpoints

log = logging.getLogger(__name__)


def watch(
    run_dir: str | Path,
    cfg: EvalConfig | None = None,
    interval_s: float = 60.0,
    until_step: int | None = None,
    once: bool = False,
    timeout_s: float | None = None,
    out_dir: str | Path | None = None,
    force: bool = False,
) -> list[int]:
    """Poll run_dir/checkpoints; score new ones oldest first. Returns the steps scored by this call."""
    run_dir = Path(run_dir)
    ckpt_root = run_dir / "checkpoints"
    out = Path(out_dir) if out_dir is not None else run_dir / "eval"
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    scored: list[int] = []
    failed: set[int] = set()
    rescore = force  # --force rescoring applies to the checkpoints present at the first pass
    while True:
        done = set() if rescore else scored_checkpoints(out)
        for step, path in complete_checkpoints(ckpt_root):
            if path.name in done or step in scored or step in failed:
                continue
            try:
                score_checkpoint(path, out_dir=out, cfg=cfg, force=True)
            except (CheckpointError, FileNotFoundError) as e:
                failed.add(step)
                if path.exists():  # corrupt: say so and keep watching the newer ones
                    log.error("watch: skipping %s: %s", path, e)
                else:
                    log.warning("checkpoint %s disappeared while being scored (retention pruned it)", path)
                continue
            scored.append(step)
            log.info("scored %s", path)
        rescore = False
        if once or (until_step is not None and any(s >= until_step for s in scored + _done_steps(out))):
            return scored
        if deadline is not None and time.monotonic() >= deadline:
            log.info("watch: timeout after %.0fs", timeout_s)
            return scored
        sleep = interval_s if deadline is None else max(0.0, min(interval_s, deadline - time.monotonic()))
        time.sleep(sleep)


def _done_steps(out: Path) -> list[int]:
    return [r["step"] for r in read_rows(out / RESULTS)]
