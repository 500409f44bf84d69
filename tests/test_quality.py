"""Quality stage: datatrove's four heuristic filters, switchable and tunable, same decisions as datatrove."""

from __future__ import annotations

import importlib
import inspect
import pickle
import random
import socket
from dataclasses import dataclass, field

import pytest

from data_pipeline.document import Doc, Reject
from data_pipeline.stages.quality import FilterConfig, QualityConfig, QualityFilter
from pretrain.core.config import ConfigError, load_config

GOOD = (
    "The river runs through the middle of the old town, and most of the houses face the water. "
    "People have lived here for many centuries, and the stone bridge is older than the church.\n"
    "In the summer, visitors walk along the banks and buy fresh bread from the small bakery near the square. "
    "The baker opens his shop before sunrise, so the smell of warm loaves fills the narrow streets.\n"
    "Local children learn to swim in the shallow part of the river. "
    "Their parents watch from the grass and talk about the weather, the harvest and the price of fish.\n"
    "When autumn comes, the town becomes quiet again. "
    "The last boats are pulled onto the shore, and the cafes close their terraces until the spring."
)
# Each fails exactly one of the four filters (asserted against plain datatrove below).
NO_STOP_WORDS = (
    "Cats sleep most days inside warm kitchens near old stoves. "
    "Dogs bark loudly whenever strangers walk past garden gates.\n"
    "Farmers plant wheat every spring across wide fields beyond town. "
    "Children collect apples from orchards during bright autumn mornings.\n"
    "Old fishermen mend nets while gulls circle above busy harbours. "
    "Bakers knead dough before dawn so customers find fresh loaves.\n"
    "Teachers read stories aloud while pupils listen quietly in rows. "
    "Winter storms sometimes close roads across northern hills for days."
)
REPEATED_NGRAMS = "\n".join(
    f"Alice said that she would come home soon after lunch on {day}."
    for day in [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "the holiday",
        "her birthday",
        "the weekend",
    ]
)
CURLY = GOOD + "\nSome programmers write a mapping such as {red: 1} in their notes to remember colours."
SHORT_LINES = "\n".join([
    "We ate fresh bread at noon.", "The old dog sleeps by the fire.", "Rain fell over the quiet hills.",
    "She painted the garden fence.", "Children laughed in the park.", "He mended the broken chair.",
    "Birds flew to the roof.", "Bread and milk were cheap.", "Snow covered the small town.",
    "They walked along the river.", "A farmer planted new trees.", "Ships waited in the harbour.",
    "The teacher opened a window.", "Bees hummed among the roses.", "My sister wrote a letter.",
    "Wind rattled the wooden door.",
])  # fmt: skip
ONLY_FAILS = {  # filter -> (doc failing only it, datatrove's reason, our reason)
    "gopher_quality": (NO_STOP_WORDS, "gopher_enough_stop_words", "gopher_enough_stop_words"),
    "gopher_repetition": (REPEATED_NGRAMS, "top_3_gram", "gopher_rep_top_3_gram"),
    "c4": (CURLY, "curly_bracket", "c4_curly_bracket"),
    "fineweb": (SHORT_LINES, "short_line_ratio", "fineweb_short_line_ratio"),
}
DT_CLASSES = {"gopher_quality": "GopherQualityFilter", "gopher_repetition": "GopherRepetitionFilter",
              "c4": "C4QualityFilter", "fineweb": "FineWebQualityFilter"}  # fmt: skip


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"quality stage tried the network: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def plain_datatrove_filters(**params) -> dict:
    """The four filters as datatrove users run them: default (spaCy English) tokenizer each."""
    from datatrove.pipeline import filters

    return {name: getattr(filters, cls)(**params.get(name, {})) for name, cls in DT_CLASSES.items()}


def plain_datatrove(text: str, dt_filters: dict) -> tuple[bool, str | None, str | None, str]:
    """(kept, failing filter, datatrove reason, final text) from running the filters in order."""
    from datatrove.data import Document

    dt_doc = Document(text=text, id="x")
    for name, f in dt_filters.items():
        result = f.filter(dt_doc)
        if result is not True:
            return False, name, result[1], dt_doc.text
    return True, None, None, dt_doc.text


