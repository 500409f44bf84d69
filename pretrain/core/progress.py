"""Live progress per phase: tasks done / total, docs/s and ETA.

A rich live bar on a terminal; elsewhere (CI, `ray job submit` logs) one plain line per update,
at most every few seconds.
"""

from __future__ import annotations

import sys
import time

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress


class Progress:
    def __init__(self, enabled: bool = True, min_interval_s: float = 5.0):
        self.enabled = enabled
        self.live = enabled and sys.stdout.isatty()
        self.min_interval_s = min_interval_s
        self._rich = None
        self._task = None
        self.phase = ""
        self.total = self.done = self.num_docs = 0
        self._t0 = self._last_print = 0.0

    def start(self, phase: str, total: int, done: int = 0) -> None:
        self.stop()
        self.phase, self.total, self.done, self.num_docs = phase, total, done, 0
        self._t0 = time.perf_counter()
        self._last_print = 0.0
        if not self.enabled:
            return
        if self.live:
            self._rich = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
            )
            self._rich.start()
            self._task = self._rich.add_task(phase, total=total, completed=done, rate="")
        elif done:
            print(f"[{phase}] {done}/{total} already complete, skipping them", flush=True)

    def advance(self, phase: str, num_docs: int) -> None:
        self.done += 1
        self.num_docs += num_docs
        self.refresh(force=self.done == self.total)

    def rate(self) -> float:
        dt = time.perf_counter() - self._t0
        return self.num_docs / dt if dt > 0 else 0.0

    def refresh(self, force: bool = False) -> None:
        if not self.enabled:
            return
        rate = f"{self.rate():,.0f} docs/s" if self.num_docs else ""
        if self._rich is not None:
            self._rich.update(self._task, completed=self.done, rate=rate)
            return
        now = time.perf_counter()
        if force or now - self._last_print >= self.min_interval_s:
            self._last_print = now
            elapsed = now - self._t0
            eta = f"{elapsed / self.done * (self.total - self.done):.1f}s" if self.done else "?"
            print(
                f"[{self.phase}] {self.done}/{self.total} tasks  {rate}  elapsed {elapsed:.1f}s  eta {eta}",
                flush=True,
            )

    def stop(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None
