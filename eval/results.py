"""The files eval writes beside a run: results.jsonl (one row per checkpoint, task and metric) and
generations.jsonl (one row per checkpoint, prompt and mode). Score, watch and report all read them
through here.

    rows = read_rows(out / RESULTS)             # [] before the first checkpoint is scored
    replace_rows(out / RESULTS, "step_000400", new_rows)
    scored_checkpoints(out)                     # {"step_000400", ...}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pretrain.core.jsonl import read_jsonl, write_jsonl

RESULTS = "results.jsonl"
GENERATIONS = "generations.jsonl"


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a results or generations file; [] when it does not exist yet."""
    return read_jsonl(path, missing_ok=True)


def replace_rows(path: str | Path, checkpoint: str, rows: list[dict[str, Any]]) -> None:
    """Swap one checkpoint's rows for `rows`, rewriting the file atomically (a reader never sees
    half a checkpoint's rows). Keys are written sorted, so rows diff cleanly between runs."""
    kept = [r for r in read_rows(path) if r.get("checkpoint") != checkpoint]
    write_jsonl(path, [dict(sorted(r.items())) for r in kept + rows])


def scored_checkpoints(out_dir: str | Path) -> set[str]:
    """Names of the checkpoints that already have rows in OUT/results.jsonl."""
    return {r["checkpoint"] for r in read_rows(Path(out_dir) / RESULTS)}
