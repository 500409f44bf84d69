"""The per-task memory budget: declared to Ray, held inside the task, a bounded number of retries,
and a failure that names the unit and the setting to raise."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from ray import cloudpickle

from data_pipeline.executor import run_pipeline
from pretrain.core import memory
from pretrain.core.config import ConfigError, from_dict
from pretrain.core.memory import MemoryGuard, TaskOutOfMemory, private_bytes, release_mapped_pages, rss_bytes
from pretrain.core.runner import MEMORY_FIGURES, PipelineError, RayConfig, ray_map, task_memory_bytes
from tests.pipeline_helpers import REPO, pipeline_config

MiB = 1 << 20
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import a test module


def _hungry(num_mb: int, tries_file: str) -> dict:
    """Allocate num_mb in 16 MiB steps (Python code between them, as a real task has)."""
    with open(tries_file, "a") as f:
        f.write("x")
    chunks = [bytearray(16 * MiB) for _ in range(num_mb // 16) if time.sleep(0.002) is None]
    return {"num_in": 1, "allocated_mb": 16 * len(chunks)}


def test_guard_raises_in_the_task_past_its_limit():
    limit = private_bytes() + 160 * MiB
    chunks = []
    with pytest.raises(TaskOutOfMemory), MemoryGuard(limit, interval_s=0.01) as guard:
        for _ in range(200):  # 3.2 GiB if nothing stopped it
            chunks.append(bytearray(16 * MiB))
            time.sleep(0.002)
    assert guard.tripped and guard.peak_bytes > limit
    assert 16 * MiB * len(chunks) < 640 * MiB, len(chunks)  # stopped near the limit, not at the end
    assert "over its budget of" in guard.message()


def test_guard_within_its_limit_measures_the_peak():
    with MemoryGuard(private_bytes() + 512 * MiB, interval_s=0.01) as guard:
        data = bytearray(64 * MiB)
        time.sleep(0.05)
    assert not guard.tripped and guard.peak_bytes >= 64 * MiB and len(data)
    assert guard.peak_rss_bytes >= guard.peak_bytes  # RSS counts the shared pages too


def test_budget_counts_private_memory_not_mapped_file_pages(tmp_path):
    """A mapped file's pages are RSS but not private memory (page cache, as Ray's memory monitor
    counts: rss - shared); `release_mapped_pages` takes them out of RSS, and a read brings them back
    unchanged."""
    path = tmp_path / "run.arrow"
    data = np.arange(32 * MiB // 8, dtype=np.uint64)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, pa.schema([("x", pa.uint64())])) as w:
        w.write_table(pa.table({"x": data}))
    with pa.memory_map(str(path)) as source:
        mapping = source.read_buffer()
    column = pa.ipc.open_file(mapping).read_all().column("x").chunk(0).to_numpy()
    private0, rss0 = private_bytes(), rss_bytes()
    with MemoryGuard(private0 + 16 * MiB, interval_s=0.01) as guard:
        total = int(column.sum())  # touches all 32 MiB of the mapping
        time.sleep(0.05)
        touched = rss_bytes()
    assert not guard.tripped and total == int(data.sum())
    assert touched - rss0 >= 30 * MiB and guard.peak_rss_bytes >= touched
    assert guard.peak_bytes - private0 < 8 * MiB
    release_mapped_pages(mapping)
    assert rss_bytes() - rss0 < 8 * MiB
    assert int(column.sum()) == total


def test_what_earlier_tasks_of_a_worker_left_is_not_charged_to_the_next(monkeypatch):
    monkeypatch.setattr(memory, "_first_task", [])  # a fresh worker
    with MemoryGuard(0):
        cache = bytearray(256 * MiB)  # kept by the worker after its first task, like the chain's models
    budget = memory._first_task[0][0] + 128 * MiB  # below the worker's memory with the cache
    assert private_bytes() > budget
    with MemoryGuard(budget, interval_s=0.01) as second:  # not over at the start: the cache is not its own
        more = [bytearray(16 * MiB) for _ in range(4)]
        time.sleep(0.05)
    assert not second.tripped and second.leftover_bytes >= 256 * MiB * 0.9
    with pytest.raises(TaskOutOfMemory), MemoryGuard(budget, 0.01) as third:
        for _ in range(40):
            more.append(bytearray(16 * MiB))
            time.sleep(0.002)
    assert len(cache) and len(more) < 40 and "MiB of it left by earlier tasks" in third.message()


def test_budget_fields_are_validated():
    with pytest.raises(ConfigError, match="ray.task_memory_mb"):
        from_dict(RayConfig, {"task_memory_mb": 0})
    with pytest.raises(ConfigError, match="ray.max_oom_retries"):
        from_dict(RayConfig, {"max_oom_retries": -1})


def test_task_over_budget_fails_after_bounded_retries_naming_unit_and_budget(
    ray_local, tmp_path, monkeypatch
):
    cfg = RayConfig(task_memory_mb=400, max_oom_retries=2)
    tries = {k: tmp_path / k for k in ("big", "small")}
    monkeypatch.setenv("PRETRAIN_TASK_LOG", str(tmp_path / "tasks.jsonl"))  # finished tasks, with their peaks
    results, errors = ray_map(
        _hungry,
        [("big", (3000, str(tries["big"]))), ("small", (32, str(tries["small"])))],
        cfg,
        labels={"big": "input web/big.jsonl bytes 0-4096"},
    )
    assert tries["big"].exists(), errors
    assert tries["big"].read_text() == "xxx"  # the first try and max_oom_retries=2 more, no more
    msg = errors["big"]
    assert msg.startswith("input web/big.jsonl bytes 0-4096: ran out of memory (3 tries"), msg
    assert "raise ray.task_memory_mb (now 400 MiB per task)" in msg, msg
    assert results["small"]["allocated_mb"] == 32 and tries["small"].read_text() == "x"
    assert results["small"]["peak_rss_bytes"] > 32 * MiB
    logged = [json.loads(line) for line in (tmp_path / "tasks.jsonl").read_text().splitlines()]
    assert [(t["task"], t["key"], *(t[k] for k in MEMORY_FIGURES)) for t in logged] == [
        ("_hungry", "small", *(results["small"][k] for k in MEMORY_FIGURES))
    ]  # the failed task is not logged as finished
    assert 0 < results["small"]["task_rss_bytes"] <= results["small"]["peak_rss_bytes"]
    assert 0 < results["small"]["task_private_bytes"] <= results["small"]["peak_private_bytes"]
    assert results["small"]["peak_private_bytes"] < results["small"]["peak_rss_bytes"]


def test_budget_no_node_can_give_is_refused(ray_local):
    with pytest.raises(PipelineError, match=r"ray.task_memory_mb=100000000 is more than any node offers"):
        task_memory_bytes(RayConfig(task_memory_mb=100_000_000))
    per_cpu = task_memory_bytes(RayConfig())  # the default: the memory Ray offers per CPU
    resources = ray_local.cluster_resources()
    assert per_cpu == int(resources["memory"] / resources["CPU"])


def test_pipeline_with_an_absurd_budget_fails_naming_the_input_and_the_budget(ray_local, tmp_path):
    raw = tmp_path / "raw" / "web"
    raw.mkdir(parents=True)
    text = "The river keeps its slow pace through the valley, and the old mill still turns each spring."
    (raw / "a.jsonl").write_text(json.dumps({"text": text}) + "\n")
    cfg = pipeline_config(tmp_path, tmp_path / "out", "ray.task_memory_mb=1", "ray.max_oom_retries=1")
    t0 = time.perf_counter()
    with pytest.raises(PipelineError) as err:
        run_pipeline(cfg)
    msg = str(err.value)
    assert "input web/a.jsonl: ran out of memory (2 tries, ray.max_oom_retries=1)" in msg, msg
    assert "over its budget of 1 MiB" in msg and "raise ray.task_memory_mb (now 1 MiB per task)" in msg
    assert time.perf_counter() - t0 < 120
    assert not (Path(tmp_path / "out") / "manifest.json").exists()


def _killed(tries_file: str) -> dict:
    with open(tries_file, "a") as f:
        f.write("x")
    os.kill(os.getpid(), signal.SIGKILL)  # as the OS out-of-memory killer does
    return {}


def test_worker_killed_every_time_fails_after_max_retries_with_the_budget_hint(ray_local, tmp_path):
    tries = tmp_path / "tries"
    _, errors = ray_map(
        _killed, [("u", (str(tries),))], RayConfig(max_retries=1), labels={"u": "input web/a.jsonl"}
    )
    assert tries.read_text() == "xx"
    msg = errors["u"]
    assert msg.startswith("input web/a.jsonl: its worker died 2 times (ray.max_retries=1)"), msg
    assert "out-of-memory killer" in msg and "raise ray.task_memory_mb" in msg


_MONITOR_KILLS = """
import os, sys
os.environ["RAY_memory_usage_threshold"] = "0.01"  # every task is over: Ray's monitor kills it
os.environ["RAY_memory_monitor_refresh_ms"] = "50"
from pretrain.core.runner import RayConfig, ensure_ray, ray_map

def task():
    import time  # runs in the worker
    time.sleep(5)
    return {"num_in": 1}

cfg = RayConfig(num_cpus=1, max_oom_retries=1)
ensure_ray(cfg)
_, errors = ray_map(task, [("u", ())], cfg, labels={"u": "input web/a.jsonl"})
print(errors["u"])
"""


@pytest.mark.slow
def test_kills_by_rays_memory_monitor_are_retried_within_the_bound_not_forever(tmp_path):
    env = os.environ | {"PYTHONPATH": str(REPO), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    res = subprocess.run(
        [sys.executable, "-c", _MONITOR_KILLS],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith(
        "input web/a.jsonl: ran out of memory (2 tries, ray.max_oom_retries=1): killed by Ray's memory monitor"
    ), last
    assert "raise ray.task_memory_mb" in last
