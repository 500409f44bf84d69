"""Heuristic quality filtering with datatrove's Gopher quality, Gopher repetition, C4 and FineWeb filters.

Each filter can be switched off and tuned from the config; `params` go verbatim to the datatrove
filter's constructor (`quality.gopher_quality.params.min_doc_words=20`, `quality.c4.enabled=false`).
Filters run in FineWeb's order and the first failure rejects the doc with datatrove's reason. The C4
filter also drops lines (no terminal punctuation, "javascript", cookie notices...); the kept doc carries
that text. All four share one memoising tokenizer, so each text is word-tokenized once, not per filter.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from data_pipeline.document import Doc, Reject, Stage
from pretrain.core.config import check

# Config name -> (datatrove class, prefix for its reasons). Order is FineWeb's pipeline order.
FILTERS: dict[str, tuple[str, str]] = {
    "gopher_quality": ("GopherQualityFilter", "gopher_"),  # its reasons already start with gopher_
    "gopher_repetition": ("GopherRepetitionFilter", "gopher_rep_"),  # e.g. dup_line_frac, top_2_gram
    "c4": ("C4QualityFilter", "c4_"),  # e.g. curly_bracket, too_few_sentences
    "fineweb": ("FineWebQualityFilter", "fineweb_"),  # e.g. line_punct_ratio, char_dup_ratio
}
# Constructor arguments the stage sets itself, with why they cannot be params.
_SET_BY_STAGE = {
    "exclusion_writer": "it unset: the executor writes rejected documents",
    "language": "it unset: set quality.language instead",
}


def stage_reason(filter_name: str, reason: str | None) -> str:
    """The counted reject reason for a datatrove verdict: its reason, prefixed with its filter."""
    prefix = FILTERS[filter_name][1]
    reason = reason or "rejected"
    return reason if reason.startswith(prefix) else prefix + reason


def filter_param_names(name: str) -> list[str]:
    """The keyword arguments of a filter's datatrove constructor that `params` may set."""
    from datatrove.pipeline import filters  # heavy (~0.5 s); only quality needs datatrove

    sig = inspect.signature(getattr(filters, FILTERS[name][0]).__init__)
    return sorted(p for p in sig.parameters if p != "self" and p not in _SET_BY_STAGE)


