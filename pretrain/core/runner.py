"""The Ray task runner every folder schedules its work with: local Ray on loopback or a cluster,
a bounded map over tasks that reports every failure, and the `ray:` config section.

    ensure_ray(cfg.ray)
    results, errors = ray_map(fn, [(key, args), ...], max_in_flight=0)
    raise_errors(errors, "chain")   # TaskError listing every failed key

Ray is imported inside the functions (a heavy library the trainer and eval never need).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pretrain.core.config import check
from pretrain.core.progress import Progress


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

    def __post_init__(self) -> None:
        check(self.num_cpus is None or self.num_cpus >= 1, "ray.num_cpus", self.num_cpus, ">= 1 or null")
        check(self.max_in_flight >= 0, "ray.max_in_flight", self.max_in_flight, ">= 0")
        check(self.max_retries >= 0, "ray.max_retries", self.max_retries, ">= 0")


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


def ensure_ray(ray_cfg: RayConfig) -> None:
    """Join the configured cluster, $RAY_ADDRESS, or start a local Ray bound to 127.0.0.1."""
    address = ray_cfg.address or os.environ.get("RAY_ADDRESS")
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
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    env_vars = {k: v for k, v in os.environ.items() if k.startswith("DATA_PIPELINE_")}
    ray.init(
        address="local",
        num_cpus=ray_cfg.num_cpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        runtime_env={"env_vars": env_vars} if env_vars else None,
        log_to_driver=True,
        configure_logging=False,
    )


def _cluster_cpus() -> int:
    import ray  # heavy optional library

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def ray_map(
    fn: Callable,
    jobs: list[tuple[str, tuple]],
    max_in_flight: int = 0,
    max_retries: int = 3,
    on_result: Callable[[str, dict | None], None] | None = None,
    on_tick: Callable[[], None] | None = None,
) -> tuple[dict[str, dict], dict[str, str]]:
    """Run `fn(*args)` for each (key, args) as a Ray task (Ray already initialised), at most
    `max_in_flight` pending (0: twice the cluster's CPUs). Returns (results, errors) by key: every
    failed job is reported, not only the first. `on_result(key, result or None)` follows each
    finished job; `on_tick()` runs at least once a second."""
    import ray  # heavy optional library

    results: dict[str, dict] = {}
    errors: dict[str, str] = {}
    if not jobs:
        return results, errors
    remote = ray.remote(num_cpus=1, max_retries=max_retries, retry_exceptions=False)(fn)
    limit = max_in_flight or 2 * _cluster_cpus()
    pending: dict[Any, str] = {}
    queue = list(jobs)
    while queue or pending:
        while queue and len(pending) < limit:
            key, args = queue.pop(0)
            pending[remote.remote(*args)] = key
        done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
        for ref in done:
            key = pending.pop(ref)
            try:
                results[key] = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - report every failed input, not only the first
                cause = getattr(e, "cause", None) or e
                errors[key] = f"{type(cause).__name__}: {cause}"
            if on_result is not None:
                on_result(key, results.get(key))
        if on_tick is not None:
            on_tick()
    return results, errors


def run_tasks(
    fn: Callable, jobs: list[tuple[str, tuple]], ray_cfg: RayConfig, progress: Progress, phase: str
) -> tuple[dict[str, dict], dict[str, str]]:
    """`ray_map` with a stage's Ray settings and its progress display (docs from `num_in`)."""
    if not jobs:
        return {}, {}
    ensure_ray(ray_cfg)
    return ray_map(
        fn,
        jobs,
        max_in_flight=ray_cfg.max_in_flight,
        max_retries=ray_cfg.max_retries,
        on_result=lambda _, rec: progress.advance(phase, (rec or {}).get("num_in", 0)),
        on_tick=progress.refresh,
    )


def raise_errors(errors: dict[str, str], phase: str) -> None:
    if errors:
        lines = "\n".join(f"  {k}: {v}" for k, v in sorted(errors.items()))
        raise PipelineError(
            f"{len(errors)} task(s) failed in phase {phase}:\n{lines}\n"
            "Fix the input (or config) and rerun: finished shards are kept."
        )
