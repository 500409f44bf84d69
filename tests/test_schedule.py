"""Curriculum timeline: step boundaries, derived accumulation, WSD/cosine LR, dry-run table, YAML."""

from __future__ import annotations

import logging
import math

import pytest

from pretrain.core.config import ConfigError, load_config
from trainer.schedule import (
    CurriculumConfig,
    PhaseConfig,
    ScheduleConfig,
    Timeline,
    default_tiny_curriculum,
    default_tiny_phases,
    torch_lambda,
)

PEAK = 1e-3


def phase(name="a", num_tokens=100_000, seq_len=100, global_batch_tokens=1_000, micro_batch_size=2, **kw):
    mixture = kw.pop("mixture", {"web": 1.0})
    return PhaseConfig(name, num_tokens, mixture, seq_len, global_batch_tokens, micro_batch_size, **kw)


def two_phases(**second):
    # a: 16 samples of 100 tokens per step; 16_500 tokens -> 10 steps, 500 dropped.
    # b: 16 samples of 200 tokens per step; 32_000 tokens -> 10 steps.
    a = phase("a", 16_500, 100, 1_600, 2, mixture={"web": 3, "books": 1}, lr_max=PEAK)
    b = phase("b", 32_000, 200, 3_200, 1, mixture={"web": 1, "books": 1}, **{"lr_max": PEAK, **second})
    return [a, b]


def test_phase_boundaries_and_step_counts():
    tl = Timeline.build(two_phases(), ScheduleConfig(), world_size=1)
    a, b = tl.spans
    assert (a.start_step, a.end_step, a.num_steps, a.num_tokens, a.num_tokens_dropped) == (
        0,
        10,
        10,
        16_000,
        500,
    )
    assert (b.start_step, b.end_step, b.num_steps, b.num_tokens, b.num_tokens_dropped) == (
        10,
        20,
        10,
        32_000,
        0,
    )
    assert (tl.total_steps, tl.total_tokens) == (20, 48_000)
    assert [tl.phase_at(s).name for s in (0, 9, 10, 19)] == ["a", "a", "b", "b"]
    assert [tl.tokens_at(s) for s in (0, 1, 10, 11, 20)] == [0, 1_600, 16_000, 19_200, 48_000]
    assert a.config.mixture == {"web": 0.75, "books": 0.25}
    with pytest.raises(ValueError, match="step=20"):
        tl.phase_at(20)


@pytest.mark.parametrize(("world_size", "accum_a", "accum_b"), [(1, 8, 16), (2, 4, 8), (4, 2, 4)])
def test_grad_accum_derived_from_world_size(world_size, accum_a, accum_b):
    tl = Timeline.build(two_phases(), ScheduleConfig(), world_size=world_size)
    assert [s.grad_accum_steps for s in tl.spans] == [accum_a, accum_b]
    for s in tl.spans:  # the global batch is the same whatever the world size
        c = s.config
        assert s.grad_accum_steps * s.micro_batch * world_size * c.seq_len == c.global_batch_tokens


