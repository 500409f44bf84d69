"""Model-based quality score: a fastText classifier (trained by `pretrain data train-quality`) writes
metadata.quality_score, the probability of its positive class, on every document it sees, and drops
those below `threshold` when one is set (reason `low_quality_score`). MinHash near-duplicate removal
keeps the highest-scoring copy of a cluster.

    stage = QualityModelConfig(enabled=True, model="runs/qmodel").build()
    stage.process(doc)   # doc with metadata["quality_score"] = 0.93, or Reject("low_quality_score", "0.12 < 0.5")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from data_pipeline.document import Doc, Reject, Stage
from data_pipeline.quality_classifier import MODEL_FILE, import_fasttext, score
from pretrain.core.config import check
from pretrain.core.hashing import file_fingerprint


@dataclass
class QualityModelConfig:
    enabled: bool = False
    """Run this stage (needs `model`)."""
    model: str | None = None
    """Directory written by `pretrain data train-quality` (model.bin, report.json), or a model.bin."""
    threshold: float | None = None
    """Drop documents scoring below this (reason low_quality_score); null: only score them."""

    def __post_init__(self) -> None:
        check(not self.enabled or bool(self.model), "quality_model.model", self.model,
              "a model directory from `pretrain data train-quality` when quality_model.enabled=true")  # fmt: skip
        check(self.threshold is None or 0.0 <= self.threshold <= 1.0, "quality_model.threshold",
              self.threshold, "a probability in [0, 1] or null")  # fmt: skip

    @property
    def model_path(self) -> Path:
        path = Path(self.model or "")
        return path / MODEL_FILE if path.is_dir() else path

    def fingerprint(self) -> dict | None:
        """Size and mtime of the model file (part of the chain's identity); None when disabled."""
        return file_fingerprint(self.model_path) if self.enabled and self.model_path.is_file() else None

    def build(self) -> QualityModelFilter:
        return QualityModelFilter(self)


class QualityModelFilter(Stage):
    name = "quality_model"

    def __init__(self, cfg: QualityModelConfig):
        self.cfg = cfg
        path = cfg.model_path
        if not path.is_file():
            raise FileNotFoundError(
                f"quality_model.model: {path} not found (train one: pretrain data train-quality)"
            )
        self.model = import_fasttext().load_model(str(path))

    def __reduce__(self) -> tuple:
        return QualityModelFilter, (self.cfg,)  # workers load the model from disk, not a pickle of it

    def process(self, doc: Doc) -> Doc | Reject:
        s = round(score(self.model, doc.text), 6)
        if self.cfg.threshold is not None and s < self.cfg.threshold:
            return Reject("low_quality_score", detail=f"{s:.3f} < {self.cfg.threshold}")
        doc.metadata["quality_score"] = s
        return doc
