"""Data pipeline at two sizes 10x apart: does every step's cost grow with the data, and no faster?

    .venv/bin/python bench/data_scale.py            # 400,000 and 4,000,000 documents, 400 / 4,000 files
    .venv/bin/python bench/data_scale.py --quick    # 40,000 and 400,000 documents, 40 / 400 files
    .venv/bin/python bench/data_scale.py --sizes 100000,1000000 --budget-mb 256

Per size: short documents (~430 bytes, 5% planted copies, half exact and half with one word
deleted: `data_pipeline.corpus.short_docs`) in JSONL files of 1,000 documents; then exact dedup
(`pretrain data run` with every per-document stage off) and MinHash dedup over its output, each in
a fresh subprocess with its own local Ray (2 CPUs, loopback), timed after Ray has started. Both
stages pack their output into parts of `--target-shard-mb` (16 MiB by default rather than the
product's 256 MiB, so that both sizes give several parts of the same size: 10x the data is 10x the
parts, and a MinHash task, one per part, does the same work at both sizes). Step
times come from the done records each step writes last (the latest mtime of a step ends it). The
largest task's peak RSS is the highest of the peaks each task's MemoryGuard measured (sampled every
50 ms inside the task; the runner logs them to $PRETRAIN_TASK_LOG), shown per task function: the
task's own, which leaves out what its worker's earlier tasks left behind (Ray reuses a worker
process), and its process's; each as RSS and as private memory (RSS less shared pages: what the
budget holds, see pretrain.core.memory). With --budget-mb, the last line also has the highest of
those peaks at either size and whether each task's own stay within 1.25x the budget
("budget_peaks_mib", "within_budget"). The
parent also polls /proc every 0.2 s: the driver's RSS (the subprocess) and each Ray worker's (the
largest worker, an upper bound of a task's peak: a reused worker keeps what it freed).
Finalize's bytes read (each task records the files it read) are compared with the shards it
rewrites. Last line: one JSON object with "max_step_growth", "minhash_growth",
"task_rss_growth", "driver_rss_growth", the raw figures per size and the targets.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procs import descendants, rss  # noqa: E402

SIZES = (400_000, 4_000_000)
QUICK_SIZES = (40_000, 400_000)
DOCS_PER_FILE = 1000
NUM_CPUS = 2
RSS_POLL_S = 0.2
TARGETS = {"max_step_growth": 11.0, "minhash_growth": 10.0, "rss_growth": 1.2, "finalize_read_ratio": 1.2}
# Steps of each stage in order, with the done records that close each.
EXACT_STEPS = {
    "chain": "chain/*.done.json",
    "hash_merge": "hash_merge/q=*.done.json",
    "exact_dedup": "dups/q=*.done.json",
    "dup_lists": "dup_lists/q=*.done.json",
    "finalize": "final/*.done.json",
    "pack": "pack/*.done.json",
}
MINHASH_STEPS = {
    "signatures": "minhash/sig/*.done.json",
    "candidates": "minhash/cand/*.done.json",
    "verify": "minhash/edges/*.done.json",  # both sub-steps: by src shard (vsrc/), then by dst shard
    "components": "minhash/cc-*/**/done.json",
    "members": "minhash/members/from-*.done.json",
    "member_ids": "minhash/members/r=*.done.json",
    "survivors": "minhash/removed/*.done.json",
    "removal_lists": "minhash/lists/*.done.json",
    "finalize": "minhash/final/*.done.json",
    "pack": "minhash/pack/*.done.json",
}


def write_corpus(path: Path, num_docs: int, seed: int) -> int:
    """`num_docs` short documents in JSONL files of DOCS_PER_FILE; returns the bytes written."""
    from data_pipeline.corpus.short_docs import sentence_pool, short_docs  # project code, after sys.path

    docs = short_docs(num_docs, seed, sentence_pool())
    # spread the planted copies over the files, deterministically
    order = list(range(num_docs))
    random.Random(seed).shuffle(order)
    path.mkdir(parents=True)
    total = 0
    for f in range(0, num_docs, DOCS_PER_FILE):
        text = "".join(
            json.dumps({"text": docs[i], "source": "bench"}) + "\n" for i in order[f : f + DOCS_PER_FILE]
        )
        (path / f"part-{f // DOCS_PER_FILE:05d}.jsonl").write_text(text)
        total += len(text)
    return total


def step_times(work: Path, steps: dict[str, str], wall0: float, end: float) -> dict[str, float]:
    """Seconds per step from the newest done record of each (in order), from `wall0`; the rest
    until `end` is "summary"."""
    times, prev = {}, wall0
    for name, pattern in steps.items():
        mtimes = [p.stat().st_mtime for p in work.glob(pattern)]
        done = max(mtimes, default=prev)
        times[name] = round(done - prev, 2)
        prev = done
    times["summary"] = round(end - prev, 2)
    return times


def run_child(stage: str, input_path: str, output_dir: str, budget_mb: int | None, shard_mb: float) -> None:
    """In the subprocess: start local Ray, then time one stage alone; print one JSON line."""
    from data_pipeline.config import STAGE_ORDER, load_pipeline_config  # project code, after sys.path
    from data_pipeline.executor import run_pipeline  # project code, after sys.path
    from data_pipeline.minhash.dedup import load_minhash_config, run_minhash_dedup  # project code
    from pretrain.core.runner import ensure_ray  # project code, after sys.path

    common = [f"output_dir={output_dir}", "progress=false", f"ray.num_cpus={NUM_CPUS}", "keep_work=true",
              f"target_shard_bytes={int(shard_mb * 2**20)}"]  # fmt: skip
    if budget_mb:
        common.append(f"ray.task_memory_mb={budget_mb}")
    if stage == "exact":
        off = [f"{s}.enabled=false" for s in STAGE_ORDER]
        cfg = load_pipeline_config(None, [f"input.paths=[{input_path}]", *common, *off])
        run, steps, finals = run_pipeline, EXACT_STEPS, "final/*.done.json"
    else:
        cfg = load_minhash_config(None, [f"input_dir={input_path}", *common])
        run, steps, finals = run_minhash_dedup, MINHASH_STEPS, "minhash/final/*.done.json"
    ensure_ray(cfg.ray)
    wall0, t0 = time.time(), time.perf_counter()
    stats = run(cfg)
    seconds = time.perf_counter() - t0
    work = Path(output_dir) / "_work"
    records = [json.loads(p.read_text()) for p in work.glob(finals)]
    if stage == "exact":
        rewritten = sum((work / "chain" / f"{r['unit']}.parquet").stat().st_size for r in records)
    else:
        rewritten = sum(p.stat().st_size for p in (Path(input_path) / "shards").rglob("*.parquet"))
    print(
        json.dumps(
            {
                "seconds": round(seconds, 2),
                "wall0": wall0,
                "num_in": stats["num_in"],
                "num_kept": stats["num_kept"],
                "step_s": step_times(work, steps, wall0, wall0 + seconds),
                "finalize_bytes_read": sum(r["bytes_read"] for r in records),
                "finalize_bytes_rewritten": rewritten,
                **(
                    {"components_method": stats["minhash"]["components_method"]} if stage == "minhash" else {}
                ),
            }
        )
    )


def _is_worker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        return False
    return cmd.startswith(b"ray::") or b"default_worker.py" in cmd


def run_stage(stage: str, inp: Path, out: Path, budget_mb: int | None, shard_mb: float) -> dict:
    """One stage in a fresh subprocess, polling the driver's and every worker's RSS."""
    task_log = out.parent / f"{out.name}.tasks.jsonl"  # each task's peak RSS, from its MemoryGuard
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PRETRAIN_TASK_LOG": str(task_log)}
    cmd = [sys.executable, __file__, "--child", stage, str(inp), str(out), str(budget_mb or 0), str(shard_mb)]
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    driver = task = 0
    task_at = time.time()
    while child.poll() is None:
        driver = max(driver, rss(child.pid))
        for pid in descendants(child.pid):
            if pid != child.pid and _is_worker(pid) and (r := rss(pid)) > task:
                task, task_at = r, time.time()
        time.sleep(RSS_POLL_S)
    stdout = child.stdout.read()
    if child.returncode:
        raise RuntimeError(f"{stage} on {inp} failed (exit {child.returncode})")
    res = json.loads(stdout.strip().splitlines()[-1])
    peak_step, end = "start", res["wall0"]  # the step running when the largest worker RSS was seen
    for name, sec in res["step_s"].items():
        if task_at > end:
            peak_step = name
        end += sec
    # Per task function, the highest of: a task's own peak (less what its worker's earlier tasks
    # left), the worker process's peak while it ran; each as RSS and as private memory (RSS less
    # shared pages: what the budget holds, see pretrain.core.memory).
    figures = {
        k: {} for k in ("task_rss_bytes", "peak_rss_bytes", "task_private_bytes", "peak_private_bytes")
    }
    for line in task_log.read_text().splitlines():
        t = json.loads(line)
        for k, by_task in figures.items():
            by_task[t["task"]] = max(by_task.get(t["task"], 0), round(t[k] / 2**20, 1))
    by_task, process = figures["task_rss_bytes"], figures["peak_rss_bytes"]
    return {
        **res,
        "driver_peak_rss_mib": round(driver / 2**20, 1),
        "task_peak_rss_mib": max(by_task.values()),
        "task_peak_rss_mib_by_task": by_task,
        "process_peak_rss_mib": max(process.values()),
        "process_peak_rss_mib_by_task": process,
        "task_peak_private_mib": max(figures["task_private_bytes"].values()),
        "task_peak_private_mib_by_task": figures["task_private_bytes"],
        "process_peak_private_mib": max(figures["peak_private_bytes"].values()),
        "worker_peak_rss_mib": round(task / 2**20, 1),
        "worker_peak_step": peak_step,
    }


def run_size(num_docs: int, seed: int, tmp: Path, budget_mb: int | None, shard_mb: float) -> dict:
    t0 = time.perf_counter()
    raw = tmp / f"raw-{num_docs}"
    num_bytes = write_corpus(raw, num_docs, seed)
    gen_s = time.perf_counter() - t0
    exact_out, minhash_out = tmp / f"exact-{num_docs}", tmp / f"minhash-{num_docs}"
    exact = run_stage("exact", raw, exact_out, budget_mb, shard_mb)
    shutil.rmtree(raw)
    minhash = run_stage("minhash", exact_out, minhash_out, budget_mb, shard_mb)
    shutil.rmtree(exact_out, ignore_errors=True)
    shutil.rmtree(minhash_out, ignore_errors=True)
    return {
        "num_docs": num_docs,
        "num_files": -(-num_docs // DOCS_PER_FILE),
        "input_bytes": num_bytes,
        "generate_s": round(gen_s, 1),
        "exact": exact,
        "minhash": minhash,
    }


def growth(small: dict, large: dict) -> dict:
    """Ratios large / small of every figure that should grow at most with the data (or stay)."""
    steps = {}
    for stage in ("exact", "minhash"):
        for name, s in small[stage]["step_s"].items():
            if name != "summary":
                steps[f"{stage}.{name}"] = round(large[stage]["step_s"][name] / max(s, 0.05), 2)
    task = max(large[s]["task_peak_rss_mib"] for s in ("exact", "minhash")) / max(
        small[s]["task_peak_rss_mib"] for s in ("exact", "minhash")
    )
    process = max(large[s]["process_peak_rss_mib"] for s in ("exact", "minhash")) / max(
        small[s]["process_peak_rss_mib"] for s in ("exact", "minhash")
    )
    driver = max(large[s]["driver_peak_rss_mib"] for s in ("exact", "minhash")) / max(
        small[s]["driver_peak_rss_mib"] for s in ("exact", "minhash")
    )
    read_ratio = max(
        r[s]["finalize_bytes_read"] / r[s]["finalize_bytes_rewritten"]
        for r in (small, large)
        for s in ("exact", "minhash")
    )
    return {
        "step_growth": steps,
        "max_step_growth": max(steps.values()),
        "max_step": max(steps, key=steps.get),
        "minhash_growth": round(large["minhash"]["seconds"] / small["minhash"]["seconds"], 2),
        "exact_growth": round(large["exact"]["seconds"] / small["exact"]["seconds"], 2),
        "task_rss_growth": round(task, 3),
        "process_rss_growth": round(process, 3),
        "driver_rss_growth": round(driver, 3),
        "finalize_read_ratio": round(read_ratio, 4),
    }


def budget_check(runs: list[dict], budget_mb: int | None) -> dict:
    """With a budget set: the highest peaks of any task at either size, as RSS and as private memory
    (what the budget holds), the task's own and its process's (with what the worker's earlier tasks
    left), and whether every task's own peaks, RSS and private, stay within 1.25x the budget."""
    if not budget_mb:
        return {}
    names = ("task_peak_rss_mib", "task_peak_private_mib", "process_peak_rss_mib", "process_peak_private_mib")
    peak = {k: max(r[s][k] for r in runs for s in ("exact", "minhash")) for k in names}
    limit = budget_mb * 1.25
    own = peak["task_peak_rss_mib"] <= limit and peak["task_peak_private_mib"] <= limit
    return {"budget_peaks_mib": peak, "budget_limit_mib": limit, "within_budget": own}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="two document counts, 10x apart")
    parser.add_argument("--quick", action="store_true", help="40,000 and 400,000 documents")
    parser.add_argument("--budget-mb", type=int, default=None, help="ray.task_memory_mb (default: per CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp", default=None, help="where the corpora and outputs go (default: a temp dir)")
    parser.add_argument(
        "--target-shard-mb",
        type=float,
        default=16.0,
        help="target_shard_bytes of both stages in MiB (default 16: several parts at both sizes, so a "
        "part, and so a MinHash task, has the same size at both)",
    )
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        stage, inp, out, budget, shard_mb = args.child
        run_child(stage, inp, out, int(budget) or None, float(shard_mb))
        return {}
    sizes = list(QUICK_SIZES) if args.quick else [int(x) for x in args.sizes.split(",") if x]
    if len(sizes) != 2:
        parser.error(f"--sizes needs two counts, got {sizes}")
    t0 = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-data-scale-", dir=args.tmp) as tmp:
        for n in sizes:
            runs.append(run_size(n, args.seed, Path(tmp), args.budget_mb, args.target_shard_mb))
            r = runs[-1]
            for stage in ("exact", "minhash"):
                s = r[stage]
                print(
                    f"{n:>9,} docs {stage:>7}: {s['seconds']:7.1f} s  driver {s['driver_peak_rss_mib']:7.1f} MiB  "
                    f"largest task {s['task_peak_rss_mib']:7.1f} MiB (its process {s['process_peak_rss_mib']:.1f}, "
                    f"largest worker {s['worker_peak_rss_mib']:.1f} in {s['worker_peak_step']})  finalize read "
                    f"{s['finalize_bytes_read'] / 2**20:,.1f} MiB of {s['finalize_bytes_rewritten'] / 2**20:,.1f} MiB"
                )
                print("    " + "  ".join(f"{k} {v}" for k, v in s["step_s"].items()))
                for label, key in (
                    ("task peak MiB", "task_peak_rss_mib_by_task"),
                    ("process MiB", "process_peak_rss_mib_by_task"),
                    ("task private", "task_peak_private_mib_by_task"),
                ):
                    print(f"    {label:<14}" + "  ".join(f"{k} {v}" for k, v in s[key].items()))
    results = {
        "bench": "data_scale",
        "sizes": sizes,
        "budget_mb": args.budget_mb,
        "target_shard_mb": args.target_shard_mb,
        **growth(runs[0], runs[1]),
        **budget_check(runs, args.budget_mb),
        "runs": runs,
        "targets": TARGETS,
        "bench_s": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
