"""Live progress per phase: tasks done / total, docs/s and ETA; by input bytes where the phase
knows them (a task over a 240 MB file is not one task's worth of a task over 5 MB).

A rich live bar on a terminal; elsewhere (CI, `ray job submit` logs) one plain line per update,
at most every few seconds.

    progress.start("chain", total=12, done=3, total_bytes=420 << 20, done_bytes=90 << 20)
    progress.advance("chain", num_docs=5000, num_bytes=64 << 20)   # one task finished
"""

from __future__ import annotations

import sys
import time

from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
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
        self.total_bytes = self.done_bytes = 0
        self._num_run = self._bytes_run = 0  # finished in this session (ETA and rate come from these)
        self._t0 = self._last_print = 0.0

    def start(self, phase: str, total: int, done: int = 0, total_bytes: int = 0, done_bytes: int = 0) -> None:
        """`total` tasks of which `done` are finished already; with `total_bytes`, progress and ETA
        count input bytes instead of tasks."""
        self.stop()
        self.phase, self.total, self.done, self.num_docs = phase, total, done, 0
        self.total_bytes, self.done_bytes = total_bytes, done_bytes
        self._num_run = self._bytes_run = 0
        self._t0 = time.perf_counter()
        self._last_print = 0.0
        if not self.enabled:
            return
        if self.live:
            counter = DownloadColumn() if total_bytes else MofNCompleteColumn()
            self._rich = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                counter,
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
            )
            self._rich.start()
            self._task = self._rich.add_task(
                phase, total=total_bytes or total, completed=done_bytes if total_bytes else done, rate=""
            )
        elif done:
            print(f"[{phase}] {done}/{total} already complete, skipping them", flush=True)

    def advance(self, phase: str, num_docs: int, num_bytes: int = 0) -> None:
        self.done += 1
        self._num_run += 1
        self.num_docs += num_docs
        self.done_bytes += num_bytes
        self._bytes_run += num_bytes
        self.refresh(force=self.done == self.total)

    def rate(self) -> float:
        dt = time.perf_counter() - self._t0
        return self.num_docs / dt if dt > 0 else 0.0

    def eta_s(self) -> float | None:
        """Seconds left at this session's pace so far: by bytes when the phase counts them."""
        elapsed = time.perf_counter() - self._t0
        if self.total_bytes:
            left, pace = self.total_bytes - self.done_bytes, self._bytes_run
        else:
            left, pace = self.total - self.done, self._num_run
        return elapsed / pace * left if pace else None

    def refresh(self, force: bool = False) -> None:
        if not self.enabled:
            return
        rate = f"{self.rate():,.0f} docs/s" if self.num_docs else ""
        if self._rich is not None:
            done = self.done_bytes if self.total_bytes else self.done
            self._rich.update(self._task, completed=done, rate=rate)
            return
        now = time.perf_counter()
        if force or now - self._last_print >= self.min_interval_s:
            self._last_print = now
            eta = self.eta_s()
            size = (
                f"  {self.done_bytes / 1e6:,.0f}/{self.total_bytes / 1e6:,.0f} MB" if self.total_bytes else ""
            )
            print(
                f"[{self.phase}] {self.done}/{self.total} tasks{size}  {rate}  elapsed {now - self._t0:.1f}s  "
                f"eta {'?' if eta is None else f'{eta:.1f}s'}",
                flush=True,
            )

    def stop(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None