def stage(**filters: FilterConfig) -> QualityFilter:
    return QualityConfig(**filters).build()


def doc(text: str) -> Doc:
    return Doc(id="d0", text=text, source="test", metadata={"language": "en"})


def test_good_prose_passes_all_four_and_is_kept_unchanged():
    out = stage().process(doc(GOOD))
    assert isinstance(out, Doc), out
    assert out.text == GOOD
    assert out.metadata == {"language": "en", "quality": {"c4_lines_removed": 0}}
    assert plain_datatrove(GOOD, plain_datatrove_filters())[0]


@pytest.mark.parametrize(
    ("text", "filter_name", "dt_reason", "reason"),
    [
        ("The cat and the dog sat with the old farmer.", "gopher_quality", "gopher_short_doc",
         "gopher_short_doc"),
        ("\n".join(["The cat sat on the mat and looked at the door of the house."] * 10),
         "gopher_repetition", "dup_line_frac", "gopher_rep_dup_line_frac"),
        (GOOD + "\nThe designer filled the page with lorem ipsum text before the real words arrived.",
         "c4", "lorem_ipsum", "c4_lorem_ipsum"),
        (CURLY, "c4", "curly_bracket", "c4_curly_bracket"),
        (SHORT_LINES, "fineweb", "short_line_ratio", "fineweb_short_line_ratio"),
    ],
)  # fmt: skip
def test_each_filter_rejects_its_crafted_doc_with_datatrove_reason(text, filter_name, dt_reason, reason):
    dt_filter = plain_datatrove_filters()[filter_name]
    from datatrove.data import Document

    assert dt_filter.filter(Document(text=text, id="x")) == (False, dt_reason)
    assert stage().process(doc(text)) == Reject(reason, detail=filter_name)


def test_lines_without_punctuation_fail_fineweb_when_c4_is_off():
    text = "\n".join(line.rstrip(".") for line in GOOD.split("\n"))
    assert stage().process(doc(text)) == Reject("c4_too_few_sentences", detail="c4")
    off = stage(c4=FilterConfig(enabled=False))
    assert off.process(doc(text)) == Reject("fineweb_line_punct_ratio", detail="fineweb")


@pytest.mark.parametrize("name", list(ONLY_FAILS))
def test_disabling_a_filter_lets_its_crafted_doc_through(name):
    text, dt_reason, reason = ONLY_FAILS[name]
    failing = {n: r for n, f in plain_datatrove_filters().items() if (r := _dt_reason(f, text)) is not None}
    assert failing == {name: dt_reason}
    assert stage().process(doc(text)) == Reject(reason, detail=name)
    kept = stage(**{name: FilterConfig(enabled=False)}).process(doc(text))
    assert isinstance(kept, Doc), kept
    assert kept.text == text


def _dt_reason(f, text: str) -> str | None:
    from datatrove.data import Document

    result = f.filter(Document(text=text, id="x"))
    return None if result is True else result[1]


def test_c4_line_removal_is_carried_to_the_doc():
    text = "Menu\n" + GOOD + "\nPlease enable JavaScript in your browser to see this page.\nShare this"
    out = stage().process(doc(text))
    assert isinstance(out, Doc), out
    assert out.text == GOOD
    assert out.metadata["quality"] == {"c4_lines_removed": 3}
    assert plain_datatrove(text, plain_datatrove_filters()) == (True, None, None, GOOD)


def test_params_override_reaches_datatrove():
    short_doc = "The cat and the dog sat with the old farmer."
    only_gopher = {n: FilterConfig(enabled=False) for n in ("gopher_repetition", "c4", "fineweb")}
    assert stage(**only_gopher).process(doc(short_doc)) == Reject("gopher_short_doc", detail="gopher_quality")
    tuned = stage(gopher_quality=FilterConfig(params={"min_doc_words": 5}), **only_gopher)
    assert [(n, f.min_doc_words) for n, f in tuned.filters] == [("gopher_quality", 5)]
    assert isinstance(tuned.process(doc(short_doc)), Doc)


