"""The record every stage sees, the rejection it may return, and the Stage base class.

A stage is a small class with a pure per-document method; it never knows how it is scheduled
(the executor owns looping, retries, resume, stats and rejects).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass
class Doc:
    id: str
    text: str
    source: str
    url: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "text": self.text,
            "source": self.source,
            "url": self.url,
            "metadata": json.dumps(self.metadata, sort_keys=True, ensure_ascii=False),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Doc:
        meta = row.get("metadata")
        if isinstance(meta, str):
            meta = json.loads(meta) if meta else {}
        return cls(
            id=row["id"],
            text=row["text"],
            source=row["source"],
            url=row.get("url"),
            metadata=dict(meta or {}),
        )


@dataclass(frozen=True)
class Reject:
    """Why a document was dropped. `reason` is a short counted label; `detail` is free text."""

    reason: str
    detail: str = ""


class Stage:
    """Base class: subclasses set `name` and implement `process`.

    `process(doc)` returns the (possibly modified) doc to keep it, or a `Reject`. It must be pure:
    no I/O, no Ray, deterministic for the same input and config.
    """

    name: ClassVar[str] = "stage"

    def process(self, doc: Doc) -> Doc | Reject:
        raise NotImplementedError

    def process_batch(self, docs: list[Doc]) -> list[Doc | Reject]:
        """Override when a stage is faster over a batch (e.g. a vectorised classifier)."""
        return [self.process(d) for d in docs]
