"""Every data stage takes the same inputs: stage directories, files, folders and globs.

    stage = stage_dir_of_inputs(InputConfig(paths=["raw/web.jsonl"]), work_dir(out) / "input", ray)
    shards = list_shards(stage)                    # the given stage directory, or the raw input read
    entries = carry_read_rejects(stage, out)       # then: the read step's rejects, kept in out/rejects/read/

`readers.scan_inputs` resolves the paths and names any that is missing or no known format (one
`InputError` line). The stages that work on document shards (MinHash, the split, the tokenizer's
encoder) take raw inputs through `stage_dir_of_inputs`: the pipeline with every stage off (the
`read` step), so ids, sources and rejects are those `pretrain data run` gives.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from data_pipeline.config import STAGE_ORDER, PipelineConfig
from data_pipeline.executor import run_pipeline
from data_pipeline.readers import InputConfig, InputError, InputScan, scan_inputs
from pretrain.core.config import from_dict, to_dict
from pretrain.core.files import atomic_path, read_json
from pretrain.core.runner import RayConfig
from pretrain.core.storage import exists, is_dir, stage_path


def stage_dir_of_inputs(
    input_cfg: InputConfig,
    work_dir: Path,
    ray: RayConfig,
    progress: bool = False,
    scan: InputScan | None = None,
) -> Path:
    """A stage directory holding the documents of `input_cfg`: the one given, when the input is a
    single stage directory; else the inputs read into `work_dir` by the data pipeline with every
    stage off (the `read` step: ids, sources and rejects as `pretrain data run` gives them; resumable;
    its shards packed to `input.unit_bytes` each, the size of a work unit).
    An input that is missing or not readable raises InputError naming it (via `scan_inputs`), and
    so does a stage directory without its manifest (an unfinished stage is not read as raw files)."""
    for spec in input_cfg.paths:
        d = stage_path(spec)
        if is_dir(d / "shards") and not exists(d / "manifest.json"):  # a stage killed midway
            raise InputError(
                f"input {spec} has shards/ but no manifest.json: an unfinished stage directory (rerun "
                "the stage that writes it), or name its files to read them as raw input"
            )
    scan = scan or scan_inputs(input_cfg)
    if len(input_cfg.paths) == 1 and all(u.format == "shards" for u in scan.units):
        return stage_path(input_cfg.paths[0])
    read_only = {
        "output_dir": str(work_dir),
        "input": to_dict(input_cfg),
        "ray": to_dict(ray),
        "progress": progress,
        **{name: {"enabled": False} for name in STAGE_ORDER},
        "exact_dedup": {"enabled": False},
        "only_stages": [],
        # shards of one work unit's size: the next stage's tasks, not a million tiny files
        "target_shard_bytes": input_cfg.unit_bytes,
    }
    run_pipeline(from_dict(PipelineConfig, read_only))
    return work_dir


def carry_read_rejects(read_dir: Path, out: Path) -> list[dict]:
    """Copy the read step's rejects (malformed or empty records of raw inputs) to rejects/read/,
    so they outlive `_work/`; returns their manifest entries."""
    entries = []
    for e in read_json(read_dir / "manifest.json").get("rejects", []):
        if e["rows"]:
            with atomic_path(out / "rejects" / "read" / e["path"]) as tmp:
                shutil.copyfile(read_dir / "rejects" / e["path"], tmp)
            entries.append({**e, "path": f"read/{e['path']}"})
    return entries
