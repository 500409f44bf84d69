"""Curriculum timeline and LR schedule: phases in token units -> optimizer steps and LR per step.

    cfg = load_config(CurriculumConfig, "train.yaml", ["schedule.kind=cosine"])
    timeline = Timeline.build(cfg.phases, cfg.schedule, world_size=8)
    print(timeline.describe())          # what `--dry-run` prints
    sched = LambdaLR(opt, torch_lambda(timeline))   # opt built with lr=timeline.peak_lr

Each phase is a run of whole global batches: its `num_tokens` is rounded DOWN to a multiple of
`global_batch_tokens` (the dropped remainder is reported). The micro-batch and gradient
accumulation are derived per world size: each rank takes global_batch_tokens // seq_len //
world_size samples per step, in micro-batches of the largest divisor of that share not above
`micro_batch_size`. So one config runs on 1, 2 or 8 ranks with the same global batch.

LR: one global schedule shape (a multiplier in [0, 1]) laid over the whole run in token units,
times the peak LR of the phase the step is in:

    lr_at(step) = peak(step) * shape(tokens consumed before step)

so the LR is continuous across a phase boundary when both phases have the same `lr_max`. A phase
with a different `lr_max` switches at its first step, or moves linearly from the previous
phase's peak over its `lr_ramp_tokens`. The shape is measured in tokens rather than steps so a
phase that changes the batch size does not stretch or squeeze the warmup or the decay.

Everything here is pure Python and step-indexed: the LR of step k depends only on (config, k),
so a resumed run gets the same LR without saving scheduler state.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from pretrain.core.config import ConfigError, check

log = logging.getLogger(__name__)


@dataclass
class PhaseConfig:
    """One curriculum phase: what data, at what length and batch size, at what peak LR."""

    name: str
    """Short label shown in logs, metrics and `--dry-run`."""
    num_tokens: int
    """Phase length in tokens; rounded down to whole global batches."""
    mixture: dict[str, float]
    """Source -> sampling weight (> 0); normalised to sum to 1."""
    seq_len: int
    """Tokens per packed sample."""
    global_batch_tokens: int
    """Tokens per optimizer step over all ranks; a multiple of seq_len."""
    micro_batch_size: int
    """At most this many samples per device per forward/backward (the memory bound): the largest
    divisor of the rank's share of the global batch not above it is used, and accumulation follows."""
    lr_max: float = 3e-4
    """Peak LR of this phase's segment: the global schedule shape is scaled by it."""
    lr_ramp_tokens: int = 0
    """Tokens over which the peak moves linearly from the previous phase's lr_max to this one's;
    0 switches at the phase boundary. Must be 0 on the first phase (warmup does that job)."""

    def __post_init__(self) -> None:
        check(bool(self.name), "name", self.name, "a non-empty string")
        check(self.num_tokens > 0, "num_tokens", self.num_tokens, "> 0")
        check(len(self.mixture) > 0, "mixture", self.mixture, "at least one source")
        for source, weight in self.mixture.items():
            check(weight > 0 and math.isfinite(weight), f"mixture.{source}", weight, "a finite weight > 0")
        check(self.seq_len > 0, "seq_len", self.seq_len, "> 0")
        check(self.global_batch_tokens > 0, "global_batch_tokens", self.global_batch_tokens, "> 0")
        check(
            self.global_batch_tokens % self.seq_len == 0,
            "global_batch_tokens",
            self.global_batch_tokens,
            f"a multiple of seq_len={self.seq_len}",
        )
        check(self.micro_batch_size > 0, "micro_batch_size", self.micro_batch_size, "> 0")
        check(
            self.num_tokens >= self.global_batch_tokens,
            "num_tokens",
            self.num_tokens,
            f">= global_batch_tokens={self.global_batch_tokens} (at least one step)",
        )
        check(self.lr_max > 0 and math.isfinite(self.lr_max), "lr_max", self.lr_max, "a finite LR > 0")
        check(
            0 <= self.lr_ramp_tokens <= self.num_tokens,
            "lr_ramp_tokens",
            self.lr_ramp_tokens,
            f"0..num_tokens={self.num_tokens}",
        )
        total = sum(self.mixture.values())
        if total != 1.0:
            self.mixture = {k: v / total for k, v in self.mixture.items()}

    @property
    def global_batch_samples(self) -> int:
        return self.global_batch_tokens // self.seq_len

    def micro_batch(self, world_size: int) -> tuple[int, int]:
        """(samples per micro-batch, micro-steps per optimizer step) on each of `world_size` ranks:
        the rank's share must be whole; the micro-batch is its largest divisor <= micro_batch_size."""
        check(
            self.global_batch_samples % world_size == 0,
            "global_batch_tokens",
            self.global_batch_tokens,
            f"global_batch_tokens // seq_len = {self.global_batch_samples} samples divisible by "
            f"world_size={world_size}",
        )
        share = self.global_batch_samples // world_size
        micro = next(m for m in range(min(self.micro_batch_size, share), 0, -1) if share % m == 0)
        return micro, share // micro


