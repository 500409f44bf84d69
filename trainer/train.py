"""The training loop: curriculum phases, accumulation, clipping, guards, metrics, checkpoints.

    cfg = load_config(TrainConfig, "configs/train_tiny.yaml", ["parallel=ddp"])
    train(cfg)          # in each torchrun process, or in one plain process

Each optimizer step k takes its phase from the Timeline (seq_len, mixture, global batch,
accumulation). The rank's share of the global batch is split into micro-batches; the loss of
each is scaled by 1/accum so the summed gradient is the mean over the global batch on any world
size. A non-finite loss or grad norm skips the optimizer step (grads zeroed, LR schedule still
advances) and is logged. So does a loss spike: a loss above mean + k * std of the recent window of
accepted losses (the window restarts at each phase, whose data legitimately shifts the loss).
`max_consecutive_spikes` spikes in a row roll model, optimizer, scheduler and RNG back to the
newest checkpoint while the data loader keeps going forward, so the batches that spiked are never
replayed. Rank 0 appends one JSON line per step to run_dir/metrics.jsonl (MetricsLogger: strict
JSON, non-finite values as null) with throughput, MFU (GPU only), data-wait fraction and memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pretrain.core.config import ConfigError, check, to_dict
from trainer.schedule import CurriculumConfig, Timeline, default_tiny_curriculum

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """Where the token shards are and how they are packed."""

    sources: dict[str, str] = field(default_factory=dict)
    """Source name -> token-shard manifest directory (several names may share one directory)."""
    tokenizer_dir: str | None = None
    """Tokenizer directory (`pretrain tokenizer train --out`): sets tokenizer_hash and eos_id from
    it, and eval/export find the tokenizer through it."""
    tokenizer_hash: str | None = None
    """Refuse shards made by another tokenizer; null skips the check (set from tokenizer_dir)."""
    eos_id: int = 0
    """Separator token written between packed documents (set from tokenizer_dir)."""
    seed: int = 0
    """Seed of the document shuffles and mixture draws (the global sample order)."""
    prefetch: int = 4
    """Batches the background thread keeps ready."""

    def __post_init__(self) -> None:
        check(len(self.sources) > 0, "sources", self.sources, "at least one source: name -> manifest dir")
        if self.tokenizer_dir is not None:
            from pretrain.core.tokenizer_file import load_tokenizer

            tok = load_tokenizer(self.tokenizer_dir)
            check(
                self.tokenizer_hash in (None, tok.hash),
                "tokenizer_hash",
                self.tokenizer_hash,
                f"null or the hash of {self.tokenizer_dir} ({tok.hash})",
            )
            self.tokenizer_hash, self.eos_id = tok.hash, tok.eos_id
        check(self.eos_id >= 0, "eos_id", self.eos_id, ">= 0")
        check(self.prefetch >= 1, "prefetch", self.prefetch, ">= 1")


@dataclass
class OptimConfig:
    """AdamW; the LR comes from the curriculum timeline."""

    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """Adam beta1, beta2."""
    weight_decay: float = 0.1
    """Decoupled weight decay on matrices (norm weights get none)."""
    eps: float = 1e-8
    """Adam epsilon."""

    def __post_init__(self) -> None:
        check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "betas",
            self.betas,
            "[b1, b2] in [0, 1)",
        )
        check(self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0")
        check(self.eps > 0, "eps", self.eps, "> 0")


@dataclass
class CheckpointConfig:
    """When to save and which checkpoints to keep."""

    every_steps: int = 100
    """Save after every this many optimizer steps (and always after the last one); 0 only at the end."""
    keep_last: int = 3
    """Keep the newest N complete checkpoints."""
    keep_every: int = 0
    """Also keep every checkpoint whose step is a multiple of K; 0 keeps none extra."""

    def __post_init__(self) -> None:
        check(self.every_steps >= 0, "every_steps", self.every_steps, ">= 0")
        check(self.keep_last >= 1, "keep_last", self.keep_last, ">= 1")
        check(self.keep_every >= 0, "keep_every", self.keep_every, ">= 0")


@dataclass
class GuardConfig:
    """Loss-spike guard (non-finite losses and grad norms are always skipped)."""

    spike_num_std: float = 6.0
    """A loss above mean + this many std of the recent accepted losses is a spike; 0 disables."""
    spike_window: int = 50
    """Accepted losses (this phase) the mean and std are taken over."""
    spike_min_history: int = 10
    """Judge no spike until the window holds this many losses."""
    max_consecutive_spikes: int = 3
    """This many spikes in a row roll back to the newest checkpoint (data keeps moving forward)."""
    max_rollbacks: int = 5
    """Give up (raise) after this many rollbacks in one train() call: the run is not recovering."""

    def __post_init__(self) -> None:
        check(self.spike_num_std >= 0, "spike_num_std", self.spike_num_std, ">= 0 (0 disables)")
        check(self.spike_window >= 2, "spike_window", self.spike_window, ">= 2")
        check(
            2 <= self.spike_min_history <= self.spike_window,
            "spike_min_history",
            self.spike_min_history,
            "in [2, spike_window]",
        )
        check(self.max_consecutive_spikes >= 1, "max_consecutive_spikes", self.max_consecutive_spikes, ">= 1")
        check(self.max_rollbacks >= 0, "max_rollbacks", self.max_rollbacks, ">= 0")


@dataclass
class MetricsConfig:
    """What goes to metrics.jsonl, TensorBoard and the console."""

    window: int = 20
    """Steps the rolling tokens/s, MFU and data-wait fraction average over."""
    memory_every: int = 10
    """Add a memory snapshot to every N-th step's row (and the first); 0 never."""
    tensorboard: bool = False
    """Also write TensorBoard scalars to run_dir/tensorboard (needs the tensorboard package)."""
    progress: bool = True
    """Progress line with ETA on rank 0's console."""

    def __post_init__(self) -> None:
        check(self.window >= 1, "window", self.window, ">= 1")
        check(self.memory_every >= 0, "memory_every", self.memory_every, ">= 0")


