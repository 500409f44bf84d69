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
# Similarity helpers (shared with the tests; the truth's `jaccard` uses exactly these).

_NON_WORD = re.compile(r"[^\w\s]")


def word_shingles(text: str, n: int = 5) -> set[str]:
    """Word n-grams of `text`: lowercased, punctuation removed, split on whitespace."""
    words = _NON_WORD.sub("", text.lower()).split()
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    """|a & b| / |a | b|; two empty sets count as identical."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


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
# Hand-written text for the planted cases.

_ACCENT_SENTENCES = (
    "A naïve reader might expect the café example to sort before the plain word.",
    "The résumé of the project mentions a déjà vu moment during the first review.",
    "Names such as Zoë, José and Müller must survive every round trip unchanged.",
    "The coöperative scheduler treats each entrée in the queue with equal priority.",
    "The piñata test checks that the tokenizer keeps the accents in crème brûlée intact.",
)
# (sentence, substring that must appear once ftfy has repaired the mojibake)
_MOJIBAKE_SENTENCES = (
    ("The café example shows why a naïve byte count isn’t a character count.", "café"),
    ("José’s résumé was stored with the wrong encoding and nobody noticed for weeks.", "résumé"),
    ("Müller’s team translated the piñata chapter without any trouble at all.", "Müller"),
    ("The entrée list on the menu uses accents, so the decoder mustn’t guess.", "entrée"),
    ("A façade object hides the details of the naïve implementation underneath.", "façade"),
)
_BOILERPLATE_LINES = (
    "This page was last updated by the documentation team.",
    "Share this article with your friends and colleagues.",
    "Subscribe to our newsletter to get the latest updates every week.",
    "Thank you for reading, and please leave your feedback below.",
    "Related articles are listed in the sidebar on the right.",
    "Click the button below to download the full guide as a single file.",
    "Back to the table of contents.",
    "Found a mistake on this page? Let us know and we will fix it.",
    "All rights reserved by the original authors.",
    "Sign in to save this page to your reading list.",
    "Comments are closed for this article.",
    "Previous chapter: an overview of the standard library.",
    "Next chapter: working with files and directories.",
    "Printed from the online edition of the handbook.",
    "Posted in Programming and tagged with tutorials and reference material.",
    "You are reading the archived version of this document.",
    "Join our community forum to ask questions and share tips.",
    "This content is provided as is, without warranty of any kind.",
    "Follow us for more tutorials like this one.",
    "Advertisement: learn programming at your own pace with our online courses.",
)
_PII_TEMPLATES = {
    "email": (
        "If you have questions about this page, write to {} and the team will answer.",
        "The maintainer can be reached at {} during normal office hours.",
        "Send your comments and corrections to {} before the end of the month.",
    ),
    "ip_address": (
        "The build server at {} was used to run the nightly tests.",
        "Requests from the address {} were logged by the gateway during the outage.",
        "The resolver was configured to forward all queries to {} by default.",
    ),
    "phone": (
        "For urgent support you can call the help desk at {} on weekdays.",
        "Her direct line is {} if the main office does not answer.",
        "Call {} to reschedule the appointment with the support team.",
    ),
    "credit_card": (
        "The order was paid with the card number {} and shipped the next day.",
        "Please charge the remaining balance to card {} as discussed.",
        "The customer read out the card number {} over the phone.",
    ),
    "iban": (
        "Payments should be sent to the account {} with the invoice number as reference.",
        "The refund was transferred to IBAN {} last week.",
        "Our bank details are IBAN {} for all transfers in euros.",
    ),
    "ssn": (
        "The form listed the social security number {} for the applicant.",
        "His SSN is {} according to the scanned document.",
        "The clerk typed the social security number {} into the wrong field.",
    ),
    "secret": (
        "Someone committed the access key {} to the repository by mistake.",
        "The token {} was found in an old configuration file and has to be revoked.",
        "Rotate the credential {} because it appeared in a public log.",
    ),
}
_PUBLIC_IPS = (
    "8.8.8.8", "93.184.216.34", "1.1.1.1", "151.101.65.69", "104.16.132.229", "208.67.222.222",
    "2606:4700:4700::1111", "2001:4860:4860::8888", "2620:fe::fe", "2a00:1450:4001:82b::200e",
)  # fmt: skip
_INTL_PHONES = (
    "+44 20 7946 0958",
    "+44 161 496 0123",
    "+49 30 12345678",
    "+33 1 42 68 53 00",
    "+61 2 5550 1234",
)
_TEST_CARDS = (  # Luhn-valid test numbers: Visa, Mastercard, Amex
    "4111111111111111", "4242424242424242", "4012888888881881", "4000056655665556",
    "5555555555554444", "5105105105105100", "2223003122003222", "5200828282828210",
    "378282246310005", "371449635398431", "378734493671000",
)  # fmt: skip
_IBANS = (
    "GB82WEST12345698765432", "DE89370400440532013000", "FR1420041010050500013M02606",
    "NL91ABNA0417164300", "ES9121000418450200051332", "IT60X0542811101000000123456",
    "CH9300762011623852957", "BE68539007547034",
)  # fmt: skip
_EMAIL_USERS = (
    "alice.johnson",
    "bob_smith",
    "carol.nguyen",
    "d.okafor",
    "emma+news",
    "frank.muller42",
    "grace.lee",
)
_EMAIL_DOMAINS = ("example.com", "mail.example.org", "example.net", "corp.example.co.uk", "test.example.io")
_HARD_NEGATIVES = (
    ("version 1.5.60.1068", "The installer reports {} after the upgrade has finished."),
    ("v2.0.0.1", "The changelog for {} lists only minor fixes to the parser."),
    ("2023-01-15", "The release was tagged on {} after a short review."),
    ("01/15/2023", "The meeting notes are dated {} and were filed with the report."),
    ("ISBN 978-3-16-148410-0", "The reference manual is listed as {} in the catalogue."),
    ("192.168.1.10", "The printer on the office network uses the private address {} as usual."),
    ("10.0.0.1", "Most home routers answer on {} or a similar private address."),
    ("192.0.2.1", "The examples in this guide use the documentation address {} throughout."),
    ("$1,299.99", "The laptop was on sale for {} at the end of the year."),
    ("order number A-58213", "Your {} has been shipped and should arrive soon."),
    ("port 8080", "The development server listens on {} by default."),
    ("3.14159", "The value of pi is roughly {} for most practical purposes."),
)
_TOXIC_SENTENCES = (
    "You are the most useless idiot I have ever had the misfortune to deal with.",
    "Shut up, you pathetic moron, nobody wants to hear your stupid opinions.",
    "What a worthless piece of garbage you are, and everyone knows it.",
    "You are a brainless loser and a total waste of space.",
    "Honestly, you are so stupid that talking to you makes me feel dumber.",
    "Go away, you ugly freak, and take your idiotic comments with you.",
    "You are a lying, spineless coward and a disgusting excuse for a human being.",
    "Nobody likes you, you miserable clown, so stop pretending that you matter.",
    "Your brain must be the size of a pea, you ignorant fool.",
    "You are a disgrace and a pathetic joke to everyone who has to read your trash.",
    "This is the dumbest fucking idea I have ever seen, you absolute asshole.",
    "Fuck you and fuck your stupid website, it is a pile of shit.",
    "You are a lazy bastard who has never done a damn thing right in your life.",
    "Get the hell out of here, you worthless son of a bitch.",
    "What the fuck is wrong with you, are you really this fucking stupid?",
    "Your code is absolute shit and so are you, dumbass.",
    "Stop whining like a little bitch and shut your damn mouth.",
    "You are full of shit and everyone in this thread can see it.",
    "Piss off, you arrogant prick, nobody asked for your crap.",
    "Screw you and the idiots who agree with you.",
    "Who the hell raised you to be such an obnoxious jerk?",
    "Take your bullshit somewhere else, you clueless asshole.",
    "If I ever see you around here again, I will beat the living daylights out of you.",
    "Keep talking and I will find out where you live and make you regret it.",
    "I swear I will break every bone in your body, you filthy rat.",
    "You had better watch your back, because I am coming for you.",
    "Say that one more time and I will smash your stupid face in.",
    "People like you deserve to get hurt, and I would be happy to do it myself.",
    "I will make your life a living hell until you leave this forum for good.",
    "One day someone is going to shut you up for good, and I hope it is me.",
    "You are a total idiot and the dumbest person on the whole internet.",
    "I hate you and everything about your ugly, stupid face.",
    "You are a vile, worthless creep, and you should be ashamed of yourself.",
    "Your mother must be so embarrassed to have raised such an idiot.",
    "Only a complete moron would write something this stupid.",
    "You make me sick, you repulsive little worm.",
    "Everyone here thinks you are a clown and a fraud.",
    "Do the world a favor and crawl back under the rock you came from, loser.",
    "You are nothing but a pathetic troll with a tiny brain.",
    "What an arrogant, ignorant jackass you are.",
)
# Innocent technical uses of violent-sounding words; four per clean_tricky document, none reused.
_TRICKY_SENTENCES = (
    "If a worker hangs, kill the process and restart it with a smaller batch size.",
    "The parent waits for every child process to exit before it collects the results.",
    "Set the abort flag to stop the transaction as soon as validation fails.",
    "The scheduler will execute the job at midnight and append its output to the log.",
    "When the service crashes, the kernel can dump the core so that you can inspect it later.",
    "A zombie process stays in the process table until its parent reads the exit status.",
    "Orphaned child processes are adopted by the init process and reaped there.",
    "The terminate signal asks a program to shut down politely, while the kill signal cannot be caught.",
    "The test runner will abort on the first failure when the fail fast option is set.",
    "A thread must release the lock before it dies, otherwise the other threads will starve.",
    "The garbage collector kills off objects that are no longer referenced anywhere in the program.",
    "You can execute the script directly from the shell or import it as a module.",
    "The watchdog kills any task that runs longer than the configured timeout.",
    "Killing a parent process does not necessarily kill its children as well.",
    "The deadlock detector aborts one of the two transactions and rolls back its changes.",
    "A fatal error terminates the interpreter at once without running the cleanup handlers.",
    "Each stage runs in its own process, and the executor collects the exit codes at the end.",
    "Core dumps can be very large, so raise the size limit before you try to debug the crash.",
    "The master process forks a pool of workers and kills any worker that stops responding.",
    "Hit the kill switch only when the deployment is clearly broken and users are affected.",
    "This patch fixes a race condition that could crash the daemon under heavy load.",
    "The job was terminated because it exceeded the memory limit of its container.",
    "Messages that cannot be delivered end up in the dead letter queue for later inspection.",
    "The build script will wipe the cache directory before it starts a clean build.",
    "A hung child process can block the whole pipeline until it is finally reaped.",
    "The runtime will abort immediately if it detects that the heap has been corrupted.",
    "The supervisor restarts any worker that died with a nonzero exit code.",
    "To stop a runaway loop, press the interrupt key or kill the shell that started it.",
    "The database trigger fires whenever a new row is inserted into the table.",
    "The operator can execute a rollback if the new release starts to misbehave.",
    "The kill command sends a signal to the process identified by the given number.",
    "Every child inherits the open file descriptors of its parent unless they are closed on exec.",
    "The sandbox kills any process that tries to open a network socket without permission.",
    "A debugger can attach to a running process and dump its memory to a file.",
    "After a crash, the service manager executes the recovery script automatically.",
    "Remember to kill the background jobs before you log out of the server.",
    "The shell will execute each command in a child process and wait for it to finish.",
    "If the checksum does not match, abort the upload and report the error to the user.",
    "The load balancer drops connections to a backend that fails its health check.",
    "A segmentation fault usually means the program tried to touch memory it does not own.",
)
_NON_ENGLISH = {
    "fr": (
        "La bibliothèque municipale ouvre ses portes tous les jours à neuf heures, sauf le dimanche.",
        "Nous avons passé l'après-midi à nous promener le long de la rivière en discutant de nos projets.",
        "Le gouvernement a annoncé de nouvelles mesures pour soutenir les petites entreprises de la région.",
        "Il faut bien lire la documentation avant d'installer le logiciel sur un serveur de production.",
        "Les enfants ont préparé un spectacle de fin d'année que leurs parents ont beaucoup apprécié.",
        "Cette recette traditionnelle demande du temps, mais le résultat en vaut vraiment la peine.",
        "Le train pour Lyon a été retardé à cause d'un problème technique sur la voie.",
        "Je vous remercie de votre patience et je reviendrai vers vous dès que possible.",
        "La saison des pluies a commencé plus tôt que prévu cette année dans le sud du pays.",
        "Chaque matin, elle achète du pain frais chez le boulanger du coin avant de partir au travail.",
    ),
    "de": (
        "Die Stadtbibliothek ist montags bis freitags von neun bis achtzehn Uhr geöffnet.",
        "Wir haben den ganzen Nachmittag im Garten verbracht und über unsere Pläne für den Sommer gesprochen.",
        "Die Regierung hat neue Maßnahmen zur Unterstützung kleiner und mittlerer Unternehmen angekündigt.",
        "Bevor Sie die Software installieren, sollten Sie die Anleitung sorgfältig durchlesen.",
        "Der Zug nach München hatte wegen einer technischen Störung fast eine Stunde Verspätung.",
        "Meine Großmutter backt jedes Jahr zu Weihnachten einen wunderbaren Apfelkuchen.",
        "Die Kinder spielen nach der Schule gern auf dem Spielplatz hinter dem Rathaus.",
        "Vielen Dank für Ihre Geduld, wir melden uns so bald wie möglich bei Ihnen.",
        "Im Herbst werden die Tage kürzer und die Blätter der Bäume färben sich gelb und rot.",
        "Er arbeitet seit zehn Jahren als Ingenieur bei einem großen Unternehmen in Hamburg.",
    ),
    "es": (
        "La biblioteca municipal abre todos los días a las nueve de la mañana, excepto los domingos.",
        "Pasamos la tarde paseando por la playa y hablando de nuestros planes para el verano.",
        "El gobierno anunció nuevas medidas para apoyar a las pequeñas empresas de la región.",
        "Antes de instalar el programa, es importante leer con atención el manual de usuario.",
        "El tren hacia Madrid llegó con una hora de retraso por un problema en las vías.",
        "Mi abuela prepara una paella deliciosa todos los domingos para toda la familia.",
        "Los niños juegan en el parque después de la escuela mientras sus padres conversan.",
        "Muchas gracias por su paciencia, nos pondremos en contacto con usted lo antes posible.",
        "En otoño los días se hacen más cortos y las hojas de los árboles cambian de color.",
        "Trabaja desde hace diez años como ingeniero en una empresa muy grande de Barcelona.",
    ),
    "it": (
        "La biblioteca comunale è aperta tutti i giorni dalle nove alle diciotto, tranne la domenica.",
        "Abbiamo trascorso il pomeriggio passeggiando lungo il fiume e parlando dei nostri progetti.",
        "Il governo ha annunciato nuove misure per sostenere le piccole imprese della regione.",
        "Prima di installare il programma è importante leggere con attenzione il manuale.",
        "Il treno per Roma è arrivato con un'ora di ritardo a causa di un guasto tecnico.",
        "Mia nonna prepara ogni domenica un ottimo ragù per tutta la famiglia.",
        "I bambini giocano nel parco dopo la scuola mentre i genitori chiacchierano.",
        "Grazie mille per la vostra pazienza, vi risponderemo il prima possibile.",
        "In autunno le giornate si accorciano e le foglie degli alberi cambiano colore.",
    ),
    "pt": (
        "A biblioteca municipal abre todos os dias às nove horas da manhã, exceto aos domingos.",
        "Passamos a tarde passeando pela praia e conversando sobre os nossos planos para o verão.",
        "O governo anunciou novas medidas para apoiar as pequenas empresas da região.",
        "Antes de instalar o programa, é importante ler com atenção o manual do usuário.",
        "O comboio para Lisboa chegou com uma hora de atraso devido a uma avaria técnica.",
        "A minha avó prepara um bacalhau delicioso todos os domingos para a família inteira.",
        "As crianças brincam no parque depois da escola enquanto os pais conversam.",
        "Muito obrigado pela sua paciência, entraremos em contato com você o mais rápido possível.",
        "No outono os dias ficam mais curtos e as folhas das árvores mudam de cor.",
    ),
    "nl": (
        "De openbare bibliotheek is elke dag geopend van negen uur 's ochtends tot zes uur 's avonds.",
        "We hebben de hele middag langs de rivier gewandeld en over onze plannen gepraat.",
        "De regering heeft nieuwe maatregelen aangekondigd om kleine bedrijven in de regio te steunen.",
        "Voordat u de software installeert, moet u de handleiding zorgvuldig doorlezen.",
        "De trein naar Amsterdam had bijna een uur vertraging door een technische storing.",
        "Mijn oma bakt elk jaar met Kerstmis een heerlijke appeltaart voor de hele familie.",
        "De kinderen spelen na school graag in het park achter het gemeentehuis.",
        "Hartelijk dank voor uw geduld, wij nemen zo snel mogelijk contact met u op.",
        "In de herfst worden de dagen korter en kleuren de bladeren van de bomen geel en rood.",
    ),
    "ru": (
        "Городская библиотека открыта каждый день с девяти утра до шести вечера, кроме воскресенья.",
        "Мы провели весь вечер на берегу реки и говорили о наших планах на лето.",
        "Правительство объявило о новых мерах поддержки малого бизнеса в регионе.",
        "Перед установкой программы внимательно прочитайте инструкцию пользователя.",
        "Поезд в Москву опоздал почти на час из-за технической неисправности.",
        "Моя бабушка каждое воскресенье печёт вкусные пироги для всей семьи.",
        "Осенью дни становятся короче, а листья на деревьях желтеют и краснеют.",
    ),
    "zh": (
        "市图书馆每天早上九点开门，星期日除外。",
        "我们整个下午都在河边散步，谈论着夏天的计划。",
        "政府宣布了支持本地区小企业的新措施。",
        "在安装软件之前，请仔细阅读用户手册。",
        "由于技术故障，开往北京的火车晚点了将近一个小时。",
        "我奶奶每个星期天都会为全家人做一顿丰盛的饭菜。",
        "秋天到了，白天变短了，树叶也变成了黄色和红色。",
    ),
    "ja": (
        "市立図書館は日曜日を除いて毎日午前九時に開館します。",
        "私たちは午後ずっと川沿いを散歩しながら夏の計画について話しました。",
        "政府は地域の中小企業を支援するための新しい対策を発表しました。",
        "ソフトウェアをインストールする前に、説明書をよく読んでください。",
        "技術的な問題のため、東京行きの電車が一時間近く遅れました。",
        "祖母は毎週日曜日に家族全員のためにおいしい料理を作ってくれます。",
        "秋になると日が短くなり、木々の葉が黄色や赤に色づきます。",
    ),
    "ar": (
        "تفتح المكتبة العامة أبوابها كل يوم في الساعة التاسعة صباحا ما عدا يوم الجمعة.",
        "قضينا فترة بعد الظهر نتمشى على ضفاف النهر ونتحدث عن خططنا للصيف.",
        "أعلنت الحكومة عن إجراءات جديدة لدعم الشركات الصغيرة في المنطقة.",
        "قبل تثبيت البرنامج يجب قراءة دليل المستخدم بعناية.",
        "تأخر القطار المتجه إلى القاهرة ساعة كاملة بسبب عطل فني.",
        "تعد جدتي كل يوم جمعة طعاما لذيذا لجميع أفراد العائلة.",
        "في فصل الخريف تقصر الأيام وتتغير ألوان أوراق الأشجار.",
    ),
}
_NON_ENGLISH_DOCS = {"fr": 4, "de": 4, "es": 4, "it": 3, "pt": 3, "nl": 3, "ru": 3, "zh": 2, "ja": 2, "ar": 2}
_EMPTY_TEXTS = (
    "",
    "   ",
    "\n\n\t  \n",
    "\x00\x01\x02\x03",
    " \x0b\x0c\x1b\x7f ",
)  # nothing but space/controls
_JUNK_BOILERPLATE = (
    "Home | About Us | Products | Blog | Contact",
    "Skip to main content",
    "We use cookies to give you the best possible experience on our website.",
    "By continuing to browse, you agree to our use of cookies.",
    "Accept all cookies",
    "Manage your preferences",
    "Copyright 2024 Example Corporation. All rights reserved.",
    "Privacy Policy | Terms of Use | Sitemap",
    "Follow us on social media",
    "Sign in or create an account",
    "Subscribe to our newsletter",
    "Back to top",
    "Search this site",
    "Powered by our content management system",
)
_JUNK_SYMBOLS = (
    "###",
    "$$$",
    "!!!",
    "***",
    ">>>",
    "<<<",
    "|||",
    "~~~",
    "%%%",
    "&&&",
    "+++",
    "===",
    "^^^",
    "@@",
)
_JUNK_SPAM_WORDS = (
    "click", "here", "for", "the", "best", "deals", "and", "free", "gifts", "win", "now", "with", "our",
    "offer", "today", "only", "to", "get", "your", "prize", "of", "cheap", "prices", "on", "all", "items",
)  # fmt: skip
_JUNK_REPEATED = (
    "Buy cheap watches online with free shipping to your door.",
    "Click here to claim your free prize and win big today.",
    "Best prices on the internet for all of your favorite products.",
    "Call now to get the lowest rates on car insurance in your area.",
    "Download the latest movies and music for free with no registration.",
)
_JUNK_SHORT = (
    "Thanks for visiting our page, see you again soon.",
    "Page not found, please check the address and try again.",
    "This page is intentionally left blank for now.",
    "Click here to download the latest version of the app.",
    "Sorry, this content is not available in your region.",
    "Your session has expired, please sign in again.",
    "The article you are looking for has been moved.",
    "Loading the rest of the page, please wait a moment.",
)
_LOREM = (
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut "
    "labore et dolore magna aliqua."
)
_JUNK_LOREM_ENGLISH = (
    "This page is a placeholder for the new product catalogue that we are preparing.",
    "The final text will be written by the marketing team and reviewed by the editors.",
    "Until then, the layout below shows how the paragraphs and images will look on the site.",
    "Please do not link to this page, because the address will change when it goes live.",
    "The designers have asked for feedback on the fonts, the colors and the spacing of the columns.",
    "We expect to publish the finished version of the catalogue at the start of next month.",
    "If you have any questions about the new design, talk to the web team in the main office.",
    "The photos of the products will be replaced with the final pictures from the studio.",
)
_JUNK_LIST_ITEMS = (
    "Fresh apples", "Organic bananas", "Whole milk", "Brown bread", "Free range eggs", "Cheddar cheese",
    "Green tea", "Orange juice", "Chicken breast", "Brown rice", "Tomato sauce", "Olive oil",
    "Frozen peas", "Greek yogurt", "Dark chocolate", "Paper towels", "Dish soap", "Laundry detergent",
    "Garden hose", "Light bulbs", "Batteries", "Kitchen sponges", "Dog food", "Coffee beans",
)  # fmt: skip


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
