"""Docs/s of the quality + PII chain: ours on local Ray vs datatrove's LocalPipelineExecutor
running the equivalent datatrove steps (Gopher quality, Gopher repetition, C4, FineWeb, PIIFormatter),
on the same JSONL files, in one run on this machine.

    .venv/bin/python bench/data_throughput.py [--copies 10] [--workers 2]

The corpus is the generated tiny corpus's JSONL shards, copied `--copies` times with fresh ids.
Both sides read JSONL and write Parquet; Ray is started before the clock starts (a cluster would
already be up), datatrove's process pool is started inside its timed run as it always is.
Last line: JSON with docs/s of both and "ratio" (ours / datatrove).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build_inputs(work: Path, copies: int) -> tuple[Path, int]:
    from data_pipeline.corpus import generate_corpus

    corpus = work / "corpus"
    generate_corpus(corpus, seed=0)
    src = sorted((corpus / "raw" / "web").glob("*.jsonl"))
    lines = [ln for f in src for ln in f.read_bytes().splitlines() if ln.strip()]
    good = []
    for ln in lines:  # datatrove's JsonlReader crashes on malformed lines; keep only valid records
        try:
            rec = json.loads(ln.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(rec, dict) and isinstance(rec.get("text"), str) and len(rec["text"]) < 200_000:
            good.append(rec)
    inputs = work / "inputs"
    inputs.mkdir()
    num_docs = 0
    for c in range(copies):
        with open(inputs / f"part-{c:04d}.jsonl", "w") as f:
            for i, rec in enumerate(good):
                f.write(json.dumps({"id": f"{c}-{i}", "text": rec["text"]}) + "\n")
                num_docs += 1
    return inputs, num_docs


def run_ours(inputs: Path, out: Path, workers: int) -> tuple[float, int]:
    from data_pipeline.config import load_pipeline_config
    from data_pipeline.executor import run_pipeline
    from pretrain.core.runner import ensure_ray

    cfg = load_pipeline_config(
        None,
        [
            f"input.paths=[{inputs}]",
            f"output_dir={out}",
            "progress=false",
            "normalize.enabled=false",
            "language.enabled=false",
            "toxicity.enabled=false",
            "exact_dedup.enabled=false",
            f"ray.num_cpus={workers}",
            f"ray.max_in_flight={workers}",
        ],
    )
    ensure_ray(cfg.ray)
    t0 = time.perf_counter()
    stats = run_pipeline(cfg)
    return time.perf_counter() - t0, stats["num_kept"]


def run_datatrove(inputs: Path, out: Path, workers: int, num_files: int) -> tuple[float, int]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.pipeline.formatters import PIIFormatter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import ParquetWriter

    pipeline = [
        JsonlReader(str(inputs)),
        GopherQualityFilter(),
        GopherRepetitionFilter(),
        C4QualityFilter(),
        FineWebQualityFilter(),
        PIIFormatter(),
        ParquetWriter(str(out)),
    ]
    ex = LocalPipelineExecutor(
        pipeline=pipeline, tasks=num_files, workers=workers, logging_dir=str(out.parent / "dt_logs")
    )
    t0 = time.perf_counter()
    ex.run()
    seconds = time.perf_counter() - t0
    import pyarrow.parquet as pq

    kept = sum(pq.read_metadata(f).num_rows for f in out.glob("*.parquet"))
    return seconds, kept


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--copies", type=int, default=10, help="copies of the corpus's JSONL docs (one file each)"
    )
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    work = Path(tempfile.mkdtemp(prefix="bench_data_"))
    try:
        inputs, num_docs = build_inputs(work, args.copies)
        print(f"{num_docs} docs in {args.copies} JSONL files, {args.workers} workers", flush=True)
        dt_s, dt_kept = run_datatrove(inputs, work / "dt_out", args.workers, args.copies)
        print(
            f"datatrove LocalPipelineExecutor: {dt_s:.1f} s, {num_docs / dt_s:.1f} docs/s, kept {dt_kept}",
            flush=True,
        )
        ours_s, ours_kept = run_ours(inputs, work / "ours_out", args.workers)
        print(
            f"ours (local Ray):                {ours_s:.1f} s, {num_docs / ours_s:.1f} docs/s, kept {ours_kept}",
            flush=True,
        )
        result = {
            "num_docs": num_docs,
            "workers": args.workers,
            "ours_docs_per_s": round(num_docs / ours_s, 1),
            "datatrove_docs_per_s": round(num_docs / dt_s, 1),
            "ours_kept": ours_kept,
            "datatrove_kept": dt_kept,
            "ratio": round(dt_s / ours_s, 3),
            "target_ratio": 1.0,
        }
        print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
