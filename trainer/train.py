"""The training loop: curriculum phases, accumulation, clipping, guards, metrics, checkpoints.

    cfg = load_config(TrainConfig, "configs/train_tiny.yaml", ["parallel=ddp"])
    train(cfg)          # in each torchrun process, or in one plain process

Each optimizer step k takes its phase from the Timeline (seq_len, mixture, global batch,
accumulation). The rank's share of the global batch is split into micro-batches; the loss of
each is scaled by 1/accum so the summed gradient is the mean over the global batch on any world
size. A non-finite loss or grad norm skips the optimizer step (grads zeroed, LR schedule still
advances) and is logged. Rank 0 appends one JSON line per step to run_dir/metrics.jsonl.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pretrain.config import check, to_dict
from trainer.schedule import CurriculumConfig, Timeline, default_tiny_curriculum

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """Where the token shards are and how they are packed."""

    sources: dict[str, str] = field(default_factory=dict)
    """Source name -> token-shard manifest directory (several names may share one directory)."""
    tokenizer_hash: str | None = None
    """Refuse shards made by another tokenizer; null skips the check."""
    eos_id: int = 0
    """Separator token written between packed documents."""
    seed: int = 0
    """Seed of the document shuffles and mixture draws (the global sample order)."""
    prefetch: int = 4
    """Batches the background thread keeps ready."""

    def __post_init__(self) -> None:
        check(len(self.sources) > 0, "sources", self.sources, "at least one source: name -> manifest dir")
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
class DebugConfig:
    """Test hooks; leave empty in real runs."""

    nan_steps: list[int] = field(default_factory=list)
    """Optimizer steps whose batch is poisoned: the loss becomes NaN (exercises the guard)."""
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
    """Data parallelism under torchrun; ignored (plain module) in a single process."""
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
    debug: DebugConfig = field(default_factory=DebugConfig)
    """Test hooks."""

    def __post_init__(self) -> None:
        from trainer.model import preset

        check(bool(self.run_dir), "run_dir", self.run_dir, "a directory path")
        check(self.grad_clip >= 0, "grad_clip", self.grad_clip, ">= 0")
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


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) training; returns a summary {last_step, skipped_steps, final_loss}."""
    import numpy as np
    import torch
    from torch.optim.lr_scheduler import LambdaLR

    from pretrain.config import dump_yaml
    from trainer import checkpoint as ckpt
    from trainer.data import PackedStream, PrefetchLoader, load_sources
    from trainer.model import Transformer
    from trainer.parallelize import all_reduce_mean, init_distributed, parallelize
    from trainer.schedule import torch_lambda

    device = resolve_device(cfg)
    env = init_distributed(device.type)
    run_dir = Path(cfg.run_dir)
    ckpt_dir = run_dir / "checkpoints"
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    if device.type == "cpu":  # on GPU it would need CUBLAS_WORKSPACE_CONFIG and slower kernels
        torch.use_deterministic_algorithms(True)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    timeline = Timeline.build(cfg.curriculum.phases, cfg.curriculum.schedule, env.world_size)
    last_step = min(cfg.max_steps or timeline.total_steps, timeline.total_steps)

    # Meta device then materialise: no wasted CPU init for big models, same seeded init everywhere.
    mcfg = cfg.model_config()
    with torch.device("meta"):
        model = Transformer(mcfg)
    model.to_empty(device=device)
    torch.manual_seed(cfg.seed)
    model.init_weights()
    flops_per_token = {p.seq_len: model.flops_per_token(p.seq_len) for p in cfg.curriculum.phases}
    model = parallelize(model, cfg.parallel, device, cfg.activation_checkpointing)
    fwd = torch.compile(model) if cfg.compile else model
    optimizer = torch.optim.AdamW(
        _param_groups(model),
        lr=timeline.peak_lr,
        betas=tuple(cfg.optim.betas),
        eps=cfg.optim.eps,
        weight_decay=cfg.optim.weight_decay,
        fused=device.type == "cuda",
    )
    scheduler = LambdaLR(optimizer, torch_lambda(timeline))

    sources = load_sources(sorted(set(cfg.data.sources.values())), cfg.data.tokenizer_hash, cfg.data.sources)
    fingerprint = data_fingerprint_of(cfg, sources)
    p0 = timeline.spans[0].config
    stream = PackedStream(
        sources, p0.mixture, p0.seq_len, cfg.data.eos_id, cfg.data.seed, 0, cfg.data.tokenizer_hash
    )

    step = 0
    resume_from = ckpt.latest_checkpoint(ckpt_dir) if cfg.resume else None
    if resume_from is not None:
        meta = ckpt.read_meta(resume_from)
        if meta["data_fingerprint"] != fingerprint and not cfg.allow_data_change:
            raise ValueError(
                f"checkpoint {resume_from} was trained on data fingerprint {meta['data_fingerprint'][:16]}, "
                f"this config gives {fingerprint[:16]}; set allow_data_change=true to resume anyway"
            )
        meta = ckpt.load_checkpoint(resume_from, model, optimizer)
        scheduler.load_state_dict(meta["scheduler"])
        ds = meta["data_state"]
        ph = timeline.spans[ds["phase"]].config
        stream.set_phase(ds["phase"], ph.mixture, ph.seq_len)
        stream.load_state_dict(ds)
        step = meta["step"]
        log.info("resumed from %s at step %d", resume_from, step)

    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    )
    metrics = open(run_dir / "metrics.jsonl", "a") if env.is_main else None  # noqa: SIM115
    loader = None
    skipped, loss_val = 0, float("nan")
    try:
        while step < last_step:
            span = timeline.span_at(step)
            phase = span.config
            if (
                loader is None
                or stream.phase != span.index
                or loader.global_batch != phase.global_batch_samples
            ):
                if loader is not None:
                    loader.close()
                if stream.phase != span.index:
                    stream.set_phase(span.index, phase.mixture, phase.seq_len)
                loader = PrefetchLoader(
                    stream, phase.global_batch_samples, env.rank, env.world_size, cfg.data.prefetch
                )
            t0 = time.perf_counter()
            wait0 = loader.data_wait_s
            batch = next(loader)
            ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)
            accum = span.grad_accum_steps
            mb = phase.micro_batch_size
            loss_sum = torch.zeros((), device=device)
            for micro in range(accum):
                sync = micro == accum - 1
                no_sync = (
                    model.no_sync() if (not sync and hasattr(model, "no_sync")) else contextlib.nullcontext()
                )
                if hasattr(model, "set_requires_gradient_sync"):  # FSDP2: reduce-scatter once per step
                    model.set_requires_gradient_sync(sync)
                with no_sync, autocast:
                    _, loss = fwd(ids[micro * mb : (micro + 1) * mb], labels[micro * mb : (micro + 1) * mb])
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
            lr = optimizer.param_groups[0]["lr"]
            ok = math.isfinite(loss_val) and math.isfinite(norm_val)
            if ok:
                optimizer.step()
            else:
                skipped += 1
                log.warning(
                    "step %d: non-finite loss=%s grad_norm=%s, skipping the update", step, loss_val, norm_val
                )
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            if cfg.debug.step_sleep_s:
                time.sleep(cfg.debug.step_sleep_s)
            dt = time.perf_counter() - t0
            if metrics is not None:
                rec = {
                    "step": step - 1,
                    "phase": phase.name,
                    "loss": loss_val,
                    "lr": lr,
                    "grad_norm": norm_val,
                    "skipped": not ok,
                    "tokens": timeline.tokens_at(step),
                    "tokens_per_s": phase.global_batch_tokens / dt,
                    "flops_per_token": flops_per_token[phase.seq_len],
                    "data_wait_s": loader.data_wait_s - wait0,
                    "step_time_s": dt,
                }
                metrics.write(json.dumps(rec) + "\n")
                metrics.flush()
            every = cfg.checkpoint.every_steps
            if step == last_step or (every and step % every == 0):
                meta = {
                    "scheduler": scheduler.state_dict(),
                    "data_state": loader.state_dict(),
                    "phase": span.index,
                    "phase_name": phase.name,
                    "world_size": env.world_size,
                    "data_fingerprint": fingerprint,
                    "config": to_dict(cfg),
                }
                ckpt.save_checkpoint(
                    ckpt_dir,
                    step,
                    model,
                    optimizer,
                    meta,
                    cfg.checkpoint.keep_last,
                    cfg.checkpoint.keep_every,
                )
    finally:
        if loader is not None:
            loader.close()
        if metrics is not None:
            metrics.close()
        torch.use_deterministic_algorithms(was_deterministic)  # train() may run inside a larger process
    return {"last_step": step, "skipped_steps": skipped, "final_loss": loss_val}
