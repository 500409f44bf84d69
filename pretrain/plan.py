"""Compute planner: token budget, training FLOPs, memory per GPU, wall time and a parallel layout.

    pretrain plan --preset 8b --gpu h100 --gpus 8          # the fastest layouts that fit, and why
    pretrain plan --preset 1b --gpus 8 --parallel dp_shard=8 grad_sync=micro   # one layout's figures
    pretrain plan --params 7B --seq-len 4096 --gpu a100-40gb --json
    pretrain plan --compute-budget 1e21 --gpu h100 --mfu 0.35      # Chinchilla: N = sqrt(C / 120)
    pretrain plan --preset tiny --gpu cpu --seq-len 128 --micro-batch 16   # the trainer on this machine
    python -m pretrain.plan ...                                     # the same

What it counts (functions below, each usable on its own):

- Parameters and FLOPs from the model shape (`num_params`, `flops_per_token`): the trainer's
  Llama block (trainer/model.py), 6N per token plus 12 * layers * dim * seq_len for QK^T and AV,
  the same convention as `Transformer.flops_per_token` (PaLM / nanoGPT / torchtitan). Token
  budget: about 20 tokens per parameter (Chinchilla, Hoffmann et al. 2022); from a budget
  C = 6ND with D = 20N, N = sqrt(C / 120).
- Model states per GPU (`model_state_bytes`) as in the ZeRO paper (Rajbhandari et al. 2020):
  `bf16-mixed` is its mixed-precision Adam, 2 + 2 + 12 = 16 bytes per parameter (16-bit weights
  and gradients, fp32 master weights and two moments); `amp` is what `pretrain train` does on a
  GPU (fp32 weights, gradients and moments, 4 + 4 + 8 = 16 bytes, bf16 autocast), `fp16` the same
  with fp16 autocast and dynamic loss scaling; `fp32` is the trainer on CPU. ZeRO-1 shards the
  optimizer states over the GPUs, ZeRO-2 also the gradients, ZeRO-3 (= FSDP, `parallel=fsdp2`)
  also the weights; DDP (`parallel=ddp`) shards nothing.
- Activations (`activation_bytes`) from the tensors autograd saves in this block with SDPA /
  flash attention (no T x T matrix): per layer and token, fp32: 8*dim + 2*kv_dim + 4*ffn values
  (two RMSNorms save input, normalised input and output; attention saves q and k after RoPE, v
  and the output; SwiGLU saves four ffn-wide tensors), plus the loss head (the trainer's chunked
  linear + cross-entropy by default, or the full logits). With activation checkpointing a layer
  keeps only its input, and one layer is recomputed at a time.
- The step's peak (`memory_estimate`) is not the sum of all that: gradients are freed before the
  forward pass, so the peak is either the end of the forward (activations + head) or the end of
  the backward / optimizer step (gradients + the optimizer's temporaries).
- Layouts (`Layout`, `layout_memory`): the trainer's device mesh pp x dp_replicate x dp_shard x tp
  (`parallel.*` in its config). dp_shard shards weights, gradients and optimizer states (FSDP2;
  HSDP with dp_replicate > 1), dp_replicate replicates them (DDP when dp_shard is 1), tp divides
  every matmul weight, the embedding and the head (vocab-parallel), pp gives each stage its layers
  (the first also the embedding, the last the final norm and the head); the estimate is the
  fullest stage's. Gradient accumulation under FSDP2 (`grad_sync`): "step" keeps unsharded fp32
  gradients of the whole stage across micro-batches and reduce-scatters once per optimizer step,
  "micro" reduce-scatters every micro-batch and holds only sharded gradients (for the 1b preset
  on 8 GPUs that is 4 GiB per GPU). Activations under tp: sequence parallel divides the norms'
  tensors, head and ffn sharding the attention and MLP ones; the all-gathered inputs of the
  matmuls stay whole (DTensor saves them). A pipeline stage keeps the activations of its
  in-flight micro-batches (`in_flight_microbatches`).
- Time (`step_time`): the FLOPs at a size-dependent MFU (`default_mfu`, interpolated between
  published throughputs, `PUBLISHED_THROUGHPUT`), plus what compute does not hide: tensor-parallel
  collectives, pipeline sends and the bubble (`pipeline_bubble`), and the data-parallel
  collectives beyond what the step's compute overlaps.
- A recommendation (`enumerate_layouts`): every valid layout for a GPU count, with the largest
  micro-batch that fits, fastest first.

What it is checked against (tests/test_plan.py): 6ND of published runs, the ZeRO paper's 7.5B
example, parameter counts and FLOPs of the real module, torch's allocation trace of a training
step (the tensor bytes match it to within 2%), the peak memory `pretrain train` records, and for
the layouts torchtitan's published Llama 3 8B memory on 8 and 128 H100s (README.md, "Compute
planner", has the comparison table).

On CPU that record is `mem_peak_above_base_gib`: the resident-set high-water mark since
`trainer.metrics.reset_peak_memory()` (taken before the model exists) minus the resident set then.
The estimate for it is the live tensor bytes plus a constant for the training runtime: torch's
thread pools and oneDNN buffers, the data loader's pyarrow pool and thread, 88 MiB measured with a
near-empty model. RSS also counts memory the C allocator kept after a free: with glibc's defaults
the measured peak runs 7-14% above the estimate (tiny 7-10%, 124M 9%, tiny with activation
checkpointing 14%); with `MALLOC_MMAP_THRESHOLD_=65536` freed tensors go back to the OS and the
gap is under 3%. On a GPU the record is max allocated minus allocated at the reset: the CUDA
context and the caching allocator's free blocks are outside it, hence the `--usable-fraction` of
the device memory the fit search allows.

Model configs come from trainer.model_config (ModelConfig, PRESETS; no torch), so `pretrain plan`
is instant: this module imports neither torch nor Ray.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import re
import sys
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from pretrain.core import accel
from pretrain.core.accel import GPUS, PEAK_FLOPS
from pretrain.core.cli import dispatch
from pretrain.core.config import ConfigError, apply_overrides, check, from_dict
from trainer.layout_config import (
    GRAD_SYNCS,
    MESH_DIMS,
    PP_SCHEDULES,
    SHORT_FORMS,
    ParallelConfig,
    check_pp_microbatches,
)
from trainer.model_config import PRESETS, ModelConfig  # no torch: the planner stays instant

CHINCHILLA_TOKENS_PER_PARAM = 20.0
DEFAULT_GLOBAL_BATCH_TOKENS = 2**19  # ~0.5M tokens: GPT-3 small's batch; larger models use 1-4M
DEFAULT_VOCAB_SIZE = 50304  # derived shapes: GPT-2's 50257 padded to 64, as the 124m-1b presets
CPU_RUNTIME_BYTES = 88 * 2**20
"""What train() adds on CPU besides tensors, measured as its peak RSS above the baseline with a
~20k-parameter model: about half torch's runtime (OpenMP / oneDNN buffers, autograd), half the data
loader (pyarrow's memory pool and the prefetch thread), which starts after the model is built."""
STRATEGIES = ("ddp", "zero1", "zero2", "zero3")
STRATEGY_LABELS = {"ddp": "DDP", "zero1": "ZeRO-1", "zero2": "ZeRO-2", "zero3": "FSDP"}
TRAINER_PARALLEL = {"ddp": "ddp", "zero3": "fsdp2"}  # strategies `pretrain train` runs
GPUS_PER_NODE = 8
"""GPUs behind one NVLink switch (HGX / DGX H100, A100, B200): tensor parallelism stays inside."""


# --------------------------------------------------------------------------------------------
# Model shape: parameters and FLOPs


def model_config(preset: str = "tiny", **overrides: Any) -> ModelConfig:
    """trainer's ModelConfig of a preset with field overrides; errors name the bad field."""
    check(preset in PRESETS, "preset", preset, f"one of {sorted(PRESETS)}")
    return from_dict(ModelConfig, {**PRESETS[preset], **overrides})


def _kv_dim(cfg: Any) -> int:
    return cfg.num_kv_heads * cfg.head_dim


def block_params(cfg: Any) -> int:
    """Parameters of one transformer block: two RMSNorms, q/k/v/o, SwiGLU, optional QK-norm."""
    qk_norm = 2 * cfg.head_dim if cfg.qk_norm else 0
    return 2 * cfg.dim + _block_matmul_params(cfg) + qk_norm


def _block_matmul_params(cfg: Any) -> int:
    d = cfg.dim
    return 2 * d * d + 2 * d * _kv_dim(cfg) + 3 * d * cfg.ffn_hidden_dim


def num_params(cfg: Any, exclude_embeddings: bool = False) -> int:
    """Unique parameters of trainer.model.Transformer(cfg) (a tied matrix once), from the shape alone.

    exclude_embeddings drops every vocab x dim matrix, as Transformer.num_params does.
    """
    embed = cfg.vocab_size * cfg.dim * (1 if cfg.tie_embeddings else 2)
    n = cfg.num_layers * block_params(cfg) + cfg.dim  # + final norm
    return n if exclude_embeddings else n + embed


def flops_per_token(cfg: Any, seq_len: int) -> int:
    """Training FLOPs per token of the shape `cfg` (core.accel's formula, as the trainer's MFU uses)."""
    n_matmul = num_params(cfg, exclude_embeddings=True) + cfg.vocab_size * cfg.dim
    return accel.flops_per_token(n_matmul, cfg.num_layers, cfg.dim, seq_len)


def chinchilla_params(compute_flops: float, tokens_per_param: float = CHINCHILLA_TOKENS_PER_PARAM) -> float:
    """Compute-optimal N for a budget C = 6 N D with D = tokens_per_param * N: sqrt(C / (6 r))."""
    check(compute_flops > 0, "compute_budget", compute_flops, "> 0 FLOPs")
    check(tokens_per_param > 0, "tokens_per_param", tokens_per_param, "> 0")
    return math.sqrt(compute_flops / (6.0 * tokens_per_param))


def shape_for_params(
    target: float, vocab_size: int | None = None, max_seq_len: int = 2048, **overrides: Any
) -> Any:
    """A ModelConfig near `target` parameters: a preset within 10% when there is one, else a derived
    Llama shape whose dim / num_layers is near GPT-3's and Llama's (64 below 1B parameters, 128
    above): dim a multiple of 128 up to 1024, of 256 up to 4096, of 1024 beyond; head_dim 64 below
    dim 2048, 128 from there; MHA unless `overrides` (any ModelConfig field) say otherwise.
    vocab_size None: a preset keeps its own (8b: Llama 3's 128256), a derived shape gets 50304."""
    check(target >= 1e5, "params", target, ">= 1e5 (smaller models: use --preset with --model-config)")
    extra = {"max_seq_len": max_seq_len, **overrides}
    vocab = {} if vocab_size is None else {"vocab_size": vocab_size}
    best = None
    for name in PRESETS:
        try:
            cfg = model_config(name, **{**vocab, **extra})
        except ConfigError:
            continue
        err = abs(num_params(cfg) / target - 1)
        if err <= 0.10 and (best is None or err < best[0]):
            best = (err, cfg)
    if best is not None:
        return best[1]
    aspect = 64 if target < 1e9 else 128
    candidates = []
    for layers in range(1, 257):
        for d in range(128, 65537, 128):
            if d % (128 if d <= 1024 else 256 if d <= 4096 else 1024):  # keep head counts even
                continue
            head_dim = 64 if d < 2048 else 128
            shape = dict(
                vocab_size=vocab_size or DEFAULT_VOCAB_SIZE, dim=d, num_layers=layers, num_heads=d // head_dim
            )
            try:
                cfg = model_config("tiny", **{**shape, "num_kv_heads": d // head_dim, **extra})
            except ConfigError:  # an override (e.g. num_kv_heads) that does not divide this shape
                continue
            n = num_params(cfg)
            if n >= target:
                candidates.append((abs(math.log(n / target)), abs(math.log(d / layers / aspect)), cfg))
                break
    check(
        bool(candidates),
        "model-config",
        overrides,
        f"overrides that some shape of {target:.3g} params allows",
    )
    close = [c for c in candidates if c[0] <= math.log(1.05)] or sorted(candidates, key=lambda c: c[0])[:1]
    return min(close, key=lambda c: c[1])[2]


# --------------------------------------------------------------------------------------------
# Memory


@dataclass(frozen=True)
class Precision:
    """Bytes per parameter of each model state and the dtypes activations are saved in."""

    name: str
    weight_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    """AdamW: two moments, plus fp32 master weights when the weights themselves are 16-bit."""
    matmul_bytes: int
    """Dtype of matmul inputs/outputs (the tensors attention and the MLP save)."""
    residual_bytes: int
    """Dtype of the residual stream (norm inputs); autocast keeps it fp32, 16-bit weights make it 16-bit."""
    cast_cache: bool
    """autocast caches a 16-bit copy of every matmul weight from first use until the backward ends."""


PRECISIONS = {
    "fp32": Precision("fp32", 4, 4, 8, 4, 4, False),
    "amp": Precision("amp", 4, 4, 8, 2, 4, True),
    # fp16 autocast + GradScaler: the bytes of amp (the scale and the overflow flag are scalars).
    "fp16": Precision("fp16", 4, 4, 8, 2, 4, True),
    "bf16-mixed": Precision("bf16-mixed", 2, 2, 12, 2, 2, False),
}


def _precision_for(precision: Precision, fsdp: bool) -> Precision:
    # FSDP2 with a 16-bit param_dtype (the trainer's fsdp2 on GPU) computes on 16-bit weights: no
    # cast cache, and a 16-bit residual stream.
    if precision.name in ("amp", "fp16") and fsdp:
        return Precision(precision.name, 4, 4, 8, 2, 2, False)
    return precision


def model_state_bytes(
    n_params: float, strategy: str, num_gpus: int, precision: str | Precision = "bf16-mixed"
) -> dict[str, float]:
    """Per-GPU bytes of weights, gradients and optimizer states (the ZeRO paper's Figure 1)."""
    p = PRECISIONS[precision] if isinstance(precision, str) else precision
    check(strategy in STRATEGIES, "strategy", strategy, f"one of {list(STRATEGIES)}")
    check(num_gpus >= 1, "num_gpus", num_gpus, ">= 1")
    w, g, o = _strategy_shards(strategy, num_gpus)
    return {
        "weights": p.weight_bytes * n_params / w,
        "grads": p.grad_bytes * n_params / g,
        "optimizer": p.optimizer_bytes * n_params / o,
    }


def _strategy_shards(strategy: str, num_gpus: int) -> tuple[int, int, int]:
    n = num_gpus
    return {"ddp": (1, 1, 1), "zero1": (1, 1, n), "zero2": (1, n, n)}.get(strategy, (n, n, n))


def _norm_saved(width: int, consumers: int, p: Precision, tp: int = 1) -> list[float]:
    # fp32 input (the input itself in fp32, a copy otherwise), the normalised input the weight
    # multiplies, and the output as the next matmuls' input: one tensor, or one autocast copy per
    # consuming matmul when the residual stream is fp32 and matmuls run in 16 bits. Under sequence
    # parallel (tp > 1) the norm sees 1/tp of the sequence; its output is all-gathered before the
    # matmuls, which save the whole gathered tensor.
    outputs = (
        [p.residual_bytes * width]
        if p.residual_bytes == p.matmul_bytes
        else [p.matmul_bytes * width] * consumers
    )
    return [4 * width / tp, p.residual_bytes * width / tp, *outputs]


def layer_saved_bytes(cfg: Any, precision: Precision, tp: int = 1) -> list[float]:
    """Bytes per token of each tensor one block saves for the backward pass, on one GPU of a
    tensor-parallel group of `tp` (heads and the ffn split tp ways, norms sequence-parallel)."""
    p, d, kv, f = precision, cfg.dim, _kv_dim(cfg), cfg.ffn_hidden_dim
    m = p.matmul_bytes
    saved = _norm_saved(d, 3, p, tp)  # input_layernorm -> q, k, v projections
    if cfg.qk_norm:
        saved += [x / tp for x in (4 * d, m * d, 4 * kv, m * kv)]
    # SDPA saves q, k (after RoPE), v, its output (o_proj's input is a view of it) and the fp32
    # log-sum-exp per head; the flash kernels keep no T x T matrix.
    saved += [x / tp for x in (m * d, m * kv, m * kv, m * d, 4 * cfg.num_heads)]
    saved += _norm_saved(d, 2, p, tp)  # post_attention_layernorm -> gate, up projections
    saved += [m * f / tp] * 4  # gate out (silu input), silu out, up out, product (down_proj input)
    return saved


def _head_bytes(cfg: Any, tokens: int, p: Precision, loss_chunk_tokens: int, tp: int = 1) -> dict[str, float]:
    # See activation_bytes. Under tp the head is vocab-parallel: each GPU holds vocab / tp logits.
    v = cfg.vocab_size / tp
    norm = tokens * sum(_norm_saved(cfg.dim, 1, p, tp))
    if loss_chunk_tokens > 0:
        chunk = min(loss_chunk_tokens, tokens)
        # fp32 logits turned into the softmax in place, and their 16-bit copy when activations are 16-bit
        chunk_bytes = 4 + (p.matmul_bytes if p.matmul_bytes != 4 else 0)
        transient = chunk * v * chunk_bytes
        kept = norm + tokens * cfg.dim * p.matmul_bytes + 4 * v * cfg.dim
        return {"head": kept + transient, "head_kept": kept, "logits_held": 0.0}
    head = norm + tokens * (p.matmul_bytes + 4 + 4 + 4) * v
    return {"head": head, "head_kept": head, "logits_held": tokens * p.matmul_bytes * v}


def activation_bytes(
    cfg: Any,
    tokens: int,
    precision: str | Precision = "fp32",
    activation_checkpointing: bool = False,
    loss_chunk_tokens: int = 4096,
) -> dict[str, float]:
    """Activation memory of one micro-batch of `tokens` tokens (micro_batch * seq_len).

    layers: what the blocks keep through the forward (with checkpointing only each block's input);
    recompute: with checkpointing, the one block rebuilt at a time in the backward plus that
    block's backward working set (gradients of two ffn-wide and two dim-wide tensors); head: at the
    start of the backward, the final norm's saved tensors, the logits (which the training loop
    still references), the fp32 log-softmax output and the two vocab-wide gradients of the loss
    and the log-softmax; logits_held: the logits alone, alive until the next forward.
    With `loss_chunk_tokens` > 0 (the trainer's default, its chunked linear + cross-entropy) the head
    is one chunk's fp32 logits and their 16/32-bit gradient, beside the gradients of the hidden
    states (tokens x dim) and of the head weight (fp32 vocab x dim) it keeps for the backward; no
    logits are held.
    """
    p = PRECISIONS[precision] if isinstance(precision, str) else precision
    per_layer = sum(layer_saved_bytes(cfg, p))
    layers = cfg.num_layers * (p.residual_bytes * cfg.dim if activation_checkpointing else per_layer)
    grad_work = p.matmul_bytes * (2 * cfg.ffn_hidden_dim + 2 * cfg.dim)
    head = _head_bytes(cfg, tokens, p, loss_chunk_tokens)
    return {
        "layers": tokens * layers,
        "recompute": tokens * (per_layer + grad_work) if activation_checkpointing else 0,
        "head": head["head"],
        "logits_held": head["logits_held"],
    }


@dataclass
class MemoryEstimate:
    """Per-GPU bytes of one training step; `peak` is the estimate, the rest show where it comes from."""

    strategy: str
    activation_checkpointing: bool
    num_gpus: int
    micro_batch: int
    seq_len: int
    grad_accum_steps: int
    weights: float
    grads: float
    optimizer: float
    activations: float
    """One micro-batch (a pipeline stage: all its in-flight micro-batches): what the layers save
    plus the larger of the loss head at its peak and (with checkpointing) one recomputed block and
    its backward beside the kept logits."""
    buffers: float
    """autocast's 16-bit weight copies, FSDP's unsharded blocks, DDP's gradient buckets."""
    temporaries: float
    """Optimizer / backward temporaries at the optimizer step (the larger of the two)."""
    runtime: float
    """Non-tensor memory the estimate adds (CPU only: thread pools, loader; see the docstring)."""
    peak_forward: float
    """Forward and backward: states + buffers + activations (+ gradients built or held so far)."""
    peak_optimizer: float
    """End of the backward / optimizer step: states + full gradients + temporaries."""
    held_grads: float = 0.0
    """Gradients alive across micro-batches: the sharded ones, or FSDP2's unsharded fp32
    accumulation buffers when gradient sync waits for the last micro-batch (grad_sync=step)."""
    host: float = 0.0
    """Host memory of the offloaded states (FSDP2's CPUOffloadPolicy), not counted in `peak`."""
    stage: int = 0
    """The pipeline stage whose figures these are (the one with the highest peak)."""

    @property
    def peak(self) -> float:
        return max(self.peak_forward, self.peak_optimizer) + self.runtime

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "peak": self.peak}


@dataclass(frozen=True)
class Stage:
    """What one GPU of a pipeline stage holds: its blocks (global indices), and whether it also
    holds the embedding (the first stage) and the final norm + head (the last)."""

    index: int
    layers: tuple[int, ...]
    has_embedding: bool
    has_head: bool


@dataclass(frozen=True)
class _Regime:
    """How one GPU holds its stage's states; built from a ZeRO strategy or from a Layout."""

    weight_shards: int = 1
    grad_shards: int = 1
    optimizer_shards: int = 1
    fsdp: bool = False
    unsharded_in_forward: str = "two"
    """FSDP's unsharded blocks at the forward's end: "two" (current + prefetched; ZeRO-3) or "all"
    (reshard_after_forward=False keeps each block's until its backward)."""
    unsharded_at_end: str = "two"
    """... and at the end of the backward: "all" under PP, whose schedule defers resharding."""
    ddp_buckets: bool = False
    held_grads: str = "none"
    """Gradients alive across micro-batches: none (no accumulation), sharded, or unsharded."""
    cpu_offload: bool = False


def _stage_params(cfg: Any, stage: Stage, tp: int) -> dict[str, float]:
    """Parameters of `stage` on one GPU of its tensor-parallel group (matmuls split tp ways, norms
    replicated): the total, one block's, the root (embedding / final norm / head) and the matmul
    weights autocast copies."""
    matmul = _block_matmul_params(cfg) / tp
    blk = matmul + block_params(cfg) - _block_matmul_params(cfg)
    vd = cfg.vocab_size * cfg.dim / tp
    root = vd if stage.has_embedding else 0.0
    if stage.has_head:
        root += cfg.dim + (0.0 if cfg.tie_embeddings and stage.has_embedding else vd)
    n_blocks = len(stage.layers)
    return {
        "total": n_blocks * blk + root,
        "block": blk,
        "root": root,
        "cast": n_blocks * matmul + (vd if stage.has_head else 0.0),
    }


def _stage_memory(
    cfg: Any,
    p: Precision,
    stage: Stage,
    regime: _Regime,
    *,
    tp: int,
    tokens: int,
    in_flight: float,
    checkpointed: int,
    device: str,
    loss_chunk_tokens: int,
) -> dict[str, float]:
    """The parts of one GPU's step peak (the fields of MemoryEstimate) for one pipeline stage.

    `in_flight` micro-batches keep their activations at once (1 without PP); `checkpointed` of the
    stage's blocks keep only their input."""
    sp = _stage_params(cfg, stage, tp)
    n, blk, root = sp["total"], sp["block"], sp["root"]
    w = p.weight_bytes * n / regime.weight_shards
    g = p.grad_bytes * n / regime.grad_shards
    o = p.optimizer_bytes * n / regime.optimizer_shards
    host = 0.0
    if regime.cpu_offload:  # the sharded states live on the host; the GPU holds working copies only
        host, w, g, o = w + g + o, 0.0, 0.0, 0.0

    per_layer = sum(layer_saved_bytes(cfg, p, tp))
    kept_input = p.residual_bytes * cfg.dim / tp
    layers = tokens * (checkpointed * kept_input + (len(stage.layers) - checkpointed) * per_layer)
    grad_work = p.matmul_bytes * (2 * cfg.ffn_hidden_dim / tp + 2 * cfg.dim)
    recompute = tokens * (per_layer + grad_work) if checkpointed else 0.0
    head = _head_bytes(cfg, tokens, p, loss_chunk_tokens, tp) if stage.has_head else {}
    # Other in-flight micro-batches (GPipe's last stage) keep what their loss saved for the backward.
    kept = in_flight * layers + (in_flight - 1) * head.get("head_kept", 0.0)
    logits_held = head.get("logits_held", 0.0)

    held = {"none": 0.0, "sharded": g, "unsharded": p.grad_bytes * n}[regime.held_grads]
    activations = kept + head.get("head", 0.0)
    at_head = activations + held
    if checkpointed:
        # The backward recomputes the last block beside every kept block input and the head's
        # gradients, or the first block beside the gradients of all the others.
        g_root, g_block = g * root / n, g * blk / n
        rc = recompute + logits_held
        activations = max(activations, kept + rc)
        at_head = max(at_head, kept + rc + max(held, g_root), kept - layers + rc + max(held, g - g_block))

    cast_cache = p.matmul_bytes * sp["cast"] if p.cast_cache else 0.0
    fsdp_fwd = fsdp_end = 0.0
    if regime.fsdp:
        # The root unsharded for the whole step, two blocks (current + prefetched) or all of them
        # unsharded, one block's unsharded gradient plus its fp32 copy for the reduce-scatter.
        grad_copy = (p.matmul_bytes + 4) * blk
        blocks = {"two": min(2, len(stage.layers)), "all": len(stage.layers)}
        fsdp_fwd = p.matmul_bytes * (root + blocks[regime.unsharded_in_forward] * blk) + grad_copy
        fsdp_end = p.matmul_bytes * (root + blocks[regime.unsharded_at_end] * blk) + grad_copy
    # DDP (gradient_as_bucket_view off) copies the gradients into flat buckets for the all-reduce.
    ddp = p.grad_bytes * n if regime.ddp_buckets else 0.0
    # torch's CPU AdamW updates one tensor at a time and allocates two temporaries of its size
    # (sqrt, then divide); the fused CUDA kernel allocates none.
    largest = max(cfg.vocab_size * cfg.dim, cfg.dim * cfg.ffn_hidden_dim) / tp
    opt_temp = 2 * 4 * largest / regime.optimizer_shards if device == "cpu" else 0.0
    # A tied embedding's second gradient (the lookup's) is a full vocab x dim tensor before it is
    # added into the lm_head's.
    tied = cfg.tie_embeddings and stage.has_embedding and stage.has_head
    tied_temp = p.grad_bytes * cfg.vocab_size * cfg.dim / tp / regime.grad_shards if tied else 0.0
    buffers = cast_cache + fsdp_fwd + ddp
    # End of the backward (still inside autocast, FSDP buffers live) or the optimizer step.
    end_of_step = max(opt_temp, cast_cache + fsdp_end + tied_temp)
    return dict(
        weights=w,
        grads=g,
        optimizer=o,
        activations=activations,
        buffers=buffers,
        temporaries=max(opt_temp, tied_temp),
        runtime=CPU_RUNTIME_BYTES if device == "cpu" else 0.0,
        peak_forward=w + o + buffers + at_head,
        peak_optimizer=w + o + g + logits_held + ddp + end_of_step,
        held_grads=held,
        host=host,
        stage=stage.index,
    )


def _whole_model(cfg: Any) -> Stage:
    return Stage(0, tuple(range(cfg.num_layers)), True, True)


def memory_estimate(
    cfg: Any,
    *,
    seq_len: int,
    micro_batch: int,
    strategy: str = "ddp",
    num_gpus: int = 1,
    precision: str = "amp",
    activation_checkpointing: bool = False,
    grad_accum_steps: int = 1,
    device: str = "cuda",
    loss_chunk_tokens: int = 4096,
    grad_sync: str = "step",
) -> MemoryEstimate:
    """Peak memory of one GPU (or one CPU process) in a training step of trainer/train.py under a
    ZeRO stage (`loss_chunk_tokens` as TrainConfig's: 0 is the full-logits loss). With gradient
    accumulation, FSDP (zero3) holds unsharded fp32 gradients across micro-batches under
    grad_sync="step" (FSDP2 with gradient sync off until the last one, the trainer's default) and
    only its sharded ones under "micro". `layout_memory` does the same for a full Layout."""
    check(micro_batch >= 1, "micro_batch", micro_batch, ">= 1")
    check(seq_len >= 1, "seq_len", seq_len, ">= 1")
    check(device in ("cuda", "cpu"), "device", device, "cuda or cpu")
    check(precision in PRECISIONS, "precision", precision, f"one of {list(PRECISIONS)}")
    check(strategy in STRATEGIES, "strategy", strategy, f"one of {list(STRATEGIES)}")
    check(num_gpus >= 1, "num_gpus", num_gpus, ">= 1")
    check(grad_sync in GRAD_SYNCS, "grad_sync", grad_sync, f"one of {list(GRAD_SYNCS)}")
    fsdp = strategy == "zero3"
    held = "none"
    if grad_accum_steps > 1:
        held = "unsharded" if fsdp and grad_sync == "step" else "sharded"
    w, g, o = _strategy_shards(strategy, num_gpus)
    regime = _Regime(w, g, o, fsdp=fsdp, ddp_buckets=strategy == "ddp" and num_gpus > 1, held_grads=held)
    parts = _stage_memory(
        cfg,
        _precision_for(PRECISIONS[precision], fsdp),
        _whole_model(cfg),
        regime,
        tp=1,
        tokens=micro_batch * seq_len,
        in_flight=1,
        checkpointed=cfg.num_layers if activation_checkpointing else 0,
        device=device,
        loss_chunk_tokens=loss_chunk_tokens,
    )
    return MemoryEstimate(
        strategy=strategy,
        activation_checkpointing=activation_checkpointing,
        num_gpus=num_gpus,
        micro_batch=micro_batch,
        seq_len=seq_len,
        grad_accum_steps=grad_accum_steps,
        **parts,
    )


# --------------------------------------------------------------------------------------------
# Layouts: the trainer's device mesh


@dataclass
class Layout(ParallelConfig):
    """A concrete parallel layout as the trainer's config spells it: its ParallelConfig
    (trainer/layout_config.py: the `parallel.*` fields and their rules, shared so the planner takes
    exactly what the trainer runs) with dp_shard defaulting to 1 (one GPU) instead of -1, plus the
    top-level activation checkpointing. `resolve_layout` turns a -1 into a degree."""

    dp_shard: int = 1
    """FSDP2 shards weights, gradients and optimizer states over this many GPUs (HSDP when
    dp_replicate > 1)."""
    activation_checkpointing: bool = False
    """Recompute blocks in the backward (the trainer's top-level `activation_checkpointing`)."""
    ac_every: int = 1
    """Checkpoint blocks 0, k, 2k, ... (the trainer's top-level `ac_every`); 1 = every block."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.ac_every >= 1, "ac_every", self.ac_every, ">= 1 (1 = every block)")

    @property
    def num_gpus(self) -> int:
        return self.dp_replicate * self.dp_shard * self.tp * self.pp

    @property
    def dp(self) -> int:
        return self.dp_replicate * self.dp_shard

    @property
    def is_ddp(self) -> bool:
        """Plain replicas (the trainer's DDP): dp_replicate alone."""
        return self.dp_replicate > 1 and self.dp_shard == self.tp == self.pp == 1

    @property
    def fsdp(self) -> bool:
        """Whether FSDP2 wraps the model: any data parallelism that is not DDP."""
        return self.dp > 1 and not self.is_ddp

    @property
    def microbatches(self) -> int:
        return 1 if self.pp == 1 else self.pp_microbatches or self.pp

    @property
    def virtual_stages(self) -> int:
        return self.pp_stages_per_rank if self.pp > 1 else 1

    def label(self) -> str:
        """Short name, e.g. "HSDP 2x4 · TP 2 · PP 2 1F1B/8 · ckpt 1/2" (i1F1B: interleaved, /8: micro-batches)."""
        r, s = self.dp_replicate, self.dp_shard
        dp = f"HSDP {r}x{s}" if r > 1 and self.fsdp else f"FSDP {s}" if s > 1 else f"DDP {r}" if r > 1 else ""
        parts = [dp]
        if self.tp > 1:
            parts.append(f"TP {self.tp}")
        if self.pp > 1:
            schedule = {"gpipe": "GPipe", "1f1b": "1F1B", "interleaved_1f1b": "i1F1B"}[self.pp_schedule]
            parts.append(f"PP {self.pp} {schedule}/{self.microbatches}")
        if self.fsdp and not self.reshard_after_forward:
            parts.append("no reshard")
        if self.cpu_offload:
            parts.append("offload")
        if self.activation_checkpointing:
            parts.append("ckpt all" if self.ac_every == 1 else f"ckpt 1/{self.ac_every}")
        return " · ".join(p for p in parts if p) or "1 GPU"


def resolve_layout(spec: str | dict[str, Any] | Layout | None, num_gpus: int, cfg: Any = None) -> Layout:
    """A concrete Layout for `num_gpus` from the trainer's short forms (none | ddp | fsdp2), a
    mapping of `parallel.*` fields (plus activation_checkpointing, ac_every) read as its
    ParallelConfig reads them (dp_shard defaults to -1) or a Layout; one -1 takes the GPUs the
    other dims leave (ParallelConfig.degrees). With the model's `cfg`, its checks run too."""
    check(num_gpus >= 1, "gpus", num_gpus, ">= 1")
    if spec is None or isinstance(spec, str):
        key = spec or "none"
        check(
            key in SHORT_FORMS, "parallel", spec, f"one of {list(SHORT_FORMS)} or a mapping of Layout fields"
        )
        spec = SHORT_FORMS[key]
    check(
        isinstance(spec, (dict, Layout)), "parallel", spec, "none, ddp, fsdp2 or a mapping of Layout fields"
    )
    layout = spec if isinstance(spec, Layout) else from_dict(Layout, {"dp_shard": -1, **spec})
    if cfg is not None:  # the model's checks first: tp=3 with 32 heads names tp, not the product
        layout.check_model(cfg, num_gpus)
    return replace(layout, **layout.degrees(num_gpus))


def check_layout(cfg: Any, layout: Layout, num_gpus: int | None = None) -> None:
    """Reject what the trainer rejects, naming the field: ParallelConfig's checks (a product that
    is not the GPU count; tp not dividing the heads, kv heads, ffn or vocab; more pipeline stages
    than layers; a tied embedding under PP), micro-batch counts the schedule cannot run, CPU
    offload without FSDP2."""
    sizes = {name: getattr(layout, name) for name in MESH_DIMS}
    check(-1 not in sizes.values(), "parallel", sizes, "concrete degrees (resolve_layout turns -1 into one)")
    layout.check_model(cfg, layout.num_gpus if num_gpus is None else num_gpus)
    if layout.pp > 1:
        check_pp_microbatches(layout.microbatches, layout.pp, layout.pp_schedule)
    check(
        not layout.cpu_offload or layout.fsdp,
        "parallel.cpu_offload",
        layout.cpu_offload,
        "false without FSDP2 (CPUOffloadPolicy is fully_shard's: dp_shard > 1, or HSDP)",
    )


def stage_layer_ids(num_layers: int, num_stages: int) -> list[list[int]]:
    """Contiguous block ids of each virtual stage, as trainer/pipeline.py splits them: an uneven
    split gives one extra block to each of the middle stages."""
    base, extra = divmod(num_layers, num_stages)
    first_extra = (num_stages - extra) // 2
    sizes = [base + (first_extra <= s < first_extra + extra) for s in range(num_stages)]
    bounds = [sum(sizes[:s]) for s in range(num_stages + 1)]
    return [list(range(bounds[s], bounds[s + 1])) for s in range(num_stages)]


def pipeline_stages(cfg: Any, layout: Layout) -> list[Stage]:
    """What each pipeline rank holds: virtual stage c of pp * v on rank c % pp (the trainer's loop
    placement); rank 0 has the embedding, rank pp - 1 the final norm and the head."""
    pp, v = layout.pp, layout.virtual_stages
    per_stage = stage_layer_ids(cfg.num_layers, pp * v)
    return [
        Stage(
            rank, tuple(i for c in range(rank, pp * v, pp) for i in per_stage[c]), rank == 0, rank == pp - 1
        )
        for rank in range(pp)
    ]


def in_flight_microbatches(layout: Layout, stage: int) -> float:
    """Micro-batches whose activations pipeline rank `stage` holds at its peak: GPipe all of them;
    1F1B pp - stage (its warm-up depth, Narayanan et al. 2021); interleaved 1F1B on v virtual
    stages pp - stage + (pp - 1) / v, which on the first rank is the L (1 + (p - 1) / (p v)) layers
    of activations Korthikanti et al. 2022 (section 4.2.3) give."""
    m = layout.microbatches
    if layout.pp == 1:
        return 1.0
    if layout.pp_schedule == "gpipe":
        return float(m)
    extra = (layout.pp - 1) / layout.virtual_stages if layout.pp_schedule == "interleaved_1f1b" else 0.0
    return float(min(m, layout.pp - stage + extra))


def checkpointed_blocks(layout: Layout, layers: tuple[int, ...] | range) -> int:
    """How many of `layers` (global block ids) activation checkpointing wraps: ids 0, k, 2k, ..."""
    if not layout.activation_checkpointing:
        return 0
    return sum(1 for i in layers if i % layout.ac_every == 0)


def _layout_regime(layout: Layout, backward_passes: int) -> _Regime:
    s = layout.dp_shard
    held = "none"
    if backward_passes > 1:
        # torch.distributed.pipelining keeps FSDP2's gradient sync off until a step's last
        # micro-batch (PipelineStage.backward_maybe_with_nosync): PP accumulates unsharded.
        unsharded = layout.fsdp and (layout.grad_sync == "step" or layout.pp > 1)
        held = "unsharded" if unsharded else "sharded"
    keep_all = layout.pp > 1 or not layout.reshard_after_forward
    return _Regime(
        weight_shards=s,
        grad_shards=s,
        optimizer_shards=s,
        fsdp=layout.fsdp,
        # ... and turns resharding after the backward off, so PP holds the stage unsharded.
        unsharded_in_forward="all" if keep_all else "two",
        unsharded_at_end="all" if layout.pp > 1 else "two",
        ddp_buckets=not layout.fsdp and layout.dp_replicate > 1,
        held_grads=held,
        cpu_offload=layout.cpu_offload,
    )


def layout_memory(
    cfg: Any,
    layout: Layout,
    *,
    seq_len: int,
    micro_batch: int,
    grad_accum_steps: int = 1,
    precision: str = "amp",
    device: str = "cuda",
    loss_chunk_tokens: int = 4096,
) -> MemoryEstimate:
    """Peak memory per GPU of a training step under `layout`: the largest over its pipeline stages.
    `micro_batch` samples of `seq_len` tokens per forward (a pipeline micro-batch under PP);
    `grad_accum_steps` forwards (pipeline steps under PP) per optimizer step."""
    check(micro_batch >= 1, "micro_batch", micro_batch, ">= 1")
    check(grad_accum_steps >= 1, "grad_accum_steps", grad_accum_steps, ">= 1")
    check(precision in PRECISIONS, "precision", precision, f"one of {list(PRECISIONS)}")
    check(device in ("cuda", "cpu"), "device", device, "cuda or cpu")
    check_layout(cfg, layout)
    p = _precision_for(PRECISIONS[precision], layout.fsdp)
    regime = _layout_regime(layout, grad_accum_steps * layout.microbatches)
    # Under TP (loss_parallel) and PP the trainer's loss is the full-logits one, sharded over the vocab.
    chunk = 0 if layout.tp > 1 or layout.pp > 1 else loss_chunk_tokens
    best = None
    for stage in pipeline_stages(cfg, layout):
        parts = _stage_memory(
            cfg,
            p,
            stage,
            regime,
            tp=layout.tp,
            tokens=micro_batch * seq_len,
            in_flight=in_flight_microbatches(layout, stage.index),
            checkpointed=checkpointed_blocks(layout, stage.layers),
            device=device,
            loss_chunk_tokens=chunk,
        )
        if best is None or max(parts["peak_forward"], parts["peak_optimizer"]) > max(
            best["peak_forward"], best["peak_optimizer"]
        ):
            best = parts
    return MemoryEstimate(
        strategy="fsdp" if layout.fsdp else "ddp" if layout.dp_replicate > 1 else "none",
        activation_checkpointing=layout.activation_checkpointing,
        num_gpus=layout.num_gpus,
        micro_batch=micro_batch,
        seq_len=seq_len,
        grad_accum_steps=grad_accum_steps,
        **best,
    )


# --------------------------------------------------------------------------------------------
# Devices and links

LINK_EFFICIENCY = 0.8
"""Share of a link's datasheet rate that a large NCCL ring collective reaches (an assumption; public
nccl-tests readings on 8 x A100 SXM, 230-250 GB/s bus bandwidth of NVLink 3's 300 GB/s per
direction, are in this range)."""
CPU_ADAM_BYTES_PER_S = 10e9
"""Host memory traffic per GPU for the offloaded AdamW step (28 bytes per parameter: read weight,
grad and two moments, write three). An assumption, not a measured or published figure."""

INTERCONNECT: dict[str, tuple[float, float, float]] = {
    # PEAK_FLOPS key: GB/s per direction (GPU <-> GPU inside a node, network per GPU between nodes,
    # GPU <-> host). NVIDIA datasheets: H100 / H200 / H20 SXM NVLink 900 GB/s and PCIe Gen5
    # 128 GB/s (both directions together); H800 NVLink 400 GB/s. Between nodes 400 Gb/s per GPU
    # (one ConnectX-7 per GPU in DGX H100; torchtitan's and Trainy's H100/H200 benchmark clusters).
    "H100 SXM": (450, 50, 64),
    "H200": (450, 50, 64),
    "H20": (450, 50, 64),
    "H800 SXM": (200, 50, 64),
    # A100 / A800 SXM: NVLink 600 / 400 GB/s, PCIe Gen4 64 GB/s; DGX A100: 200 Gb/s HDR per GPU.
    "A100": (300, 25, 32),
    "A800": (200, 25, 32),
    # HGX B200 / B100, GB200: NVLink 5 1.8 TB/s; 400 Gb/s per GPU (DGX B200: ConnectX-7).
    "B200": (900, 50, 64),
    "B100": (900, 50, 64),
    "GB200": (900, 50, 64),
    # MI300X / MI325X datasheets: 896 GB/s aggregate Infinity Fabric (7 links), PCIe Gen5.
    "MI300X": (448, 50, 64),
    "MI325X": (448, 50, 64),
}
PCIE_GEN5_LINKS = (64, 50, 64)  # H100 PCIe / NVL, H200 NVL, H800 PCIe: NVLink bridges pair GPUs only
PCIE_GEN4_LINKS = (32, 25, 32)  # L4, L40S, A10, A10G, RTX 4090


@dataclass(frozen=True)
class Device:
    name: str
    memory_bytes: float
    peak_flops: float | None
    """Dense peak FLOP/s at the planned precision (None on CPU: no wall-time estimate)."""
    kind: str
    """cuda or cpu."""
    intra_node_bytes_per_s: float = 0.0
    """Collective bandwidth between GPUs of a node (datasheet x LINK_EFFICIENCY)."""
    inter_node_bytes_per_s: float = 0.0
    """... between nodes, per GPU."""
    host_bytes_per_s: float = 0.0
    """GPU <-> host copies (CPU offload)."""


def device_spec(gpu: str, precision: str) -> Device:
    """A --gpu name (or `cpu`: this machine's RAM, no peak) at a precision; peaks from core.accel,
    links from INTERCONNECT."""
    if gpu == "cpu":
        return Device("CPU (this machine)", _total_ram_bytes(), None, "cpu")
    check(gpu in GPUS, "gpu", gpu, f"one of {sorted(GPUS)} or cpu")
    key, gb = GPUS[gpu]
    gen5 = ("H100 PCIe", "H100 NVL", "H200 NVL", "H800 PCIe")
    links = INTERCONNECT.get(key, PCIE_GEN5_LINKS if key in gen5 else PCIE_GEN4_LINKS)
    intra, inter, host = (x * 1e9 * LINK_EFFICIENCY for x in links)
    peak = PEAK_FLOPS[key]["fp32" if precision == "fp32" else "bf16"]
    return Device(key, gb * 2**30, peak, "cuda", intra, inter, host)


def _total_ram_bytes() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024.0
    except OSError:
        pass
    return float("nan")


# --------------------------------------------------------------------------------------------
# Time: MFU by model size, communication, the pipeline bubble


@dataclass(frozen=True)
class PublishedThroughput:
    """A training throughput someone published for a model shape, turned into MFU with this
    module's FLOP convention (`flops_per_token`) and the bf16 dense peak of the GPU."""

    name: str
    shape: dict[str, Any]
    """ModelConfig fields of the model trained."""
    seq_len: int
    source: str
    tokens_per_s_per_gpu: float | None = None
    mfu: float | None = None
    """When the source gives MFU rather than throughput."""
    gpu: str = "H100 SXM"

    @property
    def model_mfu(self) -> float:
        if self.mfu is not None:
            return self.mfu
        per_token = flops_per_token(model_config("tiny", **self.shape), self.seq_len)
        return self.tokens_per_s_per_gpu * per_token / PEAK_FLOPS[self.gpu]["bf16"]


# OLMo-core's models (OLMo-core 7f7c4894d, src/olmo_core/nn/transformer/config.py: llama_like,
# olmo2_1B / olmo2_7B / llama3_8B; the dolma2 tokenizer's 100278 ids padded to 100352; untied).
OLMO_1B = dict(
    vocab_size=100352, dim=2048, num_layers=18, num_heads=16, num_kv_heads=16, ffn_hidden_dim=5632,
    qk_norm=True, tie_embeddings=False, max_seq_len=4096,
)  # fmt: skip
OLMO_7B = dict(
    vocab_size=100352, dim=4096, num_layers=32, num_heads=32, num_kv_heads=32, ffn_hidden_dim=11008,
    qk_norm=True, tie_embeddings=False, max_seq_len=4096,
)  # fmt: skip
OLMO_LLAMA3_8B = dict(
    vocab_size=100352, dim=4096, num_layers=32, num_heads=32, num_kv_heads=8, ffn_hidden_dim=14336,
    tie_embeddings=False, max_seq_len=4096,
)  # fmt: skip
_OLMO = (
    "OLMo-core README at 7f7c4894d (2025-03), throughput table, BF16 on H100s; its "
    "src/scripts/train/{script}: HSDP (bf16 params, fp32 reduce), torch.compile, {micro} x 4096 "
    "tokens per rank, no activation checkpointing"
)
PUBLISHED_THROUGHPUT: tuple[PublishedThroughput, ...] = (
    PublishedThroughput(
        "124m, this trainer",
        PRESETS["124m"],
        1024,
        "issue 14: the 124m preset runs at 17-22% MFU eager on one H200 (the H100 SXM's bf16 peak)",
        mfu=0.20,
    ),
    PublishedThroughput("OLMo-1124 1B", OLMO_1B, 4096, _OLMO.format(script="OLMo2-1B.py", micro=8), 55_000),
    PublishedThroughput("OLMo-1124 7B", OLMO_7B, 4096, _OLMO.format(script="OLMo2-7B.py", micro=2), 10_000),
    PublishedThroughput(
        "Llama 3 8B (OLMo-core)", OLMO_LLAMA3_8B, 4096, _OLMO.format(script="Llama3-8B.py", micro=2), 9_500
    ),
)
"""The MFU anchors of `default_mfu`: runs without activation checkpointing, so MFU is also the
share of peak the executed FLOPs reach. Left out: OLMo-core's 13B (4,600 tokens/s, 41.5% by this
convention) ran one 4096-token sequence per micro-batch, a setting this size-only curve does not
model; torchtitan's Llama 3.1 8B (5,762 tokens/s eager, 6,667 compiled: 33.7% / 39.0%) ran at a
500 W power cap with selective activation checkpointing (its benchmarks/llama3_h100_202412_torchtitan.md);
it is a cross-check in README.md instead."""


@functools.cache
def mfu_anchors() -> tuple[tuple[float, float, str], ...]:
    """(parameters, MFU, name) of each PUBLISHED_THROUGHPUT entry, by size."""
    points = []
    for t in PUBLISHED_THROUGHPUT:
        points.append((float(num_params(model_config("tiny", **t.shape))), t.model_mfu, t.name))
    return tuple(sorted(points))


def default_mfu(n_params: float) -> float:
    """The MFU `pretrain plan` assumes for a model of `n_params` parameters when --mfu is not given:
    linear in log(parameters) between the published anchors (`mfu_anchors`: 20% at 124M on this
    trainer, 45-49% at 1-8B for OLMo-core on H100s), flat beyond them. The same curve serves every
    GPU (A100s reach more of their lower peak: torchtitan's April 2024 docs/performance.md reports
    61% for a 13B on 64 A100s), and it does not depend on the micro-batch."""
    check(n_params > 0, "params", n_params, "> 0")
    points = mfu_anchors()
    if n_params <= points[0][0]:
        return points[0][1]
    for (n0, m0, _), (n1, m1, _) in zip(points, points[1:]):
        if n_params <= n1:
            return m0 + (m1 - m0) * math.log(n_params / n0) / math.log(n1 / n0)
    return points[-1][1]


def block_forward_flops(cfg: Any, seq_len: int) -> int:
    """Forward FLOPs per token of one block (what checkpointing runs again): matmuls + attention."""
    return 2 * _block_matmul_params(cfg) + 4 * cfg.dim * seq_len


def recompute_factor(cfg: Any, seq_len: int, num_checkpointed: int | None = None) -> float:
    """Hardware FLOPs with activation checkpointing / without: each checkpointed block's forward
    runs twice (default: all blocks)."""
    n = cfg.num_layers if num_checkpointed is None else num_checkpointed
    return 1.0 + n * block_forward_flops(cfg, seq_len) / flops_per_token(cfg, seq_len)


def pipeline_bubble(pp: int, microbatches: int, schedule: str = "1f1b", virtual_stages: int = 1) -> float:
    """Idle share of a pipeline step: (pp - 1) / (M + pp - 1) for GPipe (Huang et al. 2019) and 1F1B
    (the same bubble with fewer micro-batches in flight, Narayanan et al. 2021), divided by the
    virtual stages per GPU for interleaved 1F1B (Narayanan et al. 2021, section 2.2.2)."""
    check(pp >= 1, "pp", pp, ">= 1")
    check(microbatches >= 1, "pp_microbatches", microbatches, ">= 1")
    check(schedule in PP_SCHEDULES, "pp_schedule", schedule, f"one of {list(PP_SCHEDULES)}")
    bubble = (pp - 1) / (microbatches + pp - 1)
    return bubble / virtual_stages if schedule == "interleaved_1f1b" else bubble


def _link(dev: Device, group: int, stride: int, gpus_per_node: int) -> float:
    # The mesh is laid out pp x dp_replicate x dp_shard x tp, tp fastest (as torchtitan's): a group
    # of `group` GPUs `stride` apart stays inside a node when group * stride <= gpus_per_node.
    return dev.intra_node_bytes_per_s if group * stride <= gpus_per_node else dev.inter_node_bytes_per_s


def step_time(
    cfg: Any,
    layout: Layout,
    *,
    seq_len: int,
    global_batch_tokens: int,
    grad_accum_steps: int,
    dev: Device,
    precision: str = "amp",
    mfu: float | None = None,
    gpus_per_node: int = GPUS_PER_NODE,
) -> dict[str, float] | None:
    """Seconds of one optimizer step under `layout` and where they go; None without a peak (CPU).

    - compute: the step's FLOPs (with the recomputed blocks) over all GPUs at `mfu` (default:
      `default_mfu`), the efficiency published runs reach with their own communication hidden;
      under PP the rank with the most blocks sets the pace;
    - tp: sequence parallel's all-gather and reduce-scatter of the (tokens x dim) activations
      before and after attention and the MLP, 4 per block forward, 4 backward, 4 more per
      recomputed block, each moving (tp - 1) / tp of it; on the critical path (no async TP);
    - pp: each stage sends its activations forward and their gradients back, and idles for the
      bubble (`pipeline_bubble`);
    - dp: FSDP's all-gathers (two per micro-batch, one with reshard_after_forward=False) and
      per-micro-batch reduce-scatters overlap the step's compute (FSDP2 prefetches, DDP buckets);
      a once-per-step reduction (grad_sync=step; HSDP's all-reduce across replicas) overlaps only
      the last micro-batch's backward (2/3 of its compute), and under PP nothing (the schedule
      reduces after its last micro-batch); all of them share one link, so the step lasts at least
      as long as they do together; `dp_exposed_s` is what compute does not hide;
    - offload: CPU offload's copies over the host link and the AdamW step on the host.
    """
    if dev.peak_flops is None:
        return None
    mfu = default_mfu(num_params(cfg)) if mfu is None else mfu
    p = _precision_for(PRECISIONS[precision], layout.fsdp)
    n, tp, pp, s, r = layout.num_gpus, layout.tp, layout.pp, layout.dp_shard, layout.dp_replicate
    tokens_per_dp = global_batch_tokens / layout.dp
    stages = pipeline_stages(cfg, layout)
    checkpointed = checkpointed_blocks(layout, range(cfg.num_layers))
    flops = global_batch_tokens * (
        flops_per_token(cfg, seq_len) + checkpointed * block_forward_flops(cfg, seq_len)
    )
    slowest = max(stages, key=lambda st: (len(st.layers), checkpointed_blocks(layout, st.layers)))
    imbalance = len(slowest.layers) * pp / cfg.num_layers
    compute_s = flops * imbalance / (n * dev.peak_flops * mfu)

    act = tokens_per_dp * cfg.dim * p.matmul_bytes  # one (tokens x dim) activation of a DP rank's batch
    tp_s = 0.0
    if tp > 1:
        collectives = 8 * len(slowest.layers) + 4 * checkpointed_blocks(layout, slowest.layers)
        tp_s = collectives * (tp - 1) / tp * act / _link(dev, tp, 1, gpus_per_node)
    p2p_s = 2 * layout.virtual_stages * act / tp / _link(dev, pp, n // pp, gpus_per_node) if pp > 1 else 0.0
    bubble = pipeline_bubble(pp, layout.microbatches, layout.pp_schedule, layout.virtual_stages)
    busy_s = compute_s + tp_s + p2p_s
    pipeline_s = busy_s / (1 - bubble)

    stage_params = max(_stage_params(cfg, st, tp)["total"] for st in stages)
    grad_bytes = p.grad_bytes * stage_params  # FSDP2 reduces in fp32 (reduce_dtype)
    forwards = grad_accum_steps * layout.microbatches
    overlapped = once = gathers = 0.0
    if layout.fsdp:
        link = _link(dev, s, tp, gpus_per_node)
        gathers = grad_accum_steps if pp > 1 and not layout.reshard_after_forward else forwards
        gathers *= 2 if layout.reshard_after_forward else 1
        overlapped = gathers * (s - 1) / s * p.matmul_bytes * stage_params / link
        reduce = (s - 1) / s * grad_bytes / link
        if r > 1:
            reduce += 2 * (r - 1) / r * grad_bytes / s / _link(dev, r, tp * s, gpus_per_node)
    elif r > 1:
        reduce = 2 * (r - 1) / r * grad_bytes / _link(dev, r, tp, gpus_per_node)
    else:
        reduce = 0.0
    if layout.grad_sync == "micro" and pp == 1:
        overlapped += forwards * reduce
    else:
        once = grad_accum_steps * reduce if pp > 1 else reduce
    window = 0.0 if pp > 1 else 2 / 3 * busy_s / grad_accum_steps
    # One link carries all of it (compute cannot hide more than its own length), and the once-per-
    # step reduction has only its window.
    exposed_s = max(0.0, overlapped + once - busy_s, once - window)

    offload_s = 0.0
    if layout.cpu_offload:
        shard = stage_params / s
        copies = gathers * 4 * shard + (forwards if layout.grad_sync == "micro" else 1) * p.grad_bytes * shard
        offload_s = copies / dev.host_bytes_per_s + 28 * shard / CPU_ADAM_BYTES_PER_S
    step_s = pipeline_s + exposed_s + offload_s
    return {
        "compute_s": compute_s,
        "tp_comm_s": tp_s,
        "pp_comm_s": p2p_s,
        "bubble_fraction": bubble,
        "dp_comm_s": overlapped + once,
        "dp_exposed_s": exposed_s,
        "offload_s": offload_s,
        "step_s": step_s,
        "tokens_per_s_per_gpu": global_batch_tokens / step_s / n,
        "mfu": flops_per_token(cfg, seq_len) * global_batch_tokens / (step_s * n * dev.peak_flops),
        "assumed_mfu": mfu,
    }


# --------------------------------------------------------------------------------------------
# Fit searches: the fewest GPUs per ZeRO stage, and the fastest layout on a GPU count


def smallest_fit(
    cfg: Any,
    *,
    seq_len: int,
    global_batch_tokens: int,
    strategy: str,
    activation_checkpointing: bool,
    precision: str,
    device: str,
    capacity_bytes: float,
    max_gpus: int = 2**16,
) -> MemoryEstimate | None:
    """Fewest GPUs (a power of two) on which micro-batch 1 fits, then the largest power-of-two
    micro-batch that still fits there and splits the global batch exactly; None if nothing fits."""
    samples = global_batch_tokens // seq_len
    common = dict(
        seq_len=seq_len,
        strategy=strategy,
        precision=precision,
        activation_checkpointing=activation_checkpointing,
        device=device,
    )
    gpus = 1
    while gpus <= min(max_gpus, samples):
        if samples % gpus == 0:
            est = memory_estimate(
                cfg, micro_batch=1, num_gpus=gpus, grad_accum_steps=samples // gpus, **common
            )
            if est.peak <= capacity_bytes:
                mb = 2
                while samples % (mb * gpus) == 0:
                    bigger = memory_estimate(
                        cfg, micro_batch=mb, num_gpus=gpus, grad_accum_steps=samples // (mb * gpus), **common
                    )
                    if bigger.peak > capacity_bytes:
                        break
                    est, mb = bigger, mb * 2
                return est
        gpus *= 2
    return None


@dataclass(frozen=True)
class Workload:
    """What every layout of a plan must run: the batch, the precision, the device, its budget."""

    seq_len: int
    global_batch_tokens: int
    precision: str
    dev: Device
    usable_bytes: float
    mfu: float | None = None
    """None: `default_mfu` of the model's size."""
    gpus_per_node: int = GPUS_PER_NODE
    loss_chunk_tokens: int = 4096

    @property
    def samples(self) -> int:
        return self.global_batch_tokens // self.seq_len


AC_CHOICES = ((False, 1), (True, 4), (True, 2), (True, 1))
"""Activation checkpointing tried by the search: off, every 4th block, every 2nd, every block."""


def evaluate_layout(cfg: Any, layout: Layout, work: Workload, micro_batch: int) -> dict[str, Any]:
    """Memory and step time of `layout` with `micro_batch` samples per forward; the rest of each DP
    rank's share of the global batch is pipeline micro-batches (PP) or gradient accumulation."""
    check(
        work.samples % layout.dp == 0,
        "parallel",
        layout.label(),
        f"dp degree dividing {work.samples} samples",
    )
    per_rank = work.samples // layout.dp
    check(
        per_rank % micro_batch == 0,
        "micro_batch",
        micro_batch,
        f"a divisor of {per_rank} samples per DP rank",
    )
    forwards = per_rank // micro_batch
    if layout.pp > 1 and layout.pp_microbatches is None:
        layout = Layout(**{**asdict(layout), "pp_microbatches": forwards})
    check(
        forwards % layout.microbatches == 0,
        "parallel.pp_microbatches",
        layout.microbatches,
        f"a divisor of the {forwards} micro-batches per DP rank",
    )
    accum = forwards // layout.microbatches
    est = layout_memory(
        cfg,
        layout,
        seq_len=work.seq_len,
        micro_batch=micro_batch,
        grad_accum_steps=accum,
        precision=work.precision,
        device=work.dev.kind,
        loss_chunk_tokens=work.loss_chunk_tokens,
    )
    timing = step_time(
        cfg,
        layout,
        seq_len=work.seq_len,
        global_batch_tokens=work.samples * work.seq_len,
        grad_accum_steps=accum,
        dev=work.dev,
        precision=work.precision,
        mfu=work.mfu,
        gpus_per_node=work.gpus_per_node,
    )
    return {
        "label": layout.label(),
        "layout": asdict(layout),
        "micro_batch": micro_batch,
        "grad_accum_steps": accum,
        "checkpointed_blocks": checkpointed_blocks(layout, range(cfg.num_layers)),
        "memory": est.to_dict(),
        "peak": est.peak,
        "fits": est.peak <= work.usable_bytes,
        "time": timing,
        "step_s": timing["step_s"] if timing else None,
    }


def best_micro_batch(cfg: Any, layout: Layout, work: Workload) -> dict[str, Any] | None:
    """The fastest power-of-two micro-batch with which `layout` fits (without PP the largest that
    fits: fewer micro-batches, fewer all-gathers), or None."""
    if work.samples % layout.dp:
        return None
    per_rank = work.samples // layout.dp
    best = None
    mb = 1 << (per_rank.bit_length() - 1)
    while mb >= 1:
        if per_rank % mb == 0:
            try:
                row = evaluate_layout(cfg, layout, work, mb)
            except ConfigError:  # too few pipeline micro-batches for the schedule at this size
                row = None
            if row is not None and row["fits"]:
                if layout.pp == 1:
                    return row
                if best is None or (row["step_s"] or 0) < (best["step_s"] or 0):
                    best = row
        mb //= 2
    return best


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _dp_splits(dp: int, tp: int, gpus_per_node: int) -> list[tuple[int, int]]:
    # Replicas (DDP alone; HSDP with one shard beside tp / pp), FSDP over all of dp, and HSDP
    # sharding within a node.
    splits = [(dp, 1)] if dp == 1 else [(dp, 1), (1, dp)]
    in_node = gpus_per_node // tp
    if 1 < in_node < dp and dp % in_node == 0:
        splits.append((dp // in_node, in_node))
    return splits


def candidate_layouts(
    cfg: Any, num_gpus: int, gpus_per_node: int = GPUS_PER_NODE, cpu_offload: bool = False
) -> list[Layout]:
    """Every layout the search tries on `num_gpus`: tp within a node dividing heads, kv heads, ffn
    and vocab; pp dividing the layers (balanced stages; untied embeddings only, as the trainer
    requires); DDP, FSDP and HSDP within a node for the rest (`_dp_splits`); 1F1B and interleaved
    1F1B on 2 stages per rank (torchtitan's default; GPipe has 1F1B's bubble and more memory); the
    checkpointing of AC_CHOICES; both grad_sync regimes and both reshard choices under FSDP."""
    out = []
    for tp in _divisors(num_gpus):
        if tp > gpus_per_node or any(
            getattr(cfg, k) % tp for k in ("num_heads", "num_kv_heads", "ffn_hidden_dim", "vocab_size")
        ):
            continue
        for pp in _divisors(num_gpus // tp):
            if cfg.num_layers % pp or (pp > 1 and cfg.tie_embeddings):
                continue
            schedules = [("1f1b", 1)]
            if pp > 1 and cfg.num_layers % (2 * pp) == 0:
                schedules.append(("interleaved_1f1b", 2))
            for r, s in _dp_splits(num_gpus // (tp * pp), tp, gpus_per_node):
                for schedule, per_rank in schedules:
                    for ac, every in AC_CHOICES:
                        base = Layout(
                            dp_replicate=r, dp_shard=s, tp=tp, pp=pp, pp_schedule=schedule,
                            pp_stages_per_rank=per_rank, cpu_offload=cpu_offload,
                            activation_checkpointing=ac, ac_every=every,
                        )  # fmt: skip
                        if cpu_offload and not base.fsdp or ac and every > cfg.num_layers:
                            continue
                        for reshard in (True, False) if base.fsdp else (True,):
                            for sync in GRAD_SYNCS if base.fsdp and pp == 1 else ("step",):
                                out.append(
                                    Layout(
                                        **{
                                            **asdict(base),
                                            "reshard_after_forward": reshard,
                                            "grad_sync": sync,
                                        }
                                    )
                                )
    return out


def _speed_key(row: dict[str, Any]) -> tuple:
    # Fastest first, then the smaller peak; without a time (CPU) the fewest recomputed blocks and
    # the largest micro-batch.
    if row["step_s"] is not None:
        return (row["step_s"], row["peak"])
    return (row["checkpointed_blocks"], -row["micro_batch"], row["peak"])


def enumerate_layouts(cfg: Any, num_gpus: int, work: Workload) -> dict[str, Any]:
    """The layouts that fit on `num_gpus`, each with its best micro-batch, fastest first (on CPU,
    where there is no time: the least recomputation, the largest micro-batch); with CPU offload
    only when nothing else fits."""
    rows, considered, offload = [], 0, False
    for cpu_offload in (False, True):
        for layout in candidate_layouts(cfg, num_gpus, work.gpus_per_node, cpu_offload):
            considered += 1
            row = best_micro_batch(cfg, layout, work)
            if row is None or (layout.grad_sync == "micro" and row["grad_accum_steps"] == 1):
                continue  # nothing fits, or the same as grad_sync=step without accumulation
            rows.append(row)
        if rows:
            break
        offload = True
    rows.sort(key=_speed_key)
    return {"considered": considered, "fit": rows, "cpu_offload_needed": offload and bool(rows)}


# --------------------------------------------------------------------------------------------
# The plan


def parse_count(text: str | float | int, name: str = "count") -> float:
    """'124M', '1.3B', '2T', '7e9', '5.9e23' -> float (K/M/B or G/T are powers of 1000)."""
    if isinstance(text, (int, float)):
        return float(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMbBgGtT]?)\s*", text)
    check(m is not None, name, text, "a number like 124M, 1.3B, 2T or 5.9e23")
    scale = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}[m.group(2).lower()]
    return float(m.group(1)) * scale


def _overrides(items: list[str]) -> dict[str, Any]:
    data = apply_overrides({}, items)
    for key, value in data.items():
        check(not isinstance(value, dict), "model-config", key, "top-level ModelConfig fields (key=value)")
    return data


def make_plan(
    *,
    preset: str | None = None,
    params: float | None = None,
    compute_budget: float | None = None,
    model_overrides: dict[str, Any] | None = None,
    tokens: float | None = None,
    tokens_per_param: float = CHINCHILLA_TOKENS_PER_PARAM,
    seq_len: int | None = None,
    global_batch_tokens: int = DEFAULT_GLOBAL_BATCH_TOKENS,
    micro_batch: int = 1,
    num_gpus: int = 8,
    gpu: str = "h100",
    precision: str | None = None,
    mfu: float | None = None,
    usable_fraction: float = 0.9,
    parallel: str | dict[str, Any] | Layout | None = None,
    gpus_per_node: int = GPUS_PER_NODE,
    top: int = 5,
) -> dict[str, Any]:
    """Everything `pretrain plan` prints, as a JSON-ready dict (bytes, FLOPs, seconds).

    mfu None: `default_mfu` of the model's size. `parallel`: a layout to evaluate beside the
    search (the trainer's short forms or a mapping of Layout fields, as its `parallel.*`); `top`:
    how many fitting layouts the plan lists, fastest first, the best variant of each mesh."""
    overrides = dict(model_overrides or {})
    check(
        sum(x is not None for x in (preset, params, compute_budget)) <= 1,
        "model",
        {"preset": preset, "params": params, "compute_budget": compute_budget},
        "at most one of --preset, --params, --compute-budget",
    )
    check(tokens_per_param > 0, "tokens_per_param", tokens_per_param, "> 0")
    check(mfu is None or 0 < mfu <= 1, "mfu", mfu, "in (0, 1]")
    check(0 < usable_fraction <= 1, "usable_fraction", usable_fraction, "in (0, 1]")
    check(num_gpus >= 1, "gpus", num_gpus, ">= 1")
    check(micro_batch >= 1, "micro_batch", micro_batch, ">= 1")
    check(gpus_per_node >= 1, "gpus_per_node", gpus_per_node, ">= 1")
    check(top >= 1, "top", top, ">= 1")
    precision = precision or ("fp32" if gpu == "cpu" else "amp")
    check(precision in PRECISIONS, "precision", precision, f"one of {list(PRECISIONS)}")
    dev = device_spec(gpu, precision)

    source = f"preset {preset or 'tiny'}"
    if compute_budget is not None or params is not None:
        target = chinchilla_params(compute_budget, tokens_per_param) if compute_budget is not None else params
        vocab = overrides.pop("vocab_size", None)
        cfg = shape_for_params(target, vocab_size=vocab, max_seq_len=seq_len or 2048, **overrides)
        source = f"{'compute-optimal' if compute_budget is not None else 'derived'} for {target:.3g} params"
    else:
        cfg = model_config(preset or "tiny", **overrides)
    seq_len = seq_len or cfg.max_seq_len
    check(seq_len >= 1, "seq_len", seq_len, ">= 1")
    if seq_len > cfg.max_seq_len:
        cfg = model_config("tiny", **{**_config_fields(cfg), "max_seq_len": seq_len})
    n = num_params(cfg)
    mfu_source = (
        "given (--mfu)" if mfu is not None else "default_mfu: by model size, from PUBLISHED_THROUGHPUT"
    )
    mfu = default_mfu(n) if mfu is None else mfu
    if tokens is None:
        tokens = compute_budget / (6 * n) if compute_budget is not None else tokens_per_param * n
    check(tokens > 0, "tokens", tokens, "> 0")
    global_batch_tokens = max(seq_len, global_batch_tokens // seq_len * seq_len)
    per_token = flops_per_token(cfg, seq_len)
    six_nd = 6.0 * n * tokens
    total = float(per_token) * tokens
    capacity = dev.memory_bytes * usable_fraction
    ac_factor = recompute_factor(cfg, seq_len)

    def wall_s(gpus: int, ac: bool) -> float | None:
        if dev.peak_flops is None:
            return None
        return total * (ac_factor if ac else 1.0) / (gpus * dev.peak_flops * mfu)

    samples = global_batch_tokens // seq_len
    rows, fits = [], []
    for strategy in STRATEGIES:
        for ac in (False, True):
            accum = max(1, samples // (num_gpus * micro_batch))
            est = memory_estimate(
                cfg,
                seq_len=seq_len,
                micro_batch=micro_batch,
                strategy=strategy,
                num_gpus=num_gpus,
                precision=precision,
                activation_checkpointing=ac,
                grad_accum_steps=accum,
                device=dev.kind,
            )
            rows.append({**est.to_dict(), "fits": est.peak <= capacity})
            best = smallest_fit(
                cfg,
                seq_len=seq_len,
                global_batch_tokens=global_batch_tokens,
                strategy=strategy,
                activation_checkpointing=ac,
                precision=precision,
                device=dev.kind,
                capacity_bytes=capacity,
            )
            fit = {
                "strategy": strategy,
                "activation_checkpointing": ac,
                "trainer": TRAINER_PARALLEL.get(strategy),
            }
            if best is None:
                fit.update(
                    min_gpus=None, micro_batch=None, grad_accum_steps=None, peak=None, wall_time_s=None
                )
            else:
                fit.update(
                    min_gpus=best.num_gpus,
                    micro_batch=best.micro_batch,
                    grad_accum_steps=best.grad_accum_steps,
                    peak=best.peak,
                    wall_time_s=wall_s(best.num_gpus, ac),
                )
            fits.append(fit)
    work = Workload(seq_len, global_batch_tokens, precision, dev, capacity, mfu, gpus_per_node)
    num_steps = math.ceil(tokens / global_batch_tokens)
    layouts = _layouts_section(cfg, num_gpus, work, parallel, micro_batch, num_steps, top)
    return {
        "model": {
            "source": source,
            "config": _config_fields(cfg),
            "num_params": n,
            "num_params_non_embedding": num_params(cfg, exclude_embeddings=True),
        },
        "tokens": tokens,
        "tokens_per_param": tokens / n,
        "seq_len": seq_len,
        "global_batch_tokens": global_batch_tokens,
        "num_steps": num_steps,
        "flops": {
            "per_token": per_token,
            "six_nd": six_nd,
            "total": total,
            "attention_fraction": 12 * cfg.num_layers * cfg.dim * seq_len / per_token,
            "recompute_factor_with_checkpointing": ac_factor,
        },
        "device": {
            "gpu": gpu,
            "name": dev.name,
            "memory_bytes": dev.memory_bytes,
            "usable_bytes": capacity,
            "peak_flops": dev.peak_flops,
        },
        "precision": precision,
        "mfu": mfu,
        "mfu_source": mfu_source,
        "mfu_anchors": [{"name": a[2], "num_params": a[0], "mfu": a[1]} for a in mfu_anchors()],
        "num_gpus": num_gpus,
        "gpus_per_node": gpus_per_node,
        "micro_batch": micro_batch,
        "wall_time_s": wall_s(num_gpus, False),
        "memory": rows,
        "fit": fits,
        "layouts": layouts,
    }


def _layouts_section(
    cfg: Any,
    num_gpus: int,
    work: Workload,
    parallel: str | dict[str, Any] | Layout | None,
    micro_batch: int,
    num_steps: int,
    top: int,
) -> dict[str, Any]:
    search = enumerate_layouts(cfg, num_gpus, work)
    ranked, meshes = [], set()
    for row in search["fit"]:  # the best variant of each mesh (checkpointing, sync, reshard)
        lay = row["layout"]
        mesh = (lay["dp_replicate"], lay["dp_shard"], lay["tp"], lay["pp"], lay["pp_schedule"])
        if mesh not in meshes and len(ranked) < top:
            meshes.add(mesh)
            ranked.append(_with_wall_time(row, num_steps))
    given = None
    if parallel is not None:
        layout = resolve_layout(parallel, num_gpus, cfg)
        check_layout(cfg, layout, num_gpus)
        given = _with_wall_time(evaluate_layout(cfg, layout, work, micro_batch), num_steps)
    return {
        "recommended": ranked[0] if ranked else None,
        "top": ranked,
        "given": given,
        "num_considered": search["considered"],
        "num_fit": len(search["fit"]),
        "cpu_offload_needed": search["cpu_offload_needed"],
    }


def _with_wall_time(row: dict[str, Any], num_steps: int) -> dict[str, Any]:
    return {**row, "wall_time_s": row["step_s"] * num_steps if row["step_s"] is not None else None}


def _config_fields(cfg: Any) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in fields(cfg)}


# --------------------------------------------------------------------------------------------
# Output


def _si(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}{unit}"
    return f"{x:.3g}{unit}"


def _gib(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x / 2**30:.2f}" if x < 10 * 2**30 else f"{x / 2**30:.1f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for scale, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= scale:
            return f"{seconds / scale:.1f} {unit}"
    return f"{seconds:.0f} s"


def render(plan: dict[str, Any], console: Any = None) -> None:
    """The plan as rich tables on the console."""
    console = console or Console()
    c, fl, dev = plan["model"]["config"], plan["flops"], plan["device"]
    kv = f", {c['num_kv_heads']} kv" if c["num_kv_heads"] != c["num_heads"] else ""
    console.print(
        f"[bold]model[/] {plan['model']['source']}: {_si(plan['model']['num_params'])} params "
        f"({_si(plan['model']['num_params_non_embedding'])} non-embedding), dim {c['dim']}, "
        f"{c['num_layers']} layers, {c['num_heads']} heads{kv}, ffn {c['ffn_hidden_dim']}, vocab {c['vocab_size']}"
    )
    console.print(
        f"[bold]tokens[/] {_si(plan['tokens'])} ({plan['tokens_per_param']:.1f} per param), seq_len "
        f"{plan['seq_len']}, global batch {plan['global_batch_tokens']:,} tokens -> {plan['num_steps']:,} steps"
    )
    console.print(
        f"[bold]FLOPs[/] 6ND {fl['six_nd']:.3g} + attention = {fl['total']:.3g} "
        f"({fl['per_token']:.3g} per token, attention {fl['attention_fraction']:.1%})"
    )
    peak = f", {dev['peak_flops'] / 1e12:.0f} TFLOP/s dense" if dev["peak_flops"] else ""
    by_size = " (by model size)" if plan["mfu_source"].startswith("default") else ""
    wall = (
        f"; compute alone {_duration(plan['wall_time_s'])} on {plan['num_gpus']} at "
        f"{plan['mfu']:.0%} MFU{by_size}"
        if plan["wall_time_s"] is not None
        else ""
    )
    console.print(
        f"[bold]device[/] {dev['name']}, {_gib(dev['memory_bytes'])} GiB (plans use "
        f"{_gib(dev['usable_bytes'])}){peak}, precision {plan['precision']}{wall}"
    )

    unit, units = ("process", "processes") if dev["name"].startswith("CPU") else ("GPU", "GPUs")
    t = Table(
        title=f"memory per {unit}, GiB: {plan['num_gpus']} x {dev['name']}, micro-batch "
        f"{plan['micro_batch']} x {plan['seq_len']} tokens",
        caption="FSDP = ZeRO-3; with accumulation it holds unsharded fp32 gradients (grad_sync=step). "
        "peak = max(end of forward, optimizer step), not the column sum",
        box=box.SIMPLE_HEAD,
    )
    for col in ("strategy", "ckpt", "weights", "grads", "optim", "activ", "buffers", "peak", "fits"):
        t.add_column(col, justify="left" if col == "strategy" else "right")
    for r in plan["memory"]:
        t.add_row(
            STRATEGY_LABELS[r["strategy"]],
            "yes" if r["activation_checkpointing"] else "no",
            *(_gib(r[k]) for k in ("weights", "grads", "optimizer", "activations", "buffers")),
            _gib(r["peak"]),
            "[green]yes[/]" if r["fits"] else "[red]no[/]",
        )
    console.print(t)

    t = Table(
        title=f"fewest {units} that fit {_gib(dev['usable_bytes'])} GiB each, largest micro-batch there",
        caption=f"time on that many {units} at {plan['mfu']:.0%} MFU; checkpointing recomputes the forward "
        f"(x{fl['recompute_factor_with_checkpointing']:.2f} FLOPs)",
        box=box.SIMPLE_HEAD,
    )
    for col in ("strategy", "ckpt", "trainer", units, "micro", "accum", "peak", "time"):
        t.add_column(col, justify="left" if col in ("strategy", "trainer") else "right")
    for f in plan["fit"]:
        counts = ("min_gpus", "micro_batch", "grad_accum_steps")
        t.add_row(
            STRATEGY_LABELS[f["strategy"]],
            "yes" if f["activation_checkpointing"] else "no",
            f["trainer"] or "-",
            *(str(f[k]) if f[k] is not None else "none fit" if k == "min_gpus" else "-" for k in counts),
            _gib(f["peak"]),
            _duration(f["wall_time_s"]),
        )
    console.print(t)
    _render_layouts(plan, console, unit)


def _render_layouts(plan: dict[str, Any], console: Any, unit: str) -> None:
    lay, dev = plan["layouts"], plan["device"]
    rows = [("given", lay["given"])] if lay["given"] else []
    rows += [(str(i + 1), r) for i, r in enumerate(lay["top"])]
    if not rows:
        console.print(f"[red]no layout fits on {plan['num_gpus']} x {dev['name']}[/]")
        return
    offload = ", only with CPU offload" if lay["cpu_offload_needed"] else ""
    t = Table(
        title=f"layouts on {plan['num_gpus']} x {dev['name']}: {lay['num_fit']} of {lay['num_considered']} "
        f"fit{offload}; the fastest of each mesh",
        caption=f"GiB: peak per {unit}. Time: compute at the MFU above + TP/PP communication + pipeline "
        "bubble + the DP communication compute does not hide; tok/s and MFU per GPU, whole step",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for col in ("#", "layout", "mb", "acc", "sync", "GiB", "tok/s", "MFU", "time"):
        t.add_column(
            col, justify="left" if col in ("#", "layout", "sync") else "right", no_wrap=col == "layout"
        )
    for rank, r in rows:
        tm, layout = r["time"] or {}, r["layout"]
        accumulates = (
            layout["dp_replicate"] * layout["dp_shard"] > 1 and r["grad_accum_steps"] * layout["pp"] > 1
        )
        sync = ("step" if layout["pp"] > 1 else layout["grad_sync"]) if accumulates else "-"
        t.add_row(
            rank,
            r["label"].replace(" · ", "·"),
            str(r["micro_batch"]),
            str(r["grad_accum_steps"]),
            sync,
            _gib(r["peak"]) if r["fits"] else f"[red]{_gib(r['peak'])}[/]",
            f"{tm['tokens_per_s_per_gpu']:,.0f}" if tm else "-",
            f"{tm['mfu']:.0%}" if tm else "-",
            _duration(r["wall_time_s"]),
        )
    console.print(t)


# --------------------------------------------------------------------------------------------
# CLI


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `pretrain plan` (pretrain/cli.py routes the area here)."""
    model = parser.add_mutually_exclusive_group()
    model.add_argument(
        "--preset", help=f"model preset of trainer/model_config.py ({', '.join(PRESETS)}); default tiny"
    )
    model.add_argument(
        "--params", help="parameter count, e.g. 124M, 1.3B, 7e9: a preset within 10%% or a derived shape"
    )
    model.add_argument(
        "--compute-budget", help="training FLOPs, e.g. 1e21: the Chinchilla-optimal size for it"
    )
    parser.add_argument(
        "--model-config",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="ModelConfig overrides, e.g. vocab_size=32768",
    )
    parser.add_argument("--tokens", help="training tokens (default: --tokens-per-param x params), e.g. 2.5B")
    parser.add_argument(
        "--tokens-per-param",
        type=float,
        default=CHINCHILLA_TOKENS_PER_PARAM,
        help="token budget rule (Chinchilla: 20)",
    )
    parser.add_argument("--seq-len", type=int, help="tokens per sample (default: the model's max_seq_len)")
    parser.add_argument(
        "--global-batch-tokens", default=str(DEFAULT_GLOBAL_BATCH_TOKENS), help="tokens per optimizer step"
    )
    parser.add_argument(
        "--micro-batch", type=int, default=1, help="samples per GPU per micro-step in the memory table"
    )
    parser.add_argument(
        "--gpus", type=int, help="GPU count of the memory table and wall time (default 8; cpu: 1)"
    )
    parser.add_argument("--gpu", default="h100", help=f"one of {', '.join(GPUS)}, or cpu (this machine)")
    parser.add_argument(
        "--precision", choices=list(PRECISIONS), help="default amp on a GPU (the trainer), fp32 on cpu"
    )
    parser.add_argument(
        "--mfu", type=float, help="model FLOPs utilisation for the wall time (default: by model size)"
    )
    parser.add_argument(
        "--parallel",
        nargs="+",
        default=None,
        metavar="KEY=VALUE",
        help="a layout to evaluate: ddp, fsdp2, or the trainer's parallel.* fields, e.g. dp_shard=4 tp=2 "
        "(and activation_checkpointing=true ac_every=2)",
    )
    parser.add_argument("--gpus-per-node", type=int, default=GPUS_PER_NODE, help="GPUs per NVLink domain")
    parser.add_argument("--top", type=int, default=5, help="fitting layouts to list, fastest first")
    parser.add_argument(
        "--usable-fraction", type=float, default=0.9, help="share of device memory a plan may use"
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON instead of tables")
    parser.set_defaults(func=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> int:
    plan = make_plan(
        preset=args.preset,
        params=parse_count(args.params, "params") if args.params else None,
        compute_budget=parse_count(args.compute_budget, "compute_budget") if args.compute_budget else None,
        model_overrides=_overrides(args.model_config),
        tokens=parse_count(args.tokens, "tokens") if args.tokens else None,
        tokens_per_param=args.tokens_per_param,
        seq_len=args.seq_len,
        global_batch_tokens=int(parse_count(args.global_batch_tokens, "global_batch_tokens")),
        micro_batch=args.micro_batch,
        num_gpus=args.gpus or (1 if args.gpu == "cpu" else 8),
        gpu=args.gpu,
        precision=args.precision,
        mfu=args.mfu,
        usable_fraction=args.usable_fraction,
        parallel=_parallel_arg(args.parallel),
        gpus_per_node=args.gpus_per_node,
        top=args.top,
    )
    if args.json:
        print(json.dumps(plan, indent=2))
    else:
        render(plan)
    return 0


def _parallel_arg(items: list[str] | None) -> str | dict[str, Any] | None:
    if not items:
        return None
    if len(items) == 1 and "=" not in items[0]:
        return items[0]  # a short form: none, ddp, fsdp2
    return apply_overrides({}, items)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pretrain.plan", description=__doc__.splitlines()[0])
    configure(parser)
    return dispatch(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
