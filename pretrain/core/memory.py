"""A task's memory budget, held inside the task: the process's private resident memory is sampled
on a thread, and past the budget the task gets a `TaskOutOfMemory` (a MemoryError) in its own thread.

    with MemoryGuard(limit_bytes=512 << 20) as guard:   # raises TaskOutOfMemory past 512 MiB
        work()
    guard.peak_bytes, guard.peak_rss_bytes                # the highest private memory and RSS it saw

What the budget counts is *private* memory: the resident set (RSS) less its shared pages (shared
libraries, mapped files, shared memory; /proc's statm "shared"). That is how Ray's own memory
monitor measures a worker (`ray._private.memory_monitor.get_rss`: rss - shared), and what the node
runs out of: shared-library pages are resident once per node however many workers map them (115 of
a Ray worker's 186 MiB RSS here, before any work), and a mapped file's pages are page cache, which
the kernel can drop. RSS is measured beside it and reported (`peak_rss_bytes`).

Ray's `memory=` resource only reserves memory for scheduling; nothing in Ray stops a task that
uses more (its memory monitor kills a worker only when the whole node is nearly full). The guard
makes the budget a limit: a soft one, sampled every `interval_s` and raised when the task next runs
Python code, so a single C call that allocates far past it (one huge sort) is left to Ray's memory
monitor and the OS. The runner (`pretrain.core.runner`) wraps every task in one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import mmap
import os
import sys
import threading
from types import TracebackType

_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


_first_task: list[tuple[int, int]] = []  # this process's (private, RSS) when its first guarded task began


class TaskOutOfMemory(MemoryError):
    """A task went past its memory budget (raised inside the task by `MemoryGuard`)."""


def memory_bytes() -> tuple[int, int]:
    """This process's (private, resident) bytes: RSS less its shared pages, and RSS. From /proc on
    Linux; psutil elsewhere (where it has no shared figure, private is RSS)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            fields = f.read().split()
        resident, shared = int(fields[1]) * _PAGE_BYTES, int(fields[2]) * _PAGE_BYTES
        return resident - shared, resident
    except OSError:
        import psutil  # a Ray dependency; only where /proc is missing (macOS)

        info = psutil.Process().memory_info()
        return info.rss - getattr(info, "shared", 0), info.rss


def private_bytes() -> int:
    """This process's private resident memory: what a task's budget counts (see the module)."""
    return memory_bytes()[0]


def rss_bytes() -> int:
    """This process's resident set size."""
    return memory_bytes()[1]


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


_LIBC = _libc()


def release_freed_memory() -> None:
    """Give memory that is freed but still held back to the OS (the garbage collector, Arrow's
    pool, glibc's heap), so a task in a reused worker is not charged for an earlier task's
    leftovers."""
    gc.collect()
    if (pa := sys.modules.get("pyarrow")) is not None:  # only when the task's code loaded Arrow
        pa.default_memory_pool().release_unused()
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


def _madvise() -> ctypes._CFuncPtr | None:
    fn = getattr(_LIBC, "madvise", None) if _LIBC is not None else None
    if fn is not None:
        fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        fn.restype = ctypes.c_int
    return fn


_MADVISE = _madvise()
_MADV_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)


def release_mapped_pages(mapping: object) -> None:
    """Drop the pages of a read-only file mapping (a pyarrow Buffer over `pa.memory_map`) that this
    process has touched: madvise(MADV_DONTNEED). They leave its RSS and stay in the page cache; the
    next read of them faults them back in, unchanged. A no-op where madvise is missing."""
    size = getattr(mapping, "size", 0)
    if _MADVISE is None or _MADV_DONTNEED is None or not size:
        return
    start = mapping.address - mapping.address % _PAGE_BYTES  # a mapping starts on a page
    _MADVISE(start, mapping.address + size - start, _MADV_DONTNEED)


class MemoryGuard:
    """Raise `TaskOutOfMemory` in the entering thread once the process's private memory passes
    `limit_bytes` (0: no limit, only the peaks are measured). In a reused worker, what earlier tasks
    left behind (the growth since the process's first guarded task began, after
    `release_freed_memory`: caches such as the chain's models, memory the allocator keeps) is not
    charged to this task: the limit is raised by it (`leftover_bytes`). RSS is sampled beside it:
    `peak_rss_bytes`, `leftover_rss_bytes`."""

    def __init__(self, limit_bytes: int, interval_s: float = 0.05):
        self.limit_bytes = limit_bytes
        self.interval_s = interval_s
        self.peak_bytes = self.peak_rss_bytes = 0
        self.leftover_bytes = self.leftover_rss_bytes = 0
        self.tripped = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._active = False
        self._thread_id = 0
        self._watcher: threading.Thread | None = None

    def __enter__(self) -> MemoryGuard:
        release_freed_memory()
        self._sample()
        if not _first_task:
            _first_task.append((self.peak_bytes, self.peak_rss_bytes))
        self.leftover_bytes = max(0, self.peak_bytes - _first_task[0][0])
        self.leftover_rss_bytes = max(0, self.peak_rss_bytes - _first_task[0][1])
        if self.limit_bytes and self.peak_bytes > self._limit():  # over before any work
            self.tripped = True
            raise TaskOutOfMemory(self.message())
        self._thread_id = threading.get_ident()
        self._active = True
        self._watcher = threading.Thread(target=self._watch, name="memory-guard", daemon=True)
        self._watcher.start()
        return self

    def _sample(self) -> int:
        private, rss = memory_bytes()
        self.peak_bytes, self.peak_rss_bytes = max(self.peak_bytes, private), max(self.peak_rss_bytes, rss)
        return private

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            private = self._sample()
            if self.limit_bytes and private > self._limit():
                with self._lock:
                    if self._active:
                        self.tripped, self._active = True, False
                        _async_raise(self._thread_id, TaskOutOfMemory)
                return

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with self._lock:
            self._active = False
            if self.tripped:  # raised but maybe not delivered yet: clear it, the caller reports it
                _async_raise(self._thread_id, None)
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()
        self._sample()

    def _limit(self) -> int:
        return self.limit_bytes + self.leftover_bytes

    def message(self) -> str:
        left = (
            f" ({self.leftover_bytes / 2**20:,.0f} MiB of it left by earlier tasks)"
            if self.leftover_bytes
            else ""
        )
        return (
            f"the task's process reached {self.peak_bytes / 2**20:,.0f} MiB of private memory{left}, "
            f"over its budget of {self.limit_bytes / 2**20:,.0f} MiB (RSS {self.peak_rss_bytes / 2**20:,.0f} MiB)"
        )


def _async_raise(thread_id: int, exc_type: type[BaseException] | None) -> None:
    """Raise `exc_type` in thread `thread_id` when it next runs Python code (None: cancel)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc_type) if exc_type is not None else None
    )
