"""Training measurements: the device's peak FLOP/s, rolling throughput, memory, metrics.jsonl rows.

    peak = detect_peak_flops(device, "bf16")      # None on CPU / unknown GPU -> MFU not reported
    tput = Throughput(window=20)
    tput.update(num_tokens, step_s, data_wait_s)
    mfu(model.flops_per_token(seq_len), tput.tokens_per_s, peak, world_size)   # pretrain.core.accel
    memory_snapshot(device)                       # GiB: CUDA max allocated, or RSS on CPU

The loop's metrics callback (trainer/callbacks/metrics.py) puts these into each step's row.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import resource
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import torch

from pretrain.core.accel import peak_flops_for_name
from trainer.model import Transformer, preset

log = logging.getLogger(__name__)

_DEVICE_SPEC = re.compile(r"^(cpu|cuda|mps|xpu|meta)(:\d+)?$")


def detect_peak_flops(device: Any, dtype: Any = "bf16") -> float | None:
    """Peak FLOP/s of `device` (a torch.device, "cuda:0", or a device-name string) at `dtype`.

    None on CPU: a CPU has no meaningful tensor-core peak, so MFU is not reported there (use
    `measure_matmul_flops` for an explicitly *measured* reference instead).
    """
    if isinstance(device, str) and not _DEVICE_SPEC.match(device):
        return peak_flops_for_name(device, dtype)
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return peak_flops_for_name(torch.cuda.get_device_name(device), dtype)


def measure_matmul_flops(dtype: Any = None, n: int = 1024, repeats: int = 5) -> float:
    """MEASURED (not datasheet) FLOP/s of an n x n matmul on CPU: best of `repeats` runs."""
    a = torch.randn(n, n, dtype=dtype or torch.float32)
    b = torch.randn(n, n, dtype=dtype or torch.float32)
    a @ b  # first call pays one-time allocation/thread-pool start-up
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


class Throughput:
    """Rolling tokens/s and data-wait fraction over the last `window` steps."""

    def __init__(self, window: int = 20):
        if window < 1:
            raise ValueError(f"window={window} must be >= 1")
        self._steps: deque[tuple[int, float, float]] = deque(maxlen=window)
        self.total_tokens = 0
        self._last = time.perf_counter()

    def update(self, num_tokens: int, step_s: float, data_wait_s: float = 0.0) -> None:
        """Record one step: tokens processed, wall seconds it took (data wait included), wait seconds."""
        self._steps.append((num_tokens, step_s, data_wait_s))
        self.total_tokens += num_tokens

    def tick(self, num_tokens: int, data_wait_s: float = 0.0) -> None:
        """update() with step_s = wall time since the previous tick (or construction/`reset_clock`)."""
        now = time.perf_counter()
        self.update(num_tokens, now - self._last, data_wait_s)
        self._last = now

    def reset_clock(self) -> None:
        self._last = time.perf_counter()

    @property
    def tokens_per_s(self) -> float:
        seconds = sum(s for _, s, _ in self._steps)
        return sum(n for n, _, _ in self._steps) / seconds if seconds > 0 else 0.0

    @property
    def data_wait_fraction(self) -> float:
        seconds = sum(s for _, s, _ in self._steps)
        return min(1.0, sum(w for _, _, w in self._steps) / seconds) if seconds > 0 else 0.0


# Device type -> bytes in use when reset_peak_memory() last ran (the training footprint's zero).
_memory_base: dict[str, int] = {}


def _proc_status_kib(field: str) -> int | None:
    """A `kB` line of /proc/self/status (VmRSS, VmHWM); None where there is no procfs."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_memory(device: Any = "cpu") -> None:
    """Start a fresh peak and take the current use as the baseline; call just before the model is built.

    memory_snapshot then also reports `mem_peak_above_base_gib`: the peak since this call minus the
    baseline, i.e. what model, gradients, optimizer states, activations and allocator caching add to
    a process that already holds Python, torch and the data loader. On CUDA it is max allocated
    minus allocated at the reset (the CUDA context and the allocator's reserved-but-free cache are
    excluded). On Linux CPU it is the kernel's resident high-water mark (VmHWM, reset here by
    writing 5 to /proc/self/clear_refs) minus the resident set at the reset: pages the C allocator
    keeps after a free still count, and freed memory held since before the reset may be reused
    without raising it.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        _memory_base["cuda"] = torch.cuda.memory_allocated(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # no procfs (macOS) or not allowed: the peak then counts from process start
        pass
    rss_kib = _proc_status_kib("VmRSS")
    if rss_kib is not None:
        _memory_base["cpu"] = rss_kib * 1024


def memory_snapshot(device: Any = "cpu") -> dict[str, float]:
    """GiB in use: CUDA max allocated/reserved on a GPU, process RSS (current and peak) on CPU; plus
    `mem_peak_above_base_gib` after reset_peak_memory(device) (see there)."""
    device = torch.device(device)
    if device.type == "cuda":
        snap = {
            "mem_max_alloc_gib": torch.cuda.max_memory_allocated(device) / 2**30,
            "mem_reserved_gib": torch.cuda.memory_reserved(device) / 2**30,
        }
        if "cuda" in _memory_base:
            snap["mem_peak_above_base_gib"] = (
                torch.cuda.max_memory_allocated(device) - _memory_base["cuda"]
            ) / 2**30
        return snap
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    peak = peak_kib / 2**30 if sys.platform == "darwin" else peak_kib / 2**20
    try:
        with open("/proc/self/statm") as f:  # resident pages, field 2
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
    except OSError:
        rss = peak
    snap = {"mem_rss_gib": rss, "mem_peak_rss_gib": peak}
    hwm_kib = _proc_status_kib("VmHWM")
    if "cpu" in _memory_base and hwm_kib is not None:
        snap["mem_peak_above_base_gib"] = (hwm_kib * 1024 - _memory_base["cpu"]) / 2**30
    return snap


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Rows of run_dir/metrics.jsonl; a torn last line (crash mid-write) is skipped."""
    rows = []
    for line in (Path(run_dir) / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def measure_loss_memory(
    vocab_size: int,
    batch: int,
    seq_len: int,
    loss_chunk_tokens: int,
    preset_name: str = "tiny",
    seed: int = 0,
) -> dict[str, float]:
    """Forward + backward of the `preset_name` model at `vocab_size` on one random batch, in a fresh
    Python process (so no earlier allocation hides the peak): {"loss", "grad_norm",
    "peak_above_base_bytes"} with `loss_chunk_tokens` (0: full logits). CPU, Linux (VmHWM)."""
    args = json.dumps([vocab_size, batch, seq_len, loss_chunk_tokens, preset_name, seed])
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    code = "import sys; from trainer.metrics import _loss_memory_probe; _loss_memory_probe(sys.argv[1])"
    out = subprocess.run(
        [sys.executable, "-c", code, args], env=env, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"loss memory probe failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _loss_memory_probe(args_json: str) -> None:
    vocab_size, batch, seq_len, chunk, preset_name, seed = json.loads(args_json)
    torch.manual_seed(seed)
    model = Transformer(preset(preset_name, vocab_size=vocab_size, max_seq_len=max(seq_len, 512)))
    g = torch.Generator().manual_seed(seed + 1)
    tokens = torch.randint(0, vocab_size, (batch, seq_len + 1), generator=g)
    reset_peak_memory("cpu")
    _, loss = model(tokens[:, :-1], tokens[:, 1:], loss_chunk_tokens=chunk)
    loss.backward()
    peak = memory_snapshot("cpu")["mem_peak_above_base_gib"] * 2**30
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
    print(json.dumps({"loss": loss.item(), "grad_norm": norm.item(), "peak_above_base_bytes": peak}))
