"""Work units sized by bytes: one 240 MB JSONL file beside seven 5-20 MB files through the data
chain on 2 workers, and how long each worker sat idle.

    .venv/bin/python bench/data_units.py [--scale 0.1] [--compare] [--workdir DIR]

The documents are real text from this machine (the changelogs, copyright files and READMEs of
/usr/share/doc, then package docs and sources, cut into pieces of a few KB, each with its own
number so none is an exact duplicate), written to a temporary folder and removed after. The
chain is `configs/data_tiny.yaml` on a local Ray of 2 CPUs with the default `input.unit_bytes`
(64 MiB; with `--scale`, scaled with the files). Idle time comes from the done records: each
unit's start and end on the wall clock, laid onto the 2 worker slots in order of start; a slot is
idle when it runs nothing between the first unit's start and the last one's end. `--compare`
runs the same inputs again with the big file whole (`input.unit_bytes` above its size: one task
for it, as before issue 16). Last line: JSON with
`"max_worker_idle_fraction"` (target <= 0.15) and the figures of each run.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_pipeline.config import load_pipeline_config  # noqa: E402
from data_pipeline.executor import run_pipeline  # noqa: E402
from pretrain.core.files import read_json  # noqa: E402
from pretrain.core.runner import ensure_ray  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SMALL_MB = (5, 7, 9, 11, 14, 17, 20)
BIG_MB = 240
NUM_WORKERS = 2


def _sources() -> list[Path]:
    doc = sorted(p for p in Path("/usr/share/doc").rglob("*") if p.is_file())
    venv = REPO / ".venv"
    prose = sorted(p for ext in ("*.md", "*.rst", "*.txt") for p in venv.rglob(ext))
    return doc + prose + sorted(venv.rglob("METADATA")) + sorted(venv.rglob("*.py"))


def _texts(max_bytes: int = 60_000_000) -> list[str]:
    """Pieces of real text of 1-5 KB from this machine (changelogs, copyright files and READMEs
    of /usr/share/doc, package docs, package sources), shuffled with a fixed seed."""
    pieces: list[str] = []
    total = 0
    for f in _sources():
        try:
            data = gzip.decompress(f.read_bytes()) if f.suffix == ".gz" else f.read_bytes()
            text = data.decode("utf-8")
        except (OSError, UnicodeDecodeError, gzip.BadGzipFile, EOFError):
            continue
        buf = ""
        for para in text[:200_000].split("\n\n"):  # at most 200 KB a file: many files, many kinds
            buf += para + "\n\n"
            if len(buf) > 1000 + (len(pieces) % 5) * 1000:
                pieces.append(buf.strip())
                total += len(buf)
                buf = ""
        if total > max_bytes:
            break
    random.Random(0).shuffle(pieces)
    return pieces


def write_inputs(raw: Path, scale: float) -> dict[str, int]:
    texts = _texts()
    raw.mkdir(parents=True)
    sizes = {"web/big.jsonl": int(BIG_MB * scale * 1e6)}
    sizes |= {f"web/small-{i}.jsonl": int(mb * scale * 1e6) for i, mb in enumerate(SMALL_MB)}
    k = 0
    for rel, target in sizes.items():
        path = raw / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            written = 0
            while written < target:
                line = (
                    json.dumps({"text": f"Part {k}.\n\n{texts[k % len(texts)]}"}, ensure_ascii=False) + "\n"
                )
                f.write(line)
                written += len(line.encode())
                k += 1
        sizes[rel] = path.stat().st_size
    return sizes


def worker_idle(out: Path) -> dict:
    """Idle fraction of each of the NUM_WORKERS slots over the chain phase, from its done records."""
    recs = [read_json(p) for p in (out / "_work" / "chain").glob("*.done.json")]
    spans = sorted((r["started_at"], r["finished_at"]) for r in recs)
    t0, t1 = spans[0][0], max(e for _, e in spans)
    free_at = [t0] * NUM_WORKERS
    busy = [0.0] * NUM_WORKERS
    for s, e in spans:  # the slot that has been free longest takes the unit (Ray's order, near enough)
        slot = min(range(NUM_WORKERS), key=lambda i: free_at[i])
        free_at[slot] = e
        busy[slot] += e - s
    wall = t1 - t0
    idle = [round(max(0.0, 1 - b / wall), 3) for b in busy]
    return {"chain_wall_s": round(wall, 1), "worker_idle_fractions": idle, "num_units": len(recs)}


def run(raw: Path, out: Path, unit_bytes: int | None) -> dict:
    overrides = [
        f"input.paths=[{raw}]",
        f"output_dir={out}",
        "keep_work=true",
        f"ray.num_cpus={NUM_WORKERS}",
        *([f"input.unit_bytes={unit_bytes}"] if unit_bytes else []),
    ]
    cfg = load_pipeline_config(REPO / "configs" / "data_tiny.yaml", overrides)
    ensure_ray(cfg.ray)
    t0 = time.perf_counter()
    stats = run_pipeline(cfg)
    wall = time.perf_counter() - t0
    idle = worker_idle(out)
    return {
        "unit_bytes": cfg.input.unit_bytes,
        "wall_s": round(wall, 1),
        **idle,
        "max_worker_idle_fraction": max(idle["worker_idle_fractions"]),
        "num_in": stats["num_in"],
        "num_kept": stats["num_kept"],
        "num_shards": stats["num_shards"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="file sizes x this (0.1: 24 MB + 0.5-2 MB)")
    ap.add_argument("--compare", action="store_true", help="also run with the big file whole, as before")
    ap.add_argument("--workdir", type=Path, default=None, help="keep inputs and outputs here")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="data_units_"))
    try:
        sizes = write_inputs(work / "raw", args.scale)
        print(f"inputs: {', '.join(f'{k} {v / 1e6:.1f} MB' for k, v in sizes.items())}", flush=True)
        result = {"input_mb": round(sum(sizes.values()) / 1e6, 1), "workers": NUM_WORKERS}
        # the default input.unit_bytes, scaled with the files so that --scale keeps the shape
        unit_bytes = None if args.scale == 1 else int((64 << 20) * args.scale)
        units = run(work / "raw", work / "out_units", unit_bytes)
        print(f"units sized by bytes: {units}", flush=True)
        result |= {"max_worker_idle_fraction": units["max_worker_idle_fraction"], "units": units}
        if args.compare:
            per_file = run(work / "raw", work / "out_per_file", 1 << 40)
            print(f"big file whole:       {per_file}", flush=True)
            same = (work / "out_units" / "stats.json").exists() and _same_ids(work)
            result |= {"per_file": per_file, "same_kept_ids": same}
        print(json.dumps(result))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def _same_ids(work: Path) -> bool:
    from data_pipeline.groundtruth import read_outputs  # the comparison of --compare only

    a, b = read_outputs(work / "out_units"), read_outputs(work / "out_per_file")
    return a[0].keys() == b[0].keys() and a[1].keys() == b[1].keys()


if __name__ == "__main__":
    main()
