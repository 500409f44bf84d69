"""Near-duplicate cases: edits of plain web base documents (word insertions, deletions,
substitutions, boilerplate lines, reordered lines) whose word 5-gram Jaccard with the original
lands within JACCARD_TOLERANCE of each planned level; the truth records the measured Jaccard.
"""

from __future__ import annotations

import random

from data_pipeline.corpus.assets import strings
from data_pipeline.corpus.checks import kept_unchanged
from data_pipeline.corpus.planted import Builder, Planted
from data_pipeline.minhash.shingles import jaccard, word_shingles

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

_BOILERPLATE_LINES = strings("boilerplate_lines")


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


def plant_near_duplicates(b: Builder, candidates: list[Planted]) -> None:
    """One near-duplicate per NEAR_DUP_PLAN entry, each of a different source of 100+ words."""
    rng = b.rng
    sources = [d for d in candidates if len(d.text.split()) >= 100]
    for target, kind in NEAR_DUP_PLAN:
        # Edits move the Jaccard in steps of a few hundredths, so try a few sources, keep the closest.
        tried: list[tuple[float, Planted, str, float]] = []
        for source in sources:
            found = _near_dup(source.text, kind, target, rng, b.vocab)
            if found is not None:
                tried.append((abs(found[1] - target), source, *found))
                if tried[-1][0] <= 0.005 or len(tried) == 12:
                    break
        for _, source, text, j in sorted(tried, key=lambda t: t[0]):
            if kept_unchanged(text):
                sources.remove(source)
                extra = {"jaccard": j, "target_jaccard": target, "edit_kind": kind}
                b.add(Planted("near_dup", text, extra=extra, url=b.url("mirror"), near_dup_of=source))
                break
        else:
            raise RuntimeError(f"no base document gives a {kind} near-duplicate at Jaccard {target}")
