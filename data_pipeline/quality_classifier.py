"""Train a fastText quality classifier (as DCLM and FineWeb-Edu's distilled classifier do): documents
you want more of against documents you want less of; the `quality_model` stage applies it.

    report = train_quality_model(["runs/good.jsonl"], ["runs/junk"], "runs/qmodel")
    pretrain data train-quality --positive runs/good.jsonl --negative runs/junk --out runs/qmodel

Inputs are anything the pipeline reads (JSONL, Parquet, text folders, stage directories); text is
lowercased and whitespace-joined onto one line per document, as fastText wants. The two classes are
balanced (the larger one sampled down, seeded), a held-out tenth of each is kept out of training,
and the model is trained single-threaded with a seed, so the same inputs give the same model. OUT
gets model.bin and report.json: counts, precision and recall of the positive class on the held-out
split at the 0.5 threshold, the score quantiles of each class, and the settings.
"""

from __future__ import annotations

import logging
import multiprocessing
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from data_pipeline.groundtruth import load_truth
from data_pipeline.readers import InputConfig, discover_inputs, read_unit
from pretrain.core.config import check
from pretrain.core.files import atomic_path, write_json
from pretrain.core.jsonl import write_jsonl

POSITIVE, NEGATIVE = "__label__hq", "__label__lq"
MODEL_FILE, REPORT_FILE = "model.bin", "report.json"


def import_fasttext():
    try:
        import fasttext  # heavy optional library (the data extra): only the classifier needs it
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("the quality classifier needs fastText: pip install fasttext-numpy2") from e
    return fasttext


@dataclass
class TrainQualityConfig:
    epochs: int = 20
    """Passes over the training documents."""
    lr: float = 0.2
    """fastText's learning rate (0.5, fastText's example value, diverges on long documents in some
    processes; training halves it after a NaN, up to three times, and the report says what it used)."""
    dim: int = 32
    """Embedding size."""
    word_ngrams: int = 2
    """Word n-grams (DCLM's classifier uses bigrams)."""
    buckets: int = 200_000
    """Hash buckets for n-grams (the model holds buckets x dim floats: 25 MB at the defaults)."""
    max_docs_per_class: int = 100_000
    """Documents per class at most (the larger class is also sampled down to the smaller one)."""
    heldout_fraction: float = 0.1
    """Share of each class kept out of training to measure precision and recall."""
    seed: int = 0
    """Sampling, split and training seed."""

    def __post_init__(self) -> None:
        check(self.epochs >= 1, "epochs", self.epochs, ">= 1")
        check(self.dim >= 2, "dim", self.dim, ">= 2")
        check(0 < self.heldout_fraction < 0.5, "heldout_fraction", self.heldout_fraction, "in (0, 0.5)")
        check(self.max_docs_per_class >= 10, "max_docs_per_class", self.max_docs_per_class, ">= 10")


def read_texts(paths: list[str], limit: int) -> list[str]:
    """Document texts from any input the pipeline reads, up to `limit`, in input order."""
    cfg = InputConfig(paths=list(paths))
    texts: list[str] = []
    for unit in discover_inputs(cfg):
        for doc, reject in read_unit(unit, cfg):
            if reject is None and doc.text.strip():
                texts.append(doc.text)
                if len(texts) >= limit:
                    return texts
    if not texts:
        raise ValueError(f"no documents with text in {paths}")
    return texts