@pytest.mark.parametrize(
    ("world_size", "micro", "accum"), [(1, 4, 4), (2, 4, 2), (4, 4, 1), (8, 2, 1), (16, 1, 1)]
)
def test_micro_batch_is_the_largest_divisor_of_the_rank_share_within_the_bound(
    world_size, micro, accum, caplog
):
    """16 samples per step, micro_batch_size 6: the same config runs on 1 to 16 ranks."""
    p = phase(global_batch_tokens=1_600, micro_batch_size=6)
    assert p.micro_batch(world_size) == (micro, accum)
    with caplog.at_level(logging.WARNING, logger="trainer.schedule"):
        span = Timeline.build([p], ScheduleConfig(), world_size).spans[0]
    assert (span.micro_batch, span.grad_accum_steps) == (micro, accum)
    # A loud line only when the bound could not be filled (16 // world_size samples per rank >= 6).
    notices = [r.getMessage() for r in caplog.records if "does not divide" in r.getMessage()]
    assert len(notices) == (1 if 16 // world_size >= 6 else 0), notices


def test_batch_not_divisible_by_world_size_names_fields_and_world_size():
    with pytest.raises(ConfigError) as e:
        Timeline.build(two_phases(), ScheduleConfig(), world_size=3)
    msg = str(e.value)
    assert msg.startswith("phases[0] (a).global_batch_tokens=1600")
    for needle in ("seq_len", "16 samples", "world_size=3"):
        assert needle in msg


def test_wsd_warmup_stable_linear_decay():
    sched = ScheduleConfig(
        kind="wsd", warmup_steps=10, decay_fraction=0.2, decay_shape="linear", min_lr_ratio=0.1
    )
    tl = Timeline.build([phase(lr_max=PEAK)], sched)  # 100 steps of 1_000 tokens
    lrs = [tl.lr_at(s) for s in range(tl.total_steps)]
    assert lrs[:10] == pytest.approx([PEAK * (s + 1) / 10 for s in range(10)])
    assert all(lr == PEAK for lr in lrs[10:81])  # stable exact, decay starts at step 80 at peak
    assert lrs[80:] == pytest.approx([PEAK * (1 - 0.9 * (s - 80) / 19) for s in range(80, 100)])
    assert lrs[-1] == pytest.approx(0.1 * PEAK)


def test_wsd_warmup_starts_near_zero_and_1_sqrt_decay():
    sched = ScheduleConfig(warmup_tokens=50_000, decay_fraction=0.5, decay_shape="1-sqrt", min_lr_ratio=0.0)
    tl = Timeline.build([phase(lr_max=PEAK)], sched)
    assert tl.lr_at(0) == pytest.approx(PEAK / 50)
    assert tl.lr_at(49) == PEAK
    assert tl.lr_at(50) == PEAK
    assert tl.lr_at(99) == 0.0
    frac = (70 - 50) / 49
    assert tl.lr_at(70) == pytest.approx(PEAK * (1 - math.sqrt(frac)))


def test_cosine_endpoints():
    sched = ScheduleConfig(kind="cosine", warmup_steps=10, min_lr_ratio=0.1)
    tl = Timeline.build([phase(lr_max=PEAK)], sched)
    assert tl.lr_at(9) == PEAK
    assert tl.lr_at(10) == PEAK
    assert tl.lr_at(99) == pytest.approx(0.1 * PEAK)
    lrs = [tl.lr_at(s) for s in range(10, 100)]
    assert all(x > y for x, y in zip(lrs, lrs[1:]))


def test_lr_continuous_across_phase_boundary_with_same_lr_max():
    tl = Timeline.build(two_phases(), ScheduleConfig(kind="cosine", warmup_steps=2))
    deltas = [abs(tl.lr_at(s + 1) - tl.lr_at(s)) for s in range(2, tl.total_steps - 1)]
    jump = abs(tl.lr_at(10) - tl.lr_at(9))
    # shape is in tokens, so a step moves the LR in proportion to its batch: no extra jump.
    assert jump <= 1.01 * max(deltas)
    assert tl.peak_at(9) == tl.peak_at(10) == PEAK


def test_phase_lr_max_switches_or_ramps():
    sched = ScheduleConfig(decay_fraction=0.0)
    switch = Timeline.build(two_phases(lr_max=PEAK / 2), sched)
    assert (switch.lr_at(9), switch.lr_at(10)) == (PEAK, PEAK / 2)
    ramp = Timeline.build(two_phases(lr_max=PEAK / 2, lr_ramp_tokens=16_000), sched)  # 5 steps of b
    assert [ramp.lr_at(s) for s in range(9, 16)] == pytest.approx(
        [PEAK, PEAK, 0.9 * PEAK, 0.8 * PEAK, 0.7 * PEAK, 0.6 * PEAK, 0.5 * PEAK]
    )
    with pytest.raises(ConfigError, match=r"^phases\[0\].lr_ramp_tokens=10"):
        Timeline.build([phase(lr_ramp_tokens=10)], sched)


def test_describe_lists_every_phase_and_numbers():
    tl = Timeline.build(two_phases(), ScheduleConfig(warmup_steps=2, decay_fraction=0.5), world_size=2)
    text = tl.describe()
    assert "20 steps, 48,000 tokens, world_size 2" in text
    rows = {line.split()[0]: line.split() for line in text.splitlines()[3:5]}
    assert rows["a"][:8] == ["a", "0-9", "16,000", "100", "1,600", "16", "2", "4"]
    assert rows["b"][:8] == ["b", "10-19", "32,000", "200", "3,200", "16", "1", "8"]
    assert rows["a"][8:10] == [f"{tl.lr_at(0):.3e}", f"{tl.lr_at(9):.3e}"]
    assert rows["b"][8:10] == [f"{tl.lr_at(10):.3e}", f"{tl.lr_at(19):.3e}"]
    assert rows["a"][10:] == ["web=0.75", "books=0.25"]
    assert "phase a: num_tokens=16,500 rounded down to 10 whole global batches (500 tokens dropped)" in text


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"seq_len": 0}, "seq_len=0"),
        ({"mixture": {"web": 1.0, "books": 0.0}}, "mixture.books=0.0"),
        ({"mixture": {"web": -1.0}}, "mixture.web=-1.0"),
        ({"mixture": {}}, "mixture={}"),
        ({"seq_len": 300}, "global_batch_tokens=1000 is invalid: expected a multiple of seq_len=300"),
        ({"micro_batch_size": 0}, "micro_batch_size=0"),
        ({"num_tokens": 999}, "num_tokens=999"),
        ({"lr_max": 0.0}, "lr_max=0.0"),
    ],
)
def test_phase_validation_names_field(kwargs, needle):
    with pytest.raises(ConfigError) as e:
        phase(**kwargs)
    assert str(e.value).startswith(needle)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"warmup_tokens": 5, "warmup_steps": 5}, "warmup_steps=5"),
        ({"min_lr_ratio": 1.5}, "min_lr_ratio=1.5"),
        ({"decay_fraction": -0.1}, "decay_fraction=-0.1"),
    ],
)
def test_schedule_validation_names_field(kwargs, needle):
    with pytest.raises(ConfigError, match=f"^{needle}"):
        ScheduleConfig(**kwargs)


