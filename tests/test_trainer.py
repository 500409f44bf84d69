"""Trainer loop: exact resume (in-process and after kill -9), DDP/FSDP2 vs one process, NaN guard,
checkpoint atomicity and retention. Tiny model, tiny curriculum: each run takes about a second."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pretrain.core.config import ConfigError, to_dict
from tests.train_helpers import (
    NETNS,
    VOCAB,
    NanLoss,
    SlowSteps,
    SpikeLoss,
    losses,
    metrics_rows,
    private_netns_ok,
    slow_steps,
    tiny_train_config,
    write_arith_shards,
)
from trainer import checkpoint as ckpt
from trainer.callbacks import Callback
from trainer.callbacks.syncwatch import HostSyncWatch
from trainer.config import TrainConfig
from trainer.train import RunDirBusy, Trainer, train

REPO = Path(__file__).resolve().parent.parent
TOTAL_STEPS = 12  # phase "short": steps 0-5, phase "long": steps 6-11


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_arith_shards(tmp_path_factory.mktemp("tok"))


def _cfg(shards: Path, run_dir: Path, overrides: list[str] = (), **top) -> TrainConfig:
    return tiny_train_config(shards, run_dir, overrides, **top)


_metrics, _losses = metrics_rows, losses


@pytest.fixture(scope="module")
def straight(shards, tmp_path_factory) -> Path:
    """The uninterrupted reference run."""
    run = tmp_path_factory.mktemp("straight") / "run"
    summary = train(_cfg(shards, run))
    assert summary == {"last_step": TOTAL_STEPS, "skipped_steps": 0, "final_loss": _losses(run)[-1]}
    return run


def test_tensorboard_scalars_by_default_read_back_with_tensorboard(straight):
    """TensorBoard's own reader finds every step's loss (equal to metrics.jsonl's), lr, grad norm,
    tokens/s, data wait, memory, the running skipped count and the loss per phase."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(straight / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "data_wait_fraction", "skipped_steps",
            "mem_peak_rss_gib", "loss_by_phase/short", "loss_by_phase/long"} <= tags  # fmt: skip
    m = _metrics(straight)
    loss = {e.step: e.value for e in acc.Scalars("loss")}
    assert sorted(loss) == list(range(TOTAL_STEPS))
    assert all(loss[s] == pytest.approx(m[s]["loss"], rel=1e-6) for s in loss)
    assert [e.step for e in acc.Scalars("loss_by_phase/long")] == list(range(6, TOTAL_STEPS))
    assert [e.value for e in acc.Scalars("skipped_steps")] == [0.0] * TOTAL_STEPS


def test_straight_run_learns_and_logs(straight):
    m = _metrics(straight)
    assert sorted(m) == list(range(TOTAL_STEPS))
    assert [m[s]["phase"] for s in range(TOTAL_STEPS)] == ["short"] * 6 + ["long"] * 6
    assert m[TOTAL_STEPS - 1]["tokens"] == TOTAL_STEPS * 512
    assert all(set(r) >= {"loss", "lr", "grad_norm", "tokens_per_s", "data_wait_s"} for r in m.values())
    assert m[0]["loss"] == pytest.approx(np.log(VOCAB), rel=0.05)  # starts at uniform
    assert m[TOTAL_STEPS - 1]["loss"] < m[0]["loss"] - 0.5
    assert all(r["tokens_per_s"] > 0 and 0 <= r["data_wait_fraction"] <= 1 for r in m.values())
    assert all(r["mfu"] is None for r in m.values())  # no peak-FLOPs figure for a CPU
    assert [s for s in m if "mem_rss_gib" in m[s]] == [0, 10]  # metrics.memory_every=10
    assert [m[s]["sample_index"] for s in range(TOTAL_STEPS)] == [32 * i for i in range(6)] + [
        16 * i for i in range(6)
    ]
    # every_steps=4, keep_last=2: steps 4, 8, 12 saved, the oldest pruned.
    assert [s for s, _ in ckpt.complete_checkpoints(straight / "checkpoints")] == [8, 12]
    assert json.loads((straight / "checkpoints" / "latest").read_text())["step"] == 12