@dataclass
class FilterConfig:
    enabled: bool = True
    """Run this filter."""
    params: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the datatrove filter's constructor; unset ones keep datatrove's defaults."""


@dataclass
class QualityConfig:
    enabled: bool = True
    """Run this stage."""
    gopher_quality: FilterConfig = field(default_factory=FilterConfig)
    """datatrove GopherQualityFilter: word count, word length, symbols, bullets, alphabetic words, stop words."""
    gopher_repetition: FilterConfig = field(default_factory=FilterConfig)
    """datatrove GopherRepetitionFilter: duplicate lines and paragraphs, repeated n-grams."""
    c4: FilterConfig = field(default_factory=FilterConfig)
    """datatrove C4QualityFilter: drops bad lines (the doc keeps the rest), then rejects docs with few sentences,
    "lorem ipsum" or a curly bracket."""
    fineweb: FilterConfig = field(default_factory=FilterConfig)
    """datatrove FineWebQualityFilter: lines ending in punctuation, short lines, duplicate lines, list-like docs."""
    language: str = "en"
    """Language code of the word/sentence tokenizer all four filters use (one datatrove knows: en, de, fr...)."""

    def __post_init__(self) -> None:
        from datatrove.utils.word_tokenizers import load_tokenizer_assignments  # heavy, see above

        check(
            self.language in load_tokenizer_assignments(),
            "quality.language",
            self.language,
            "a language code datatrove has a word tokenizer for (en, de, fr, ...)",
        )
        for name in FILTERS:
            params = getattr(self, name).params
            allowed = filter_param_names(name) if params else []  # importing the filters costs ~0.5 s
            for key, value in params.items():
                where = f"quality.{name}.params.{key}"
                check(key not in _SET_BY_STAGE, where, value, _SET_BY_STAGE.get(key, ""))
                check(key in allowed, where, value, f"one of {', '.join(allowed)}")

    def build(self) -> QualityFilter:
        return QualityFilter(self)


def _tuples(value: Any) -> Any:
    # YAML gives lists where datatrove wants tuples (FineWeb's stop_chars goes to str.endswith).
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def memoising_tokenizer(language: str, num_cached_texts: int = 4) -> Any:
    """datatrove's word tokenizer for `language`, remembering its results for the last few texts.

    Passed as every filter's `language`, it makes the filters share one tokenization of each text;
    results are datatrove's own, so decisions are identical to running the filters separately.
    `clear()` forgets everything (the stage calls it after each document).
    """
    from datatrove.utils.word_tokenizers import WordTokenizer, load_word_tokenizer  # heavy, see above

    class MemoisingTokenizer(WordTokenizer):
        def __init__(self, inner: WordTokenizer):
            super().__init__(inner.language)
            self.inner = inner
            # One cache per method, so C4's per-line sentence splits never evict a document's words.
            self._caches: dict[str, OrderedDict] = {
                m: OrderedDict() for m in ("word_tokenize", "sent_tokenize", "span_tokenize")
            }

        def _cached(self, method: str, text: str) -> Any:
            cache = self._caches[method]
            if text in cache:
                cache.move_to_end(text)
                return cache[text]
            result = cache[text] = getattr(self.inner, method)(text)
            if len(cache) > num_cached_texts:
                cache.popitem(last=False)
            return result

        def clear(self) -> None:
            for cache in self._caches.values():
                cache.clear()

        def word_tokenize(self, text: str) -> list[str]:
            return self._cached("word_tokenize", text)

        def sent_tokenize(self, text: str) -> list[str]:
            return self._cached("sent_tokenize", text)

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return self._cached("span_tokenize", text)

    return MemoisingTokenizer(load_word_tokenizer(language))


class QualityFilter(Stage):
    name = "quality"

    def __init__(self, cfg: QualityConfig):
        # datatrove is heavy (~0.5 s with spacy): loaded when the stage is built, not on import.
        from datatrove.data import Document
        from datatrove.pipeline import filters
        from datatrove.pipeline.filters.base_filter import get_filter_result

        self._document = Document
        self._filter_result = get_filter_result
        self.cfg = cfg
        self.tokenizer = memoising_tokenizer(cfg.language)
        self.filters = []  # (config name, datatrove filter), in FILTERS order
        for name, (cls_name, _) in FILTERS.items():
            sub = getattr(cfg, name)
            if sub.enabled:
                params = {k: _tuples(v) for k, v in sub.params.items()}
                self.filters.append((name, getattr(filters, cls_name)(language=self.tokenizer, **params)))

    def __reduce__(self) -> tuple:
        # Ship the config, not spaCy: workers rebuild the stage (the tokenizer class is local anyway).
        return QualityFilter, (self.cfg,)

    def process(self, doc: Doc) -> Doc | Reject:
        dt_doc = self._document(text=doc.text, id=doc.id)
        try:
            for name, f in self.filters:
                kept, reason = self._filter_result(f.filter(dt_doc))
                if not kept:
                    return Reject(stage_reason(name, reason), detail=name)
        finally:
            # Datatrove caches our tokenizer forever (load_word_tokenizer); keep it from holding texts.
            self.tokenizer.clear()
        if not self.cfg.c4.enabled:
            return doc
        num_lines_removed = 0
        if dt_doc.text != doc.text:
            num_lines_removed = len(doc.text.splitlines()) - len(dt_doc.text.splitlines())
        meta = {**doc.metadata, "quality": {"c4_lines_removed": num_lines_removed}}
        return dataclasses.replace(doc, text=dt_doc.text, metadata=meta)