@dataclass
class _Top:
    quality: QualityConfig = field(default_factory=QualityConfig)


def test_dotted_overrides_build_the_stage():
    cfg = load_config(_Top, None, ["quality.gopher_quality.params.min_doc_words=5", "quality.c4.enabled=false",
                                   "quality.fineweb.params.stop_chars=['.', '!']"])  # fmt: skip
    assert cfg.quality.gopher_quality.params == {"min_doc_words": 5}
    built = dict(cfg.quality.build().filters)
    assert list(built) == ["gopher_quality", "gopher_repetition", "fineweb"]
    assert built["fineweb"].stop_chars == (".", "!")  # a tuple: datatrove passes it to str.endswith
    assert isinstance(cfg.quality.build().process(doc(GOOD)), Doc)


def test_unknown_param_is_a_config_error_naming_it_and_the_allowed_names():
    with pytest.raises(
        ConfigError, match=r"quality\.c4\.params\.bogus=1 .*filter_curly_bracket.*min_num_sentences"
    ):
        load_config(_Top, None, ["quality.c4.params.bogus=1"])
    with pytest.raises(ConfigError, match=r"quality\.fineweb\.params\.exclusion_writer"):
        QualityConfig(fineweb=FilterConfig(params={"exclusion_writer": None}))
    with pytest.raises(ConfigError, match=r"quality\.gopher_quality\.params\.language.*quality\.language"):
        QualityConfig(gopher_quality=FilterConfig(params={"language": "fr"}))
    with pytest.raises(ConfigError, match=r"quality\.language='klingon'"):
        QualityConfig(language="klingon")


def test_each_text_is_word_tokenized_once(monkeypatch):
    s = stage()
    calls = []
    tokenizer = s.tokenizer_for("en")  # doc() is English
    inner = tokenizer.inner
    real = inner.word_tokenize
    monkeypatch.setattr(inner, "word_tokenize", lambda text: calls.append(text) or real(text))
    assert isinstance(s.process(doc(GOOD)), Doc)
    assert calls == [GOOD]  # gopher_quality, gopher_repetition and fineweb all used it
    assert not any(tokenizer._caches.values())  # nothing held between documents


def test_stage_pickles_as_its_config():
    s = stage(c4=FilterConfig(params={"min_num_sentences": 2}))
    clone = pickle.loads(pickle.dumps(s))
    assert clone.cfg == s.cfg
    assert clone.process(doc(CURLY)) == s.process(doc(CURLY)) == Reject("c4_curly_bracket", detail="c4")


def _stdlib_paragraphs() -> list[str]:
    """Docstrings of a few stdlib modules: English prose mixed with code, lists and wrapped lines."""
    paragraphs = []
    for name in ("argparse", "collections", "json", "logging", "pathlib", "subprocess", "threading",
                 "http.client", "unittest", "functools", "dataclasses", "inspect", "pickle", "shutil",
                 "tarfile", "zipfile", "csv", "decimal", "random", "datetime", "textwrap", "difflib",
                 "configparser", "contextlib", "heapq", "enum", "tempfile", "doctest", "pydoc"):  # fmt: skip
        mod = importlib.import_module(name)
        for obj in [mod] + [getattr(mod, a) for a in sorted(vars(mod)) if not a.startswith("_")]:
            text = (
                inspect.getdoc(obj) if inspect.isclass(obj) or inspect.isfunction(obj) or obj is mod else None
            )
            paragraphs += [p for p in (text or "").split("\n\n") if p.strip()]
    return paragraphs