@dataclass
class DebugConfig:
    """Test hooks; leave empty in real runs."""

    nan_steps: list[int] = field(default_factory=list)
    """Optimizer steps whose batch is poisoned: the loss becomes NaN (exercises the guard)."""
    spike_steps: list[int] = field(default_factory=list)
    """Optimizer steps whose loss is multiplied by 1000 before the spike guard sees it; each fires
    once, so a step re-run after a rollback is clean."""
    step_sleep_s: float = 0.0
    """Sleep after each step, so a test can kill the process mid-run."""


@dataclass
class TrainConfig:
    """One training run: model, curriculum, data, parallelism, optimizer, checkpoints."""

    run_dir: str
    """Output directory: metrics.jsonl, config.yaml and checkpoints/."""
    data: DataConfig
    """Token shards and packing."""
    model: str = "tiny"
    """Model preset name (trainer.model.PRESETS)."""
    model_overrides: dict[str, Any] = field(default_factory=dict)
    """ModelConfig fields overriding the preset, e.g. {dim: 64, vocab_size: 512}."""
    curriculum: CurriculumConfig = field(default_factory=default_tiny_curriculum)
    """Phases and LR schedule."""
    parallel: Literal["none", "ddp", "fsdp2"] = "none"
    """Data parallelism under torchrun or nproc > 1; ignored (plain module) in a single process."""
    nproc: int = 1
    """Processes to start on this machine (one per GPU; trainer/launch.py, loopback only). Ignored
    under torchrun, which sets the world itself. Losses match one process within fp32 tolerance."""
    activation_checkpointing: bool = False
    """Recompute each block in the backward pass to save memory."""
    grad_clip: float = 1.0
    """Clip the global grad norm to this; 0 disables clipping (the norm is still logged)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """AdamW settings."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Save cadence and retention."""
    seed: int = 0
    """Seed of the weight init and torch/python/numpy RNGs."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: cuda when available, else cpu. bf16 autocast on cuda, fp32 on cpu."""
    compile: bool = False
    """torch.compile the model (first steps pay the compile time)."""
    max_steps: int | None = None
    """Stop after this optimizer step count (checkpointing there) instead of the timeline's end."""
    resume: bool = True
    """Continue from the newest complete checkpoint in run_dir/checkpoints when there is one."""
    allow_data_change: bool = False
    """Resume even if the data fingerprint differs from the checkpoint's."""
    guard: GuardConfig = field(default_factory=GuardConfig)
    """Loss-spike skipping and rollback."""
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    """Throughput, MFU, memory, TensorBoard and console progress."""
    debug: DebugConfig = field(default_factory=DebugConfig)
    """Test hooks."""

    def __post_init__(self) -> None:
        from trainer.model import preset

        check(bool(self.run_dir), "run_dir", self.run_dir, "a directory path")
        check(self.grad_clip >= 0, "grad_clip", self.grad_clip, ">= 0")
        check(self.nproc >= 1, "nproc", self.nproc, ">= 1")
        check(
            self.nproc == 1 or self.parallel != "none",
            "parallel",
            self.parallel,
            f"ddp or fsdp2 with nproc={self.nproc} (none would train unsynchronised copies)",
        )
        check(self.max_steps is None or self.max_steps > 0, "max_steps", self.max_steps, "> 0 or null")
        preset(self.model, **self.model_overrides)  # validates the name and the overrides now
        unknown = {s for p in self.curriculum.phases for s in p.mixture} - set(self.data.sources)
        check(
            not unknown,
            "curriculum.phases",
            sorted(unknown),
            f"mixture sources among {sorted(self.data.sources)}",
        )

    def model_config(self):
        from trainer.model import preset

        return preset(self.model, **self.model_overrides)


