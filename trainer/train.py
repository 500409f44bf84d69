"""The training loop: curriculum phases, gradient accumulation, clipping, AdamW, and the callbacks.

    cfg = load_config(TrainConfig, "configs/train_tiny.yaml", ["parallel=ddp"])   # trainer/config.py
    train(cfg)                     # in each torchrun process, or in one plain process
    train(cfg, callbacks=[MyCallback()])                                          # trainer/callbacks

Each optimizer step k takes its phase from the Timeline (seq_len, mixture, global batch,
accumulation). The rank's share of the global batch is split into micro-batches; the loss of
each is scaled by 1/accum so the summed gradient is the mean over the global batch on any world
size. What happens around a step is a callback each (trainer/callbacks/): the NaN/spike guard and
its rollback (guard.py), the metrics.jsonl/TensorBoard row with throughput, MFU and memory
(metrics.py), the console progress line (progress.py), checkpoint cadence (checkpointing.py) and
torch.profiler traces (profiler.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import json
import logging
import os
import random
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR

from pretrain.core.config import ConfigError, dump_yaml, to_dict
from pretrain.core.devices import resolve_device
from trainer import checkpoint as ckpt
from trainer import launch
from trainer.callbacks import Callback, build_callbacks
from trainer.callbacks.checkpointing import CheckpointCallback
from trainer.callbacks.guard import SKIP_REASONS, GuardCallback
from trainer.callbacks.metrics import MetricsCallback
from trainer.callbacks.profiler import ProfilerCallback
from trainer.callbacks.progress import ProgressCallback
from trainer.config import TrainConfig
from trainer.data import PackedStream, PrefetchLoader, data_fingerprint, load_sources
from trainer.metrics import reset_peak_memory
from trainer.model import Transformer
from trainer.parallelize import CollectiveTimeout, all_reduce_mean, init_distributed, is_timeout, parallelize
from trainer.schedule import PhaseSpan, Timeline, torch_lambda

log = logging.getLogger(__name__)


def data_fingerprint_of(cfg: TrainConfig, sources: dict) -> str:
    """Shards, tokenizer, EOS, seed and every phase's packing (mixture, seq_len): resume refuses a change."""
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


def _param_groups(model) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