def corpus_training_sets(corpus_dir: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    """positive.jsonl and negative.jsonl in out_dir from the generated tiny corpus: its clean base
    documents against its junk ones (the documents its truth expects the quality stage to drop)."""
    truth = load_truth(corpus_dir)
    cfg = InputConfig(paths=[str(Path(corpus_dir) / "raw")])
    rows: dict[str, list[dict]] = {"positive": [], "negative": []}
    readers_log = logging.getLogger("data_pipeline.readers")
    level = readers_log.level
    readers_log.setLevel(logging.ERROR)  # the corpus's planted bad records: the data job reports them
    try:
        for unit in discover_inputs(cfg):
            for doc, reject in read_unit(unit, cfg):
                t = truth.get(doc.id)
                if reject is None and t is not None and t["category"] in ("base", "junk"):
                    kind = "positive" if t["category"] == "base" else "negative"
                    rows[kind].append({"id": doc.id, "text": doc.text})
    finally:
        readers_log.setLevel(level)
    out = Path(out_dir)
    for name, docs in rows.items():
        write_jsonl(out / f"{name}.jsonl", docs)
    return out / "positive.jsonl", out / "negative.jsonl"


def fasttext_line(text: str) -> str:
    """One document as fastText reads it: lowercased, every whitespace run a single space."""
    return " ".join(text.lower().split())


def score(model: Any, text: str) -> float:
    """Probability of the positive class."""
    labels, probs = model.predict(fasttext_line(text), k=2)
    return min(1.0, float(dict(zip(labels, probs)).get(POSITIVE, 0.0)))  # fastText can return 1.00001


def _train_fasttext(data: str, out: str, lr: float, kwargs: dict[str, Any]) -> float:
    """Train and save; after a NaN ("Encountered NaN", fastText's advice: a lower rate) halve the
    learning rate, up to three times. Returns the rate used."""
    fasttext = import_fasttext()
    for attempt in range(4):
        try:
            fasttext.train_supervised(data, lr=lr, **kwargs).save_model(out)
            return lr
        except RuntimeError as e:
            if "NaN" not in str(e) or attempt == 3:
                raise
            lr /= 2
    raise AssertionError("unreachable")


def train_quality_model(
    positive: list[str], negative: list[str], out_dir: str | Path, cfg: TrainQualityConfig | None = None
) -> dict[str, Any]:
    cfg = cfg or TrainQualityConfig()
    fasttext = import_fasttext()
    rng = random.Random(cfg.seed)
    pos = read_texts(positive, cfg.max_docs_per_class)
    neg = read_texts(negative, cfg.max_docs_per_class)
    n = min(len(pos), len(neg))
    pos, neg = rng.sample(pos, n), rng.sample(neg, n)  # balanced, shuffled
    k = max(1, round(n * cfg.heldout_fraction))
    if n - k < 5:
        raise ValueError(f"only {n} documents in the smaller class: at least {k + 5} are needed")
    train = [(POSITIVE, t) for t in pos[k:]] + [(NEGATIVE, t) for t in neg[k:]]
    rng.shuffle(train)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train.txt"
        data.write_text("".join(f"{label} {fasttext_line(t)}\n" for label, t in train), encoding="utf-8")
        # In a fresh interpreter: fastText's result depends on the process it runs in (in a pytest
        # worker that had run other test files, the same file gave another model, or diverged).
        kwargs = dict(epoch=cfg.epochs, dim=cfg.dim, wordNgrams=cfg.word_ngrams, bucket=cfg.buckets,
                      thread=1, seed=cfg.seed, verbose=0)  # fmt: skip
        trained = Path(tmp) / MODEL_FILE
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            lr = pool.apply(_train_fasttext, (str(data), str(trained), cfg.lr, kwargs))
        model = fasttext.load_model(str(trained))
        with atomic_path(out / MODEL_FILE) as tmp_model:
            shutil.copyfile(trained, tmp_model)
    pos_scores = sorted(score(model, t) for t in pos[:k])
    neg_scores = sorted(score(model, t) for t in neg[:k])
    tp = sum(s >= 0.5 for s in pos_scores)
    fp = sum(s >= 0.5 for s in neg_scores)
    report = {
        "num_train": len(train),
        "num_heldout": 2 * k,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / k,
        "threshold": 0.5,
        "lr_used": lr,
        "heldout_score_quantiles": {
            "positive": [pos_scores[int(q * (k - 1))] for q in (0.1, 0.5, 0.9)],
            "negative": [neg_scores[int(q * (k - 1))] for q in (0.1, 0.5, 0.9)],
        },
        "positive_inputs": list(positive),
        "negative_inputs": list(negative),
        "config": asdict(cfg),
    }
    write_json(out / REPORT_FILE, report)
    return report