def data_fingerprint_of(cfg: TrainConfig, sources: dict) -> str:
    """Shards, tokenizer, EOS, seed and every phase's packing (mixture, seq_len): resume refuses a change."""
    from trainer.data import data_fingerprint

    per_phase = [
        data_fingerprint(
            {n: s.sha256s for n, s in sources.items()},
            cfg.data.tokenizer_hash,
            seq_len=p.seq_len,
            eos_id=cfg.data.eos_id,
            weights=p.mixture,
            seed=cfg.data.seed,
        )
        for p in cfg.curriculum.phases
    ]
    return hashlib.sha256(json.dumps(per_phase).encode()).hexdigest()


def resolve_device(cfg: TrainConfig):
    import torch

    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def _param_groups(model) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


class SpikeGuard:
    """Spike test against the recent accepted losses of the current phase; tiny, checkpointed state."""

    def __init__(self, cfg: GuardConfig):
        self.cfg = cfg
        self.losses: deque[float] = deque(maxlen=cfg.spike_window)
        self.phase = -1
        self.consecutive = 0

    def is_spike(self, phase: int, loss: float) -> bool:
        if phase != self.phase:  # a new phase's mixture / seq_len shifts the loss legitimately
            self.losses.clear()
            self.phase = phase
        if self.cfg.spike_num_std <= 0 or len(self.losses) < self.cfg.spike_min_history:
            return False
        mean, std = statistics.fmean(self.losses), statistics.pstdev(self.losses)
        return loss > mean + self.cfg.spike_num_std * std

    def accept(self, loss: float) -> None:
        self.losses.append(loss)
        self.consecutive = 0

    def state_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "losses": list(self.losses), "consecutive": self.consecutive}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self.losses.clear()
        self.phase, self.consecutive = -1, 0
        if state:  # checkpoints from before the guard existed have none
            self.losses.extend(state["losses"])
            self.phase, self.consecutive = state["phase"], state["consecutive"]


