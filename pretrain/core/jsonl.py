"""JSON Lines, read and written one way everywhere: blank lines skipped, a bad line names
`file:line`, writes are atomic.

    for n, row in iter_jsonl(path): ...           # (line number, object)
    rows = read_jsonl(path, missing_ok=True)      # [] when the file does not exist
    rows = read_jsonl(path, skip_torn_tail=True)  # a log whose last line a crash cut short
    write_jsonl(path, rows)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pretrain.core.files import atomic_path


def iter_jsonl(path: str | Path, skip_torn_tail: bool = False) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) per non-blank line. A line that is not JSON raises ValueError
    naming `path:line`; with `skip_torn_tail`, a bad *last* line (a write cut by a crash) is dropped."""
    with open(path, encoding="utf-8") as f:
        pending: tuple[int, str] | None = None
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            if pending is not None:
                raise ValueError(f"{path}:{pending[0]}: not valid JSON: {pending[1]}")
            try:
                yield n, json.loads(line)
            except ValueError as e:
                if not skip_torn_tail:
                    raise ValueError(f"{path}:{n}: not valid JSON: {e}") from None
                pending = (n, str(e))


def read_jsonl(path: str | Path, missing_ok: bool = False, skip_torn_tail: bool = False) -> list[Any]:
    if missing_ok and not Path(path).exists():
        return []
    return [row for _, row in iter_jsonl(path, skip_torn_tail=skip_torn_tail)]


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
