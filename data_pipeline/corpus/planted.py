"""What every kind of planted case shares: the `Planted` document (text, expected fate, truth
extras), the `Builder` that turns base texts into planted documents, and small text edits.

    b = Builder(base, rng)
    b.modified("pii", edit)     # a base text edited so that the default pipeline still keeps it
    b.add(Planted("toxic", text, expect=expect("toxicity", "toxic")))
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from data_pipeline.corpus.checks import kept_unchanged

KEPT = "kept"


def expect(stage: str, reason: str) -> dict[str, str]:
    """The truth's expected fate of a document a stage drops."""
    return {"stage": stage, "reason": reason}


@dataclass(eq=False)
class Planted:
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
    dup_of: Planted | None = None
    near_dup_of: Planted | None = None
    doc_id: str = ""  # the pipeline's id, set by the layout
    source_id: str | None = None


class Builder:
    """Turns the selected base texts into planted documents, consuming base texts as it goes."""

    def __init__(self, base: list[tuple[str, str]], rng: random.Random) -> None:
        self.rng = rng
        self.unused = list(base)  # (module, text), in seeded order
        self.docs: list[Planted] = []
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

    def add(self, doc: Planted) -> Planted:
        self.docs.append(doc)
        return doc

    def modified(self, category: str, edit: Any, ok: Any = None, **kwargs: Any) -> Planted:
        """A base text changed by `edit(text) -> (new_text, extra, text_the_filters_see) | None`;
        texts whose edit would not pass the default pipeline unchanged stay plain base documents."""
        rejected = []
        for _ in range(20):
            module, text = self.take(ok)
            edited = edit(text)
            if edited is not None and kept_unchanged(edited[2]):
                new_text, extra, _ = edited
                self.unused[:0] = rejected
                return self.add(
                    Planted(category, new_text, extra=extra, url=self.url(f"docs/{module}"), **kwargs)
                )
            rejected.append((module, text))
        raise RuntimeError(f"could not plant a {category} document that passes the default filters")


def first_ok(make: Callable[[], str], ok: Callable[[str], Any], what: str) -> tuple[str, Any]:
    """The first of up to 200 generated texts that `ok` accepts, with its verdict."""
    for _ in range(200):
        candidate = make()
        verdict = ok(candidate)
        if verdict:
            return candidate, verdict
    raise RuntimeError(f"could not generate a {what} document")


def insert_sentences(text: str, sentences: list[str], rng: random.Random) -> str:
    """Each sentence becomes its own line or is appended to a paragraph, at a random place."""
    lines = text.split("\n")
    for sentence in sentences:
        i = rng.randrange(len(lines) + 1)
        if i < len(lines) and rng.random() < 0.5:
            lines[i] = f"{lines[i]} {sentence}"
        else:
            lines.insert(i, sentence)
    return "\n".join(lines)


def split_paragraphs(sentences: list[str], rng: random.Random, joiner: str = " ") -> str:
    """Sentences grouped into 1-3 paragraphs (one per line)."""
    num = min(len(sentences), rng.randint(1, 3))
    cuts = sorted(rng.sample(range(1, len(sentences)), num - 1)) if num > 1 else []
    bounds = [0, *cuts, len(sentences)]
    return "\n".join(joiner.join(sentences[a:b]) for a, b in zip(bounds, bounds[1:]))


def json_line(record: dict[str, Any]) -> bytes:
    """One record as the corpus writes it (raw JSONL and truth.jsonl), without its newline."""
    line = json.dumps(record, ensure_ascii=False)
    # JSON allows these raw, but str.splitlines() would break a record on them.
    for ch in ("\u2028", "\u2029", "\x85"):
        line = line.replace(ch, f"\\u{ord(ch):04x}")
    return line.encode("utf-8")
