"""The Ray task runner every folder schedules its work with: local Ray on loopback or a cluster,
a bounded map over tasks that reports every failure, a memory budget per task, and the `ray:`
config section.

    ensure_ray(cfg.ray)
    results, errors = ray_map(fn, [(key, args), ...], cfg.ray, labels={key: "web/a.jsonl"})
    raise_errors(errors, "chain")   # PipelineError listing every failed key

Each task declares `ray.task_memory_mb` to Ray (`memory=`), so a node runs only as many at once as
its memory holds, and runs under a `MemoryGuard` that holds it to that budget. A task that runs out
of memory (past its budget, a MemoryError, or killed by Ray's memory monitor) is retried at most
`ray.max_oom_retries` times; then its error names the unit and the setting to raise.
Ray is imported inside the functions (a heavy library the trainer and eval never need).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pretrain.core.config import check
from pretrain.core.memory import MemoryGuard, TaskOutOfMemory
from pretrain.core.progress import Progress
from pretrain.core.storage import store_env

log = logging.getLogger(__name__)


class PipelineError(RuntimeError):
    """One or more tasks failed; the message lists each failed input and why."""


@dataclass
class RayConfig:
    address: str | None = None
    """Cluster to join (`auto`, `ray://host:10001`). None: join $RAY_ADDRESS when set (as under
    `ray job submit`), else start a local Ray on 127.0.0.1."""
    num_cpus: int | None = None
    """CPUs of the local Ray (None: all cores). Ignored when joining a cluster."""
    max_in_flight: int = 0
    """Tasks submitted at once (backpressure); 0 = 2 x the cluster's CPUs."""
    max_retries: int = 3
    """Retries of a task whose worker died (a crash or a kill); bad input is not retried."""
    task_memory_mb: int | None = None
    """Memory budget of one task, MiB. Declared to Ray as the task's `memory=` resource, so a node
    runs at once only as many tasks as its memory holds, and held inside the task: past it the task
    fails with an out-of-memory error (`pretrain.core.memory.MemoryGuard`). What counts is the
    worker process's private memory (RSS less shared pages, as Ray's memory monitor counts it:
    about 70 MiB of it Ray, Python and the libraries before any work). null: the memory Ray offers
    per CPU on the smallest node, so tasks pack one per CPU."""
    max_oom_retries: int = 2
    """Retries of a task that ran out of memory (over its budget, a MemoryError, or killed by Ray's
    memory monitor); after them the run fails naming the task and `ray.task_memory_mb`."""
    spill_dir: str | None = None
    """Where a local Ray spills objects when its object store is full (null: Ray's session folder,
    /tmp/ray/session_*/ray_spilled_objects). A cluster sets it per node: `ray start
    --object-spilling-directory=/mnt/nvme/spill`. Ignored when joining a cluster."""

    def __post_init__(self) -> None:
        check(self.num_cpus is None or self.num_cpus >= 1, "ray.num_cpus", self.num_cpus, ">= 1 or null")
        check(self.max_in_flight >= 0, "ray.max_in_flight", self.max_in_flight, ">= 0")
        check(self.max_retries >= 0, "ray.max_retries", self.max_retries, ">= 0")
        check(
            self.task_memory_mb is None or self.task_memory_mb >= 1,
            "ray.task_memory_mb",
            self.task_memory_mb,
            ">= 1 (MiB) or null",
        )
        check(self.max_oom_retries >= 0, "ray.max_oom_retries", self.max_oom_retries, ">= 0")


def maybe_crash(unit_name: str, num_rows_done: int) -> None:
    """Fault injection for tests of resume (read by every task runner user): DATA_PIPELINE_CRASH=<unit stem>:<after rows>:<marker file>
    kills this worker process once, mid-shard, like an OOM kill or a lost node would."""
    spec = os.environ.get("DATA_PIPELINE_CRASH")
    if not spec:
        return
    name, after, marker = spec.split(":", 2)
    if name == unit_name and num_rows_done >= int(after) and not os.path.exists(marker):
        Path(marker).write_text("crashed once\n")
        os._exit(137)


_session: dict[str, RayConfig] = {}  # the config Ray was started or joined with (ensure_ray)