def test_resume_in_process_is_exact(shards, straight, tmp_path):
    run = tmp_path / "run"
    first = train(_cfg(shards, run, max_steps=4))
    assert first["last_step"] == 4
    second = train(_cfg(shards, run))  # resumes from step_000004; phase boundary at step 6
    assert second["last_step"] == TOTAL_STEPS
    assert _losses(run) == _losses(straight)  # exact: deterministic fp32 CPU


def test_activation_checkpointing_same_losses_and_resumes(shards, straight, tmp_path):
    run = tmp_path / "run"
    train(_cfg(shards, run, activation_checkpointing=True, max_steps=4))
    train(_cfg(shards, run, activation_checkpointing=True, max_steps=6))  # resumes through DCP
    np.testing.assert_allclose(_losses(run), _losses(straight)[:6], rtol=1e-6)


def test_leftover_tmp_checkpoint_is_ignored(shards, straight, tmp_path):
    run = tmp_path / "run"
    train(_cfg(shards, run, max_steps=4))
    junk = run / "checkpoints" / "step_000008.tmp"  # a save that crashed half-way
    junk.mkdir()
    (junk / "__0_0.distcp").write_bytes(b"garbage")
    assert ckpt.latest_checkpoint(run / "checkpoints").name == "step_000004"
    train(_cfg(shards, run))
    assert _losses(run) == _losses(straight)


def test_resume_refuses_other_data(shards, tmp_path):
    run = tmp_path / "run"
    train(_cfg(shards, run, max_steps=2))
    with pytest.raises(ValueError, match="data fingerprint"):
        train(_cfg(shards, run, ["data.seed=4"]))
    assert (
        train(_cfg(shards, run, ["data.seed=4", "allow_data_change=true", "max_steps=3"]))["last_step"] == 3
    )


def test_nan_batch_skips_the_step(shards, straight, tmp_path):
    run = tmp_path / "run"
    summary = train(_cfg(shards, run), callbacks=[NanLoss([5])])
    assert summary["skipped_steps"] == 1 and summary["last_step"] == TOTAL_STEPS
    m, ref = _metrics(run), _metrics(straight)
    assert m[5]["skipped"] == "nonfinite" and m[5]["loss"] is None  # strict JSON: NaN -> null
    assert [m[s]["loss"] for s in range(5)] == [ref[s]["loss"] for s in range(5)]
    assert all(np.isfinite(m[s]["loss"]) and not m[s]["skipped"] for s in range(6, TOTAL_STEPS))
    assert m[6]["loss"] != ref[6]["loss"]  # step 5's update really was skipped
    assert m[TOTAL_STEPS - 1]["loss"] < m[0]["loss"] - 0.5


GUARD = ["guard.spike_min_history=2"]  # the 12-step test run needs a short history


def test_loss_spike_is_skipped(shards, straight, tmp_path):
    run = tmp_path / "run"
    summary = train(_cfg(shards, run, GUARD), callbacks=[SpikeLoss([3])])
    assert summary["skipped_steps"] == 1 and summary["last_step"] == TOTAL_STEPS
    m, ref = _metrics(run), _metrics(straight)
    assert m[3]["skipped"] == "loss_spike" and m[3]["loss"] > 1000 and "rollback" not in m[3]
    assert [m[s]["loss"] for s in range(3)] == [ref[s]["loss"] for s in range(3)]
    assert m[4]["loss"] != ref[4]["loss"]  # step 3's update really was skipped
    assert [s for s in m if m[s]["skipped"]] == [3]
    assert m[TOTAL_STEPS - 1]["loss"] < m[0]["loss"] - 0.5


