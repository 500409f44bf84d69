"""The default pipeline's cheap checks (datatrove's quality filters with defaults, py3langid), so
every planted case is made to meet its expected fate by construction.

    checks().quality_failure(text)   # (filter, reason) of the first default filter that drops it
    kept_unchanged(text)             # every filter keeps it as is and it is confident English
"""

from __future__ import annotations

import re
from functools import cache, lru_cache

MIN_LANG_PROB = 0.65
QUALITY_FILTERS = ("gopher_quality", "gopher_repetition", "c4", "fineweb")

# spaCy always splits "word. Next" when the word has 4+ lowercase letters (no tokenizer exception
# is that long), and the sentencizer starts a sentence there.
_SURE_SENTENCE_BREAK = re.compile(r"\b[a-z]{4,}[.!?] [A-Z]")


class DefaultChecks:
    def __init__(self) -> None:
        from datatrove.data import Document  # heavy (data extra); only generation needs it
        from datatrove.pipeline.filters import (  # heavy (data extra)
            C4QualityFilter,
            FineWebQualityFilter,
            GopherQualityFilter,
            GopherRepetitionFilter,
            c4_filters,
        )
        from py3langid.langid import MODEL_FILE, LanguageIdentifier  # data extra; loads a model

        self._document = Document
        self._c4 = c4_filters
        self._filters = list(
            zip(
                QUALITY_FILTERS,
                (GopherQualityFilter(), GopherRepetitionFilter(), C4QualityFilter(), FineWebQualityFilter()),
            )
        )
        self._by_name = dict(self._filters)
        self._langid = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)

    def quality_failure(self, text: str) -> tuple[str, str] | None:
        """(filter, reason) of the first default filter that drops `text`, else None."""
        for name, f in self._filters:
            verdict = f.filter(self._document(text=text, id="check"))
            if verdict is not True:
                return name, verdict[1]
        return None

    def language(self, text: str) -> tuple[str, float]:
        lang, prob = self._langid.classify(text)
        return lang, float(prob)

    def is_language(self, text: str, lang: str) -> bool:
        got, prob = self.language(text)
        return got == lang and prob >= MIN_LANG_PROB

    def kept_unchanged(self, text: str) -> bool:
        """True when every filter keeps `text`, C4 does not rewrite it, and it is confident English."""
        if not self.is_language(text, "en"):
            return False
        # C4 last: its per-line sentence splits would evict the word split the others share (LRU).
        for name in ("gopher_quality", "gopher_repetition", "fineweb", "c4"):
            if name == "c4" and self._c4_surely_keeps(text):
                continue
            doc = self._document(text=text, id="check")
            if self._by_name[name].filter(doc) is not True or doc.text != text:
                return False
        return True

    def _c4_surely_keeps(self, text: str) -> bool:
        """True only when C4QualityFilter provably keeps `text` unchanged, without spaCy (half the
        cost of the checks): every line passes C4's line rules as is, and a lower bound on its
        sentence count reaches the minimum. Otherwise the real filter decides."""
        c4 = self._c4
        lines = text.split("\n")
        if text.splitlines() != lines:
            return False
        num_sentences = 0
        for line in lines:
            words = line.split()
            lowered = line.lower()
            if (
                line != line.strip()
                or not line.endswith(c4.END_PUNCTUATION)
                or line.endswith(c4.ELLIPSIS)
                or len(words) < 3
                or any(len(w) > 1000 for w in words)
                or c4.CITATION_REGEX.search(line)
                or "{" in line
                or "lorem ipsum" in lowered
                or "javascript" in lowered
                or any(p in lowered for p in c4.POLICY_SUBSTRINGS)
            ):
                return False
            num_sentences += 1 + len(_SURE_SENTENCE_BREAK.findall(line))
        return num_sentences >= 5


@lru_cache(maxsize=1)
def checks() -> DefaultChecks:
    return DefaultChecks()


@cache
def kept_unchanged(text: str) -> bool:
    return checks().kept_unchanged(text)
