"""Deterministic tiny corpus with planted cases and exact ground truth, for the demo and CI.

`generate_corpus(out_dir, seed)` writes `raw/` (JSONL, .jsonl.gz, .jsonl.zst, Parquet, .txt and a
WARC file) plus `truth.jsonl` (one row per document or line: category and expected fate, keyed by
the pipeline's document id) and `corpus.json` (the summary it also returns). The same seed and
Python version give byte-identical files. Run: `pretrain data generate-corpus --out DIR --seed N`.

Base text is real English prose that ships with every Python: the standard library's docstrings
(read from the sources with `ast`, so no module is imported or run), the docstrings of its built-in
C modules and pydoc's language-reference topics. Planted cases (duplicates, near-duplicates, PII,
toxic, junk, other languages, unreadable records, empty, giant, mojibake) are mixed in with a
seeded shuffle. Candidates are checked with datatrove's default quality filters and py3langid, so
the expected fates hold by construction.
"""

from __future__ import annotations

import ast
import base64
import gzip
import hashlib
import importlib
import inspect
import io
import json
import logging
import random
import re
import shutil
import sys
import sysconfig
import unicodedata
import uuid
from collections import Counter
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

# The truth's `jaccard` uses exactly the shingles MinHash dedup uses; re-exported for the tests.
from data_pipeline.minhash.shingles import jaccard, word_shingles
from data_pipeline.stages.quality import stage_reason

log = logging.getLogger(__name__)

NUM_WEB_SHARDS = 8  # parts 0-5 plain JSONL, 6 gzip, 7 zstd
NUM_BOOKS = 30
NUM_NOTES = 10
NUM_HTML = 10
NUM_EXACT_DUP = 20
NUM_EXACT_DUP_NORMALIZED = 10  # half NFD, half trailing spaces
NUM_PII = 28
NUM_PII_HARD_NEGATIVE = 15
NUM_MOJIBAKE = 5
NUM_CLEAN_TRICKY = 10
NUM_TOXIC = 30
NUM_JUNK_PER_KIND = 10
NUM_GIANT = 2
GIANT_CHARS = 1_200_000
MIN_BASE_DOCS = 300  # what the planted cases consume or copy, plus room for retries
JACCARD_LEVELS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
JACCARD_TOLERANCE = 0.02
NEAR_DUP_PLAN = tuple(
    (lvl, kind) for lvl in JACCARD_LEVELS for kind in ("insert", "delete", "substitute")
) + (
    (0.8, "boilerplate"),
    (0.85, "boilerplate"),
    (0.9, "boilerplate"),
    (0.95, "boilerplate"),
    (0.85, "reorder"),
    (0.9, "reorder"),
    (0.95, "reorder"),
)
PII_TYPES = ("email", "ip_address", "phone", "credit_card", "iban", "ssn", "secret")
JUNK_KINDS = ("boilerplate", "symbol_soup", "repeated_lines", "very_short", "lorem_ipsum", "short_lines")
MIN_LANG_PROB = 0.65
QUALITY_FILTERS = ("gopher_quality", "gopher_repetition", "c4", "fineweb")

KEPT = "kept"


def _expect(stage: str, reason: str) -> dict[str, str]:
    return {"stage": stage, "reason": reason}


# --------------------------------------------------------------------------------------------------
# The default pipeline's cheap checks (datatrove filters with defaults, py3langid).


class _DefaultChecks:
    def __init__(self) -> None:
        from datatrove.data import Document
        from datatrove.pipeline.filters import (
            C4QualityFilter,
            FineWebQualityFilter,
            GopherQualityFilter,
            GopherRepetitionFilter,
        )
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        self._document = Document
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

    def kept_unchanged(self, text: str) -> bool:
        """True when every filter keeps `text`, C4 does not rewrite it, and it is confident English."""
        lang, prob = self.language(text)
        if lang != "en" or prob < MIN_LANG_PROB:
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
        from datatrove.pipeline.filters import c4_filters as c4

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
            # spaCy always splits "word. Next" when the word has 4+ lowercase letters (no
            # tokenizer exception is that long), and the sentencizer starts a sentence there.
            num_sentences += 1 + len(_SURE_SENTENCE_BREAK.findall(line))
        return num_sentences >= 5


_SURE_SENTENCE_BREAK = re.compile(r"\b[a-z]{4,}[.!?] [A-Z]")


@lru_cache(maxsize=1)
def _checks() -> _DefaultChecks:
    return _DefaultChecks()


# --------------------------------------------------------------------------------------------------
# Base documents from the standard library's documentation.