@dataclass
class ScheduleConfig:
    """Shape of the LR over the whole run (a multiplier of each phase's lr_max)."""

    kind: Literal["wsd", "cosine"] = "wsd"
    """wsd: linear warmup, constant, then decay over the last decay_fraction of the tokens;
    cosine: linear warmup, then cosine to min_lr_ratio at the last step."""
    warmup_tokens: int = 0
    """Linear warmup length in tokens (set this or warmup_steps, not both)."""
    warmup_steps: int = 0
    """Linear warmup length in optimizer steps (set this or warmup_tokens, not both)."""
    min_lr_ratio: float = 0.1
    """Final LR as a fraction of the peak."""
    decay_fraction: float = 0.2
    """wsd only: fraction of the total tokens spent decaying; 0 keeps the LR constant to the end."""
    decay_shape: Literal["linear", "1-sqrt"] = "1-sqrt"
    """wsd only: linear, or 1-sqrt (Hägele et al. 2024: lower final loss than linear)."""

    def __post_init__(self) -> None:
        check(self.warmup_tokens >= 0, "warmup_tokens", self.warmup_tokens, ">= 0")
        check(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, ">= 0")
        check(
            not (self.warmup_tokens and self.warmup_steps),
            "warmup_steps",
            self.warmup_steps,
            f"0 when warmup_tokens={self.warmup_tokens} is set (pick one unit)",
        )
        check(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio", self.min_lr_ratio, "0..1")
        check(0.0 <= self.decay_fraction <= 1.0, "decay_fraction", self.decay_fraction, "0..1")


@dataclass
class CurriculumConfig:
    """Top-level section for YAML: the ordered phases and the schedule shape."""

    phases: list[PhaseConfig]
    """Phases in training order."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """LR schedule shape over the whole run."""

    def __post_init__(self) -> None:
        check(len(self.phases) > 0, "phases", self.phases, "at least one phase")
        names = [p.name for p in self.phases]
        check(len(set(names)) == len(names), "phases", names, "unique phase names")


@dataclass(frozen=True)
class PhaseSpan:
    """A phase placed on the timeline: steps [start_step, end_step) and its derived batch layout."""

    index: int
    config: PhaseConfig
    start_step: int
    end_step: int
    start_token: int
    micro_batch: int
    grad_accum_steps: int
    num_tokens_dropped: int

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def num_steps(self) -> int:
        return self.end_step - self.start_step

    @property
    def tokens_per_step(self) -> int:
        return self.config.global_batch_tokens

    @property
    def num_tokens(self) -> int:
        return self.num_steps * self.tokens_per_step


class Timeline:
    """Phases laid end to end in optimizer steps; answers phase, tokens and LR for any step."""

    def __init__(self, spans: list[PhaseSpan], schedule: ScheduleConfig, world_size: int) -> None:
        self.spans = spans
        self.schedule = schedule
        self.world_size = world_size
        self._starts = [s.start_step for s in spans]
        self.total_steps = spans[-1].end_step
        self.total_tokens = spans[-1].start_token + spans[-1].num_tokens
        self.peak_lr = max(s.config.lr_max for s in spans)
        self._last_token = self.tokens_at(self.total_steps - 1)
        self._warmup_end = self._warmup_end_token()
        self._decay_start = self._decay_start_token()

    @classmethod
    def build(cls, phases: list[PhaseConfig], schedule: ScheduleConfig, world_size: int = 1) -> Timeline:
        check(world_size >= 1, "world_size", world_size, ">= 1")
        check(len(phases) > 0, "phases", phases, "at least one phase")
        check(phases[0].lr_ramp_tokens == 0, "phases[0].lr_ramp_tokens", phases[0].lr_ramp_tokens, "0")
        spans, step, token = [], 0, 0
        for i, phase in enumerate(phases):
            try:
                micro, accum = phase.micro_batch(world_size)
            except ConfigError as e:
                raise ConfigError(f"phases[{i}] ({phase.name}).{e}") from None
            if micro < min(phase.micro_batch_size, micro * accum):  # a divisor below the bound
                log.warning(
                    "phase %s: micro-batch %d (micro_batch_size=%d does not divide the %d samples per "
                    "rank) x %d accumulation steps on each of %d ranks",
                    phase.name,
                    micro,
                    phase.micro_batch_size,
                    micro * accum,
                    accum,
                    world_size,
                )
            num_steps = phase.num_tokens // phase.global_batch_tokens
            dropped = phase.num_tokens - num_steps * phase.global_batch_tokens
            if dropped:
                log.warning(
                    "phase %s: num_tokens=%d rounded down to %d whole global batches (%d tokens dropped)",
                    phase.name,
                    phase.num_tokens,
                    num_steps,
                    dropped,
                )
            spans.append(PhaseSpan(i, phase, step, step + num_steps, token, micro, accum, dropped))
            step += num_steps
            token += num_steps * phase.global_batch_tokens
        timeline = cls(spans, schedule, world_size)
        if schedule.kind == "wsd" and schedule.decay_fraction > 0:
            check(
                timeline._warmup_end <= timeline._decay_start,
                "schedule.warmup_tokens" if schedule.warmup_tokens else "schedule.warmup_steps",
                schedule.warmup_tokens or schedule.warmup_steps,
                f"warmup ending by the decay start at token {timeline._decay_start}",
            )
        return timeline

    @classmethod
    def from_config(cls, cfg: CurriculumConfig, world_size: int = 1) -> Timeline:
        return cls.build(cfg.phases, cfg.schedule, world_size)

    def _check_step(self, step: int) -> None:
        if not 0 <= step < self.total_steps:
            raise ValueError(f"step={step} is outside the timeline 0..{self.total_steps - 1}")

    def span_at(self, step: int) -> PhaseSpan:
        self._check_step(step)
        return self.spans[bisect.bisect_right(self._starts, step) - 1]

    def phase_at(self, step: int) -> PhaseConfig:
        """The phase config in force at optimizer step `step` (0-indexed)."""
        return self.span_at(step).config

    def tokens_at(self, step: int) -> int:
        """Tokens consumed before `step`; tokens_at(total_steps) == total_tokens."""
        if step == self.total_steps:
            return self.total_tokens
        span = self.span_at(step)
        return span.start_token + (step - span.start_step) * span.tokens_per_step

    def _warmup_end_token(self) -> int:
        if self.schedule.warmup_steps:
            return self.tokens_at(min(self.schedule.warmup_steps, self.total_steps))
        return self.schedule.warmup_tokens

    def _decay_start_token(self) -> int:
        # Snapped to the first step boundary at or after the nominal start, so the decay starts
        # exactly at peak on a step and ends exactly at min_lr_ratio on the last step.
        if self.schedule.decay_fraction == 0:
            return self.total_tokens
        nominal = (1.0 - self.schedule.decay_fraction) * self.total_tokens
        for span in self.spans:
            end = span.start_token + span.num_tokens
            if nominal <= end:
                k = math.ceil(max(nominal - span.start_token, 0) / span.tokens_per_step)
                return min(span.start_token + k * span.tokens_per_step, self._last_token)
        return self._last_token

    def shape_at(self, step: int) -> float:
        """Schedule multiplier in [0, 1] for `step`, before the phase's lr_max."""
        self._check_step(step)
        s = self.schedule
        start = self.tokens_at(step)
        if start < self._warmup_end:
            # Counts the tokens of this step itself so step 0 gets a small non-zero LR.
            return min(1.0, (start + self.span_at(step).tokens_per_step) / self._warmup_end)
        if s.kind == "cosine":
            frac = _fraction(start - self._warmup_end, self._last_token - self._warmup_end)
            return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac))
        if start < self._decay_start or s.decay_fraction == 0:
            return 1.0
        frac = _fraction(start - self._decay_start, self._last_token - self._decay_start)
        drop = frac if s.decay_shape == "linear" else math.sqrt(frac)
        return 1.0 - (1 - s.min_lr_ratio) * drop

    def peak_at(self, step: int) -> float:
        """The phase's lr_max at `step`, ramped from the previous phase's when lr_ramp_tokens > 0."""
        span = self.span_at(step)
        ramp = span.config.lr_ramp_tokens
        if ramp == 0 or span.index == 0:
            return span.config.lr_max
        prev = self.spans[span.index - 1].config.lr_max
        frac = min(1.0, (self.tokens_at(step) - span.start_token) / ramp)
        return prev + (span.config.lr_max - prev) * frac

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step `step` (0-indexed)."""
        return self.peak_at(step) * self.shape_at(step)

    def describe(self) -> str:
        """A table of the timeline for `--dry-run`."""
        s = self.schedule
        warm = f"warmup {s.warmup_steps} steps" if s.warmup_steps else f"warmup {s.warmup_tokens:,} tokens"
        shape = f"{s.kind} ({warm}, min_lr_ratio {s.min_lr_ratio}"
        shape += f", decay last {s.decay_fraction:g} {s.decay_shape})" if s.kind == "wsd" else ")"
        header = ["phase", "steps", "tokens", "seq_len", "batch_tok", "batch_smp", "micro", "accum"]
        header += ["lr_first", "lr_last", "mixture"]
        rows = [header]
        for sp in self.spans:
            c = sp.config
            rows.append(
                [
                    c.name,
                    f"{sp.start_step}-{sp.end_step - 1}",
                    f"{sp.num_tokens:,}",
                    str(c.seq_len),
                    f"{c.global_batch_tokens:,}",
                    str(c.global_batch_samples),
                    str(sp.micro_batch),
                    str(sp.grad_accum_steps),
                    f"{self.lr_at(sp.start_step):.3e}",
                    f"{self.lr_at(sp.end_step - 1):.3e}",
                    " ".join(f"{k}={v:.2f}" for k, v in c.mixture.items()),
                ]
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = [
            f"timeline: {self.total_steps} steps, {self.total_tokens:,} tokens, world_size {self.world_size}",
            f"schedule: {shape}",
        ]
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
        for sp in self.spans:
            if sp.num_tokens_dropped:
                lines.append(
                    f"note: phase {sp.name}: num_tokens={sp.config.num_tokens:,} rounded down to "
                    f"{sp.num_steps} whole global batches ({sp.num_tokens_dropped:,} tokens dropped)"
                )
        return "\n".join(lines)


def _fraction(num: float, den: float) -> float:
    return 1.0 if den <= 0 else min(1.0, max(0.0, num / den))


def torch_lambda(timeline: Timeline, base_lr: float | None = None) -> Callable[[int], float]:
    """step -> LR multiplier for `torch.optim.lr_scheduler.LambdaLR`.

    Build the optimizer with `lr=base_lr` (default `timeline.peak_lr`). The multiplier depends
    only on the step, so on resume it is enough to restore the scheduler's step counter (or
    rebuild LambdaLR with last_epoch=step - 1): no other state to trust.
    """
    base = timeline.peak_lr if base_lr is None else base_lr
    check(base > 0, "base_lr", base, "> 0")
    last = timeline.total_steps - 1

    def multiplier(step: int) -> float:
        # LambdaLR evaluates one step past the end after the final scheduler.step(); clamp.
        return timeline.lr_at(min(max(step, 0), last)) / base

    return multiplier


def default_tiny_phases() -> list[PhaseConfig]:
    """Two CPU-sized phases: short context on a web-heavy mix, then longer context, more books.

    Both keep 8,192 tokens per step and accumulate 4/2/1 micro-steps on 1/2/4 ranks.
    """
    return [
        PhaseConfig(
            name="short",
            num_tokens=2_097_152,  # 256 steps
            mixture={"web": 0.8, "books": 0.2},
            seq_len=128,
            global_batch_tokens=8_192,
            micro_batch_size=16,
            lr_max=3e-3,
        ),
        PhaseConfig(
            name="long",
            num_tokens=1_048_576,  # 128 steps
            mixture={"web": 0.5, "books": 0.5},
            seq_len=512,
            global_batch_tokens=8_192,
            micro_batch_size=4,
            lr_max=3e-3,
        ),
    ]


def default_tiny_curriculum() -> CurriculumConfig:
    """default_tiny_phases() with a 32-step warmup and WSD decay over the last 20%."""
    return CurriculumConfig(phases=default_tiny_phases(), schedule=ScheduleConfig(warmup_tokens=262_144))