def varied_docs(num_docs: int = 200) -> list[str]:
    """Real-ish text in ten shapes, so that every filter and most of their reasons fire."""
    rng = random.Random(0)
    paragraphs = _stdlib_paragraphs()
    # Mostly prose (no code), so that many docs get past Gopher to C4 and FineWeb.
    prose = [p for p in paragraphs if p.rstrip().endswith(".") and not set("()[]{}<>=_`#") & set(p)]
    docs, start = [], 0
    while len(docs) < num_docs:
        source, chunk = (paragraphs if len(docs) % 10 == 0 else prose), []
        while sum(map(len, chunk)) < 2000:
            chunk.append(source[start % len(source)])
            start += 1
        flat = [" ".join(p.split()) for p in chunk]  # one paragraph per line, like web prose
        shape = len(docs) % 10
        if shape == 0:
            text = "\n\n".join(chunk)  # wrapped lines, as written
        elif shape == 1:
            text = "\n".join(flat)
        elif shape == 2:
            text = "\n".join(f"{p} [{i}][edit]" if i % 2 else p for i, p in enumerate(flat))
        elif shape == 3:
            text = "\n".join(flat[:3]) + "\nThis site uses cookies.\nEnable JavaScript to continue, please.\n"
            text += "\n".join(flat[3:])
        elif shape == 4:
            text = "\n".join(f"- {s.strip()}" for p in flat for s in p.split(". ") if s.strip())
        elif shape == 5:
            text = "\n".join(p.rstrip(".") + "..." if rng.random() < 0.5 else p for p in flat)
        elif shape == 6:
            text = "\n\n".join(flat + flat[: rng.randint(1, len(flat))])
        elif shape == 7:
            text = "\n".join(
                w for p in flat for w in ([p] + rng.sample(["Home", "News", "About us", "Login"], 2))
            )
        elif shape == 8:
            text = " ".join(f"#{w}" if rng.random() < 0.2 else w for w in " ".join(flat).split())
        else:
            text = " ".join(flat)[: rng.randint(0, 600)]
        docs.append(text)
    return docs + [GOOD, CURLY, SHORT_LINES, NO_STOP_WORDS, REPEATED_NGRAMS, "", "  \n ", "{}"]


def test_same_decisions_reasons_and_text_as_plain_datatrove():
    from data_pipeline.stages.quality import FILTERS

    s, dt_filters = stage(), plain_datatrove_filters()
    reasons, details = set(), set()
    texts = varied_docs()
    for i, text in enumerate(texts):
        kept, name, dt_reason, dt_text = plain_datatrove(text, dt_filters)
        out = s.process(Doc(id=str(i), text=text, source="test"))
        if kept:
            assert isinstance(out, Doc) and out.text == dt_text, (i, out)
        else:
            prefix = FILTERS[name][1]
            expected = dt_reason if dt_reason.startswith(prefix) else prefix + dt_reason
            assert out == Reject(expected, detail=name), (i, text[:200])
        reasons.add(out.reason if isinstance(out, Reject) else "kept")
        details.add(out.detail if isinstance(out, Reject) else "kept")
    assert len(texts) == 208
    assert len(reasons) >= 12, reasons  # the set really is varied
    assert details == {"kept", *FILTERS}


# -- per-language rules ----------------------------------------------------------------------------
GERMAN = (
    "Die Stadt liegt an einem Fluss, und viele Menschen kommen im Sommer, um die alte Brücke zu sehen. "
    "Das Museum ist nicht groß, aber es zeigt Bilder aus vielen Jahrhunderten mit einer ruhigen Sorgfalt. "
    "Am Abend sitzen die Leute vor den Häusern, trinken Wein und sprechen über das Wetter und die Ernte. "
    "Wer länger bleibt, lernt die Wege durch die Weinberge kennen und findet kleine Gasthäuser am Hang."
)
ENGLISH_LONG = ["internationalization", "telecommunications", "misunderstandings", "responsibilities",
                "characterization", "recommendations", "infrastructure", "administration"]  # fmt: skip