# Fixed, sorted lists so the walk is stable. Modules are read as source (never imported: some run
# code on import), except built-in C modules, whose import has no side effects. Missing names are
# skipped, so another Python version gives another (still deterministic) corpus.
_SOURCE_MODULES = (
    "__future__", "_collections_abc", "_pydecimal", "_pyio", "_strptime", "_threading_local", "abc",
    "aifc", "argparse", "ast", "asynchat", "asyncio", "asyncore", "base64", "bdb", "bisect", "bz2",
    "cProfile", "calendar", "cgi", "cgitb", "chunk", "cmd", "code", "codecs", "codeop", "collections",
    "colorsys", "compileall", "concurrent", "configparser", "contextlib", "contextvars", "copy",
    "copyreg", "crypt", "csv", "ctypes", "curses", "dataclasses", "datetime", "dbm", "decimal",
    "difflib", "dis", "doctest", "email", "enum", "filecmp", "fileinput", "fnmatch", "fractions",
    "ftplib", "functools", "genericpath", "getopt", "getpass", "gettext", "glob", "graphlib", "gzip",
    "hashlib", "heapq", "hmac", "html", "http", "imaplib", "imghdr", "imp", "importlib", "inspect",
    "io", "ipaddress", "json", "keyword", "linecache", "locale", "logging", "lzma", "mailbox",
    "mailcap", "mimetypes", "modulefinder", "multiprocessing", "netrc", "nntplib", "ntpath",
    "nturl2path", "numbers", "opcode", "operator", "optparse", "os", "pathlib", "pdb", "pickle",
    "pickletools", "pipes", "pkgutil", "platform", "plistlib", "poplib", "posixpath", "pprint",
    "profile", "pstats", "pty", "py_compile", "pyclbr", "pydoc", "queue", "quopri", "random", "re",
    "reprlib", "rlcompleter", "runpy", "sched", "secrets", "selectors", "shelve", "shlex", "shutil",
    "signal", "site", "smtpd", "smtplib", "sndhdr", "socket", "socketserver", "sqlite3",
    "sre_compile", "sre_constants", "sre_parse", "ssl", "stat", "statistics", "string",
    "stringprep", "struct", "subprocess", "sunau", "symtable", "sysconfig", "tabnanny", "tarfile",
    "telnetlib", "tempfile", "textwrap", "threading", "timeit", "token", "tokenize", "tomllib",
    "trace", "traceback", "tracemalloc", "tty", "turtle", "types", "typing", "unittest", "urllib",
    "uu", "uuid", "venv", "warnings", "wave", "weakref", "webbrowser", "wsgiref", "xdrlib", "xml",
    "xmlrpc", "zipapp", "zipfile", "zipimport", "zoneinfo",
)  # fmt: skip
_C_MODULES = (  # the same members on every OS (posix, select, socket, mmap, sys, time are not)
    "_bisect", "_collections", "_csv", "_datetime", "_functools", "_heapq", "_io", "_json",
    "_operator", "_pickle", "_random", "_sqlite3", "_struct", "_thread", "array", "atexit",
    "binascii", "builtins", "cmath", "gc", "itertools", "marshal", "math", "pyexpat",
    "unicodedata", "zlib",
)  # fmt: skip


_BULLET_OR_CODE_LINE = re.compile(r"\s|[-*•+]|\d|>>>|\.\.\s|:")
_MARKUP = re.compile(r"(?<![\w*`])(\*{1,2}|`{1,2})([A-Za-z][A-Za-z' -]*?)\1(?![\w*`])")  # *word*, ``word``
_ROLE = re.compile(r":[a-z]+:(?=`)")  # :class:`Foo`
_BANNED = re.compile(
    r"[{}@<>|\\=`\[\]#$%^~*/+]|__|\d{3,}|\d[.:/-]\d|--|\.\.\.|…|javascript|cookie|lorem|terms of use|policy",
    re.IGNORECASE,
)
_PLAIN_WORD = re.compile(r"\(?(?:[A-Za-z][a-z]*(?:'[a-z]+)?|\d{1,2})[.,;:!?)]?")
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)")


def _prose(paragraph: str) -> str | None:
    """The paragraph joined into one line if it reads as English prose, else None."""
    lines = paragraph.strip("\n").splitlines()
    if not lines or any(_BULLET_OR_CODE_LINE.match(line) for line in lines):
        return None
    text = " ".join(" ".join(line.split()) for line in lines)
    text = _MARKUP.sub(r"\2", _ROLE.sub("", text))
    if text.endswith(":"):  # "... works as follows:" introduces an example; keep what precedes it
        cut = text.rfind(". ")
        text = text[: cut + 1] if cut > 0 else text
    words = text.split()
    if (
        _BANNED.search(text)
        or not text.endswith((".", "!", "?"))
        or not text[0].isalpha()
        or len(words) < 6
        or len(text) < 40
        or text.count('"') % 2
        or text.count("(") != text.count(")")
    ):
        return None
    if sum(1 for w in words if _PLAIN_WORD.fullmatch(w)) < 0.85 * len(words):
        return None
    return text


def _source_docstrings() -> list[tuple[str, str]]:
    """(module, docstring) for modules, classes and functions of the stdlib sources, in file order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out: list[tuple[str, str]] = []
    for name in _SOURCE_MODULES:
        files = [root / f"{name}.py"]
        if (root / name).is_dir():
            files = sorted(p for p in (root / name).rglob("*.py") if not {"test", "tests"} & set(p.parts))
        for path in files:
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc:
                        out.append((name, doc))
    return out


def _c_module_docstrings() -> list[tuple[str, str]]:
    """Docstrings of built-in C modules (importing them runs no Python code)."""
    out: list[tuple[str, str]] = []
    for name in _C_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        objects: list[Any] = [module]
        for _, obj in sorted(vars(module).items()):
            if inspect.isclass(obj) or inspect.isroutine(obj):
                objects.append(obj)
                if inspect.isclass(obj):
                    objects.extend(o for _, o in sorted(vars(obj).items()) if inspect.isroutine(o))
        for obj in objects:
            doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str) and doc:
                out.append((name, inspect.cleandoc(doc)))
    return out


def _topic_docstrings() -> list[tuple[str, str]]:
    """pydoc's language-reference topics (what `help("topics")` shows)."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        return []
    return [("pydoc_data", topics[key]) for key in sorted(topics)]


@lru_cache(maxsize=1)
def _base_candidates() -> tuple[tuple[str, str], ...]:
    """Candidate base documents as (module, text), independent of the seed.

    Paragraphs are deduplicated globally (exactly, and when 30% of their word 5-grams were seen
    before) and grouped per top-level module into documents of roughly 80-110 words and at
    least 6 sentences, one paragraph per line.
    """
    seen_text: set[str] = set()
    seen_shingles: set[str] = set()
    by_module: dict[str, list[str]] = {}
    for module, doc in _source_docstrings() + _c_module_docstrings() + _topic_docstrings():
        for paragraph in re.split(r"\n\s*\n", doc):
            text = _prose(paragraph)
            if text is None or text.lower() in seen_text:
                continue
            seen_text.add(text.lower())
            shingles = word_shingles(text)
            if len(shingles & seen_shingles) > 0.3 * len(shingles):
                continue
            seen_shingles |= shingles
            by_module.setdefault(module, []).append(text)

    rng = random.Random(1234)  # grouping is part of the corpus definition, not of the seed
    out: list[tuple[str, str]] = []
    for module, paragraphs in by_module.items():
        current: list[str] = []
        target = rng.randint(80, 110)
        for paragraph in paragraphs:
            if current and len(" ".join(current).split()) + len(paragraph.split()) > 400:
                current = []
            current.append(paragraph)
            text = "\n".join(current)
            if len(text.split()) >= target and len(_SENTENCE_END.findall(text)) >= 6:
                if _looks_clean(text):
                    out.append((module, text))
                current, target = [], rng.randint(80, 110)
    return tuple(out)


