"""Held-out language modelling per source: loss, perplexity and bits-per-byte (lm-eval definitions).

    docs = read_heldout("runs/data/heldout")       # document-shard dir, a Parquet file, or JSONL
    metrics = score_heldout(lm, docs)              # {"code": {"bits_per_byte": 1.3, ...}, "all": {...}}

Each document is scored whole with rolling windows (eval/lm.py). Per source, with LL the summed
log-likelihood (nats) of every token of every document:

    loss = -LL / tokens            perplexity = exp(loss)             (per token: tokenizer-dependent)
    bits_per_byte = -LL / bytes / ln 2   byte_perplexity = exp(-LL / bytes)   word_perplexity = exp(-LL / words)

bytes are UTF-8 bytes and words `len(re.split(r"\\s+", text))`, as lm-eval's `count_bytes` /
`count_words`, so bits_per_byte / byte_perplexity / word_perplexity equal lm-eval's for a
`loglikelihood_rolling` task over the same texts (tasks.write_heldout_yaml writes that task).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pretrain.core.jsonl import iter_jsonl
from pretrain.core.shards import iter_batches, list_shards

HELDOUT_METRICS = ("loss", "perplexity", "bits_per_byte", "byte_perplexity", "word_perplexity")


def count_words(text: str) -> int:
    return len(re.split(r"\s+", text))


def _iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    for n, rec in iter_jsonl(path):
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
            raise ValueError(f"{path}:{n}: expected an object with a string 'text' (and 'source')")
        yield rec


def _iter_parquet(path: Path) -> Iterator[dict[str, Any]]:
    for batch in iter_batches(path, columns=None):
        names = batch.schema.names
        if "text" not in names:
            raise ValueError(f"{path}: no 'text' column (columns: {names})")
        texts = batch.column("text").to_pylist()
        sources = batch.column("source").to_pylist() if "source" in names else [None] * len(texts)
        for text, source in zip(texts, sources):
            yield {"text": text, "source": source}


def heldout_files(path: str | Path) -> list[Path]:
    """A document-shard directory (shards/*.parquet, manifest order), a directory of .parquet/.jsonl
    files, or one such file."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise FileNotFoundError(
            f"held-out documents {p} not found (a document-shard dir, .parquet or .jsonl)"
        )
    if (p / "shards").is_dir():
        return list_shards(p)
    files = sorted(list(p.glob("*.parquet")) + list(p.glob("*.jsonl")))
    if not files:
        raise FileNotFoundError(f"no shards/*.parquet, *.parquet or *.jsonl under {p}")
    return files


def read_heldout(
    path: str | Path, max_docs_per_source: int | None = None, default_source: str = "heldout"
) -> list[dict[str, str]]:
    """[{"text", "source"}] in file order; empty texts are skipped; at most N docs per source."""
    docs: list[dict[str, str]] = []
    per_source: dict[str, int] = defaultdict(int)
    for f in heldout_files(path):
        rows = _iter_parquet(f) if f.suffix == ".parquet" else _iter_jsonl(f)
        for rec in rows:
            text, source = rec["text"], rec.get("source") or default_source
            if not text or (max_docs_per_source is not None and per_source[source] >= max_docs_per_source):
                continue
            per_source[source] += 1
            docs.append({"text": text, "source": str(source)})
    return docs


def _exp(x: float) -> float:
    return math.exp(x) if x < 700 else math.inf  # an untrained model's word perplexity can overflow


def _metrics(ll: float, num_tokens: int, num_bytes: int, num_words: int, num_docs: int) -> dict[str, float]:
    loss = -ll / num_tokens
    return {
        "loss": loss,
        "perplexity": _exp(loss),
        "bits_per_byte": -ll / num_bytes / math.log(2),
        "byte_perplexity": _exp(-ll / num_bytes),
        "word_perplexity": _exp(-ll / num_words),
        "num_docs": num_docs,
        "num_tokens": num_tokens,
        "num_bytes": num_bytes,
    }


def score_heldout(lm, docs: list[dict[str, str]]) -> dict[str, dict[str, float]]:
    """Per-source metrics (plus "all", pooled over every document when there are several sources)."""
    token_lists = [lm.tok.encode(d["text"]) for d in docs]
    lls = lm.loglikelihood_rolling_tokens(token_lists)
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0, 0, 0, 0])
    for d, ids, ll in zip(docs, token_lists, lls):
        for k in (d["source"], "all"):
            s = sums[k]
            s[0] += ll
            s[1] += len(ids)
            s[2] += len(d["text"].encode("utf-8"))
            s[3] += count_words(d["text"])
            s[4] += 1
    out = {k: _metrics(*v) for k, v in sorted(sums.items()) if v[1] > 0}
    if len(out) == 2:  # one source: "all" repeats it
        out.pop("all")
    return out
