"""MinHash benchmark: signature throughput (docs/s on one core, shingling included) of ours vs
datasketch's plain per-document `MinHash.update` loop and vs datatrove's `MinhashDedupSignature`,
then the whole dedup stage end to end at 10k, 100k and 1M short documents.

    .venv/bin/python bench/minhash.py [--docs 10000] [--seed 0] [--sizes 10000,100000,1000000 | --quick]

Documents: ~1.7 KB each, 2-3 base documents of the tiny corpus (Python's own docstrings) joined.
Every contender gets the same documents and a short warm-up, then one timed pass in this process:
  - datasketch: `m = MinHash(num_perm=128); for s in word_shingles(text): m.update(s.encode())`
    (its defaults: affine32 scheme, SHA-1 hash);
  - datatrove: `get_signature(get_shingles(text))` of `MinhashDedupSignature` with its default
    config (14 x 8 = 112 hashes, xxhash 64-bit, spaCy English word tokenizer), i.e. its per-document
    work without writing and sorting the signature files; also with a regex word tokenizer;
  - ours: `MinHasher(num_perm=128).signatures(texts)`, the whole list at once.
All are single-threaded: `*_docs_per_s` is documents per CPU-second (the one-core rate, robust to
other load on a shared machine); `*_docs_per_wall_s` is beside it.

End to end: per size, short documents (4-7 random sentences of the tiny corpus, ~70 words, 5% planted
exact or one-word-deleted copies) in 16 Parquet shards; `run_minhash_dedup` runs in a fresh
subprocess with its own local Ray (2 CPUs, loopback), timed after Ray has started. The parent polls
(/proc) the summed RSS of that process and all its descendants (driver, GCS, raylet, workers) every 0.2 s:
peak RSS counts shared pages (the object store) once per process, so it is an upper bound.
`scaling_10x` = max time ratio over consecutive sizes 10x apart (target <= 12).
Last line: one JSON object with every figure, "ratio_vs_datasketch", "ratio_vs_datatrove",
"scaling_10x" and "peak_rss_gib_1m", and the targets.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.data_scale import step_times  # noqa: E402
from bench.procs import tree_rss  # noqa: E402

NUM_PERM = 128
TARGET_RATIO_VS_DATASKETCH = 5.0
TARGET_RATIO_VS_DATATROVE = 2.0
NUM_WARMUP_DOCS = 50
E2E_SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (10_000, 100_000)
TARGET_SCALING_10X = 12.0
E2E_SHARDS = 16
E2E_NUM_CPUS = 2
RSS_POLL_S = 0.2
# Phases of the stage in order, with the done records that close each (their latest mtime marks
# the end of the phase): a per-step wall-clock breakdown without touching the stage.
PHASE_RECORDS = {
    "signatures": "sig/*.done.json",
    "candidates": "cand/*.done.json",
    "verify": "edges/*.done.json",
    "components": "cc-*/**/done.json",
    "members": "members/*.done.json",
    "survivors": "removed/*.done.json",
    "finalize": "final/*.done.json",
}


def build_docs(num_docs: int, seed: int) -> list[str]:
    """`num_docs` texts of 2-3 base documents each (about 1.7 KB), seeded."""
    from data_pipeline.corpus import base_texts

    base = [text for _, text in base_texts()]
    rng = random.Random(seed)
    return ["\n".join(rng.sample(base, rng.randint(2, 3))) for _ in range(num_docs)]


def docs_per_s(run: Callable[[list[str]], object], docs: list[str]) -> tuple[float, float]:
    """(docs per CPU-second, docs per wall-second) of one pass of `run` after a short warm-up."""
    run(docs[:NUM_WARMUP_DOCS])
    cpu0, wall0 = time.process_time(), time.perf_counter()
    run(docs)
    return len(docs) / (time.process_time() - cpu0), len(docs) / (time.perf_counter() - wall0)


def datasketch_loop(docs: list[str]) -> None:
    from datasketch import MinHash

    from data_pipeline.minhash.shingles import word_shingles

    for text in docs:
        m = MinHash(num_perm=NUM_PERM)
        for s in word_shingles(text):
            m.update(s.encode())


def datatrove_signer(regex_tokenizer: bool) -> Callable[[list[str]], None]:
    import tempfile

    from datatrove.pipeline.dedup.minhash import MinhashDedupSignature
    from datatrove.utils.word_tokenizers import WordTokenizer

    class RegexTokenizer(WordTokenizer):
        _word = re.compile(r"\w+(?:[.'’]\w+)*|[^\w\s]")

        def word_tokenize(self, text: str) -> list[str]:
            return self._word.findall(text)

        def sent_tokenize(self, text: str) -> list[str]:
            return [text]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [(m.start(), m.end()) for m in self._word.finditer(text)]

    step = MinhashDedupSignature(
        output_folder=tempfile.mkdtemp(prefix="bench-minhash-"),
        **({"language": RegexTokenizer("en")} if regex_tokenizer else {}),
    )

    def run(docs: list[str]) -> None:
        for text in docs:
            shingles = step.get_shingles(text)
            if shingles.size:
                step.get_signature(shingles)

    return run


def ours(docs: list[str]) -> None:
    from data_pipeline.minhash.signatures import MinHasher

    MinHasher(num_perm=NUM_PERM).signatures(docs)


def measure_signatures(docs: list[str]) -> dict[str, float]:
    """Signature docs/s of each contender on `docs` and our ratios. Every contender is one thread,
    so docs per CPU-second is its one-core rate, unaffected by other load on the machine; the
    wall-clock rates are reported beside it."""
    contenders = {
        "datasketch_loop": datasketch_loop,
        "datatrove": datatrove_signer(regex_tokenizer=False),
        "datatrove_regex_tokenizer": datatrove_signer(regex_tokenizer=True),
        "ours": ours,
    }
    results: dict[str, float] = {}
    for name, run in contenders.items():
        cpu_rate, wall_rate = docs_per_s(run, docs)
        results[f"{name}_docs_per_s"] = round(cpu_rate, 1)
        results[f"{name}_docs_per_wall_s"] = round(wall_rate, 1)
    ours_rate = results["ours_docs_per_s"]
    for name in ("datasketch", "datatrove", "datatrove_regex_tokenizer"):
        reference = results[f"{name}_loop_docs_per_s" if name == "datasketch" else f"{name}_docs_per_s"]
        results[f"ratio_vs_{name}"] = round(ours_rate / reference, 2)
    results["target_ratio_vs_datasketch"] = TARGET_RATIO_VS_DATASKETCH
    results["target_ratio_vs_datatrove"] = TARGET_RATIO_VS_DATATROVE
    return results


def write_stage_dir(path: Path, docs: list[str], num_shards: int) -> None:
    """A finished stage directory (shards/*.parquet in DOC_SCHEMA + manifest.json) holding `docs`."""
    import pyarrow as pa

    from pretrain.core.shards import DOC_SCHEMA, write_manifest, write_table

    entries = []
    per_shard = -(-len(docs) // num_shards)
    for s in range(num_shards):
        lo, hi = s * per_shard, min(len(docs), (s + 1) * per_shard)
        n = hi - lo
        table = pa.table(
            {
                "id": [f"d{i:08d}" for i in range(lo, hi)],
                "text": docs[lo:hi],
                "source": ["bench"] * n,
                "url": pa.nulls(n, pa.string()),
                "metadata": ["{}"] * n,
            },
            schema=DOC_SCHEMA,
        )
        entries.append(write_table(path / "shards" / f"part-{s:05d}.parquet", table))
    write_manifest(path, shards=entries)


def run_child(input_dir: str, output_dir: str) -> None:
    """In the subprocess: start local Ray, then time `run_minhash_dedup` alone; print one JSON line."""
    t0 = time.perf_counter()
    from data_pipeline.minhash.dedup import load_minhash_config, run_minhash_dedup
    from pretrain.core.runner import ensure_ray

    cfg = load_minhash_config(
        None,
        [
            f"input_dir={input_dir}",
            f"output_dir={output_dir}",
            "progress=false",
            f"ray.num_cpus={E2E_NUM_CPUS}",
            "keep_work=true",  # the step timings below are read from _work's done records
        ],
    )
    ensure_ray(cfg.ray)
    ray_start_s = time.perf_counter() - t0
    wall0, t1 = time.time(), time.perf_counter()
    stats = run_minhash_dedup(cfg)
    dedup_s = time.perf_counter() - t1
    work = Path(output_dir) / "_work" / "minhash"
    phases = step_times(work, PHASE_RECORDS, wall0, wall0 + dedup_s)
    m = stats["minhash"]
    print(
        json.dumps(
            {
                "ray_start_s": round(ray_start_s, 2),
                "dedup_s": round(dedup_s, 2),
                "num_in": stats["num_in"],
                "num_rejected": stats["num_rejected"],
                "num_candidates": m["num_candidates"],
                "num_verified_edges": m["num_verified_edges"],
                "components_method": m["components_method"],
                "phase_s": phases,
            }
        )
    )


def run_size(num_docs: int, seed: int, pool: list[str], tmp: Path) -> dict:
    """Generate `num_docs` short documents, dedup them in a fresh subprocess with its own local Ray,
    polling the process tree's summed RSS; returns times, docs/s and peak RSS."""
    from data_pipeline.corpus.short_docs import short_docs

    t0 = time.perf_counter()
    docs = short_docs(num_docs, seed, pool)
    gen_s = time.perf_counter() - t0
    avg_bytes = sum(len(t) for t in docs[:10_000]) / min(len(docs), 10_000)
    inp, out = tmp / f"in-{num_docs}", tmp / f"out-{num_docs}"
    write_stage_dir(inp, docs, E2E_SHARDS)
    del docs
    write_s = time.perf_counter() - t0 - gen_s
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    cmd = [sys.executable, __file__, "--child", str(inp), str(out)]
    wall0 = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    peak = 0
    while child.poll() is None:
        peak = max(peak, tree_rss(child.pid))
        time.sleep(RSS_POLL_S)
    stdout = child.stdout.read()
    if child.returncode:
        raise RuntimeError(f"dedup of {num_docs} documents failed (exit {child.returncode})")
    res = json.loads(stdout.strip().splitlines()[-1])
    shutil.rmtree(inp, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    return {
        "num_docs": num_docs,
        "avg_doc_bytes": round(avg_bytes),
        "generate_s": round(gen_s, 2),
        "write_s": round(write_s, 2),
        "subprocess_s": round(time.perf_counter() - wall0, 2),
        **res,
        "docs_per_s": round(num_docs / res["dedup_s"], 1),
        "peak_rss_gib": round(peak / 2**30, 3),
    }


def measure_e2e(sizes: list[int], seed: int) -> dict:
    """End-to-end dedup time, docs/s and peak RSS per size, and the 10x scaling ratios."""
    from data_pipeline.corpus.short_docs import sentence_pool

    pool = sentence_pool()
    print(f"end to end: {len(pool)} pool sentences, sizes {sizes}")
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-minhash-e2e-") as tmp:
        for n in sizes:
            runs.append(run_size(n, seed, pool, Path(tmp)))
            print(f"  {json.dumps(runs[-1])}")
    results: dict = {"e2e": runs}
    by_size = {r["num_docs"]: r for r in runs}
    for r in runs:
        results[f"dedup_s_{r['num_docs']}"] = r["dedup_s"]
        results[f"dedup_docs_per_s_{r['num_docs']}"] = r["docs_per_s"]
        results[f"peak_rss_gib_{r['num_docs']}"] = r["peak_rss_gib"]
    ratios = {
        f"scaling_{n}_to_{10 * n}": round(by_size[10 * n]["dedup_s"] / by_size[n]["dedup_s"], 2)
        for n in sorted(by_size)
        if 10 * n in by_size
    }
    results.update(ratios)
    results["scaling_10x"] = max(ratios.values()) if ratios else None
    results["peak_rss_gib_1m"] = by_size[1_000_000]["peak_rss_gib"] if 1_000_000 in by_size else None
    results["target_scaling_10x"] = TARGET_SCALING_10X
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=10_000, help="documents for the signature benchmark")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sizes",
        default=",".join(map(str, E2E_SIZES)),
        help="comma-separated document counts for the end-to-end runs",
    )
    parser.add_argument("--quick", action="store_true", help="end to end at 10k and 100k only")
    parser.add_argument("--child", nargs=2, metavar=("INPUT", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child(*args.child)
        return {}
    sizes = list(QUICK_SIZES) if args.quick else [int(x) for x in args.sizes.split(",") if x]
    t_bench = time.perf_counter()

    from data_pipeline.minhash.lsh import DEFAULT_VERIFY_THRESHOLD, choose_bands_rows, format_s_curve
    from data_pipeline.minhash.signatures import MinHasher

    docs = build_docs(args.docs, args.seed)
    avg_bytes = sum(len(t.encode()) for t in docs) / len(docs)
    print(f"{len(docs)} documents, {avg_bytes:.0f} bytes on average; scheme {MinHasher(NUM_PERM).scheme_id}")
    print(format_s_curve(*choose_bands_rows(num_perm=NUM_PERM), NUM_PERM, DEFAULT_VERIFY_THRESHOLD))

    results: dict = {
        "bench": "minhash",
        "num_docs": len(docs),
        "avg_doc_bytes": round(avg_bytes),
        "num_perm": NUM_PERM,
    }
    signatures = measure_signatures(docs)
    for key, value in signatures.items():
        print(f"  {key}: {value}")
    results.update(signatures)
    results.update(measure_e2e(sizes, args.seed))
    results["bench_s"] = round(time.perf_counter() - t_bench, 1)
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
