"""Done records: how every task in the project resumes. A task writes its outputs atomically,
then `<unit>.done.json` with its fingerprint and the fingerprints of its outputs (size, mtime and a
sampled sha256: `pretrain.core.hashing.file_fingerprint`); a rerun skips the task when the record
matches and every output is intact.

    rec = load_done(out, out / "_work" / "chain" / "a.done.json", fingerprint)   # None: redo
    recs = load_done_many(out, [(done_path, fingerprint), ...])                  # on a thread pool
    write_json(done_path, {"fingerprint": fp, "outputs": output_fingerprints(out, shard), ...})

A whole stage ends with a stage record `OUT/done.json` over its manifest, stats and every file the
manifest lists, and then removes its `_work/` (unless kept): a rerun with the same inputs and config
finds the stage finished from that record alone.

    if (stats := finished_stage(out, stage_fp, keep_work)) is not None: return stats
    ...; finish_stage(out, stage_fp, keep_work)
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from pretrain.core.files import io_map, read_json, write_json
from pretrain.core.hashing import file_fingerprint, fingerprint_matches
from pretrain.core.storage import is_remote, remove_tree, stage_path, work_dir

STAGE_DONE = "done.json"
WORK_DIR = "_work"


def stage_relpath(out: str | Path, path: Any) -> str:
    """How a done record names a file of stage `out`: relative to it, `_work/...` for one in its
    work folder (which for a stage on an object store is a local folder elsewhere: `work_dir`)."""
    out = stage_path(out)
    work = work_dir(out)
    if not is_remote(out) or is_remote(path):
        return stage_path(path).relative_to(out).as_posix()
    return f"{WORK_DIR}/{Path(path).relative_to(work).as_posix()}"


def stage_file(out: str | Path, rel: str) -> Any:
    """The file a done record names `rel` (inverse of `stage_relpath`)."""
    if rel.startswith(f"{WORK_DIR}/"):
        return work_dir(out) / rel[len(WORK_DIR) + 1 :]
    return stage_path(out) / rel


def output_fingerprints(out: str | Path, *paths: Any) -> dict[str, dict]:
    """The `outputs` of a done record: path (relative to the stage dir) -> file_fingerprint."""
    return dict(zip((stage_relpath(out, p) for p in paths), io_map(file_fingerprint, paths)))


def _load(out_dir: str | Path, done_path: Path, fingerprint: Any, parallel: bool) -> dict | None:
    try:
        rec = read_json(done_path)
    except (OSError, ValueError):  # missing, or cut short by a crash before atomic writes existed
        return None
    if not isinstance(rec, dict) or rec.get("fingerprint") != fingerprint:
        return None
    outputs = rec.get("outputs", {})
    check = [(stage_file(out_dir, rel), fp) for rel, fp in outputs.items()]
    if parallel:
        intact = io_map(lambda item: fingerprint_matches(*item), check)
    else:
        intact = [fingerprint_matches(*item) for item in check]
    return rec if all(intact) else None


def load_done(out_dir: str | Path, done_path: Path, fingerprint: Any) -> dict | None:
    """A task's done record if it exists, matches `fingerprint` and its outputs are intact."""
    return _load(out_dir, done_path, fingerprint, parallel=True)


def load_done_many(out_dir: str | Path, records: list[tuple[Path, Any]]) -> list[dict | None]:
    """`load_done` for many (done_path, fingerprint) pairs, checked on a thread pool: a resume over
    thousands of tasks waits on the disk once, not once per output file in series."""
    return io_map(lambda r: _load(out_dir, r[0], r[1], parallel=False), records)


def _stage_outputs(out: Any) -> list[Any]:
    manifest = read_json(out / "manifest.json")
    listed = [out / kind / e["path"] for kind in ("shards", "rejects") for e in manifest.get(kind, [])]
    return [*listed, out / "manifest.json", out / "stats.json"]


def remove_work(out_dir: str | Path) -> None:
    """Delete a stage's `_work/` (intermediate files and task records; `work_dir`)."""
    shutil.rmtree(work_dir(out_dir), ignore_errors=True)


def restart(out_dir: str | Path) -> None:
    """Delete a stage's outputs and its work folder (`--restart`), on any store."""
    remove_tree(work_dir(out_dir))
    remove_tree(out_dir)


def finish_stage(out_dir: str | Path, fingerprint: Any, keep_work: bool = False) -> None:
    """Write the stage record (after the manifest and stats.json), then remove `_work/` unless kept."""
    out = stage_path(out_dir)
    write_json(
        out / STAGE_DONE,
        {"fingerprint": fingerprint, "outputs": output_fingerprints(out, *_stage_outputs(out))},
    )
    if not keep_work:
        remove_work(out)


def finished_stage(out_dir: str | Path, fingerprint: Any, keep_work: bool = False) -> dict | None:
    """The stats of a stage that finished with `fingerprint` and whose outputs are intact (its
    `_work/` removed unless kept, as a run killed after its record would have); None: run it."""
    out = stage_path(out_dir)
    if load_done(out, out / STAGE_DONE, fingerprint) is None:
        return None
    if not keep_work:
        remove_work(out)
    return read_json(out / "stats.json")