class Trainer:
    """One run's state; `step()` is one optimizer step (the unit bench/train_throughput.py times).

    trainer = Trainer(cfg)      # builds model/optimizer/data, resumes from the newest checkpoint
    while not trainer.done:
        trainer.step()          # -> the metrics row it logged
    trainer.close()
    """

    def __init__(self, cfg: TrainConfig):
        import numpy as np
        import torch
        from torch.optim.lr_scheduler import LambdaLR

        from pretrain.core.config import dump_yaml
        from trainer import checkpoint as ckpt
        from trainer.data import PackedStream, load_sources
        from trainer.metrics import (
            MetricsLogger,
            ProgressLine,
            Throughput,
            detect_peak_flops,
            reset_peak_memory,
        )
        from trainer.model import Transformer
        from trainer.parallelize import init_distributed, parallelize
        from trainer.schedule import torch_lambda

        self.cfg = cfg
        self.device = device = resolve_device(cfg)
        self.env = env = init_distributed(device.type)
        if env.world_size > 1 and cfg.parallel == "none":
            raise ConfigError(
                f"parallel: none in a world of {env.world_size} processes would train unsynchronised "
                "copies; set parallel=ddp or parallel=fsdp2"
            )
        self.run_dir = Path(cfg.run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        if env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(dump_yaml(cfg))
        self._was_deterministic = torch.are_deterministic_algorithms_enabled()
        if device.type == "cpu":  # on GPU it would need CUBLAS_WORKSPACE_CONFIG and slower kernels
            torch.use_deterministic_algorithms(True)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)

        self.timeline = timeline = Timeline.build(
            cfg.curriculum.phases, cfg.curriculum.schedule, env.world_size
        )
        self.last_step = min(cfg.max_steps or timeline.total_steps, timeline.total_steps)

        reset_peak_memory(device)  # memory rows then report the peak above this pre-model baseline
        # Meta device then materialise: no wasted CPU init for big models, same seeded init everywhere.
        mcfg = cfg.model_config()
        with torch.device("meta"):
            model = Transformer(mcfg)
        model.to_empty(device=device)
        torch.manual_seed(cfg.seed)
        model.init_weights()
        self.flops_per_token = {p.seq_len: model.flops_per_token(p.seq_len) for p in cfg.curriculum.phases}
        self.model = model = parallelize(model, cfg.parallel, device, cfg.activation_checkpointing)
        self.fwd = torch.compile(model) if cfg.compile else model
        self.optimizer = torch.optim.AdamW(
            _param_groups(model),
            lr=timeline.peak_lr,
            betas=tuple(cfg.optim.betas),
            eps=cfg.optim.eps,
            weight_decay=cfg.optim.weight_decay,
            fused=device.type == "cuda",
        )
        self.scheduler = LambdaLR(self.optimizer, torch_lambda(timeline))

        sources = load_sources(
            sorted(set(cfg.data.sources.values())), cfg.data.tokenizer_hash, cfg.data.sources
        )
        self.fingerprint = data_fingerprint_of(cfg, sources)
        p0 = timeline.spans[0].config
        self.stream = PackedStream(
            sources, p0.mixture, p0.seq_len, cfg.data.eos_id, cfg.data.seed, 0, cfg.data.tokenizer_hash
        )
        self.guard = SpikeGuard(cfg.guard)

        self.step_num = 0
        resume_from = ckpt.latest_checkpoint(self.ckpt_dir) if cfg.resume else None
        if resume_from is not None:
            meta = ckpt.read_meta(resume_from)
            if meta["data_fingerprint"] != self.fingerprint and not cfg.allow_data_change:
                raise ValueError(
                    f"checkpoint {resume_from} was trained on data fingerprint "
                    f"{meta['data_fingerprint'][:16]}, this config gives {self.fingerprint[:16]}; "
                    "set allow_data_change=true to resume anyway"
                )
            meta = self._restore(resume_from)
            ds = meta["data_state"]
            ph = timeline.spans[ds["phase"]].config
            self.stream.set_phase(ds["phase"], ph.mixture, ph.seq_len)
            self.stream.load_state_dict(ds)
            self.step_num = meta["step"]
            log.info("resumed from %s at step %d", resume_from, self.step_num)

        self.autocast = (
            (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
            if device.type == "cuda"
            else contextlib.nullcontext
        )
        self._lock = lock_run_dir(self.run_dir) if env.is_main else None  # before the first write
        self.metrics = MetricsLogger(self.run_dir, env.rank, tensorboard=cfg.metrics.tensorboard)
        self.progress = ProgressLine(
            self.last_step, self.step_num, enabled=cfg.metrics.progress and env.is_main
        )
        self.tput = Throughput(cfg.metrics.window)
        self.peak_flops = detect_peak_flops(device, "bf16" if device.type == "cuda" else torch.float32)
        self.spikes_fired: set[int] = set()
        self.loader = None
        self.skipped, self.rollbacks, self.loss_val = 0, 0, float("nan")

    @property
    def done(self) -> bool:
        return self.step_num >= self.last_step

    def _restore(self, path: Path) -> dict[str, Any]:
        from trainer import checkpoint as ckpt

        meta = ckpt.load_checkpoint(path, self.model, self.optimizer)  # model, optimizer, this rank's RNG
        self.scheduler.load_state_dict(meta["scheduler"])
        self.guard.load_state_dict(meta.get("guard"))
        return meta

    def _loader_for(self, span) -> Any:
        """The prefetching loader of this step's phase; rebuilt when the phase or batch changes."""
        from trainer.data import PrefetchLoader

        phase = span.config
        if (
            self.loader is None
            or self.stream.phase != span.index
            or self.loader.global_batch != phase.global_batch_samples
        ):
            if self.loader is not None:
                self.loader.close()
            if self.stream.phase != span.index:
                self.stream.set_phase(span.index, phase.mixture, phase.seq_len)
            self.loader = PrefetchLoader(
                self.stream,
                phase.global_batch_samples,
                self.env.rank,
                self.env.world_size,
                self.cfg.data.prefetch,
            )
        return self.loader

    def step(self) -> dict[str, Any]:
        """One optimizer step: batch, accumulation, clip, guards, update, metrics row, checkpoint."""
        import torch

        from pretrain.core.accel import mfu
        from trainer.metrics import memory_snapshot
        from trainer.parallelize import all_reduce_mean

        cfg, model, device, step = self.cfg, self.model, self.device, self.step_num
        span = self.timeline.span_at(step)
        phase = span.config
        loader = self._loader_for(span)
        t0 = time.perf_counter()
        wait0 = loader.data_wait_s
        batch = next(loader)
        sample_index = int(batch["index"][0])  # rank 0: first global sample of this step's batch
        ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)
        accum = span.grad_accum_steps
        mb = span.micro_batch
        loss_sum = torch.zeros((), device=device)
        for micro in range(accum):
            sync = micro == accum - 1
            no_sync = (
                model.no_sync() if (not sync and hasattr(model, "no_sync")) else contextlib.nullcontext()
            )
            if hasattr(model, "set_requires_gradient_sync"):  # FSDP2: reduce-scatter once per step
                model.set_requires_gradient_sync(sync)
            with no_sync, self.autocast():
                _, loss = self.fwd(ids[micro * mb : (micro + 1) * mb], labels[micro * mb : (micro + 1) * mb])
                if step in cfg.debug.nan_steps:
                    loss = loss * float("nan")
                (loss / accum).backward()
            loss_sum += loss.detach()
        loss_t = all_reduce_mean(loss_sum / accum)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        loss_val, norm_val = loss_t.item(), grad_norm.item()
        if step in cfg.debug.spike_steps and step not in self.spikes_fired:
            self.spikes_fired.add(step)
            loss_val *= 1000.0
        self.loss_val = loss_val
        lr = self.optimizer.param_groups[0]["lr"]
        # Every rank sees the same all-reduced loss and norm, so all take the same branch.
        skip: Literal[False, "nonfinite", "loss_spike"] = False
        guard = self.guard
        if not (math.isfinite(loss_val) and math.isfinite(norm_val)):
            skip = "nonfinite"
            log.warning(
                "step %d: non-finite loss=%s grad_norm=%s, skipping the update", step, loss_val, norm_val
            )
        elif guard.is_spike(span.index, loss_val):
            skip = "loss_spike"
            guard.consecutive += 1
            log.warning(
                "step %d: loss spike %.4g (spike %d in a row), skipping", step, loss_val, guard.consecutive
            )
        else:
            guard.accept(loss_val)
        if skip:
            self.skipped += 1
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        logged_step = step
        self.step_num = step = step + 1
        if cfg.debug.step_sleep_s:
            time.sleep(cfg.debug.step_sleep_s)
        dt = time.perf_counter() - t0
        wait = loader.data_wait_s - wait0
        self.tput.update(phase.global_batch_tokens, dt, wait)
        fpt = self.flops_per_token[phase.seq_len]
        rec = {
            "phase": phase.name,
            "loss": loss_val,
            "lr": lr,
            "grad_norm": norm_val,
            "skipped": skip,
            "tokens": self.timeline.tokens_at(step),
            "sample_index": sample_index,
            "tokens_per_s": self.tput.tokens_per_s,
            "mfu": mfu(fpt, self.tput.tokens_per_s, self.peak_flops, self.env.world_size),
            "flops_per_token": fpt,
            "data_wait_s": wait,
            "data_wait_fraction": self.tput.data_wait_fraction,
            "step_time_s": dt,
        }
        every_mem = cfg.metrics.memory_every
        if every_mem and logged_step % every_mem == 0:
            rec.update(memory_snapshot(device))
        if skip == "loss_spike" and guard.consecutive >= cfg.guard.max_consecutive_spikes:
            rolled_to = self._rollback(logged_step)
            if rolled_to is not None:
                rec["rollback"] = rolled_to
        self.metrics.log(logged_step, **rec)
        self.progress.update(self.step_num, loss=loss_val, lr=lr, tok_s=self.tput.tokens_per_s)
        every = cfg.checkpoint.every_steps
        # Re-saving right after a rollback records the forward data position, so a crash now
        # resumes past the spiking batches instead of replaying them.
        if self.step_num == self.last_step or (every and self.step_num % every == 0) or "rollback" in rec:
            self.save(span, phase)
        return rec

    def _rollback(self, logged_step: int) -> int | None:
        """Restore model/optimizer/scheduler/RNG from the newest checkpoint at or before this step;
        the loader is left alone, so the steps re-run from the checkpoint on fresh batches.
        Returns the step rolled back to, or None when there is no checkpoint yet."""
        from trainer import checkpoint as ckpt

        target = [p for s, p in ckpt.complete_checkpoints(self.ckpt_dir) if s <= logged_step]
        if not target:
            log.warning(
                "step %d: %d spikes in a row but no checkpoint to roll back to",
                logged_step,
                self.guard.consecutive,
            )
            self.guard.consecutive = 0
            return None
        self.rollbacks += 1
        if self.rollbacks > self.cfg.guard.max_rollbacks:
            raise RuntimeError(
                f"step {logged_step}: loss still spiking after {self.cfg.guard.max_rollbacks} rollbacks"
            )
        self.step_num = self._restore(target[-1])["step"]
        log.warning(
            "step %d: rolled back to checkpoint step %d, data continues forward", logged_step, self.step_num
        )
        return self.step_num

    def save(self, span, phase) -> Path:
        from trainer import checkpoint as ckpt

        meta = {
            "scheduler": self.scheduler.state_dict(),
            "data_state": self.loader.state_dict(),
            "phase": span.index,
            "phase_name": phase.name,
            "tokens_seen": self.timeline.tokens_at(self.step_num),
            "world_size": self.env.world_size,
            "data_fingerprint": self.fingerprint,
            "guard": self.guard.state_dict(),
            "config": to_dict(self.cfg),
        }
        return ckpt.save_checkpoint(
            self.ckpt_dir,
            self.step_num,
            self.model,
            self.optimizer,
            meta,
            self.cfg.checkpoint.keep_last,
            self.cfg.checkpoint.keep_every,
        )

    def close(self) -> None:
        import torch

        if self.loader is not None:
            self.loader.close()
        self.metrics.close()
        self.progress.close()
        if self._lock is not None:
            self._lock.close()  # releases the run dir
            self._lock = None
        torch.use_deterministic_algorithms(self._was_deterministic)  # train() may run inside a larger process

    def summary(self) -> dict[str, Any]:
        return {"last_step": self.step_num, "skipped_steps": self.skipped, "final_loss": self.loss_val}