def ensure_ray(ray_cfg: RayConfig) -> None:
    """Join the configured cluster, $RAY_ADDRESS, or start a local Ray bound to 127.0.0.1; its
    settings become the default of `ray_map`."""
    _session["cfg"] = ray_cfg
    address = ray_cfg.address or os.environ.get("RAY_ADDRESS")
    # Ray retries a task killed by its memory monitor forever by default; ray_map retries it
    # max_oom_retries times itself. Read by the driver's core worker, which decides on retries.
    os.environ.setdefault("RAY_task_oom_retries", "0")
    if not address:
        # Local Ray stays on loopback (Ray otherwise advertises the external interface). Ray reads
        # this when it is first imported, so it is set before the import.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        # Token authentication on, said explicitly: Ray then skips its "token authentication is
        # enabled" console notice (noise for a user of a local run), and the cluster stays guarded.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray  # heavy, and only the data stages need it

    if ray.is_initialized():
        return
    # Workers reach the same object stores as the driver (endpoint, credentials, work root).
    env_vars = {k: v for k, v in os.environ.items() if k.startswith("DATA_PIPELINE_")} | store_env()
    if address:
        ray.init(
            address=address, log_to_driver=True, runtime_env={"env_vars": env_vars} if env_vars else None
        )
        return
    spill = {"object_spilling_directory": ray_cfg.spill_dir} if ray_cfg.spill_dir else {}
    ray.init(
        address="local",
        num_cpus=ray_cfg.num_cpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        runtime_env={"env_vars": env_vars} if env_vars else None,
        log_to_driver=True,
        configure_logging=False,
        **spill,
    )


def cluster_cpus() -> int:
    """CPUs of the Ray cluster (Ray already initialised)."""
    import ray  # heavy optional library

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def task_memory_bytes(ray_cfg: RayConfig) -> int:
    """The budget of one task in bytes (Ray initialised): `ray.task_memory_mb`, or the memory per
    CPU of the smallest node; 0 when no node has a CPU yet (an autoscaling cluster). A budget no
    node can give raises PipelineError (Ray would wait for such a node forever)."""
    import ray  # heavy optional library

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) >= 1]
    if ray_cfg.task_memory_mb is None:
        return int(min(r.get("memory", 0) / r["CPU"] for r in nodes)) if nodes else 0
    budget = ray_cfg.task_memory_mb << 20
    largest = max((int(r.get("memory", 0)) for r in nodes), default=budget)
    if budget > largest:
        raise PipelineError(
            f"ray.task_memory_mb={ray_cfg.task_memory_mb} is more than any node offers (the largest: "
            f"{largest >> 20} MiB of Ray memory): lower it, or join a cluster with bigger nodes"
        )
    return budget


def run_guarded(fn: Callable, limit_bytes: int, *args: Any) -> Any:
    """The body of every Ray task: `fn(*args)` under a MemoryGuard of `limit_bytes` (0: none). An
    overrun raises TaskOutOfMemory saying how far; a dict result gains `peak_private_bytes` (the
    process's peak private memory) and `task_private_bytes` (that less what the worker's earlier
    tasks left behind: the peak this task would reach as the worker's first, which the budget is
    held to), and the same two of its RSS (`peak_rss_bytes`, `task_rss_bytes`)."""
    guard = MemoryGuard(limit_bytes)
    try:
        with guard:
            result = fn(*args)
    except BaseException:
        if guard.tripped:  # whatever the task turned the interruption into
            raise TaskOutOfMemory(guard.message()) from None
        raise
    if not isinstance(result, dict):
        return result
    return result | {
        "peak_private_bytes": guard.peak_bytes,
        "task_private_bytes": guard.peak_bytes - guard.leftover_bytes,
        "peak_rss_bytes": guard.peak_rss_bytes,
        "task_rss_bytes": guard.peak_rss_bytes - guard.leftover_rss_bytes,
    }


def _out_of_memory(e: BaseException) -> str | None:
    """Why a failed task ran out of memory, or None when it failed otherwise."""
    import ray  # heavy optional library

    if isinstance(e, ray.exceptions.OutOfMemoryError):
        return "killed by Ray's memory monitor: the node's memory was nearly full"
    cause = getattr(e, "cause", None) or e
    if isinstance(cause, MemoryError):
        return f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
    return None


def _failure(e: BaseException, oom: str | None, num_tries: int, ray_cfg: RayConfig, budget: int) -> str:
    import ray  # heavy optional library

    raise_it = (
        f"raise ray.task_memory_mb (now {budget >> 20} MiB per task"
        + (", the memory per CPU" if ray_cfg.task_memory_mb is None else "")
        + ") or give each task less work"
    )
    if oom is not None:
        return f"ran out of memory ({num_tries} tries, ray.max_oom_retries={ray_cfg.max_oom_retries}): {oom}; {raise_it}"
    if isinstance(e, ray.exceptions.WorkerCrashedError):
        return (
            f"its worker died {ray_cfg.max_retries + 1} times (ray.max_retries={ray_cfg.max_retries}): a "
            f"crash, or a kill such as the OS out-of-memory killer's; if it ran out of memory, {raise_it}"
        )
    cause = getattr(e, "cause", None) or e
    return f"{type(cause).__name__}: {cause}"


TASK_LOG_ENV = "PRETRAIN_TASK_LOG"
MEMORY_FIGURES = ("peak_private_bytes", "task_private_bytes", "peak_rss_bytes", "task_rss_bytes")


