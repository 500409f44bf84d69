"""Hand-written text for the planted cases, kept in data_pipeline/assets/corpus_text.json
(pool name -> strings, pairs or a mapping); each case module takes the pools it plants from.

    TOXIC_SENTENCES = strings("toxic_sentences")
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

_PATH = Path(__file__).parents[1] / "assets" / "corpus_text.json"


@cache
def pools() -> dict[str, Any]:
    return json.loads(_PATH.read_text(encoding="utf-8"))  # the pools are not ASCII


def strings(name: str) -> tuple[str, ...]:
    return tuple(pools()[name])


def pairs(name: str) -> tuple[tuple[str, str], ...]:
    return tuple((a, b) for a, b in pools()[name])


def string_lists(name: str) -> dict[str, tuple[str, ...]]:
    """A pool keyed by kind or language, each a list of strings."""
    return {k: tuple(v) for k, v in pools()[name].items()}