def test_repeated_spikes_roll_back_and_skip_ahead(shards, straight, tmp_path):
    run = tmp_path / "run"
    overrides = [*GUARD, "guard.max_consecutive_spikes=2"]
    summary = train(_cfg(shards, run, overrides), callbacks=[SpikeLoss([4, 5])])
    assert summary["skipped_steps"] == 2 and summary["last_step"] == TOTAL_STEPS
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # Steps 4 and 5 spike; the second spike in a row rolls back to the step-4 checkpoint, and
    # steps 4-5 re-run on the NEXT batches of the phase (samples 192, 224), not the spiking ones.
    assert [(r["step"], r["skipped"], r.get("rollback"), r["sample_index"]) for r in rows[:8]] == [
        (0, False, None, 0), (1, False, None, 32), (2, False, None, 64), (3, False, None, 96),
        (4, "loss_spike", None, 128), (5, "loss_spike", 4, 160), (4, False, None, 192), (5, False, None, 224),
    ]  # fmt: skip
    assert [r["step"] for r in rows[8:]] == list(range(6, TOTAL_STEPS))
    ref = _metrics(straight)
    assert [r["loss"] for r in rows[:4]] == [ref[s]["loss"] for s in range(4)]
    assert rows[6]["loss"] != ref[4]["loss"]  # same weights as the reference at step 4, new batch
    losses = _losses(run)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.5

    # The 2 spiking batches of 32 samples x 16 tokens were consumed and never replayed: the source
    # cursors in the final checkpoint stand that far past the reference run's.
    def cursors(r: Path) -> int:
        return sum(
            ckpt.read_meta(ckpt.latest_checkpoint(r / "checkpoints"))["data_state"]["cursors"].values()
        )

    assert cursors(run) - cursors(straight) == 2 * 32 * 16


def test_second_trainer_on_a_busy_run_dir_fails_at_once(shards, tmp_path):
    run = tmp_path / "run"
    first = Trainer(_cfg(shards, run))
    try:
        with pytest.raises(RunDirBusy, match=f"in use by another trainer \\(pid {os.getpid()} on "):
            Trainer(_cfg(shards, run))
        res = subprocess.run(
            _cli(tmp_path / "run.yaml"), env=_env(), cwd=REPO, capture_output=True, text=True, timeout=120
        )
        assert res.returncode == 1 and "in use by another trainer" in res.stderr, res.stderr[-2000:]
        first.step()
    finally:
        first.close()
    assert train(_cfg(shards, run))["last_step"] == TOTAL_STEPS  # released: resumes and finishes
    assert _losses(run)[0] == pytest.approx(np.log(VOCAB), rel=0.05)


def test_config_validation(shards, tmp_path):
    with pytest.raises(ConfigError, match="parallel"):
        _cfg(shards, tmp_path / "r", ["parallel=tp"])
    with pytest.raises(ConfigError, match="mixture sources"):
        _cfg(shards, tmp_path / "r", ["curriculum.phases.0.mixture={books: 1.0}"])
    with pytest.raises(ConfigError, match="dim"):
        _cfg(shards, tmp_path / "r", ["model_overrides.dim=63"])
    with pytest.raises(ConfigError, match="spike_min_history"):
        _cfg(shards, tmp_path / "r", ["guard.spike_min_history=1"])
    with pytest.raises(ConfigError, match="memory_every"):
        _cfg(shards, tmp_path / "r", ["metrics.memory_every=-1"])
    cfg = _cfg(shards, tmp_path / "r")
    assert to_dict(cfg)["optim"]["betas"] == [0.9, 0.95]


def test_retention_keeps_last_and_every(tmp_path):
    root = tmp_path / "ck"
    for s in [2, 4, 6, 8, 10]:
        d = ckpt.step_dir(root, s)
        d.mkdir(parents=True)
        (d / ckpt.META).write_text("{}")
    assert ckpt.prune(root, keep_last=2, keep_every=4) == [2, 6]
    assert [s for s, _ in ckpt.complete_checkpoints(root)] == [4, 8, 10]


def _cli(config: Path, *overrides: str, nproc: int = 1) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "trainer", "train", "--config", str(config), *overrides]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    if not private_netns_ok():
        pytest.skip("needs `unshare --net` to keep torchrun's rendezvous off non-loopback interfaces")
    return [*NETNS, *launcher, "-m", "trainer", "train", "--config", str(config), *overrides]


def _env() -> dict[str, str]:
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    env["PYTHONPATH"] = str(REPO)
    return env


