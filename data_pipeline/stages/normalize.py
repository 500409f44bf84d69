"""Normalise text: repair mojibake (ftfy), Unicode NFC, strip control characters and trailing
whitespace per line; reject empty and over-long documents.

Exact dedup hashes the text this stage produces, so trivially different copies collapse.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from data_pipeline.document import Doc, Reject, Stage
from pretrain.core.config import check

# C0/C1 controls except tab and newline; also the Unicode line/paragraph separators and BOM.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ufeff]")
_TRAILING_WS = re.compile(r"[ \t]+$", re.MULTILINE)
_MANY_BLANK_LINES = re.compile(r"\n{3,}")


@dataclass
class NormalizeConfig:
    enabled: bool = True
    """Run this stage (exact dedup then hashes the raw text)."""
    fix_unicode: bool = True
    """Repair mojibake and broken escapes with ftfy before NFC."""
    form: str = "NFC"
    """Unicode normal form applied to every document (NFC, NFKC, NFD, NFKD)."""
    max_chars: int = 1_000_000
    """Documents longer than this (after normalising) are rejected as `too_long`."""
    min_chars: int = 1
    """Documents shorter than this (after stripping) are rejected as `empty`."""

    def __post_init__(self) -> None:
        check(
            self.form in ("NFC", "NFKC", "NFD", "NFKD"), "normalize.form", self.form, "NFC, NFKC, NFD or NFKD"
        )
        check(self.max_chars > 0, "normalize.max_chars", self.max_chars, "a positive integer")
        check(
            0 < self.min_chars <= self.max_chars,
            "normalize.min_chars",
            self.min_chars,
            "between 1 and normalize.max_chars",
        )

    def build(self) -> Normalizer:
        return Normalizer(self)


class Normalizer(Stage):
    name = "normalize"

    def __init__(self, cfg: NormalizeConfig):
        self.cfg = cfg
        self._fix = None
        if cfg.fix_unicode:
            import ftfy  # [data] extra, only with fix_unicode

            # ftfy's own normalisation is NFC; we apply the configured form afterwards.
            self._fix_cfg = ftfy.TextFixerConfig(normalization=None, max_decode_length=cfg.max_chars + 1)
            self._fix = ftfy.fix_text

    def normalize_text(self, text: str) -> str:
        if self._fix is not None:
            text = self._fix(text, self._fix_cfg)
        text = unicodedata.normalize(self.cfg.form, text)
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        text = _CONTROL.sub("", text)
        text = _TRAILING_WS.sub("", text)
        text = _MANY_BLANK_LINES.sub("\n\n", text)
        return text.strip()

    def process(self, doc: Doc) -> Doc | Reject:
        # Check the raw size first so a giant document never reaches ftfy or the regexes.
        if len(doc.text) > 2 * self.cfg.max_chars:
            return Reject("too_long", f"{len(doc.text)} chars > {self.cfg.max_chars}")
        text = self.normalize_text(doc.text)
        if len(text) < self.cfg.min_chars:
            return Reject("empty", f"{len(text)} chars after normalising")
        if len(text) > self.cfg.max_chars:
            return Reject("too_long", f"{len(text)} chars > {self.cfg.max_chars}")
        doc.text = text
        return doc