def _log_task(name: str, key: str, result: Any) -> None:
    """With $PRETRAIN_TASK_LOG set to a file, append one JSON line per finished task: its function,
    key and memory peaks (MemoryGuard's, sampled every 50 ms in the task: private memory and RSS,
    see run_guarded), for profiling a run (bench/data_scale.py reads it)."""
    path = os.environ.get(TASK_LOG_ENV)
    if path and isinstance(result, dict):
        line = {"task": name, "key": key, "time": time.time()}
        line |= {k: result.get(k) for k in MEMORY_FIGURES}
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")


def ray_map(
    fn: Callable,
    jobs: list[tuple[str, tuple]],
    ray_cfg: RayConfig | None = None,
    on_result: Callable[[str, dict | None], None] | None = None,
    on_tick: Callable[[], None] | None = None,
    labels: dict[str, str] | None = None,
) -> tuple[dict[str, dict], dict[str, str]]:
    """Run `fn(*args)` for each (key, args) as a Ray task (Ray already initialised) with the
    settings of `ray_cfg` (default: those `ensure_ray` was called with): at most
    `max_in_flight` pending, each declaring and held to the task memory budget, retried as the
    config says. Returns (results, errors) by key: every failed job is reported, not only the
    first, and named by `labels[key]` (what the unit is) when given. `on_result(key, result or
    None)` follows each finished job; `on_tick()` runs at least once a second."""
    import ray  # heavy optional library

    results: dict[str, dict] = {}
    errors: dict[str, str] = {}
    if not jobs:
        return results, errors
    cfg = ray_cfg or _session.get("cfg") or RayConfig()
    budget = task_memory_bytes(cfg)
    options: dict[str, Any] = {"num_cpus": 1, "max_retries": cfg.max_retries, "retry_exceptions": False}
    options |= {"name": getattr(fn, "__name__", "task")} | ({"memory": budget} if budget else {})
    remote = ray.remote(run_guarded).options(**options)
    limit = cfg.max_in_flight or 2 * cluster_cpus()
    pending: dict[Any, tuple[str, tuple]] = {}
    queue = deque(jobs)
    num_oom: Counter = Counter()
    while queue or pending:
        while queue and len(pending) < limit:
            key, args = queue.popleft()
            pending[remote.remote(fn, budget, *args)] = (key, args)
        done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
        for ref in done:
            key, args = pending.pop(ref)
            try:
                results[key] = ray.get(ref)
                _log_task(options["name"], key, results[key])
            except Exception as e:  # noqa: BLE001 - report every failed input, not only the first
                oom = _out_of_memory(e)
                name = labels.get(key, key) if labels else key
                if oom is not None and num_oom[key] < cfg.max_oom_retries:
                    num_oom[key] += 1
                    log.warning(
                        "%s ran out of memory (%s); retry %d of %d",
                        name,
                        oom,
                        num_oom[key],
                        cfg.max_oom_retries,
                    )
                    queue.append((key, args))  # behind the others: memory may be freer then
                    continue
                what = _failure(e, oom, num_oom[key] + 1, cfg, budget)
                errors[key] = what if name == key else f"{name}: {what}"
            if on_result is not None:
                on_result(key, results.get(key))
        if on_tick is not None:
            on_tick()
    return results, errors


def run_tasks(
    fn: Callable,
    jobs: list[tuple[str, tuple]],
    ray_cfg: RayConfig,
    progress: Progress,
    phase: str,
    sizes: dict[str, int] | None = None,
    labels: dict[str, str] | None = None,
    on_result: Callable[[str, dict | None], Any] | None = None,
) -> tuple[dict[str, dict], dict[str, str]]:
    """`ray_map` with a stage's Ray settings and its progress display (docs from `num_in`, bytes
    from `sizes[key]`: the input bytes of each job, when the phase counts bytes), then
    `on_result(key, result)` as each job ends (it may shrink the result in place)."""
    if not jobs:
        return {}, {}
    ensure_ray(ray_cfg)
    sizes = sizes or {}

    def advance(key: str, rec: dict | None) -> None:
        progress.advance(phase, (rec or {}).get("num_in", 0), sizes.get(key, 0))
        if on_result is not None:
            on_result(key, rec)

    return ray_map(
        fn,
        jobs,
        ray_cfg,
        on_result=advance,
        on_tick=progress.refresh,
        labels=labels,
    )


def raise_errors(errors: dict[str, str], phase: str) -> None:
    if errors:
        lines = "\n".join(f"  {k}: {v}" for k, v in sorted(errors.items()))
        raise PipelineError(
            f"{len(errors)} task(s) failed in phase {phase}:\n{lines}\n"
            "Fix the input (or config) and rerun: finished shards are kept."
        )
