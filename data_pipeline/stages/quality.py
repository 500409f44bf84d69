"""Heuristic quality filtering with datatrove's Gopher quality, Gopher repetition, C4 and FineWeb filters.

Each filter can be switched off and tuned from the config; `params` go verbatim to the datatrove
filter's constructor (`quality.gopher_quality.params.min_doc_words=20`, `quality.c4.enabled=false`).
Filters run in FineWeb's order and the first failure rejects the doc with datatrove's reason.
Each document is judged by its own language's rules (`per_language`: word tokenizer, stop words,
thresholds), so a German page is not measured against English stop words. The C4
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


# Per-language rules the stage ships (a document's language comes from the language stage).
# Stop words: Gopher (Rae et al. 2021) requires 2 of 8 very frequent English function words
# (datatrove's STOP_WORDS); the other lists are each language's eight most frequent function words
# (articles, copulas, conjunctions, prepositions), the same idea for text Gopher's list cannot
# judge: a German or French page has none of "the, be, to, of, and, that, have, with".
# Word length: German and Dutch write compounds as one word, so Gopher's 10-character ceiling on the
# mean word length is raised to 12 there. FineWeb-2 (Penedo et al. 2025) showed that thresholds
# tuned on English misjudge other languages; these are a conservative start, tunable per language.
DEFAULT_LANGUAGE_RULES: dict[str, dict[str, Any]] = {
    "en": {"stop_words": ["the", "be", "to", "of", "and", "that", "have", "with"]},
    "de": {"stop_words": ["der", "die", "das", "und", "ist", "nicht", "mit", "zu"],
           "gopher_quality": {"max_avg_word_length": 12}},
    "nl": {"stop_words": ["de", "het", "een", "en", "van", "is", "niet", "met"],
           "gopher_quality": {"max_avg_word_length": 12}},
    "fr": {"stop_words": ["le", "la", "les", "de", "et", "est", "un", "que"]},
    "es": {"stop_words": ["el", "la", "de", "que", "y", "en", "los", "es"]},
    "it": {"stop_words": ["il", "la", "di", "che", "e", "è", "un", "per"]},
    "pt": {"stop_words": ["o", "a", "de", "que", "e", "do", "da", "é"]},
    "pl": {"stop_words": ["i", "w", "nie", "na", "się", "jest", "to", "z"]},
}  # fmt: skip
_RULE_KEYS = ("stop_words", *FILTERS)


def _default_language_rules() -> dict[str, dict[str, Any]]:
    return {lang: {k: (dict(v) if isinstance(v, dict) else list(v)) for k, v in r.items()}
            for lang, r in DEFAULT_LANGUAGE_RULES.items()}  # fmt: skip


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
    """Language code of the word/sentence tokenizer for documents whose language has no entry in
    `per_language` (or that carry none): one datatrove knows (en, de, fr...)."""
    per_language: dict[str, dict[str, Any]] = field(default_factory=_default_language_rules)
    """Rules per document language (metadata.language, set by the language stage): that language's
    word tokenizer, `stop_words` for Gopher's stop-word rule, and filter params laid over the ones
    above, e.g. `quality.per_language.de.gopher_quality.max_avg_word_length=12`. The defaults
    (DEFAULT_LANGUAGE_RULES) cover en, de, nl, fr, es, it, pt, pl; {} judges everything by `language`."""

    def __post_init__(self) -> None:
        from datatrove.utils.word_tokenizers import load_tokenizer_assignments  # heavy, see above

        check(
            self.language in load_tokenizer_assignments(),
            "quality.language",
            self.language,
            "a language code datatrove has a word tokenizer for (en, de, fr, ...)",
        )
        param_sets = [(f"quality.{name}.params", name, getattr(self, name).params) for name in FILTERS]
        for lang, rules in self.per_language.items():
            check(
                lang in load_tokenizer_assignments(),
                f"quality.per_language.{lang}",
                lang,
                "a language code datatrove has a word tokenizer for (en, de, fr, ...)",
            )
            for key, value in rules.items():
                where = f"quality.per_language.{lang}.{key}"
                check(key in _RULE_KEYS, where, value, f"one of {', '.join(_RULE_KEYS)}")
                if key == "stop_words":
                    check(isinstance(value, list) and value, where, value, "a non-empty list of words")
                else:
                    check(isinstance(value, dict), where, value, "a mapping of that filter's params")
                    param_sets.append((where, key, value))
        for where, name, params in param_sets:
            allowed = filter_param_names(name) if params else []  # importing the filters costs ~0.5 s
            for key, value in params.items():
                check(key not in _SET_BY_STAGE, f"{where}.{key}", value, _SET_BY_STAGE.get(key, ""))
                check(key in allowed, f"{where}.{key}", value, f"one of {', '.join(allowed)}")

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
        self._filters_module = filters
        self.cfg = cfg
        # language -> (memoising tokenizer, [(config name, datatrove filter)] in FILTERS order),
        # built on a language's first document; None: the default rules.
        self._sets: dict[str | None, tuple[Any, list]] = {}

    @property
    def filters(self) -> list:
        """[(config name, datatrove filter)] of the default rules (`language` and the params above)."""
        return self._filter_set(None)[1]

    def tokenizer_for(self, lang: str | None) -> Any:
        """The memoising word tokenizer the filters use for documents in `lang`."""
        return self._filter_set(lang)[0]

    def _filter_set(self, lang: str | None) -> tuple[Any, list]:
        key = lang if lang in self.cfg.per_language else None
        if key not in self._sets:
            rules = self.cfg.per_language.get(key, {}) if key else {}
            tokenizer = memoising_tokenizer(key or self.cfg.language)
            built = []
            for name, (cls_name, _) in FILTERS.items():
                sub = getattr(self.cfg, name)
                if sub.enabled:
                    params = {**sub.params, **rules.get(name, {})}
                    if name == "gopher_quality" and "stop_words" in rules and "stop_words" not in sub.params:
                        params["stop_words"] = rules["stop_words"]
                    params = {k: _tuples(v) for k, v in params.items()}
                    built.append(
                        (name, getattr(self._filters_module, cls_name)(language=tokenizer, **params))
                    )
            self._sets[key] = (tokenizer, built)
        return self._sets[key]

    def __reduce__(self) -> tuple:
        # Ship the config, not spaCy: workers rebuild the stage (the tokenizer class is local anyway).
        return QualityFilter, (self.cfg,)

    def process(self, doc: Doc) -> Doc | Reject:
        dt_doc = self._document(text=doc.text, id=doc.id)
        lang = doc.metadata.get("language")
        tokenizer, filters = self._filter_set(lang)
        try:
            for name, f in filters:
                kept, reason = self._filter_result(f.filter(dt_doc))
                if not kept:
                    return Reject(stage_reason(name, reason), detail=name)
        finally:
            # Datatrove caches our tokenizer forever (load_word_tokenizer); keep it from holding texts.
            tokenizer.clear()
        if not self.cfg.c4.enabled:
            return doc
        num_lines_removed = 0
        if dt_doc.text != doc.text:
            num_lines_removed = len(doc.text.splitlines()) - len(dt_doc.text.splitlines())
        meta = {**doc.metadata, "quality": {"c4_lines_removed": num_lines_removed}}
        return dataclasses.replace(doc, text=dt_doc.text, metadata=meta)
