"""Deterministic tiny corpus with planted cases and exact ground truth, for the demo and CI.

`generate_corpus(out_dir, seed)` writes `raw/` (JSONL, .jsonl.gz, .jsonl.zst, Parquet, .txt and a
WARC file) plus `truth.jsonl` (one row per document or line: category and expected fate, keyed by
the pipeline's document id) and `corpus.json` (the summary it also returns). The same seed and
Python version give byte-identical files. Run: `pretrain data generate-corpus --out DIR --seed N`.

Base text is real English prose that ships with every Python (`base_texts()`, also the real text
of the MinHash corpus, benchmarks and tests). Planted cases are mixed in with a seeded shuffle and
checked with datatrove's default quality filters and py3langid, so the expected fates hold by
construction. One module per kind of case:

    stdlib_docs, base_texts   real text: standard-library docstrings -> base documents
    pii                       PII values and hard negatives          (kept, scrubbed)
    mojibake, clean_tricky    repairable mojibake, innocent "kill"   (kept)
    exact_dup, near_dup       exact / normalised copies, near-dups   (exact_dedup; truth Jaccard)
    toxic, junk, languages    toxic, low quality, other languages    (toxicity, quality, language)
    unreadable, empty_giant   broken records; empty and giant texts  (read, normalize)
    planted, checks, assets   shared: the planted document and builder, default checks, text pools
    web_layout, warc, write   where documents land and how each source is written
    generate                  the assembly: generate_corpus
"""

from __future__ import annotations

from data_pipeline.corpus.base_texts import base_texts
from data_pipeline.corpus.checks import MIN_LANG_PROB, QUALITY_FILTERS
from data_pipeline.corpus.clean_tricky import NUM_CLEAN_TRICKY
from data_pipeline.corpus.empty_giant import GIANT_CHARS, NUM_GIANT
from data_pipeline.corpus.exact_dup import NUM_EXACT_DUP, NUM_EXACT_DUP_NORMALIZED
from data_pipeline.corpus.generate import MIN_BASE_DOCS, NUM_BOOKS, NUM_HTML, NUM_NOTES, generate_corpus
from data_pipeline.corpus.junk import JUNK_KINDS, NUM_JUNK_PER_KIND
from data_pipeline.corpus.languages import NON_ENGLISH_DOCS
from data_pipeline.corpus.mojibake import NUM_MOJIBAKE
from data_pipeline.corpus.near_dup import JACCARD_LEVELS, JACCARD_TOLERANCE, NEAR_DUP_PLAN
from data_pipeline.corpus.pii import NUM_PII, NUM_PII_HARD_NEGATIVE, PII_TYPES
from data_pipeline.corpus.planted import KEPT
from data_pipeline.corpus.toxic import NUM_TOXIC
from data_pipeline.corpus.web_layout import NUM_WEB_SHARDS

# The truth's `jaccard` uses exactly the shingles MinHash dedup uses; re-exported for the tests.
from data_pipeline.minhash.shingles import jaccard, word_shingles

__all__ = [
    "GIANT_CHARS",
    "JACCARD_LEVELS",
    "JACCARD_TOLERANCE",
    "JUNK_KINDS",
    "KEPT",
    "MIN_BASE_DOCS",
    "MIN_LANG_PROB",
    "NEAR_DUP_PLAN",
    "NON_ENGLISH_DOCS",
    "NUM_BOOKS",
    "NUM_CLEAN_TRICKY",
    "NUM_EXACT_DUP",
    "NUM_EXACT_DUP_NORMALIZED",
    "NUM_GIANT",
    "NUM_HTML",
    "NUM_JUNK_PER_KIND",
    "NUM_MOJIBAKE",
    "NUM_NOTES",
    "NUM_PII",
    "NUM_PII_HARD_NEGATIVE",
    "NUM_TOXIC",
    "NUM_WEB_SHARDS",
    "PII_TYPES",
    "QUALITY_FILTERS",
    "base_texts",
    "generate_corpus",
    "jaccard",
    "word_shingles",
]
