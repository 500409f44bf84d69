"""Other-language cases: documents in ten languages that py3langid identifies confidently, which
the language stage drops as wrong_language.
"""

from __future__ import annotations

from data_pipeline.corpus.assets import string_lists
from data_pipeline.corpus.checks import checks
from data_pipeline.corpus.planted import Builder, Planted, expect, first_ok, split_paragraphs

NON_ENGLISH_DOCS = {"fr": 4, "de": 4, "es": 4, "it": 3, "pt": 3, "nl": 3, "ru": 3, "zh": 2, "ja": 2, "ar": 2}

_NON_ENGLISH = string_lists("non_english")


def plant_non_english(b: Builder) -> None:
    rng = b.rng
    for lang, num_docs in NON_ENGLISH_DOCS.items():
        joiner = "" if lang in ("zh", "ja") else " "  # no spaces between sentences in these scripts
        for _ in range(num_docs):
            pool = _NON_ENGLISH[lang]
            text, _ = first_ok(
                lambda p=pool, j=joiner: split_paragraphs(rng.sample(p, rng.randint(5, 6)), rng, j),
                lambda t, lang=lang: checks().is_language(t, lang),
                lang,
            )
            extra = {"lang": lang}
            fate = expect("language", "wrong_language")
            b.add(Planted("non_english", text, expect=fate, extra=extra, url=b.url(f"{lang}/news")))