class RunDirBusy(RuntimeError):
    """Another live trainer holds this run directory."""


def lock_run_dir(run_dir: Path) -> Any:
    """Hold an exclusive advisory lock (flock) on run_dir/train.lock while the trainer lives, so a
    second trainer started on the same run directory fails at once instead of interleaving its
    checkpoints and metrics with the first's. The lock goes with the process, even on kill -9.
    Where the filesystem has no flock (some network mounts) a warning says the run is unlocked."""
    import fcntl
    import socket

    f = open(run_dir / "train.lock", "a+")  # noqa: SIM115 - held open for the trainer's life
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown pid"
        f.close()
        raise RunDirBusy(
            f"{run_dir} is in use by another trainer ({holder}); wait for it to end or stop it"
        ) from None
    except OSError as e:
        log.warning("no lock on %s (%s): nothing stops a second trainer on this run dir", run_dir, e)
        return f
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    return f


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) training; returns a summary {last_step, skipped_steps, final_loss}. With
    nproc > 1 outside torchrun, starts that many local processes (trainer/launch.py) instead."""
    from trainer import launch

    if cfg.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return launch.launch_local(cfg)
    trainer = Trainer(cfg)
    try:
        while not trainer.done:
            trainer.step()
    finally:
        trainer.close()
    summary = trainer.summary()
    if trainer.env.is_main and os.environ.get(launch.INIT_ENV):
        launch.write_summary(cfg.run_dir, summary)
    return summary
