"""The training loop: curriculum phases, gradient accumulation, clipping, AdamW, and the callbacks.

    cfg = load_config(TrainConfig, "configs/train_tiny.yaml", ["parallel=ddp"])   # trainer/config.py
    train(cfg)                     # in each torchrun process, or in one plain process
    train(cfg, callbacks=[MyCallback()])                                          # trainer/callbacks

Each optimizer step k takes its phase from the Timeline (seq_len, mixture, global batch,
accumulation). The data-parallel rank's share of the global batch is split into micro-batches
(or pipeline micro-batches); each one's summed cross-entropy is scaled by dp / (target tokens in the
global batch), so the gradient is the mean over the global batch's tokens on any layout (the mesh:
trainer/parallelize.py, pipeline stages: trainer/pipeline.py). What happens around a step is a callback each (trainer/callbacks/): the NaN/spike guard and
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
import resource
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.tensor.parallel import loss_parallel
from torch.optim.lr_scheduler import LambdaLR

from pretrain.core.config import ConfigError, dump_yaml, to_dict
from pretrain.core.devices import resolve_device
from trainer import checkpoint as ckpt
from trainer import launch, pipeline
from trainer.callbacks import Callback, build_callbacks
from trainer.callbacks.checkpointing import CheckpointCallback
from trainer.callbacks.guard import SKIP_REASONS, GuardCallback
from trainer.callbacks.metrics import MetricsCallback
from trainer.callbacks.profiler import ProfilerCallback
from trainer.callbacks.progress import ProgressCallback
from trainer.config import MESH_DIMS, TrainConfig
from trainer.data import PackedStream, PrefetchLoader, data_fingerprint, load_sources
from trainer.metrics import reset_peak_memory
from trainer.model import Transformer
from trainer.parallelize import (
    CollectiveTimeout,
    build_layout,
    build_model,
    compute_dtype,
    init_distributed,
    is_timeout,
)
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
        if env.world_size > 1 and all(getattr(cfg.parallel, n) == 1 for n in MESH_DIMS):
            raise ConfigError(
                f"parallel: none in a world of {env.world_size} processes would train unsynchronised "
                "copies; set parallel=ddp or parallel=fsdp2 (or a mesh: parallel.dp_shard, .tp, .pp)"
            )
        cfg.parallel.check_model(cfg.model_config(), env.world_size)
        self.layout = layout = build_layout(cfg.parallel.degrees(env.world_size), device.type)
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

        # Ranks that differ only in tp or pp read the same batch: the timeline splits over dp.
        self.timeline = timeline = Timeline.build(
            cfg.curriculum.phases, cfg.curriculum.schedule, layout.dp_size
        )
        self.last_step = min(cfg.max_steps or timeline.total_steps, timeline.total_steps)

        if cfg.metrics.tensorboard and env.is_main:
            with contextlib.suppress(ImportError):  # optional package; the logger says so if missing
                importlib.import_module("torch.utils.tensorboard")  # before the baseline: not training memory
        reset_peak_memory(device)  # memory rows then report the peak above this pre-model baseline
        self.pipe: pipeline.PipelineRunner | None = None
        self.model = model = build_model(
            cfg, layout, device, roots=self._pipeline if layout.size("pp") > 1 else None
        )
        with torch.device("meta"):  # the whole model's shape, whatever this rank holds
            whole = Transformer(cfg.model_config())
        self.flops_per_token = {p.seq_len: whole.flops_per_token(p.seq_len) for p in cfg.curriculum.phases}
        self.flops_per_token_causal = {
            p.seq_len: whole.flops_per_token(p.seq_len, causal=True) for p in cfg.curriculum.phases
        }
        self.compute_dtype = dtype = compute_dtype(cfg, device)
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
        # fp16: dynamic loss scaling; its overflow check and backoff stay on the device
        self.scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None

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

        # One precision regime per parallelism (TrainConfig.precision): FSDP2's MixedPrecisionPolicy
        # or autocast, never both; fp32 master weights, gradients and optimizer states either way.
        self.autocast = (
            (lambda: torch.autocast(device.type, dtype=dtype))
            if dtype != torch.float32 and layout.fsdp_mesh is None
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
                self.layout.dp_rank,
                self.layout.dp_size,
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
        if self.scaler is not None:  # an fp16 overflow outranks the guard's verdict: code 3
            overflow = self._scaler_found_inf()
            code = metrics.get("skip_code", torch.zeros((), dtype=torch.long, device=self.device))
            metrics["skip_code"] = torch.where(overflow > 0, 3, code)
            metrics["loss_scale"] = self.scaler._get_scale_async().detach().clone()
        if not metrics["skipped"]:  # a callback's veto is known on the host; the guard's is not
            code = metrics.get("skip_code")
            self.optimizer.found_inf = None if code is None else (code > 0).to(torch.float32)
            self.optimizer.step()  # fused AdamW: a found_inf of 1 leaves params and moments as they are
            self.optimizer.found_inf = None
        if self.scaler is not None:
            self.scaler.update()  # on the device: halves the scale after an overflow, grows it later
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
                        torch.as_tensor(r.get("loss_scale", 0.0), device=self.device).float(),
                    ]
                )
                for r in rows
            ]
        ).tolist()
        for r, (loss, norm, code, loss_scale) in zip(rows, vals):
            r["loss"], r["grad_norm"] = loss, norm
            if "loss_scale" in r:
                r["loss_scale"] = loss_scale
            if not r["skipped"]:
                r["skipped"] = SKIP_REASONS[int(code)]
            self.skipped += bool(r["skipped"])
            r["skipped_steps"] = self.skipped  # running count (a TensorBoard scalar)
            self.loss_val = loss
        self.guard.observe(rows)

    def _scaler_found_inf(self) -> torch.Tensor:
        """1 when this step's unscaled gradients held an inf/NaN, on the device (no sync). GradScaler
        keeps the flags per device in its optimizer state; its own step() would overwrite the
        optimizer's found_inf, which also carries the guard's verdict, so the trainer steps itself."""
        flags = [t.to(self.device) for t in self._scaler_flags()]
        return torch.stack(flags).sum() if flags else torch.zeros((), device=self.device)

    def _scaler_flags(self) -> list[torch.Tensor]:
        """GradScaler's found-inf flags of this step (per device; its update() reads the same ones)."""
        return list(self.scaler._per_optimizer_states[id(self.optimizer)]["found_inf_per_device"].values())

    def _pipeline(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        """build_model's hook under pipeline parallelism: the runner over this rank's stages, whose
        stage modules become FSDP2's roots."""
        pc, layout = self.cfg.parallel, self.layout
        dtype = compute_dtype(self.cfg, self.device)
        self.pipe = pipeline.PipelineRunner(
            model,
            layout.pp_group,
            layout.local_rank("pp"),
            layout.size("pp"),
            pc.pp_schedule,
            pc.pp_stages_per_rank,
            self._pp_microbatches(self.timeline.spans[0]),
            self.device,
            # autocast inside each stage (the schedule runs forwards and backwards together), unless
            # FSDP2's MixedPrecisionPolicy casts the parameters instead
            autocast_dtype=dtype if dtype != torch.float32 and layout.fsdp_mesh is None else None,
        )
        return list(self.pipe.stage_modules)

    def _pp_microbatches(self, span: PhaseSpan) -> int:
        """Micro-batches of a pipeline step: parallel.pp_microbatches, else the phase's accumulation
        count, at least pp (every stage busy)."""
        return self.cfg.parallel.pp_microbatches or max(span.grad_accum_steps, self.layout.size("pp"))

    def _forward_backward(self, batch: dict[str, Any], span: PhaseSpan) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward over the micro-batches, then clip. The loss (mean over the global
        batch, all-reduced) and the grad norm stay on the device; the caller reads them once.

        The loss of a step is the mean over every target token of the global batch, whatever the
        micro-batch split, the dp degree or padding: each micro-batch's summed cross-entropy is
        scaled by dp_size / (target tokens in the global batch), a device-side count all-reduced
        over the data-parallel group, and DDP/FSDP2 average the gradients over that group."""
        model, device, layout = self.model, self.device, self.layout
        # already there on CUDA (the loader's side stream); a no-op copy on CPU
        ids = batch["input_ids"].to(device, non_blocking=True)
        labels = batch["labels"].to(device, non_blocking=True)
        count = (labels != -100).sum().float()
        if layout.dp_group is not None:
            dist.all_reduce(count, group=layout.dp_group)
        scale = layout.dp_size / count.clamp(min=1)
        accum, mb = span.grad_accum_steps, span.micro_batch
        tp = layout.size("tp") > 1
        if self.pipe is not None:
            # fp16: the loss scale rides on the token scale (the runner returns unscaled sums)
            token_scale = self.scaler.scale(scale) if self.scaler is not None else scale
            loss_sum = self.pipe.step(ids, labels, token_scale, self._pp_microbatches(span))
        else:
            loss_sum = torch.zeros((), device=device)
            per_micro = self.cfg.parallel.grad_sync == "micro"  # else reduce once, after the last
            for micro in range(accum):
                sync = per_micro or micro == accum - 1
                no_sync = (
                    model.no_sync() if (not sync and hasattr(model, "no_sync")) else contextlib.nullcontext()
                )
                if hasattr(model, "set_requires_gradient_sync"):  # FSDP2: reduce-scatter once per step
                    model.set_requires_gradient_sync(sync)
                with no_sync, loss_parallel() if tp else contextlib.nullcontext():
                    with self.autocast():  # the forward only: the backward runs outside autocast
                        _, loss = self.fwd(
                            ids[micro * mb : (micro + 1) * mb],
                            labels[micro * mb : (micro + 1) * mb],
                            # under TP the logits stay sharded over the vocabulary (loss_parallel)
                            loss_chunk_tokens=0 if tp else self.cfg.loss_chunk_tokens,
                            reduction="sum",
                        )
                    scaled = loss * scale
                    (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
                loss_sum += loss.detach().full_tensor() if hasattr(loss, "full_tensor") else loss.detach()
        if layout.mesh is not None:  # every rank's sum, once: the dp shares, and only the last stage's
            pp_last = self.pipe is None or self.pipe.has_last
            part = loss_sum if pp_last and layout.local_rank("tp") == 0 else torch.zeros_like(loss_sum)
            dist.all_reduce(part)
            loss_sum = part
        loss = loss_sum / count.clamp(min=1)
        if self.scaler is not None:  # gradients back to their true size; records found_inf
            self.scaler.unscale_(self.optimizer)
            if layout.mesh is not None:  # shards and stages see different gradients: skip together
                for flag in self._scaler_flags():
                    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        if self.pipe is not None:
            grad_norm = pipeline.clip_grads_pp(list(model.parameters()), max_norm, layout.pp_group)
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        if hasattr(grad_norm, "full_tensor"):  # FSDP2 / TP: a DTensor
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
            "layout": self.layout.degrees,  # any layout resumes it (DCP reshards by name)
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


def build_report(cfg: TrainConfig) -> dict[str, Any] | None:
    """Build `cfg`'s model under its layout in this process (a rank of a launch, or alone) and
    measure it: every rank's parameter bytes and peak memory (peak RSS since the process started on
    CPU, max allocated on GPU) against the whole model's fp32 bytes. Rank 0 returns the report
    (`max_peak_ratio`: the largest rank's peak / the full fp32 model), the others None."""
    device = resolve_device(cfg.device)
    env = init_distributed(device.type, cfg.dist_timeout_s)
    cfg.parallel.check_model(cfg.model_config(), env.world_size)
    layout = build_layout(cfg.parallel.degrees(env.world_size), device.type)
    t0 = time.perf_counter()
    model = build_model(cfg, layout, device)
    build_s = time.perf_counter() - t0
    with torch.device("meta"):
        full = Transformer(cfg.model_config()).num_params() * 4
    local = sum(
        (p.to_local() if hasattr(p, "to_local") else p).numel() * p.element_size() for p in model.parameters()
    )
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    mine = {"rank": env.rank, "param_bytes": local, "peak_bytes": peak, "build_s": round(build_s, 2)}
    ranks = [mine]
    if dist.is_initialized():
        ranks = [None] * env.world_size
        dist.all_gather_object(ranks, mine)
    if not env.is_main:
        return None
    return {
        "model": cfg.model,
        "layout": cfg.parallel.describe(env.world_size),
        "full_fp32_bytes": full,
        "ranks": ranks,
        "max_peak_ratio": round(max(r["peak_bytes"] for r in ranks) / full, 4),
    }
