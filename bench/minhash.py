"""MinHash benchmark: signature throughput (docs/s on one core, shingling included) of ours vs
datasketch's plain per-document `MinHash.update` loop and vs datatrove's `MinhashDedupSignature`.

    .venv/bin/python bench/minhash.py [--docs 10000] [--seed 0]

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
Last line: one JSON object with docs/s of each, "ratio_vs_datasketch" and "ratio_vs_datatrove".
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

NUM_PERM = 128
TARGET_RATIO_VS_DATASKETCH = 5.0
TARGET_RATIO_VS_DATATROVE = 2.0
NUM_WARMUP_DOCS = 50


def build_docs(num_docs: int, seed: int) -> list[str]:
    """`num_docs` texts of 2-3 base documents each (about 1.7 KB), seeded."""
    from data_pipeline.corpus import _base_candidates

    base = [text for _, text in _base_candidates()]
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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=10_000, help="documents for the signature benchmark")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

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
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
