"""Done records: how every task in the project resumes. A task writes its outputs atomically,
then `<unit>.done.json` with its fingerprint and the sizes of its outputs; a rerun skips the task
when the record matches and every output is intact.

    rec = load_done(out, out / "_work" / "chain" / "a.done.json", fingerprint)   # None: redo
    write_json(done_path, {"fingerprint": fp, "outputs": output_sizes(out, shard), ...})
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pretrain.core.files import read_json


def output_sizes(out: Path, *paths: Path) -> dict[str, int]:
    """The `outputs` of a done record: path (relative to the stage dir) -> size, checked on resume."""
    return {str(p.relative_to(out)): p.stat().st_size for p in paths}


def load_done(out_dir: str | Path, done_path: Path, fingerprint: Any) -> dict | None:
    """A task's done record if it exists, matches `fingerprint` and its outputs are intact."""
    if not done_path.exists():
        return None
    try:
        rec = read_json(done_path)
    except ValueError:
        return None
    if rec.get("fingerprint") != fingerprint:
        return None
    for rel, size in rec.get("outputs", {}).items():
        f = Path(out_dir) / rel
        if not f.exists() or f.stat().st_size != size:
            return None
    return rec
