"""Assemble and write the corpus: select seeded base documents, plant every kind of case in a
fixed order (the order is part of the corpus: each kind draws from the same RNG), write raw/,
truth.jsonl and the corpus.json manifest.

    generate_corpus("runs/corpus", seed=0)
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from data_pipeline.corpus.base_texts import base_texts
from data_pipeline.corpus.checks import kept_unchanged
from data_pipeline.corpus.clean_tricky import plant_clean_tricky
from data_pipeline.corpus.code import plant_code
from data_pipeline.corpus.empty_giant import plant_empty, plant_giant
from data_pipeline.corpus.exact_dup import plant_exact_duplicates
from data_pipeline.corpus.junk import plant_junk
from data_pipeline.corpus.languages import plant_non_english
from data_pipeline.corpus.mojibake import plant_mojibake
from data_pipeline.corpus.near_dup import plant_near_duplicates
from data_pipeline.corpus.pii import plant_pii
from data_pipeline.corpus.planted import KEPT, Builder, Planted, json_line
from data_pipeline.corpus.toxic import plant_toxic
from data_pipeline.corpus.unreadable import plant_unreadable
from data_pipeline.corpus.write import write_files
from pretrain.core.hashing import sha256_file

log = logging.getLogger(__name__)

NUM_BOOKS = 30
NUM_NOTES = 10
NUM_HTML = 10
MIN_BASE_DOCS = 300  # what the planted cases consume or copy, plus room for retries


def generate_corpus(
    out_dir: str | Path, seed: int = 0, num_base_docs: int = 600, overwrite: bool = False
) -> dict[str, Any]:
    """Write the tiny corpus under `out_dir` and return its summary (also written to corpus.json).

    out_dir/raw/ holds the documents, out_dir/truth.jsonl one row per document or line, keyed by
    the pipeline's id ("web/part-00003.jsonl:17", "books/part-00000.parquet#4",
    "notes/note-001.txt", "crawl/crawl-00000.warc.gz#2"). With `overwrite`, an earlier corpus in
    out_dir (raw/, truth.jsonl, corpus.json) is replaced; otherwise an existing raw/ is an error.
    """
    if num_base_docs < MIN_BASE_DOCS:
        raise ValueError(f"num_base_docs={num_base_docs}: the planted cases need at least {MIN_BASE_DOCS}")
    out = Path(out_dir)
    raw = out / "raw"
    if raw.exists():
        if not overwrite:
            raise FileExistsError(f"{raw} already exists; pass overwrite=True to replace the corpus in {out}")
        shutil.rmtree(raw)
    out.mkdir(parents=True, exist_ok=True)

    rng = random.Random(seed)
    base = _select_base(rng, num_base_docs)
    docs = _plant_all(base, rng)
    write_files(raw, docs, rng)
    rows = sorted((_truth_row(d) for d in docs), key=lambda r: _sort_key(r["id"]))
    with open(out / "truth.jsonl", "wb") as fh:
        fh.writelines(json_line(r) + b"\n" for r in rows)

    files = sorted(p for p in raw.rglob("*") if p.is_file()) + [out / "truth.jsonl"]
    fates = Counter("kept" if r["expect"] == KEPT else "{stage}/{reason}".format(**r["expect"]) for r in rows)
    summary = {
        "generator": "data_pipeline.corpus",
        "seed": seed,
        "num_base_docs": len(base),
        "num_base_docs_requested": num_base_docs,
        "python_version": f"{sys.version_info.major}.{sys.version_info.minor}",
        "num_documents": len(rows),
        "counts": dict(sorted(Counter(r["category"] for r in rows).items())),
        "expected": dict(sorted(fates.items())),
        "files": {
            p.relative_to(out).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in files
        },
    }
    (out / "corpus.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _select_base(rng: random.Random, num_base_docs: int) -> list[tuple[str, str]]:
    """A seeded sample of base documents, each one kept unchanged by the default pipeline."""
    candidates = list(base_texts())
    rng.shuffle(candidates)
    base: list[tuple[str, str]] = []
    for candidate in candidates:
        if len(base) == num_base_docs:
            break
        if kept_unchanged(candidate[1]):  # the safety net; the prose selection rarely needs it
            base.append(candidate)
    if len(base) < num_base_docs:
        if len(base) < MIN_BASE_DOCS:
            raise ValueError(f"this Python's documentation yields only {len(base)} base documents")
        log.warning("corpus: asked for %d base documents, this Python yields %d", num_base_docs, len(base))
    return base


def _plant_all(base: list[tuple[str, str]], rng: random.Random) -> list[Planted]:
    b = Builder(base, rng)
    # Cases built on a base text of their own come first; what is left stays plain base documents.
    plant_pii(b)
    plant_mojibake(b)
    plant_clean_tricky(b)
    plain = []
    for i, (module, text) in enumerate(b.unused):
        if i < NUM_BOOKS:
            doc = Planted("base", text, source="books")
        elif i < NUM_BOOKS + NUM_NOTES:
            doc = Planted("base", text, source="notes")
        elif i < NUM_BOOKS + NUM_NOTES + NUM_HTML:
            url = f"https://docs.example.com/pages/{module.strip('_').replace('_', '-')}-{i}.html"
            doc = Planted("base", text, source="crawl", url=url, title=f"Notes on the {module} module")
        else:
            doc = Planted("base", text, url=b.url(f"docs/{module}"))
        plain.append(b.add(doc))
    web_base = [d for d in plain if d.source == "web"]  # copied from its end, in seeded order
    plant_exact_duplicates(b, web_base)
    plant_near_duplicates(b, web_base)
    # Documents a stage before dedup drops.
    plant_toxic(b)
    plant_junk(b)
    plant_non_english(b)
    plant_unreadable(b)
    plant_empty(b)
    plant_giant(b, [t for _, t in base])
    plant_code(b)  # stdlib Python files for the `code` profile (no RNG: the order above is unchanged)
    return b.docs


def _truth_row(doc: Planted) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": doc.doc_id,
        "source_id": doc.source_id,
        "source": doc.source,
        "category": doc.category,
        "expect": doc.expect,
    }
    if doc.dup_of is not None:
        row["dup_of"] = doc.dup_of.doc_id
    if doc.near_dup_of is not None:
        row["near_dup_of"] = doc.near_dup_of.doc_id
    if doc.source == "crawl":
        row["html"] = True
        row["url"] = doc.url
    row.update(sorted(doc.extra.items()))
    return row


def _sort_key(doc_id: str) -> tuple[str, int]:
    path, _, pos = doc_id.replace("#", ":").rpartition(":")
    return (path, int(pos)) if pos.isdigit() else (doc_id, 0)
