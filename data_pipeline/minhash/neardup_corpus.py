"""Ground truth for MinHash dedup: planted near-duplicate pairs at known Jaccard levels on real text.

    from data_pipeline.minhash.neardup_corpus import generate_neardup_corpus, load_truth, score
    info = generate_neardup_corpus("runs/neardup", seed=0)

Writes a stage directory (`shards/*.parquet` in DOC_SCHEMA + manifest.json) and `truth.jsonl`.
Documents (100-300 words) are English prose sentences of the Python standard library's docstrings
(`data_pipeline.corpus.base_texts()`), split into sentences and recombined with a seeded RNG;
about a third carry a header or footer boilerplate line. Planted pairs: an original and a copy
edited by one kind of edit (word insertions, deletions, substitutions, mixed word edits,
boilerplate lines added/changed, reordered paragraphs plus substitutions), the number of edits found
by bisection so that the word 5-gram Jaccard (`shingles.word_shingles`, exact) lands within
`TOLERANCE` of the level: at or above it for levels >= 0.85, at or below it for levels <= 0.5 (so
every planted pair counts in its acceptance class), nearest otherwise. The measured Jaccard is
recorded. Every other pair of documents is checked exactly (inverted index over all shingles):
documents of an unplanted pair above `MAX_UNPLANTED_JACCARD` are dropped, and the largest remaining
unplanted Jaccard is reported. Deterministic for a seed.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from data_pipeline.corpus import base_texts
from data_pipeline.groundtruth import read_outputs
from data_pipeline.minhash.shingles import jaccard, word_shingles
from pretrain.core.jsonl import iter_jsonl, write_jsonl
from pretrain.core.shards import DOC_SCHEMA, write_manifest, write_table

LEVELS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
DEFAULT_PAIRS_PER_LEVEL = {0.5: 300, 0.6: 100, 0.7: 100, 0.8: 100, 0.85: 300, 0.9: 300, 0.95: 300}
EDIT_KINDS = ("insert", "delete", "substitute", "mixed", "boilerplate", "reorder")
TOLERANCE = 0.02
MAX_UNPLANTED_JACCARD = 0.3
HIGH_JACCARD = 0.85  # recall is measured on pairs at or above
LOW_JACCARD = 0.5  # the merge rate is measured on pairs at or below
NUM_SHARDS = 8

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z(])")
_MONTHS = ("January", "March", "May", "July", "September", "November")
_BOILERPLATE = (
    "Posted on {month} {n} by {w} {w}",
    "Share this page on {w} or send it to a {w}",
    "Copyright {year} {W} {W} Foundation. All rights reserved.",
    "Subscribe to the {W} newsletter for {w} {w} updates",
    "Related: {w} {w}, {w} {w} and {w} {w}",
    "This site uses cookies to remember your {w} {w} settings.",
    "Page {n} of {m} | Next | Previous | Back to top",
    "Last updated {month} {n}, {year} at {n}:{m}",
    "Filed under {W}, {W} and {W}",
    "Comments ({n}) | Print | Report a {w} problem",
)


def _sentences() -> list[str]:
    seen, out = set(), []
    for _, text in base_texts():
        for line in text.splitlines():
            for s in _SENTENCE.split(line.strip()):
                key = " ".join(s.lower().split())
                if 5 <= len(s.split()) <= 40 and key not in seen:
                    seen.add(key)
                    out.append(s)
    return out


class _SentenceStream:
    """Sentences in shuffled rounds, each round uses every sentence once (spreads reuse evenly)."""

    def __init__(self, sentences: list[str], rng: random.Random):
        self.sentences, self.rng, self.order = sentences, rng, []

    def next(self) -> str:
        if not self.order:
            self.order = list(range(len(self.sentences)))
            self.rng.shuffle(self.order)
        return self.sentences[self.order.pop()]


def _boilerplate_line(rng: random.Random, vocab: list[str]) -> str:
    fills = {
        "month": lambda: rng.choice(_MONTHS),
        "n": lambda: str(rng.randint(1, 28)),
        "m": lambda: str(rng.randint(10, 59)),
        "year": lambda: str(rng.randint(1998, 2024)),
        "w": lambda: rng.choice(vocab).lower(),
        "W": lambda: rng.choice(vocab).capitalize(),
    }
    return re.sub(r"\{(\w+)\}", lambda m: fills[m.group(1)](), rng.choice(_BOILERPLATE))


def _make_doc(
    stream: _SentenceStream, rng: random.Random, vocab: list[str], frame: bool = False
) -> list[list[str]]:
    """Paragraphs as word lists; header/footer boilerplate lines are paragraphs of their own
    (always both with `frame`, otherwise each with probability 0.2)."""
    target = rng.randint(100, 300)
    num_paragraphs = rng.randint(2, 5)
    sentences, num_words = [], 0
    while num_words < target:
        sentences.append(stream.next())
        num_words += len(sentences[-1].split())
    cuts = sorted(rng.sample(range(1, len(sentences)), min(num_paragraphs - 1, len(sentences) - 1)))
    paragraphs = [" ".join(sentences[a:b]).split() for a, b in zip([0, *cuts], [*cuts, len(sentences)])]
    if frame or rng.random() < 0.2:
        paragraphs.insert(0, _boilerplate_line(rng, vocab).split())
    if frame or rng.random() < 0.2:
        paragraphs.append(_boilerplate_line(rng, vocab).split())
    return paragraphs


def _text(paragraphs: list[list[str]]) -> str:
    return "\n\n".join(" ".join(p) for p in paragraphs)


def _apply(paragraphs: list[list[str]], ops: list[tuple], k: int, vocab: list[str]) -> list[list[str]]:
    """The first k pre-drawn edit operations applied to a copy (so J(k) is a fixed function of k)."""
    paras = [list(p) for p in paragraphs]
    for kind, u, _, word in ops[:k]:
        if kind == "reorder":
            paras = [paras[i] for i in word]
            continue
        if kind == "frame":  # replace the original's header (u = 0) or footer (u = -1)
            paras[int(u)] = word.split()
            continue
        if kind == "boilerplate":
            if u < 0.5:
                paras.insert(0, word.split())
            else:
                paras.append(word.split())
            continue
        wi = int(u * sum(map(len, paras)))
        pi = 0
        while wi >= len(paras[pi]):
            wi -= len(paras[pi])
            pi += 1
        p = paras[pi]
        if kind == "insert":
            p.insert(wi, word)
        elif kind == "delete" and len(p) > 1:
            del p[wi]
        elif kind == "substitute":
            p[wi] = word
    return paras


def _draw_ops(kind: str, paragraphs: list[list[str]], rng: random.Random, vocab: list[str]) -> list[tuple]:
    num_words = sum(map(len, paragraphs))
    ops: list[tuple] = []
    if kind == "reorder":  # one paragraph moved elsewhere, then substitutions
        src = rng.randrange(len(paragraphs))
        dst = rng.choice([i for i in range(len(paragraphs)) if i != src])
        order = [i for i in range(len(paragraphs)) if i != src]
        order.insert(dst, src)
        ops.append(("reorder", 0.0, 0.0, order))
    if kind == "boilerplate":
        ops += [
            ("frame", 0, 0.0, _boilerplate_line(rng, vocab)),
            ("frame", -1, 0.0, _boilerplate_line(rng, vocab)),
        ]
        ops += [("boilerplate", rng.random(), 0.0, _boilerplate_line(rng, vocab)) for _ in range(num_words)]
        return ops
    for _ in range(2 * num_words):
        op = rng.choice(("insert", "delete", "substitute")) if kind in ("mixed", "reorder") else kind
        if kind == "reorder":
            op = "substitute"
        ops.append((op, rng.random(), rng.random(), rng.choice(vocab)))
    return ops


def _plant_pair(
    level: float, kind: str, stream: _SentenceStream, rng: random.Random, vocab: list[str]
) -> tuple[str, str, float, int] | None:
    original = _make_doc(stream, rng, vocab, frame=kind == "boilerplate")
    base = original
    ops = _draw_ops(kind, base, rng, vocab)
    a_text = _text(original)
    a_sh = word_shingles(a_text)

    def j_at(k: int) -> float:
        return jaccard(a_sh, word_shingles(_text(_apply(base, ops, k, vocab))))

    lo, hi = 0, len(ops)  # invariant: J(lo) > level >= J(hi) (J decreases with k, nearly)
    if j_at(hi) > level:
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if j_at(mid) > level:
            lo = mid
        else:
            hi = mid
    j_lo, j_hi = j_at(lo), j_at(hi)
    if level >= HIGH_JACCARD:
        k, j = lo, j_lo
    elif level <= LOW_JACCARD:
        k, j = hi, j_hi
    else:
        k, j = (lo, j_lo) if j_lo - level < level - j_hi else (hi, j_hi)
    if abs(j - level) > TOLERANCE or (level >= HIGH_JACCARD and j < level) or k == 0:
        return None
    return a_text, _text(_apply(base, ops, k, vocab)), j, k


def _unplanted_over(texts: list[str], planted: set[tuple[int, int]], limit: float) -> tuple[list, float]:
    """Exact word 5-gram Jaccard of every pair of documents sharing a shingle: the unplanted pairs
    above `limit` and the largest unplanted Jaccard."""
    import xxhash  # data extra; only the data stages need it

    sets = [word_shingles(t) for t in texts]
    sizes = np.array([len(s) for s in sets], np.int64)
    h = np.fromiter(
        (xxhash.xxh3_64_intdigest(s.encode()) for st in sets for s in st), np.uint64, int(sizes.sum())
    )
    doc = np.repeat(np.arange(len(texts), dtype=np.int64), sizes)
    order = np.lexsort((doc, h))
    h, doc = h[order], doc[order]
    start = np.r_[True, h[1:] != h[:-1]]
    gstart = np.flatnonzero(start)
    gsize = np.diff(np.r_[gstart, len(h)])
    rank = np.arange(len(h)) - np.repeat(gstart, gsize)
    cnt = np.repeat(gsize, gsize) - 1 - rank  # partners after this element in its group
    src = np.repeat(np.arange(len(h)), cnt)
    offs = np.arange(len(src)) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    dst = src + 1 + offs
    keys, inter = np.unique(doc[src] * len(texts) + doc[dst], return_counts=True)
    a, b = keys // len(texts), keys % len(texts)
    jac = inter / (sizes[a] + sizes[b] - inter)
    unplanted = np.array([(int(x), int(y)) not in planted for x, y in zip(a, b)], bool)
    over = [
        (int(x), int(y), float(j)) for x, y, j in zip(a[unplanted], b[unplanted], jac[unplanted]) if j > limit
    ]
    return over, float(jac[unplanted].max()) if unplanted.any() else 0.0


def generate_neardup_corpus(
    out_dir: str | Path,
    seed: int = 0,
    num_pairs_per_level: dict[float, int] | None = None,
    num_singletons: int = 5000,
    num_shards: int = NUM_SHARDS,
) -> dict[str, Any]:
    """Write the stage directory and truth.jsonl under `out_dir`; return a summary dict."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    per_level = DEFAULT_PAIRS_PER_LEVEL if num_pairs_per_level is None else num_pairs_per_level
    rng = random.Random(seed)
    sentences = _sentences()
    vocab = sorted({w.strip(".,;:()!?\"'") for s in sentences for w in s.split()} - {""})
    stream = _SentenceStream(sentences, rng)

    texts: list[str] = []
    pairs: list[dict[str, Any]] = []
    num_failed = 0
    for level in LEVELS:
        for i in range(per_level.get(level, 0)):
            # a kind that cannot reach the level on this document (a moved paragraph alone
            # already below 0.95) is retried on new documents, then the next kind takes over
            attempt = 0
            while (
                planted := _plant_pair(level, kind := EDIT_KINDS[(i + attempt // 3) % 6], stream, rng, vocab)
            ) is None:
                num_failed += 1
                attempt += 1
            a_text, b_text, j, k = planted
            pairs.append(
                {
                    "a": len(texts),
                    "b": len(texts) + 1,
                    "target": level,
                    "jaccard": j,
                    "edit": kind,
                    "num_edits": k,
                }
            )
            texts += [a_text, b_text]
    num_pair_docs = len(texts)
    texts += [_text(_make_doc(stream, rng, vocab)) for _ in range(num_singletons)]

    planted = {(p["a"], p["b"]) for p in pairs}
    over, max_j = _unplanted_over(texts, planted, MAX_UNPLANTED_JACCARD)
    drop = set()
    for x, y, _ in over:  # drop a singleton if there is one, otherwise the whole pair of y
        victim = y if y >= num_pair_docs else x if x >= num_pair_docs else None
        if victim is None:
            pair = next(p for p in pairs if y in (p["a"], p["b"]))
            drop |= {pair["a"], pair["b"]}
        else:
            drop.add(victim)
    if drop:  # the largest unplanted Jaccard left among the documents kept
        max_j = max(
            (j for x, y, j in _unplanted_over(texts, planted, 0.0)[0] if not {x, y} & drop), default=0.0
        )
    pairs = [p for p in pairs if p["a"] not in drop]

    # Ids in a random order, so the survivor (smallest id) is the original or the copy by chance
    # and the two ends of a pair usually sit in different shards.
    keep = [i for i in range(len(texts)) if i not in drop]
    perm = list(range(len(keep)))
    rng.shuffle(perm)
    ids = {i: f"nd-{perm[n]:06d}" for n, i in enumerate(keep)}
    rows_by_id = sorted((ids[i], texts[i]) for i in keep)
    shard_entries = []
    for s in range(num_shards):
        rows = [
            {"id": d, "text": t, "source": "neardup", "url": None, "metadata": "{}"}
            for d, t in rows_by_id[s::num_shards]
        ]
        table = pa.Table.from_pylist(rows, schema=DOC_SCHEMA)
        shard_entries.append(write_table(out / "shards" / f"part-{s:05d}.parquet", table))
    write_manifest(out, shards=shard_entries, source="neardup_corpus", seed=seed)
    pair_ids = {ids[p["a"]] for p in pairs} | {ids[p["b"]] for p in pairs}
    truth = [
        {"kind": "pair", **p, "a": ids[p["a"]], "b": ids[p["b"]], "jaccard": round(p["jaccard"], 6)}
        for p in pairs
    ]
    truth += [{"kind": "singleton", "id": ids[i]} for i in keep if ids[i] not in pair_ids]
    write_jsonl(out / "truth.jsonl", truth)
    summary = {
        "num_docs": len(keep),
        "num_pairs": len(pairs),
        "num_singletons": len(keep) - 2 * len(pairs),
        "num_shards": num_shards,
        "num_sentences": len(sentences),
        "num_failed_plantings": num_failed,
        "num_dropped_docs": len(drop),
        "max_unplanted_jaccard": round(max_j, 4),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (out / "neardup_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def load_truth(out_dir: str | Path) -> tuple[list[dict], list[str]]:
    """(planted pairs, singleton ids) from truth.jsonl."""
    pairs, singles = [], []
    for _, row in iter_jsonl(Path(out_dir) / "truth.jsonl"):
        (pairs.append(row) if row["kind"] == "pair" else singles.append(row["id"]))
    return pairs, singles


def score(
    pairs: list[dict], singletons: list[str], same_cluster: Callable[[str, str], bool], removed: set[str]
) -> dict[str, Any]:
    """Recall at J >= 0.85, merge rate at J <= 0.5, per-level merge rates and the share of
    singletons removed, given a method's clustering (`same_cluster`) and removed ids."""
    merged = [(p["jaccard"], p["target"], same_cluster(p["a"], p["b"])) for p in pairs]
    high = [m for j, _, m in merged if j >= HIGH_JACCARD]
    low = [m for j, _, m in merged if j <= LOW_JACCARD]
    levels = {}
    for level in sorted({t for _, t, _ in merged}):
        ms = [m for _, t, m in merged if t == level]
        levels[str(level)] = {"num_pairs": len(ms), "merged": round(sum(ms) / len(ms), 4)}
    num_single_removed = sum(s in removed for s in singletons)
    return {
        "num_pairs_high": len(high),
        "recall_high": sum(high) / len(high) if high else None,
        "num_pairs_low": len(low),
        "merge_rate_low": sum(low) / len(low) if low else None,
        "num_singletons": len(singletons),
        "num_singletons_removed": num_single_removed,
        "singleton_removal_rate": num_single_removed / len(singletons) if singletons else None,
        "per_level": levels,
    }


def clusters_from_dedup_output(run_dir: str | Path) -> tuple[dict[str, str], set[str]]:
    """(cluster id per clustered document, removed ids) from a `run_minhash_dedup` output: each
    reject names its cluster and survivor, so the survivor is in that cluster too."""
    _, rejected = read_outputs(run_dir)
    cluster: dict[str, str] = {}
    for doc_id, r in rejected.items():
        cid = r["metadata"]["near_dup_cluster"]
        cluster[doc_id] = cluster[r["metadata"]["duplicate_of"]] = cid
    return cluster, set(rejected)


def format_table(results: dict[str, dict]) -> str:
    """Per-level merge rates (one column per method) and the three acceptance figures."""
    names = list(results)
    levels = list(next(iter(results.values()))["per_level"])
    lines = ["target J  pairs  " + "  ".join(f"{n:>12}" for n in names)]
    for lv in levels:
        n = results[names[0]]["per_level"][lv]["num_pairs"]
        lines.append(
            f"{lv:>8}  {n:5d}  " + "  ".join(f"{results[m]['per_level'][lv]['merged']:12.4f}" for m in names)
        )
    for key in ("recall_high", "merge_rate_low", "singleton_removal_rate"):
        lines.append(f"{key:>23}  " + "  ".join(f"{results[m][key]:12.4f}" for m in names))
    return "\n".join(lines)