class Trainer:
    """One run's state; `step()` is one optimizer step (the unit bench/train_throughput.py times).

    trainer = Trainer(cfg, callbacks=[...])   # builds model/optimizer/data, resumes from the newest checkpoint
    while not trainer.done:
        trainer.step()          # -> the metrics row it logged
    trainer.close()
    """

    def __init__(self, cfg: TrainConfig, callbacks: list[Callback] | None = None):
        self.cfg = cfg
        self.device = device = resolve_device(cfg.device)
        self.env = env = init_distributed(device.type, cfg.dist_timeout_s)
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

        if cfg.metrics.tensorboard and env.is_main:
            with contextlib.suppress(ImportError):  # optional package; the logger says so if missing
                importlib.import_module("torch.utils.tensorboard")  # before the baseline: not training memory
        reset_peak_memory(device)  # memory rows then report the peak above this pre-model baseline
        # Meta device then materialise: no wasted CPU init for big models, same seeded init everywhere.
        with torch.device("meta"):
            model = Transformer(cfg.model_config())
        model.to_empty(device=device)
        torch.manual_seed(cfg.seed)
        model.init_weights()
        self.flops_per_token = {p.seq_len: model.flops_per_token(p.seq_len) for p in cfg.curriculum.phases}
        self.flops_per_token_causal = {
            p.seq_len: model.flops_per_token(p.seq_len, causal=True) for p in cfg.curriculum.phases
        }
        # One precision regime per parallelism (TrainConfig.precision): FSDP2's MixedPrecisionPolicy
        # or autocast, never both; fp32 master weights, gradients and optimizer states either way.
        bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
        fsdp = cfg.parallel == "fsdp2" and env.distributed
        self.compute_dtype = torch.bfloat16 if bf16 else torch.float32
        self.model = model = parallelize(
            model,
            cfg.parallel,
            device,
            cfg.activation_checkpointing,
            torch.bfloat16 if bf16 and fsdp else None,
            compile=cfg.compile if cfg.compile is not None else device.type == "cuda",
        )
        self.fwd = model  # compiled per block inside (parallelize), not as a whole
        self.optimizer = torch.optim.AdamW(
            _param_groups(model),
            lr=timeline.peak_lr,
            betas=tuple(cfg.optim.betas),
            eps=cfg.optim.eps,
            weight_decay=cfg.optim.weight_decay,
            fused=True,  # CUDA and CPU: one kernel, and found_inf skips a step on the device
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
        # Extra callbacks first: they see (and may change) a step's figures before the built-ins.
        self.guard = GuardCallback(cfg.guard)
        self.metrics = MetricsCallback(cfg.metrics)
        self.callbacks: list[Callback] = [
            *(callbacks or []),
            *build_callbacks(cfg.callbacks),
            self.guard,
            self.metrics,
            ProgressCallback(),
            CheckpointCallback(cfg.checkpoint),
            ProfilerCallback(cfg.metrics.profile_steps),
        ]

        self.saver = ckpt.AsyncCheckpointer() if cfg.checkpoint.async_save else None  # collective
        self._saving: tuple[int, Path] | None = None
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
            meta = self.restore(resume_from)
            ds = meta["data_state"]
            ph = timeline.spans[ds["phase"]].config
            self.stream.set_phase(ds["phase"], ph.mixture, ph.seq_len)
            self.stream.load_state_dict(ds)
            self.step_num = meta["step"]
            log.info("resumed from %s at step %d", resume_from, self.step_num)

        self.autocast = (
            (lambda: torch.autocast(device.type, dtype=torch.bfloat16))
            if bf16 and not fsdp
            else contextlib.nullcontext
        )
        self._lock = lock_run_dir(self.run_dir) if env.is_main else None  # before the first write
        self.loader: PrefetchLoader | None = None
        self.skipped, self.loss_val = 0, float("nan")
        self.log_every = cfg.metrics.log_every or (10 if device.type == "cuda" else 1)
        self._pending: list[dict[str, Any]] = []  # rows whose device values are not read yet
        for cb in self.callbacks:
            cb.on_train_start(self)

    @property
    def done(self) -> bool:
        return self.step_num >= self.last_step

    def restore(self, path: Path) -> dict[str, Any]:
        """Model, optimizer, this rank's RNG, scheduler and the callbacks' states from a checkpoint;
        returns its meta.json (the data loader is the caller's business)."""
        if getattr(self, "saver", None) is not None:
            self._finish_save()  # a rollback: the write in flight completes before weights change
        meta = ckpt.load_checkpoint(path, self.model, self.optimizer)
        self.scheduler.load_state_dict(meta["scheduler"])
        for cb in self.callbacks:
            if cb.state_key:
                cb.load_state_dict(meta.get(cb.state_key))
        return meta

    def _loader_for(self, span: PhaseSpan) -> PrefetchLoader:
        """The prefetching loader of this step's phase; rebuilt when the phase or batch changes."""
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
                device=self.device,  # CUDA: pinned, copied on a side stream while the step runs
            )
        return self.loader

    def _is_log_step(self, step: int) -> bool:
        """Whether step `step` ends with a host read of the pending rows: every `log_every` steps,
        after the last step, and before a checkpoint (which saves the guard's state)."""
        done, every = step + 1, self.cfg.checkpoint.every_steps
        return done % self.log_every == 0 or done >= self.last_step or bool(every and done % every == 0)

    def step(self) -> dict[str, Any]:
        """One optimizer step (see `_step`); a collective that times out becomes a CollectiveTimeout
        naming this rank, the step and the timeout."""
        try:
            return self._step()
        except Exception as e:
            if not (self.env.distributed and is_timeout(e)):
                raise
            raise CollectiveTimeout(
                f"rank {self.env.rank} of {self.env.world_size}: a collective did not complete within "
                f"dist_timeout_s={self.cfg.dist_timeout_s:g} at step {self.step_num}: another rank stalled "
                f"or died (its log: {self.run_dir / 'launch'}/rank<N>.log under nproc, or torchrun's); "
                f"raise dist_timeout_s if the peers are only slow. Cause: {str(e).splitlines()[0][:300]}"
            ) from e

    def _step(self) -> dict[str, Any]:
        """One optimizer step; returns its metrics row. Callbacks guard, log and checkpoint it.

        Nothing here waits for the device on a step that does not log: the loss, the grad norm and
        the guard's verdict stay device tensors in the row until the next logging step reads every
        pending row at once (`_read_pending`)."""
        step, span = self.step_num, self.timeline.span_at(self.step_num)
        loader = self._loader_for(span)
        t0, wait0 = time.perf_counter(), loader.data_wait_s
        batch = next(loader)
        for cb in self.callbacks:
            cb.pre_step(self, step, batch)
        loss, grad_norm = self._forward_backward(batch, span)
        metrics: dict[str, Any] = {
            "phase": span.name,
            "loss": loss,
            "lr": self.optimizer.param_groups[0]["lr"],
            "grad_norm": grad_norm,
            "skipped": False,  # or the reason a callback vetoed the update ("nonfinite", "loss_spike")
            "tokens": self.timeline.tokens_at(step + 1),
            "sample_index": int(batch["index"][0]),  # rank 0: first global sample of this step's batch
            "log": self._is_log_step(step),  # this step reads the pending rows from the device
        }
        for cb in self.callbacks:
            cb.pre_optim_step(self, step, metrics)
        if not metrics["skipped"]:  # a callback's veto is known on the host; the guard's is not
            code = metrics.get("skip_code")
            self.optimizer.found_inf = None if code is None else (code > 0).to(torch.float32)
            self.optimizer.step()  # fused AdamW: a found_inf of 1 leaves params and moments as they are
            self.optimizer.found_inf = None
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step_num = step + 1
        metrics["data_wait_s"] = loader.data_wait_s - wait0
        metrics["step_time_s"] = time.perf_counter() - t0
        metrics["step"] = step
        self._pending.append(metrics)
        if metrics["log"]:
            self._read_pending()
        for cb in self.callbacks:
            cb.post_step(self, step, metrics)
        return metrics

    def _read_pending(self) -> None:
        """The one host sync: every pending row's loss, grad norm and verdict in a single copy."""
        rows, self._pending = self._pending, []
        vals = torch.stack(
            [
                torch.stack(
                    [
                        torch.as_tensor(r["loss"], device=self.device).float(),
                        torch.as_tensor(r["grad_norm"], device=self.device).float(),
                        torch.as_tensor(r.pop("skip_code", 0), device=self.device).float(),
                    ]
                )
                for r in rows
            ]
        ).tolist()
        for r, (loss, norm, code) in zip(rows, vals):
            r["loss"], r["grad_norm"] = loss, norm
            if not r["skipped"]:
                r["skipped"] = SKIP_REASONS[int(code)]
            self.skipped += bool(r["skipped"])
            r["skipped_steps"] = self.skipped  # running count (a TensorBoard scalar)
            self.loss_val = loss
        self.guard.observe(rows)

    def _forward_backward(self, batch: dict[str, Any], span: PhaseSpan) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward over the micro-batches, then clip. The loss (mean over the global
        batch, all-reduced) and the grad norm stay on the device; the caller reads them once."""
        model, device = self.model, self.device
        # already there on CUDA (the loader's side stream); a no-op copy on CPU
        ids = batch["input_ids"].to(device, non_blocking=True)
        labels = batch["labels"].to(device, non_blocking=True)
        accum, mb = span.grad_accum_steps, span.micro_batch
        loss_sum = torch.zeros((), device=device)
        for micro in range(accum):
            sync = micro == accum - 1
            no_sync = (
                model.no_sync() if (not sync and hasattr(model, "no_sync")) else contextlib.nullcontext()
            )
            if hasattr(model, "set_requires_gradient_sync"):  # FSDP2: reduce-scatter once per step
                model.set_requires_gradient_sync(sync)
            with no_sync:
                with self.autocast():  # the forward only: the backward runs outside autocast
                    _, loss = self.fwd(
                        ids[micro * mb : (micro + 1) * mb],
                        labels[micro * mb : (micro + 1) * mb],
                        loss_chunk_tokens=self.cfg.loss_chunk_tokens,
                    )
                (loss / accum).backward()
            loss_sum += loss.detach()
        loss = all_reduce_mean(loss_sum / accum)
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
            grad_norm = grad_norm.full_tensor()
        return loss, grad_norm

    def save(self, span: PhaseSpan) -> Path:
        """Collective: checkpoint the state after `self.step_num` steps (`span`: the last step's phase)."""
        meta = {
            "scheduler": self.scheduler.state_dict(),
            "data_state": self.loader.state_dict(),
            "phase": span.index,
            "phase_name": span.name,
            "tokens_seen": self.timeline.tokens_at(self.step_num),
            "world_size": self.env.world_size,
            "data_fingerprint": self.fingerprint,
            **{cb.state_key: cb.state_dict() for cb in self.callbacks if cb.state_key},
            "config": to_dict(self.cfg),
        }
        args = (self.ckpt_dir, self.step_num, self.model, self.optimizer, meta,
                self.cfg.checkpoint.keep_last, self.cfg.checkpoint.keep_every)  # fmt: skip
        if self.saver is None:
            path = ckpt.save_checkpoint(*args)
            for cb in self.callbacks:
                cb.on_save(self, self.step_num, path)
            return path
        self._finish_save()  # the previous one completes first: at most one in flight
        path = self.saver.save(*args)
        self._saving = (self.step_num, path)
        return path

    def _finish_save(self) -> None:
        """Complete the checkpoint in flight (async_save) and tell the callbacks it exists."""
        if self.saver is not None and self.saver.in_flight:
            step, _ = self._saving
            path = self.saver.finish()
            for cb in self.callbacks:
                cb.on_save(self, step, path)

    def finish_checkpoints(self) -> None:
        """Collective, after the last step: complete the checkpoint still being written (async_save).
        Not called on an error: the write in flight then stays `.tmp` and the previous checkpoint is
        the newest, as after a crash."""
        if self.saver is not None:
            self._finish_save()
            self.saver.close()

    def close(self) -> None:
        if self._pending:  # an error mid-window: keep what was computed
            with contextlib.suppress(Exception):
                self._read_pending()
        if self.loader is not None:
            self.loader.close()
        for cb in self.callbacks:
            cb.close()
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


def train(cfg: TrainConfig, callbacks: list[Callback] | None = None) -> dict[str, Any]:
    """Run (or resume) training; returns a summary {last_step, skipped_steps, final_loss}. With
    nproc > 1 outside torchrun, starts that many local processes (trainer/launch.py) instead."""
    if cfg.nproc > 1 and "WORLD_SIZE" not in os.environ:
        if callbacks:
            raise ValueError(
                "callback objects cannot reach the ranks launch_local starts; name them in "
                "cfg.callbacks (import path -> kwargs) instead"
            )
        return launch.launch_local(cfg)
    trainer = Trainer(cfg, callbacks)
    try:
        while not trainer.done:
            trainer.step()
        trainer.finish_checkpoints()
    finally:
        trainer.close()
    summary = trainer.summary()
    if trainer.env.is_main and os.environ.get(launch.INIT_ENV):
        launch.write_summary(cfg.run_dir, summary)
    return summary
