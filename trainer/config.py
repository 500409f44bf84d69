"""The trainer's typed configs: data, optimizer, checkpoints, guards, metrics and the whole run.

    cfg = load_config(TrainConfig, "configs/train_tiny.yaml", ["parallel=ddp"])

No torch: the CLIs, `--dry-run` and the orchestrator load and validate a TrainConfig instantly.
Every field is documented below it and checked in `__post_init__` (errors name field and range).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pretrain.core.config import check
from pretrain.core.tokenizer_file import load_tokenizer
from trainer.layout_config import MESH_DIMS, SHORT_FORMS, ParallelConfig  # noqa: F401 (re-exported)
from trainer.model_config import ModelConfig, preset
from trainer.schedule import CurriculumConfig, default_tiny_curriculum


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
    async_save: bool = False
    """Write checkpoints in the background (torch.distributed.checkpoint.async_save): the state is
    copied to host memory, training goes on, and the write completes before the next save or at the
    end, at most one in flight. A crash mid-write leaves the previous checkpoint the newest."""

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
    log_every: int | None = None
    """Steps between reads of the loss, grad norm and guard decisions from the device: the only
    host sync of a step. Every step still gets its metrics.jsonl row, written at the next read
    (also after the last step and before each checkpoint). null: 1 on CPU, 10 on GPU."""
    tensorboard: bool = True
    """Also write TensorBoard scalars to run_dir/tensorboard (the `train` extra installs the
    tensorboard package; without it a warning says so and only metrics.jsonl is written)."""
    progress: bool = True
    """Progress line with ETA on rank 0's console."""
    profile_steps: list[int] = field(default_factory=list)
    """Optimizer steps to trace with torch.profiler (CPU, and CUDA on a GPU) into
    run_dir/profile/, one Chrome trace per run of consecutive steps and rank; empty: off."""

    def __post_init__(self) -> None:
        check(self.window >= 1, "window", self.window, ">= 1")
        check(self.memory_every >= 0, "memory_every", self.memory_every, ">= 0")
        check(self.log_every is None or self.log_every >= 1, "log_every", self.log_every, ">= 1 or null")
        check(all(s >= 0 for s in self.profile_steps), "profile_steps", self.profile_steps, "steps >= 0")


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
    parallel: ParallelConfig | Literal["none", "ddp", "fsdp2"] = "none"
    """The device mesh (ParallelConfig: parallel.dp_shard, parallel.tp, parallel.pp, ...), or a
    short form: none (one process), ddp, fsdp2. Loaded as a ParallelConfig either way."""
    nproc: int = 1
    """Processes to start on this machine (one per GPU; trainer/launch.py, loopback only). Ignored
    under torchrun, which sets the world itself. Losses match one process within fp32 tolerance."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Compute precision. auto: bf16 on CUDA, fp32 on CPU. bf16 and fp16 are one regime per
    parallelism: FSDP2 casts parameters with its MixedPrecisionPolicy (fp32 gradient reduction)
    and runs no autocast; DDP and one device run the forward under autocast. Master weights,
    gradients and optimizer states stay fp32, and the backward runs outside autocast. fp16 (GPUs
    without bf16) adds dynamic loss scaling (torch.amp.GradScaler): a step whose gradients
    overflow is skipped on the device (reason `overflow` in metrics.jsonl) and the scale halves;
    `loss_scale` is logged."""
    dist_timeout_s: float = 600.0
    """Collective timeout of the process group: a rank that waits longer than this for its peers
    (one stalled or died) fails with an error naming itself, the step and this setting, instead of
    hanging. NCCL's and gloo's own default is 10 minutes; raise it for slow checkpoint storage."""
    activation_checkpointing: bool = False
    """Recompute blocks in the backward pass to save memory (every `ac_every`-th block)."""
    ac_every: int = 1
    """Selective activation checkpointing by layer: checkpoint blocks 0, k, 2k, ... (1: all of
    them). The planner counts the same blocks."""
    loss_chunk_tokens: int = 4096
    """The loss is computed this many tokens at a time, each chunk's logits turned into its loss and
    gradients at once (trainer/model.py `chunked_linear_cross_entropy`), so the fp32
    batch x seq x vocab logits are never held whole; 0: the full-logits loss."""
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
    compile: bool | None = None
    """torch.compile each transformer block, before sharding (as torchtitan does): one graph per
    phase's sequence length, shared by all blocks; the first step of each length pays the compile
    time. null: on for CUDA, off on CPU."""
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
    callbacks: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Extra callbacks (trainer/callbacks), import path -> keyword arguments, e.g.
    `{mypkg.hooks.SlackAlert: {channel: train}}`; they run before the built-in ones, in every rank.
    Code that calls train() directly passes Callback objects instead (`train(cfg, callbacks=[...])`)."""

    def __post_init__(self) -> None:
        check(bool(self.run_dir), "run_dir", self.run_dir, "a directory path")
        check(self.grad_clip >= 0, "grad_clip", self.grad_clip, ">= 0")
        check(self.nproc >= 1, "nproc", self.nproc, ">= 1")
        check(self.ac_every >= 1, "ac_every", self.ac_every, ">= 1")
        if isinstance(self.parallel, str):
            check(
                self.nproc == 1 or self.parallel != "none",
                "parallel",
                self.parallel,
                f"ddp or fsdp2 with nproc={self.nproc} (none would train unsynchronised copies)",
            )
            self.parallel = ParallelConfig(**SHORT_FORMS[self.parallel])
        check(
            not (self.parallel.cpu_offload and self.device == "cpu"),
            "parallel.cpu_offload",
            True,
            "false with device=cpu (the parameters already live in host memory; offload needs a GPU)",
        )
        if self.nproc > 1:  # a local launch: the layout is checked before any rank starts
            self.parallel.check_model(self.model_config(), self.nproc)
        check(self.max_steps is None or self.max_steps > 0, "max_steps", self.max_steps, "> 0 or null")
        check(
            self.loss_chunk_tokens >= 0, "loss_chunk_tokens", self.loss_chunk_tokens, ">= 0 (0: full logits)"
        )
        preset(self.model, **self.model_overrides)  # validates the name and the overrides now
        for path in self.callbacks:
            check(
                "." in path.strip(".") and all(part.isidentifier() for part in path.split(".")),
                "callbacks",
                path,
                "an import path like package.module.ClassName",
            )
        unknown = {s for p in self.curriculum.phases for s in p.mixture} - set(self.data.sources)
        check(
            not unknown,
            "curriculum.phases",
            sorted(unknown),
            f"mixture sources among {sorted(self.data.sources)}",
        )

    def model_config(self) -> ModelConfig:
        return preset(self.model, **self.model_overrides)