def test_warmup_overlapping_decay_is_refused():
    with pytest.raises(ConfigError, match="^schedule.warmup_steps=90"):
        Timeline.build([phase()], ScheduleConfig(warmup_steps=90, decay_fraction=0.2))


YAML = """
phases:
  - name: short
    num_tokens: 65536
    mixture: {web: 4, books: 1}
    seq_len: 64
    global_batch_tokens: 4096
    micro_batch_size: 8
  - name: long
    num_tokens: 32768
    mixture: {web: 1, books: 1}
    seq_len: 256
    global_batch_tokens: 4096
    micro_batch_size: 2
schedule:
  warmup_steps: 4
"""


def test_yaml_with_dotted_overrides(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(YAML)
    cfg = load_config(CurriculumConfig, path, ["schedule.kind=cosine", "schedule.min_lr_ratio=0.0"])
    assert [p.name for p in cfg.phases] == ["short", "long"]
    assert cfg.phases[0].mixture == {"web": 0.8, "books": 0.2}
    assert (cfg.schedule.kind, cfg.schedule.min_lr_ratio, cfg.schedule.warmup_steps) == ("cosine", 0.0, 4)
    tl = Timeline.from_config(cfg, world_size=2)
    assert [(s.start_step, s.end_step, s.grad_accum_steps) for s in tl.spans] == [(0, 16, 4), (16, 24, 4)]
    assert tl.lr_at(23) == 0.0

    path.write_text(YAML.replace("seq_len: 256", "seq_len: 0"))
    with pytest.raises(ConfigError, match=r"^phases\[1\].seq_len=0"):
        load_config(CurriculumConfig, path)
    path.write_text(YAML)
    with pytest.raises(ConfigError, match="^schedule.kind='step'"):
        load_config(CurriculumConfig, path, ["schedule.kind=step"])


def test_default_tiny_phases():
    short, long = default_tiny_phases()
    assert short.seq_len < long.seq_len
    assert set(short.mixture) == set(long.mixture) == {"web", "books"}
    assert short.mixture["books"] < long.mixture["books"]
    for world_size in (1, 2, 4):
        tl = Timeline.from_config(default_tiny_curriculum(), world_size)
        assert (tl.total_steps, tl.total_tokens) == (384, 3_145_728)
        assert [s.grad_accum_steps for s in tl.spans] == [4 // world_size] * 2
        assert tl.lr_at(tl.total_steps - 1) == pytest.approx(0.1 * 3e-3)


def test_torch_lambda_drives_lambdalr():
    torch = pytest.importorskip("torch")
    tl = Timeline.build(two_phases(lr_max=PEAK / 2, lr_ramp_tokens=6_400), ScheduleConfig(warmup_steps=3))
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=tl.peak_lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, torch_lambda(tl))
    seen = []
    for _ in range(tl.total_steps):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()  # the last call asks for step total_steps: clamped, no error
    assert seen == pytest.approx([tl.lr_at(s) for s in range(tl.total_steps)])
    assert torch_lambda(tl, base_lr=2 * PEAK)(0) == pytest.approx(tl.lr_at(0) / (2 * PEAK))