_TOKEN = re.compile(r"\w+(?:[.'’]\w+)*|[^\w\s]")  # close to spaCy's English tokens


def _looks_clean(text: str) -> bool:
    """Cheap stand-in for the Gopher rules docstrings tend to break (punctuation-heavy text and
    templated one-liners), with a margin; the real filters still run on every selected document."""
    from datatrove.pipeline.filters.gopher_repetition_filter import (
        find_all_duplicate,
        find_top_duplicate,
        get_n_grams,
    )

    tokens = _TOKEN.findall(text)
    if sum(any(c.isalpha() for c in t) for t in tokens) < 0.81 * len(tokens):
        return False
    for n, frac in ((2, 0.2), (3, 0.18), (4, 0.16)):
        if find_top_duplicate(get_n_grams(tokens, n)) > 0.9 * frac * len(text):
            return False
    return all(
        find_all_duplicate(tokens, n) <= 0.9 * frac * len(text)
        for n, frac in ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))
    )


@cache
def _kept_unchanged(text: str) -> bool:
    return _checks().kept_unchanged(text)


# --------------------------------------------------------------------------------------------------
# Hand-written text for the planted cases, kept in assets/corpus_text.json (pool name -> strings).


@cache
def _text() -> dict[str, Any]:
    path = Path(__file__).parent / "assets" / "corpus_text.json"
    return json.loads(path.read_text(encoding="utf-8"))


def _strings(name: str) -> tuple[str, ...]:
    return tuple(_text()[name])


def _pairs(name: str) -> tuple[tuple[str, str], ...]:
    return tuple((a, b) for a, b in _text()[name])


_ACCENT_SENTENCES = _strings("accent_sentences")
# (sentence, substring that must appear once ftfy has repaired the mojibake)
_MOJIBAKE_SENTENCES = _pairs("mojibake_sentences")
_BOILERPLATE_LINES = _strings("boilerplate_lines")
_PII_TEMPLATES: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in _text()["pii_templates"].items()}
_PUBLIC_IPS = _strings("public_ips")
_INTL_PHONES = _strings("intl_phones")
_TEST_CARDS = _strings("test_cards")  # Luhn-valid test numbers: Visa, Mastercard, Amex
_IBANS = _strings("ibans")
_EMAIL_USERS = _strings("email_users")
_EMAIL_DOMAINS = _strings("email_domains")
_HARD_NEGATIVES = _pairs("hard_negatives")  # (value that is no PII, sentence template)
_TOXIC_SENTENCES = _strings("toxic_sentences")
# Innocent technical uses of violent-sounding words; four per clean_tricky document, none reused.
_TRICKY_SENTENCES = _strings("tricky_sentences")
_NON_ENGLISH: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in _text()["non_english"].items()}
_NON_ENGLISH_DOCS = {"fr": 4, "de": 4, "es": 4, "it": 3, "pt": 3, "nl": 3, "ru": 3, "zh": 2, "ja": 2, "ar": 2}
_EMPTY_TEXTS = (
    "",
    "   ",
    "\n\n\t  \n",
    "\x00\x01\x02\x03",
    " \x0b\x0c\x1b\x7f ",
)  # nothing but space/controls
_JUNK_BOILERPLATE = _strings("junk_boilerplate")
_JUNK_SYMBOLS = _strings("junk_symbols")
_JUNK_SPAM_WORDS = _strings("junk_spam_words")
_JUNK_REPEATED = _strings("junk_repeated")
_JUNK_SHORT = _strings("junk_short")
_LOREM: str = _text()["lorem"]
_JUNK_LOREM_ENGLISH = _strings("junk_lorem_english")
_JUNK_LIST_ITEMS = _strings("junk_list_items")


# --------------------------------------------------------------------------------------------------
# Planted documents.


@dataclass(eq=False)
class _Planted:
    category: str
    text: Any = None
    expect: Any = KEPT
    extra: dict[str, Any] = field(default_factory=dict)
    source: str = "web"
    url: str | None = None
    fields: dict[str, Any] | None = None  # replaces the "text" field (missing_text, bad_text_type)
    raw_kind: str | None = None  # "invalid_utf8" / "malformed_json": the line is built from the id
    variant: int = 0
    title: str = ""  # of the HTML page (crawl documents)
    dup_of: _Planted | None = None
    near_dup_of: _Planted | None = None
    doc_id: str = ""  # the pipeline's id, set by the layout
    source_id: str | None = None


def _luhn_ok(number: str) -> bool:
    digits = [int(c) for c in reversed(number)]
    return sum(d if i % 2 == 0 else (2 * d - 9 if d > 4 else 2 * d) for i, d in enumerate(digits)) % 10 == 0


def _iban_ok(iban: str) -> bool:
    moved = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _grouped(value: str, sizes: tuple[int, ...], sep: str) -> str:
    parts, start = [], 0
    for size in sizes:
        parts.append(value[start : start + size])
        start += size
    return sep.join(p for p in parts if p)


