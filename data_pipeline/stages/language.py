"""Offline language identification: keep configured languages above a confidence threshold.

Backends: `py3langid` (ships its model, no download) or `fasttext` with a local model file
(e.g. lid.176.bin that you copied onto the cluster). Records language and score in metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from data_pipeline.document import Doc, Reject, Stage
from pretrain.core.config import check


@dataclass
class LanguageConfig:
    enabled: bool = True
    """Run this stage."""
    languages: list[str] = field(default_factory=lambda: ["en"])
    """ISO 639-1 codes to keep; an empty list keeps every language (and only tags it)."""
    min_score: float = 0.65
    """Minimum probability of the top language; below it the document is `low_language_score`."""
    backend: Literal["py3langid", "fasttext"] = "py3langid"
    """`py3langid` (bundled model) or `fasttext` (needs `model_path`)."""
    model_path: str | None = None
    """Local fastText language-ID model (`__label__xx` labels); never downloaded."""
    max_chars_scored: int = 10_000
    """Only the first N characters are scored: enough for a stable decision, bounded cost."""

    def __post_init__(self) -> None:
        check(0.0 <= self.min_score <= 1.0, "language.min_score", self.min_score, "a probability in [0, 1]")
        check(
            self.max_chars_scored > 0,
            "language.max_chars_scored",
            self.max_chars_scored,
            "a positive integer",
        )
        if self.backend == "fasttext":
            check(
                self.model_path is not None,
                "language.model_path",
                self.model_path,
                "a local fastText model file when backend=fasttext",
            )

    def build(self) -> LanguageFilter:
        return LanguageFilter(self)


class LanguageFilter(Stage):
    name = "language"

    def __init__(self, cfg: LanguageConfig):
        self.cfg = cfg
        self.keep = set(cfg.languages)
        if cfg.backend == "py3langid":
            from py3langid.langid import MODEL_FILE, LanguageIdentifier  # [data] extra, this backend only

            ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
            self._classify = ident.classify
        else:
            path = Path(cfg.model_path)
            if not path.is_file():
                raise FileNotFoundError(f"language.model_path={cfg.model_path!r} does not exist")
            import fasttext  # optional, only the fasttext backend needs it

            model = fasttext.load_model(str(path))

            def classify(text: str) -> tuple[str, float]:
                labels, probs = model.predict(text.replace("\n", " "), k=1)
                return labels[0].removeprefix("__label__"), float(probs[0])

            self._classify = classify

    def process(self, doc: Doc) -> Doc | Reject:
        lang, score = self._classify(doc.text[: self.cfg.max_chars_scored])
        doc.metadata["language"] = lang
        doc.metadata["language_score"] = round(float(score), 4)
        if self.keep and lang not in self.keep:
            return Reject("wrong_language", f"{lang} ({score:.2f})")
        if score < self.cfg.min_score:
            return Reject("low_language_score", f"{lang} ({score:.2f}) < {self.cfg.min_score}")
        return doc