def test_cli_dry_run(shards, tmp_path):
    _cfg(shards, tmp_path / "run")
    out = subprocess.run(
        _cli(tmp_path / "run.yaml", "--dry-run"),
        capture_output=True,
        text=True,
        env=_env(),
        cwd=REPO,
        check=True,
    ).stdout
    assert "run_dir:" in out and "short" in out and "long" in out and "0-5" in out and "6-11" in out
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_kill9_then_resume_matches(shards, straight, tmp_path):
    run = tmp_path / "run"
    _cfg(shards, run)
    config = tmp_path / "run.yaml"
    proc = subprocess.Popen(
        _cli(config, slow_steps(0.5)), env=_env(), cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 120
    while ckpt.latest_checkpoint(run / "checkpoints") is None:
        assert proc.poll() is None and time.time() < deadline, "trainer ended before its first checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = ckpt.complete_checkpoints(run / "checkpoints")[-1][0]
    assert killed_at < TOTAL_STEPS
    subprocess.run(_cli(config), env=_env(), cwd=REPO, check=True, capture_output=True)
    assert _losses(run) == _losses(straight)


@pytest.mark.slow
@pytest.mark.parametrize(("parallel", "resume_nproc"), [("ddp", 1), ("fsdp2", 2)])
def test_two_gloo_processes_match_single(shards, straight, tmp_path, parallel, resume_nproc):
    """2 gloo processes to step 8, then resume (DDP: in 1 process, a world-size change) across the
    phase boundary (step 6) to the end; losses match the single-process run."""
    run = tmp_path / "run"
    _cfg(shards, run, parallel=parallel, max_steps=8)
    res = subprocess.run(
        _cli(tmp_path / "run.yaml", nproc=2),
        env=_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    saved = ckpt.latest_checkpoint(run / "checkpoints")
    assert ckpt.read_meta(saved)["world_size"] == 2 and ckpt.read_meta(saved)["step"] == 8
    if parallel == "fsdp2":  # really sharded: each rank wrote its own DCP file
        assert sorted(p.name for p in saved.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    res = subprocess.run(
        _cli(tmp_path / "run.yaml", "max_steps=null", nproc=resume_nproc),
        env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    ours, ref = _losses(run), _losses(straight)
    assert len(ours) == TOTAL_STEPS
    np.testing.assert_allclose(ours, ref, rtol=1e-5)


class Recorder(Callback):
    """Records every hook call; vetoes the update of `veto_step` like a guard would."""

    def __init__(self, veto_step: int):
        self.calls: list[tuple] = []
        self.veto_step = veto_step

    def on_train_start(self, trainer):
        self.calls.append(("start", trainer.step_num))

    def pre_step(self, trainer, step, batch):
        self.calls.append(("pre", step, tuple(batch["input_ids"].shape)))

    def pre_optim_step(self, trainer, step, metrics):
        assert {"loss", "grad_norm", "lr", "skipped"} <= set(metrics) and "tokens_per_s" not in metrics
        if step == self.veto_step:
            metrics["skipped"] = "test_veto"
        self.calls.append(("optim", step))

    def post_step(self, trainer, step, metrics):
        self.calls.append(("post", step, trainer.step_num, metrics["skipped"]))

    def on_save(self, trainer, step, path):
        self.calls.append(("save", step, path.name))

    def close(self):
        self.calls.append(("close",))


def test_callbacks_see_every_hook_and_may_skip_an_update(shards, straight, tmp_path):
    run = tmp_path / "run"
    rec = Recorder(veto_step=2)
    summary = train(_cfg(shards, run, max_steps=4), callbacks=[rec])
    assert summary["skipped_steps"] == 1 and summary["last_step"] == 4
    assert rec.calls[0] == ("start", 0) and rec.calls[-1] == ("close",)
    steps = [c for c in rec.calls[1:-1] if c[0] != "save"]
    want = [
        [("pre", s, (32, 16)), ("optim", s), ("post", s, s + 1, "test_veto" if s == 2 else False)]
        for s in range(4)
    ]
    assert steps == [c for step in want for c in step]
    assert [c for c in rec.calls if c[0] == "save"] == [("save", 4, "step_000004")]
    m, ref = _metrics(run), _metrics(straight)
    assert m[2]["skipped"] == "test_veto" and [m[s]["loss"] for s in range(3)] == [
        ref[s]["loss"] for s in range(3)
    ]
    assert m[3]["loss"] != ref[3]["loss"]  # step 2's update really was skipped


def test_callbacks_by_import_path_from_the_config(shards, tmp_path):
    run = tmp_path / "run"
    cfg = _cfg(shards, run, [slow_steps(0.01), "max_steps=1"])
    assert cfg.callbacks == {"tests.train_helpers.SlowSteps": {"sleep_s": 0.01}}
    trainer = Trainer(cfg)
    try:
        assert [type(cb).__name__ for cb in trainer.callbacks][0] == "SlowSteps"
    finally:
        trainer.close()
    with pytest.raises(ConfigError, match="callbacks"):
        _cfg(shards, run, ["callbacks={SlowSteps: {}}"])
    with pytest.raises(ValueError, match="cannot import 'tests.train_helpers.NoSuchHook'"):
        Trainer(_cfg(shards, run, ["callbacks={tests.train_helpers.NoSuchHook: {}}"]))
    with pytest.raises(ValueError, match="cfg.callbacks"):
        train(_cfg(shards, run, nproc=2, parallel="ddp"), callbacks=[SlowSteps(0)])


def test_profiler_writes_a_trace_of_the_chosen_steps(shards, tmp_path):
    run = tmp_path / "run"
    train(_cfg(shards, run, ["metrics.profile_steps=[1, 2]", "max_steps=3"]))
    assert [p.name for p in (run / "profile").iterdir()] == ["steps_1-2_rank0.pt.trace.json"]
    trace = json.loads((run / "profile" / "steps_1-2_rank0.pt.trace.json").read_text())
    names = {e.get("name", "") for e in trace["traceEvents"]}
    assert any("aten::mm" in n or "aten::addmm" in n for n in names), sorted(names)[:20]
    with pytest.raises(ConfigError, match="profile_steps"):
        _cfg(shards, run, ["metrics.profile_steps=[-1]"])


NO_SYNC = ["curriculum.phases.1.num_tokens=7168", "checkpoint.every_steps=0"]  # 20 steps, no saves between


def test_steps_that_do_not_log_never_wait_for_the_device(shards, tmp_path):
    """log_every=5: 16 of 20 steps make no item/cpu/tolist call, a NaN at a non-logging step is still
    skipped (on the device, by the fused optimizer), and every row equals the log-every-step run's."""
    trap = HostSyncWatch()
    try:
        every5 = train(
            _cfg(shards, tmp_path / "every5", [*NO_SYNC, "metrics.log_every=5"]),
            callbacks=[trap, NanLoss([7])],
        )
    finally:
        trap.close()
    assert trap.calls == [] and trap.non_log_calls == 0 and trap.log_calls > 0
    every1 = train(
        _cfg(shards, tmp_path / "every1", [*NO_SYNC, "metrics.log_every=1"]), callbacks=[NanLoss([7])]
    )
    assert every5 == every1 and every5["last_step"] == 20 and every5["skipped_steps"] == 1
    a, b = _metrics(tmp_path / "every5"), _metrics(tmp_path / "every1")
    assert sorted(a) == list(range(20)) and a[7]["skipped"] == "nonfinite" and a[7]["loss"] is None
    for s in range(20):
        assert (a[s]["loss"], a[s]["grad_norm"], a[s]["skipped"]) == (
            b[s]["loss"],
            b[s]["grad_norm"],
            b[s]["skipped"],
        )


def test_device_guard_decides_as_the_host_reference():
    """DeviceSpikeGuard (device tensors, no sync) against SpikeGuard (host floats) on a noisy series
    with spikes, NaNs and a phase change: the same verdict at every step."""
    from trainer.callbacks.guard import DeviceSpikeGuard, SpikeGuard
    from trainer.config import GuardConfig

    cfg = GuardConfig(spike_num_std=3.0, spike_window=8, spike_min_history=4)
    rng = np.random.default_rng(0)
    host, dev = SpikeGuard(cfg), DeviceSpikeGuard(cfg, torch.device("cpu"))
    codes = []
    for i in range(120):
        phase = 0 if i < 60 else 1
        loss = float(5.0 - i * 0.01 + rng.normal(0, 0.05))
        if i % 17 == 9:
            loss *= 3  # a spike
        if i % 29 == 3:
            loss = float("nan")
        norm = 1.0
        want = 1 if not np.isfinite(loss) else (2 if host.is_spike(phase, loss) else 0)
        if want == 0:
            host.accept(loss)
        got = int(dev.verdict(phase, torch.tensor(loss, dtype=torch.float64), torch.tensor(norm)))
        codes.append(want)
        assert got == want, (i, loss, got, want)
    assert codes.count(2) >= 5 and codes.count(1) >= 4
    state = dev.state_dict()
    assert state["losses"] == list(host.losses) and state["phase"] == 1
    again = DeviceSpikeGuard(cfg, torch.device("cpu"))
    again.load_state_dict(state)
    assert again.state_dict() == state


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_one_device_precision_regime(shards, tmp_path, precision):
    """One process: bf16 is autocast in the forward only; weights, gradients and AdamW states fp32."""
    from tests.train_helpers import PrecisionProbe

    run = tmp_path / "run"
    summary = train(
        _cfg(shards, run, [f"precision={precision}", "max_steps=2"]), callbacks=[PrecisionProbe()]
    )
    seen = json.loads((run / "precision_rank0.json").read_text())
    bf16 = precision == "bf16"
    assert seen == {
        "forward_out": "torch.bfloat16" if bf16 else "torch.float32",
        "forward_autocast": bf16,
        "backward_autocast": False,
        "params": ["torch.float32"],
        "grads": ["torch.float32"],
        "optimizer": ["torch.float32"],
    }
    assert np.isfinite(summary["final_loss"])


@pytest.mark.slow
def test_compiled_blocks_one_graph_per_sequence_length_and_eager_losses(shards, straight, tmp_path):
    """compile=true on CPU (inductor): the two phases' sequence lengths (16, 32) give exactly two
    compiled graphs, shared by the four blocks, and the 12 losses match the eager run within 1e-4."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    run = tmp_path / "run"
    train(_cfg(shards, run, ["compile=true"]))
    assert counters["stats"]["unique_graphs"] == 2, dict(counters["stats"])
    compiled, eager = _losses(run), _losses(straight)
    assert len(compiled) == TOTAL_STEPS and max(abs(a - b) for a, b in zip(compiled, eager)) < 1e-4
    torch._dynamo.reset()


def test_async_checkpoints_resume_exactly(shards, straight, tmp_path):
    """checkpoint.async_save: 6 steps, then a rerun to 12 from the step-6 checkpoint, gives the
    uninterrupted run's losses; every saved checkpoint is complete."""
    run = tmp_path / "run"
    train(_cfg(shards, run, ["checkpoint.async_save=true", "max_steps=6"]))
    assert [s for s, _ in ckpt.complete_checkpoints(run / "checkpoints")] == [4, 6]
    train(_cfg(shards, run, ["checkpoint.async_save=true"]))
    assert [s for s, _ in ckpt.complete_checkpoints(run / "checkpoints")] == [8, 12]
    assert _losses(run) == _losses(straight)


def test_async_checkpoint_trains_on_while_writing_and_a_crash_keeps_the_previous(
    shards, tmp_path, monkeypatch
):
    """With storage slowed to 5 s per write, save() returns at once and steps run while the file
    is written (the step returns before the write ends: no wall-clock bound on the step, which a
    loaded machine can stretch); ending without finish (a crash) leaves the step-4 checkpoint the
    newest, loadable, and a rerun resumes from it."""
    from torch.distributed.checkpoint.filesystem import FileSystemWriter

    slow = FileSystemWriter.write_data
    writes_done = []

    def write_data(self, plan, planner):
        time.sleep(5)
        result = slow(self, plan, planner)
        writes_done.append(plan)
        return result

    monkeypatch.setattr(FileSystemWriter, "write_data", write_data)
    run = tmp_path / "run"
    trainer = Trainer(_cfg(shards, run, ["checkpoint.async_save=true"]))
    try:
        while trainer.step_num < 4:
            trainer.step()  # step 3 saves step 4 in the background
        assert trainer.saver.in_flight and not writes_done
        trainer.step()  # trains while the write goes on
        assert trainer.saver.in_flight and not writes_done  # the step did not wait for the write
        while trainer.step_num < 8:
            trainer.step()  # the step-8 save first completes step 4, then starts its own write
        assert [s for s, _ in ckpt.complete_checkpoints(run / "checkpoints")] == [4]
        assert trainer.saver.in_flight and (run / "checkpoints" / "step_000008.tmp").is_dir()
    finally:
        trainer.close()  # no finish_checkpoints: as if the process died mid-write
    assert ckpt.latest_checkpoint(run / "checkpoints").name == "step_000004"
    monkeypatch.undo()
    resumed = Trainer(_cfg(shards, run, ["checkpoint.async_save=true"]))
    try:
        assert resumed.step_num == 4
    finally:
        resumed.close()