def _pii_value(kind: str, i: int, rng: random.Random) -> str:
    """The i-th value of a PII type; i cycles through the formats so each one appears."""
    alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    if kind == "email":
        return f"{_EMAIL_USERS[i % len(_EMAIL_USERS)]}@{rng.choice(_EMAIL_DOMAINS)}"
    if kind == "ip_address":
        return _PUBLIC_IPS[i % len(_PUBLIC_IPS)]
    if kind == "phone":
        area, line = rng.choice((415, 212, 312, 617, 206, 303, 512, 646)), rng.randint(1000, 9999)
        nanp = (f"({area}) 555-{line}", f"{area}-555-{line}", f"+1 {area} 555 {line}")
        return nanp[i % 4] if i % 4 < 3 else _INTL_PHONES[(i // 4) % len(_INTL_PHONES)]
    if kind == "credit_card":
        number = _TEST_CARDS[i % len(_TEST_CARDS)]
        assert _luhn_ok(number), number
        sizes = (4, 6, 5) if len(number) == 15 else (4, 4, 4, 4)
        return _grouped(number, sizes, (" ", "-", "")[i % 3])
    if kind == "iban":
        iban = _IBANS[i % len(_IBANS)]
        assert _iban_ok(iban), iban
        return _grouped(iban, (4,) * 9, " ") if i % 2 == 0 else iban
    if kind == "ssn":
        area = rng.choice([a for a in range(1, 900) if a != 666])
        return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"
    if kind == "secret":
        flavour = i % 5
        if flavour == 0:
            return "AKIA" + "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16))
        if flavour == 1:
            return "ghp_" + "".join(rng.choice(alnum) for _ in range(36))
        if flavour == 2:
            digits = "".join(rng.choice("0123456789") for _ in range(25))
            tail = "".join(rng.choice(alnum) for _ in range(24))
            return f"xoxb-{digits[:12]}-{digits[12:]}-{tail}"
        if flavour == 3:
            return "AIza" + "".join(rng.choice(alnum + "-_") for _ in range(35))
        body = base64.b64encode(rng.randbytes(96)).decode()
        return f"-----BEGIN RSA PRIVATE KEY----- {body[:64]} {body[64:]} -----END RSA PRIVATE KEY-----"
    raise ValueError(f"unknown PII type {kind!r}; expected one of {PII_TYPES}")


def _pii_sentence(kind: str, value: str, rng: random.Random) -> str:
    if value.startswith("-----BEGIN"):
        return f"The old deploy script contained the private key {value} in plain text."
    return rng.choice(_PII_TEMPLATES[kind]).format(value)


def _insert_sentences(text: str, sentences: list[str], rng: random.Random) -> str:
    """Each sentence becomes its own line or is appended to a paragraph, at a random place."""
    lines = text.split("\n")
    for sentence in sentences:
        i = rng.randrange(len(lines) + 1)
        if i < len(lines) and rng.random() < 0.5:
            lines[i] = f"{lines[i]} {sentence}"
        else:
            lines.insert(i, sentence)
    return "\n".join(lines)


def _near_dup(
    text: str, kind: str, target: float, rng: random.Random, vocab: list[str]
) -> tuple[str, float] | None:
    """An edit of `text` whose word-5-gram Jaccard with it is within tolerance of `target`."""
    source = word_shingles(text)
    lines = [line.split() for line in text.split("\n")]
    best: tuple[str, float] | None = None

    def consider(candidate: str) -> float:
        nonlocal best
        j = jaccard(source, word_shingles(candidate))
        if best is None or abs(j - target) < abs(best[1] - target):
            best = (candidate, j)
        return j

    if kind == "reorder":
        for _ in range(60):
            order = rng.sample(range(len(lines)), len(lines))
            if order != sorted(order):
                consider("\n".join(" ".join(lines[i]) for i in order))
        return best if best and abs(best[1] - target) <= JACCARD_TOLERANCE else None

    # Edit slots avoid each line's first and last word, so sentences keep their capital and stop.
    slots = [(li, wi) for li, words in enumerate(lines) for wi in range(1, len(words) - 1)]
    order = rng.sample(slots, len(slots))
    new_words = [rng.choice(vocab) for _ in slots]
    extra_lines = rng.sample(_BOILERPLATE_LINES, len(_BOILERPLATE_LINES))

    def apply(k: int) -> str:
        if kind == "boilerplate":  # alternate new lines above and below the text
            body = [" ".join(words) for words in lines]
            return "\n".join(extra_lines[0:k:2][::-1] + body + extra_lines[1:k:2])
        edits = dict(zip(order[:k], new_words[:k]))
        out_lines = []
        for li, words in enumerate(lines):
            out: list[str] = []
            for wi, word in enumerate(words):
                new = edits.get((li, wi))
                if new is None:
                    out.append(word)
                elif kind == "insert":
                    out += [new, word]
                elif kind == "substitute":
                    out.append(new)
                # kind == "delete": drop the word
            out_lines.append(" ".join(out))
        return "\n".join(out_lines)

    max_k = len(extra_lines) if kind == "boilerplate" else len(slots) // (2 if kind == "delete" else 1)
    for k in range(1, max_k + 1):
        if consider(apply(k)) < target - JACCARD_TOLERANCE:
            break
    return best if best and abs(best[1] - target) <= JACCARD_TOLERANCE else None


def _split_paragraphs(sentences: list[str], rng: random.Random, joiner: str = " ") -> str:
    """Sentences grouped into 1-3 paragraphs (one per line)."""
    num = min(len(sentences), rng.randint(1, 3))
    cuts = sorted(rng.sample(range(1, len(sentences)), num - 1)) if num > 1 else []
    bounds = [0, *cuts, len(sentences)]
    return "\n".join(joiner.join(sentences[a:b]) for a, b in zip(bounds, bounds[1:]))


def _junk_candidate(kind: str, rng: random.Random) -> str:
    if kind == "boilerplate":
        return "\n".join(rng.sample(_JUNK_BOILERPLATE, rng.randint(6, 10)))
    if kind == "symbol_soup":
        tokens = [
            rng.choice(_JUNK_SYMBOLS) if rng.random() < 0.45 else rng.choice(_JUNK_SPAM_WORDS)
            for _ in range(150)
        ]
        return "\n".join(" ".join(tokens[j : j + 16]) for j in range(0, len(tokens), 16))
    if kind == "repeated_lines":
        line, other = rng.sample(_JUNK_REPEATED, 2)
        lines = [line] * rng.randint(10, 20)
        lines.insert(rng.randrange(len(lines)), other)
        return "\n".join(lines)
    if kind == "very_short":
        return rng.choice(_JUNK_SHORT)
    if kind == "lorem_ipsum":
        sentences = rng.sample(_JUNK_LOREM_ENGLISH, 5)
        sentences.insert(rng.randint(1, 4), _LOREM)
        return _split_paragraphs(sentences, rng)
    if kind == "short_lines":
        return "\n".join(rng.sample(_JUNK_LIST_ITEMS, rng.randint(8, 16)))
    raise ValueError(f"unknown junk kind {kind!r}; expected one of {JUNK_KINDS}")


class _Builder:
    """Turns the selected base texts into planted documents, consuming base texts as it goes."""

    def __init__(self, base: list[tuple[str, str]], rng: random.Random) -> None:
        self.rng = rng
        self.unused = list(base)  # (module, text), in seeded order
        self.docs: list[_Planted] = []
        self.vocab = sorted(
            {w for _, t in base for w in t.lower().split() if w.isalpha() and 3 <= len(w) <= 10}
        )
        self._url_counter: Counter[str] = Counter()

    def url(self, section: str) -> str | None:
        self._url_counter[section] += 1
        if self.rng.random() < 0.25:
            return None
        return f"https://example.com/{section}/{self._url_counter[section]:04d}"

    def take(self, ok: Any = None) -> tuple[str, str]:
        for i, (_, text) in enumerate(self.unused):
            if ok is None or ok(text):
                return self.unused.pop(i)
        raise ValueError("ran out of base documents; raise num_base_docs")

    def add(self, doc: _Planted) -> _Planted:
        self.docs.append(doc)
        return doc

    def modified(self, category: str, edit: Any, ok: Any = None, **kwargs: Any) -> _Planted:
        """A base text changed by `edit(text) -> (new_text, extra, text_the_filters_see) | None`;
        texts whose edit would not pass the default pipeline unchanged stay plain base documents."""
        rejected = []
        for _ in range(20):
            module, text = self.take(ok)
            edited = edit(text)
            if edited is not None and _kept_unchanged(edited[2]):
                new_text, extra, _ = edited
                self.unused[:0] = rejected
                return self.add(
                    _Planted(category, new_text, extra=extra, url=self.url(f"docs/{module}"), **kwargs)
                )
            rejected.append((module, text))
        raise RuntimeError(f"could not plant a {category} document that passes the default filters")


def _plant_modified_base(b: _Builder) -> None:
    """PII, hard negatives, mojibake and clean-tricky documents, each built on its own base text."""
    rng = b.rng

    def inserting(sentences: list[str], extra: dict[str, Any]) -> Any:
        def edit(text: str) -> tuple[str, dict[str, Any], str]:
            new = _insert_sentences(text, sentences, rng)
            return new, extra, new

        return edit

    kinds_pool = [k for k in PII_TYPES for _ in range(8)]  # 55 values over 28 documents: 7+ per type
    rng.shuffle(kinds_pool)
    value_index: Counter[str] = Counter()
    negatives = rng.sample(_HARD_NEGATIVES, len(_HARD_NEGATIVES))
    for i in range(NUM_PII):
        kinds = [kinds_pool.pop() for _ in range(1 + i % 3)]
        values = []
        for kind in kinds:
            values.append((kind, _pii_value(kind, value_index[kind], rng)))
            value_index[kind] += 1
        sentences = [_pii_sentence(k, v, rng) for k, v in values]
        hard = [negatives[i % len(negatives)]] if i % 3 == 0 else []
        sentences += [template.format(v) for v, template in hard]
        extra = {
            "pii": dict(sorted(Counter(kinds).items())),
            "pii_values": [[k, v] for k, v in values],
            "hard_negatives": [v for v, _ in hard],
        }
        b.modified("pii", inserting(sentences, extra))
    for i in range(NUM_PII_HARD_NEGATIVE):
        hard = [negatives[(i * 3 + j) % len(negatives)] for j in range(1 + i % 3)]
        sentences = [template.format(v) for v, template in hard]
        extra = {"pii": {}, "pii_values": [], "hard_negatives": [v for v, _ in hard]}
        b.modified("pii_hard_negative", inserting(sentences, extra))

    import ftfy

    def mojibake(text: str, sentence: str, repaired_word: str) -> tuple[str, dict[str, Any], str] | None:
        clean = _insert_sentences(text, [sentence], rng)
        broken = clean.encode("utf-8").decode("cp1252")  # UTF-8 bytes read as Windows-1252
        repaired = ftfy.fix_text(broken)
        if repaired_word not in repaired or repaired_word in broken:
            return None
        return broken, {"fixed_text_contains": repaired_word}, repaired

    for i in range(NUM_MOJIBAKE):
        sentence, word = _MOJIBAKE_SENTENCES[i % len(_MOJIBAKE_SENTENCES)]
        b.modified("mojibake", lambda t, s=sentence, w=word: mojibake(t, s, w), ok=str.isascii)

    tricky = rng.sample(_TRICKY_SENTENCES, len(_TRICKY_SENTENCES))
    for i in range(NUM_CLEAN_TRICKY):
        paragraph = " ".join(tricky[4 * i : 4 * i + 4])
        b.modified("clean_tricky", lambda t, p=paragraph: (f"{p}\n{t}", {}, f"{p}\n{t}"))


def _plant_duplicates(b: _Builder, web_base: list[_Planted]) -> None:
    """Exact, normalised-exact and near duplicates of plain web base documents."""
    rng = b.rng
    candidates = list(web_base)  # already in seeded order
    exact = _expect("exact_dedup", "exact_duplicate")
    for _ in range(NUM_EXACT_DUP):
        original = candidates.pop()
        b.add(_Planted("exact_dup", original.text, expect=exact, url=b.url("mirror"), dup_of=original))

    num_nfd = NUM_EXACT_DUP_NORMALIZED // 2
    for i in range(num_nfd):
        while True:
            original = candidates.pop()
            accented = _insert_sentences(original.text, [_ACCENT_SENTENCES[i % len(_ACCENT_SENTENCES)]], rng)
            if _kept_unchanged(accented):
                break
        original.text = accented
        original.extra["accented"] = True
        copy = unicodedata.normalize("NFD", accented)
        assert copy != accented
        b.add(_Planted("exact_dup_normalized", copy, expect=exact, extra={"variant": "nfd"}, dup_of=original))
    for _ in range(NUM_EXACT_DUP_NORMALIZED - num_nfd):
        original = candidates.pop()
        copy = "\n".join(line + rng.choice(("  ", " ", "\t", " \t ")) for line in original.text.split("\n"))
        b.add(
            _Planted(
                "exact_dup_normalized",
                copy,
                expect=exact,
                extra={"variant": "trailing_whitespace"},
                url=b.url("mirror"),
                dup_of=original,
            )
        )

    sources = [d for d in candidates if len(d.text.split()) >= 100]
    for target, kind in NEAR_DUP_PLAN:
        # Edits move the Jaccard in steps of a few hundredths, so try a few sources, keep the closest.
        tried: list[tuple[float, _Planted, str, float]] = []
        for source in sources:
            found = _near_dup(source.text, kind, target, rng, b.vocab)
            if found is not None:
                tried.append((abs(found[1] - target), source, *found))
                if tried[-1][0] <= 0.005 or len(tried) == 12:
                    break
        for _, source, text, j in sorted(tried, key=lambda t: t[0]):
            if _kept_unchanged(text):
                sources.remove(source)
                extra = {"jaccard": j, "target_jaccard": target, "edit_kind": kind}
                b.add(_Planted("near_dup", text, extra=extra, url=b.url("mirror"), near_dup_of=source))
                break
        else:
            raise RuntimeError(f"no base document gives a {kind} near-duplicate at Jaccard {target}")


def _plant_rejects(b: _Builder, base_texts: list[str]) -> None:
    """Documents a stage before dedup drops: toxic, junk, other languages, unreadable, empty, giant."""
    rng, checks = b.rng, _checks()

    def first_ok(make: Any, ok: Any, what: str) -> Any:
        for _ in range(200):
            candidate = make()
            verdict = ok(candidate)
            if verdict:
                return candidate, verdict
        raise RuntimeError(f"could not generate a {what} document")

    for _ in range(NUM_TOXIC):
        text, _ = first_ok(
            lambda: _split_paragraphs(rng.sample(_TOXIC_SENTENCES, rng.randint(7, 10)), rng),
            _kept_unchanged,
            "toxic",
        )
        b.add(_Planted("toxic", text, expect=_expect("toxicity", "toxic"), url=b.url("forum")))

    def junk_verdict(text: str) -> tuple[str, str] | None:
        lang, prob = checks.language(text)
        return checks.quality_failure(text) if lang == "en" and prob >= MIN_LANG_PROB else None

    for kind in JUNK_KINDS:
        for _ in range(NUM_JUNK_PER_KIND):
            text, (name, reason) = first_ok(lambda k=kind: _junk_candidate(k, rng), junk_verdict, kind)
            extra = {"junk_kind": kind, "quality_filter": name}
            expect = _expect("quality", stage_reason(name, reason))
            b.add(_Planted("junk", text, expect=expect, extra=extra, url=b.url("site")))

    def is_lang(text: str, lang: str) -> bool:
        got, prob = checks.language(text)
        return got == lang and prob >= MIN_LANG_PROB

    for lang, num_docs in _NON_ENGLISH_DOCS.items():
        joiner = "" if lang in ("zh", "ja") else " "  # no spaces between sentences in these scripts
        for _ in range(num_docs):
            pool = _NON_ENGLISH[lang]
            text, _ = first_ok(
                lambda p=pool, j=joiner: _split_paragraphs(rng.sample(p, rng.randint(5, 6)), rng, j),
                lambda t, lang=lang: is_lang(t, lang),
                lang,
            )
            extra = {"lang": lang}
            expect = _expect("language", "wrong_language")
            b.add(_Planted("non_english", text, expect=expect, extra=extra, url=b.url(f"{lang}/news")))

    for kind in ("invalid_utf8", "malformed_json"):
        for variant in range(5):
            b.add(_Planted(kind, expect=_expect("read", kind), raw_kind=kind, variant=variant))
    missing = (
        {"body": "The text lives under the wrong key."},
        {"url": "https://example.com/no-text"},
        {"content": ""},
    )
    for fields in missing:
        b.add(_Planted("missing_text", expect=_expect("read", "missing_text"), fields=fields))
    for value in (12345, ["a list", "of strings"]):
        b.add(_Planted("bad_text_type", expect=_expect("read", "bad_text_type"), fields={"text": value}))

    for text in _EMPTY_TEXTS:
        b.add(_Planted("empty", text, expect=_expect("normalize", "empty")))

    for _ in range(NUM_GIANT):
        order = rng.sample(base_texts, len(base_texts))
        text = "\n".join(order)
        text = (text + "\n") * (GIANT_CHARS // (len(text) + 1) + 1)
        extra = {"num_chars": GIANT_CHARS}
        b.add(_Planted("giant", text[:GIANT_CHARS], expect=_expect("normalize", "too_long"), extra=extra))


# --------------------------------------------------------------------------------------------------
# Layout and writers.


def _layout_web(docs: list[_Planted], rng: random.Random) -> list[list[_Planted]]:
    """Seeded shuffle into the web shards; duplicates land in a later shard than their original,
    unreadable records only in plain .jsonl shards, both giants in one plain shard."""
    num_plain = NUM_WEB_SHARDS - 2
    copies = [d for d in docs if d.dup_of is not None]
    special = [d for d in docs if d.raw_kind or d.fields is not None or d.category == "giant"]
    regular = [d for d in docs if d.dup_of is None and d not in special]
    rng.shuffle(regular)
    shards: list[list[_Planted]] = [regular[i::NUM_WEB_SHARDS] for i in range(NUM_WEB_SHARDS)]
    where = {id(d): s for s, shard in enumerate(shards) for d in shard}

    def insert(doc: _Planted, shard: int) -> None:
        shards[shard].insert(rng.randint(0, len(shards[shard])), doc)
        where[id(doc)] = shard

    for copy in copies:
        original = copy.dup_of
        assert original is not None
        if where[id(original)] == NUM_WEB_SHARDS - 1:
            shards[-1].remove(original)
            insert(original, rng.randrange(NUM_WEB_SHARDS - 1))
        insert(copy, rng.randint(where[id(original)] + 1, NUM_WEB_SHARDS - 1))
    giant_shard = rng.randrange(num_plain)
    for doc in special:
        insert(doc, giant_shard if doc.category == "giant" else rng.randrange(num_plain))
    return shards


def _web_shard_name(i: int) -> str:
    suffix = {NUM_WEB_SHARDS - 2: ".jsonl.gz", NUM_WEB_SHARDS - 1: ".jsonl.zst"}.get(i, ".jsonl")
    return f"web/part-{i:05d}{suffix}"


def _json_line(record: dict[str, Any]) -> bytes:
    line = json.dumps(record, ensure_ascii=False)
    # JSON allows these raw, but str.splitlines() would break a record on them.
    for ch in ("\u2028", "\u2029", "\x85"):
        line = line.replace(ch, f"\\u{ord(ch):04x}")
    return line.encode("utf-8")


def _raw_line(doc: _Planted) -> bytes:
    sid = doc.source_id or ""
    if doc.raw_kind == "invalid_utf8":
        bad = (b"\xff\xfe", b"\x80", b"\xc0\xaf", b"\xe2\x82", b"\xed\xa0\x80")[doc.variant]
        text = b"The menu of the caf" + bad + b" changes every week, and the notes describe each dish."
        return b'{"id": "' + sid.encode() + b'", "text": "' + text + b'", "source": "web"}'
    if doc.raw_kind == "malformed_json":
        broken = (
            _json_line(
                {"id": sid, "text": "This record was cut off in the middle of the text.", "source": "web"}
            )[:48],
            f'{{"id": "{sid}", "text": "Trailing commas are not allowed in JSON.", "source": "web",}}'.encode(),
            f"{{'id': '{sid}', 'text': 'Single quotes are not valid JSON.', 'source': 'web'}}".encode(),
            f'{{"id": "{sid}", "text": "An unescaped "quote" ends the string early.", "source": "web"}}'.encode(),
            f'{{"id": "{sid}" "text": "A comma between members is missing.", "source": "web"}}'.encode(),
        )
        return broken[doc.variant]
    record: dict[str, Any] = {"id": sid}
    record.update(doc.fields if doc.fields is not None else {"text": doc.text})
    if doc.url:
        record["url"] = doc.url
    record["source"] = doc.source
    return _json_line(record)


def _html_page(title: str, paragraphs: list[str]) -> bytes:
    import html

    body = "\n".join(f"<p>{html.escape(p)}</p>" for p in paragraphs)
    page = f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>{html.escape(title)} - Example Docs</title></head>
<body>
<header><nav><ul><li><a href="/">Home</a></li><li><a href="/docs/">Documentation</a></li><li><a href="/blog/">Blog</a></li><li><a href="/about/">About</a></li></ul></nav></header>
<main><article>
<h1>{html.escape(title)}</h1>
{body}
</article></main>
<footer><p>Copyright 2024 Example Docs. All rights reserved.</p><p><a href="/privacy/">Privacy</a> | <a href="/contact/">Contact</a></p></footer>
</body>
</html>
"""
    return page.encode("utf-8")


def _write_warc(path: Path, docs: list[_Planted], rng: random.Random) -> None:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    def headers(k: int) -> dict[str, str]:  # fixed from the seed, so the file is byte-stable
        record_id = uuid.UUID(int=rng.getrandbits(128), version=4)
        return {"WARC-Record-ID": f"<urn:uuid:{record_id}>", "WARC-Date": f"2024-01-15T12:{k:02d}:00Z"}

    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        info = b"software: data_pipeline.corpus\r\nformat: WARC File Format 1.0\r\n"
        writer.write_record(
            writer.create_warc_record(
                "",
                "warcinfo",
                payload=io.BytesIO(info),
                warc_content_type="application/warc-fields",
                warc_headers_dict={**headers(0), "WARC-Filename": path.name},
            )
        )
        for k, doc in enumerate(docs):
            page = _html_page(doc.title, doc.text.split("\n"))
            http = StatusAndHeaders(
                "200 OK",
                [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(page)))],
                protocol="HTTP/1.1",
            )
            record = writer.create_warc_record(
                doc.url,
                "response",
                payload=io.BytesIO(page),
                http_headers=http,
                warc_headers_dict=headers(k + 1),
            )
            writer.write_record(record)


def _write_files(raw: Path, docs: list[_Planted], rng: random.Random) -> None:
    """Write every document and set its pipeline id (`doc_id`) and record id (`source_id`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    books = [d for d in docs if d.source == "books"]
    for row, doc in enumerate(books):
        doc.doc_id, doc.source_id = f"books/part-00000.parquet#{row}", f"book-{row:05d}"
    (raw / "books").mkdir(parents=True)
    table = pa.table(
        {
            "id": [d.source_id for d in books],
            "text": [d.text for d in books],
            "source": ["books"] * len(books),
        }
    )
    pq.write_table(table, raw / "books" / "part-00000.parquet", compression="zstd")

    (raw / "notes").mkdir()
    for i, doc in enumerate(d for d in docs if d.source == "notes"):
        doc.doc_id = f"notes/note-{i:03d}.txt"
        (raw / doc.doc_id).write_bytes(doc.text.encode("utf-8"))

    (raw / "crawl").mkdir()
    pages = [d for d in docs if d.source == "crawl"]
    for k, doc in enumerate(pages):
        doc.doc_id = f"crawl/crawl-00000.warc.gz#{k}"
    _write_warc(raw / "crawl" / "crawl-00000.warc.gz", pages, rng)

    (raw / "web").mkdir()
    shards = _layout_web([d for d in docs if d.source == "web"], rng)
    num_records = 0
    for i, shard in enumerate(shards):
        name = _web_shard_name(i)
        for line, doc in enumerate(shard, start=1):
            doc.doc_id, doc.source_id = f"{name}:{line}", f"doc-{num_records:06d}"
            num_records += 1
        data = b"".join(_raw_line(d) + b"\n" for d in shard)
        if name.endswith(".gz"):
            data = gzip.compress(data, mtime=0)
        elif name.endswith(".zst"):
            data = zstandard.ZstdCompressor(level=3).compress(data)
        (raw / name).write_bytes(data)


def _truth_row(doc: _Planted) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": doc.doc_id,
        "source_id": doc.source_id,
        "source": doc.source,
        "category": doc.category,
        "expect": doc.expect,
    }
    if doc.dup_of is not None:
        row["dup_of"] = doc.dup_of.doc_id
    if doc.near_dup_of is not None:
        row["near_dup_of"] = doc.near_dup_of.doc_id
    if doc.source == "crawl":
        row["html"] = True
        row["url"] = doc.url
    row.update(sorted(doc.extra.items()))
    return row


def _sort_key(doc_id: str) -> tuple[str, int]:
    path, _, pos = doc_id.replace("#", ":").rpartition(":")
    return (path, int(pos)) if pos.isdigit() else (doc_id, 0)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------------
# Entry point.


def generate_corpus(
    out_dir: str | Path, seed: int = 0, num_base_docs: int = 600, overwrite: bool = False
) -> dict[str, Any]:
    """Write the tiny corpus under `out_dir` and return its summary (also written to corpus.json).

    out_dir/raw/ holds the documents, out_dir/truth.jsonl one row per document or line, keyed by
    the pipeline's id ("web/part-00003.jsonl:17", "books/part-00000.parquet#4",
    "notes/note-001.txt", "crawl/crawl-00000.warc.gz#2"). With `overwrite`, an earlier corpus in
    out_dir (raw/, truth.jsonl, corpus.json) is replaced; otherwise an existing raw/ is an error.
    """
    if num_base_docs < MIN_BASE_DOCS:
        raise ValueError(f"num_base_docs={num_base_docs}: the planted cases need at least {MIN_BASE_DOCS}")
    out = Path(out_dir)
    raw = out / "raw"
    if raw.exists():
        if not overwrite:
            raise FileExistsError(f"{raw} already exists; pass overwrite=True to replace the corpus in {out}")
        shutil.rmtree(raw)
    out.mkdir(parents=True, exist_ok=True)

    rng = random.Random(seed)
    base = _select_base(rng, num_base_docs)
    docs = _plant_all(base, rng)
    _write_files(raw, docs, rng)
    rows = sorted((_truth_row(d) for d in docs), key=lambda r: _sort_key(r["id"]))
    with open(out / "truth.jsonl", "wb") as fh:
        fh.writelines(_json_line(r) + b"\n" for r in rows)

    files = sorted(p for p in raw.rglob("*") if p.is_file()) + [out / "truth.jsonl"]
    fates = Counter("kept" if r["expect"] == KEPT else "{stage}/{reason}".format(**r["expect"]) for r in rows)
    summary = {
        "generator": "data_pipeline.corpus",
        "seed": seed,
        "num_base_docs": len(base),
        "num_base_docs_requested": num_base_docs,
        "python_version": f"{sys.version_info.major}.{sys.version_info.minor}",
        "num_documents": len(rows),
        "counts": dict(sorted(Counter(r["category"] for r in rows).items())),
        "expected": dict(sorted(fates.items())),
        "files": {
            p.relative_to(out).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files
        },
    }
    (out / "corpus.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _select_base(rng: random.Random, num_base_docs: int) -> list[tuple[str, str]]:
    """A seeded sample of base documents, each one kept unchanged by the default pipeline."""
    candidates = list(_base_candidates())
    rng.shuffle(candidates)
    base: list[tuple[str, str]] = []
    for candidate in candidates:
        if len(base) == num_base_docs:
            break
        if _kept_unchanged(candidate[1]):  # the safety net; the prose selection rarely needs it
            base.append(candidate)
    if len(base) < num_base_docs:
        if len(base) < MIN_BASE_DOCS:
            raise ValueError(f"this Python's documentation yields only {len(base)} base documents")
        log.warning("corpus: asked for %d base documents, this Python yields %d", num_base_docs, len(base))
    return base


def _plant_all(base: list[tuple[str, str]], rng: random.Random) -> list[_Planted]:
    b = _Builder(base, rng)
    _plant_modified_base(b)
    plain = []
    for i, (module, text) in enumerate(b.unused):
        if i < NUM_BOOKS:
            doc = _Planted("base", text, source="books")
        elif i < NUM_BOOKS + NUM_NOTES:
            doc = _Planted("base", text, source="notes")
        elif i < NUM_BOOKS + NUM_NOTES + NUM_HTML:
            url = f"https://docs.example.com/pages/{module.strip('_').replace('_', '-')}-{i}.html"
            doc = _Planted("base", text, source="crawl", url=url, title=f"Notes on the {module} module")
        else:
            doc = _Planted("base", text, url=b.url(f"docs/{module}"))
        plain.append(b.add(doc))
    _plant_duplicates(b, [d for d in plain if d.source == "web"])
    _plant_rejects(b, [t for _, t in base])
    return b.docs