GERMAN_LONG = ["Bundesverfassungsgericht", "Arbeitslosenversicherung", "Haftpflichtversicherung",
               "Straßenbahnhaltestelle", "Lebensmittelgeschäft", "Gemeindeverwaltung", "Wissenschaftler",
               "Verkehrsministerium"]  # fmt: skip


def _long_word_doc(stop: list[str], long: list[str]) -> str:
    """60 words, a language's stop words and its long words, mixed so the mean word length is about
    11 (Gopher's ceiling is 10; compounds make German words long), in five sentences."""
    words = [stop[i % len(stop)] if i % 2 else long[(i * 3) % len(long)] for i in range(60)]

    def mean() -> float:
        return sum(map(len, words)) / len(words)

    i = 1
    while not 10.5 < mean() < 11.5 and i < 60:  # trade stop words for long ones, or back
        words[i] = long[i % len(long)] if mean() < 10.5 else stop[i % len(stop)]
        i += 2 if mean() < 10.5 else 1
    return " ".join(" ".join(words[k : k + 12]).capitalize() + "." for k in range(0, 60, 12))


def _lang_doc(text: str, lang: str) -> Doc:
    return Doc(id="d0", text=text, source="test", metadata={"language": lang})


def test_german_prose_is_judged_by_german_stop_words():
    only_gopher = {n: FilterConfig(enabled=False) for n in ("gopher_repetition", "c4", "fineweb")}
    per_language = stage(**only_gopher)
    assert isinstance(per_language.process(_lang_doc(GERMAN, "de")), Doc)
    # The same page judged by the English rules has none of "the, be, to, of, and, that, have, with".
    english_only = QualityConfig(per_language={}, **only_gopher).build()
    assert english_only.process(_lang_doc(GERMAN, "de")) == Reject(
        "gopher_enough_stop_words", detail="gopher_quality"
    )
    assert isinstance(per_language.process(_lang_doc(GOOD, "en")), Doc)


def test_same_defect_judged_by_each_languages_own_threshold():
    """Long words (mean length about 11): above Gopher's English ceiling of 10, within the German
    ceiling of 12 (compounds); the German page is rejected too once judged by English rules."""
    from data_pipeline.stages.quality import DEFAULT_LANGUAGE_RULES

    only_gopher = {n: FilterConfig(enabled=False) for n in ("gopher_repetition", "c4", "fineweb")}
    s = stage(**only_gopher)
    en = _long_word_doc(DEFAULT_LANGUAGE_RULES["en"]["stop_words"], ENGLISH_LONG)
    de = _long_word_doc(DEFAULT_LANGUAGE_RULES["de"]["stop_words"], GERMAN_LONG)
    for text in (en, de):
        words = text.replace(".", "").split()
        assert len(words) == 60 and 10 < sum(map(len, words)) / len(words) < 12, text
    assert s.process(_lang_doc(en, "en")) == Reject("gopher_above_avg_threshold", detail="gopher_quality")
    assert isinstance(s.process(_lang_doc(de, "de")), Doc)
    english_only = QualityConfig(per_language={}, **only_gopher).build()
    assert english_only.process(_lang_doc(de, "de")) == Reject(
        "gopher_above_avg_threshold", detail="gopher_quality"
    )
    tuned = QualityConfig(per_language={"de": {"gopher_quality": {"max_avg_word_length": 10}}}, **only_gopher)
    assert tuned.build().process(_lang_doc(de, "de")) == Reject(
        "gopher_above_avg_threshold", detail="gopher_quality"
    )


def test_per_language_rules_are_validated_naming_the_field():
    with pytest.raises(ConfigError, match=r"quality\.per_language\.de\.gopher_quality\.max_word_len=3"):
        QualityConfig(per_language={"de": {"gopher_quality": {"max_word_len": 3}}})
    with pytest.raises(ConfigError, match=r"quality\.per_language\.de\.stopwords"):
        QualityConfig(per_language={"de": {"stopwords": ["der"]}})
    with pytest.raises(ConfigError, match=r"quality\.per_language\.xx"):
        QualityConfig(per_language={"xx": {}})
