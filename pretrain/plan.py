"""Compute planner: token budget, training FLOPs, memory per GPU and wall time for a model size.

    pretrain plan --preset 124m --gpu h100 --gpus 8
    pretrain plan --params 7B --seq-len 4096 --gpu a100-40gb --json
    pretrain plan --compute-budget 1e21 --gpu h100 --mfu 0.35      # Chinchilla: N = sqrt(C / 120)
    pretrain plan --preset tiny --gpu cpu --seq-len 128 --micro-batch 16   # the trainer on this machine
    python -m pretrain.plan ...                                     # the same

What it counts (functions below, each usable on its own):

- Parameters and FLOPs from the model shape (`num_params`, `flops_per_token`): the trainer's
  Llama block (trainer/model.py), 6N per token plus 12 * layers * dim * seq_len for QK^T and AV,
  the same convention as `Transformer.flops_per_token` (PaLM / nanoGPT). Token budget: about 20
  tokens per parameter (Chinchilla, Hoffmann et al. 2022); from a budget C = 6ND with D = 20N,
  N = sqrt(C / 120).
- Model states per GPU (`model_state_bytes`) as in the ZeRO paper (Rajbhandari et al. 2020):
  `bf16-mixed` is its mixed-precision Adam, 2 + 2 + 12 = 16 bytes per parameter (16-bit weights
  and gradients, fp32 master weights and two moments); `amp` is what `pretrain train` does on a
  GPU (fp32 weights, gradients and moments, 4 + 4 + 8 = 16 bytes, bf16 autocast); `fp32` is the
  trainer on CPU. ZeRO-1 shards the optimizer states over the GPUs, ZeRO-2 also the gradients,
  ZeRO-3 (= FSDP, `parallel=fsdp2`) also the weights; DDP (`parallel=ddp`) shards nothing.
- Activations (`activation_bytes`) from the tensors autograd saves in this block with SDPA /
  flash attention (no T x T matrix): per layer and token, fp32: 8*dim + 2*kv_dim + 4*ffn values
  (two RMSNorms save input, normalised input and output; attention saves q and k after RoPE, v
  and the output; SwiGLU saves four ffn-wide tensors), plus the loss head: the logits the loop
  keeps, the log-softmax output and two gradient buffers, (dtype + 12) * vocab bytes per token,
  which for a 50k vocabulary is as much as a dozen 768-wide layers. With activation checkpointing
  a layer keeps only its input, and one layer is recomputed at a time.
- The step's peak (`memory_estimate`) is not the sum of all that: gradients are freed before the
  forward pass, so the peak is either the end of the forward (activations + head) or the end of
  the backward / optimizer step (gradients + the optimizer's temporaries).

What it is checked against (tests/test_plan.py): 6ND of published runs, the ZeRO paper's 7.5B
example, parameter counts and FLOPs of the real module, torch's allocation trace of a training
step (the tensor bytes match it to within 2%), and the peak memory `pretrain train` records.

On CPU that record is `mem_peak_above_base_gib`: the resident-set high-water mark since
`trainer.metrics.reset_peak_memory()` (taken before the model exists) minus the resident set then.
The estimate for it is the live tensor bytes plus a constant for the training runtime: torch's
thread pools and oneDNN buffers, the data loader's pyarrow pool and thread, 88 MiB measured with a
near-empty model. RSS also counts memory the C allocator kept after a free: with glibc's defaults
the measured peak runs 7-14% above the estimate (tiny 7-10%, 124M 9%, tiny with activation
checkpointing 14%); with `MALLOC_MMAP_THRESHOLD_=65536` freed tensors go back to the OS and the
gap is under 3%. On a GPU the record is max allocated minus allocated at the reset: the CUDA
context and the caching allocator's free blocks are outside it, hence the `--usable-fraction` of
the device memory the fit search allows. The GPU layouts (`amp`, `bf16-mixed`, FSDP buffers) are
not yet checked against a GPU run.

Model configs come from trainer.model_config (ModelConfig, PRESETS; no torch), so `pretrain plan`
is instant: this module imports neither torch nor Ray.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import asdict, dataclass, fields
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from pretrain.core import accel
from pretrain.core.accel import GPUS, PEAK_FLOPS
from pretrain.core.cli import dispatch
from pretrain.core.config import ConfigError, apply_overrides, check, from_dict
from trainer.model_config import PRESETS, ModelConfig  # no torch: the planner stays instant

CHINCHILLA_TOKENS_PER_PARAM = 20.0
DEFAULT_GLOBAL_BATCH_TOKENS = 2**19  # ~0.5M tokens: GPT-3 small's batch; larger models use 1-4M
CPU_RUNTIME_BYTES = 88 * 2**20
"""What train() adds on CPU besides tensors, measured as its peak RSS above the baseline with a
~20k-parameter model: about half torch's runtime (OpenMP / oneDNN buffers, autograd), half the data
loader (pyarrow's memory pool and the prefetch thread), which starts after the model is built."""
STRATEGIES = ("ddp", "zero1", "zero2", "zero3")
STRATEGY_LABELS = {"ddp": "DDP", "zero1": "ZeRO-1", "zero2": "ZeRO-2", "zero3": "FSDP"}
TRAINER_PARALLEL = {"ddp": "ddp", "zero3": "fsdp2"}  # strategies `pretrain train` runs


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
    target: float, vocab_size: int = 50304, max_seq_len: int = 2048, **overrides: Any
) -> Any:
    """A ModelConfig near `target` parameters: a preset within 10% when there is one, else a derived
    Llama shape whose dim / num_layers is near GPT-3's and Llama's (64 below 1B parameters, 128
    above): dim a multiple of 128 up to 1024, of 256 up to 4096, of 1024 beyond; head_dim 64 below
    dim 2048, 128 from there; MHA unless `overrides` (any ModelConfig field) say otherwise."""
    check(target >= 1e5, "params", target, ">= 1e5 (smaller models: use --preset with --model-config)")
    extra = {"max_seq_len": max_seq_len, **overrides}
    best = None
    for name in PRESETS:
        try:
            cfg = model_config(name, **{"vocab_size": vocab_size, **extra})
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
            shape = dict(vocab_size=vocab_size, dim=d, num_layers=layers, num_heads=d // head_dim)
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
    "bf16-mixed": Precision("bf16-mixed", 2, 2, 12, 2, 2, False),
}


def _precision_for(precision: Precision, strategy: str) -> Precision:
    # FSDP2 with param_dtype=bf16 (the trainer's fsdp2 on GPU) computes on 16-bit weights: no cast
    # cache, and a 16-bit residual stream.
    if precision.name == "amp" and strategy == "zero3":
        return Precision("amp", 4, 4, 8, 2, 2, False)
    return precision


def model_state_bytes(
    n_params: float, strategy: str, num_gpus: int, precision: str | Precision = "bf16-mixed"
) -> dict[str, float]:
    """Per-GPU bytes of weights, gradients and optimizer states (the ZeRO paper's Figure 1)."""
    p = PRECISIONS[precision] if isinstance(precision, str) else precision
    check(strategy in STRATEGIES, "strategy", strategy, f"one of {list(STRATEGIES)}")
    check(num_gpus >= 1, "num_gpus", num_gpus, ">= 1")
    shard = {"ddp": (1, 1, 1), "zero1": (1, 1, num_gpus), "zero2": (1, num_gpus, num_gpus)}.get(
        strategy, (num_gpus, num_gpus, num_gpus)
    )
    return {
        "weights": p.weight_bytes * n_params / shard[0],
        "grads": p.grad_bytes * n_params / shard[1],
        "optimizer": p.optimizer_bytes * n_params / shard[2],
    }


def _norm_saved(width: int, consumers: int, p: Precision) -> list[int]:
    # fp32 input (the input itself in fp32, a copy otherwise), the normalised input the weight
    # multiplies, and the output as the next matmuls' input: one tensor, or one autocast copy per
    # consuming matmul when the residual stream is fp32 and matmuls run in 16 bits.
    outputs = (
        [p.residual_bytes * width]
        if p.residual_bytes == p.matmul_bytes
        else [p.matmul_bytes * width] * consumers
    )
    return [4 * width, p.residual_bytes * width, *outputs]


def layer_saved_bytes(cfg: Any, precision: Precision) -> list[int]:
    """Bytes per token of each tensor one block saves for the backward pass."""
    p, d, kv, f = precision, cfg.dim, _kv_dim(cfg), cfg.ffn_hidden_dim
    m = p.matmul_bytes
    saved = _norm_saved(d, 3, p)  # input_layernorm -> q, k, v projections
    if cfg.qk_norm:
        saved += [4 * d, m * d, 4 * kv, m * kv]
    # SDPA saves q, k (after RoPE), v, its output (o_proj's input is a view of it) and the fp32
    # log-sum-exp per head; the flash kernels keep no T x T matrix.
    saved += [m * d, m * kv, m * kv, m * d, 4 * cfg.num_heads]
    saved += _norm_saved(d, 2, p)  # post_attention_layernorm -> gate, up projections
    saved += [m * f] * 4  # gate out (silu input), silu out, up out, product (down_proj input)
    return saved


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
    v = cfg.vocab_size
    norm = tokens * sum(_norm_saved(cfg.dim, 1, p))
    if loss_chunk_tokens > 0:
        chunk = min(loss_chunk_tokens, tokens)
        # fp32 logits turned into the softmax in place, and their 16-bit copy when activations are 16-bit
        chunk_bytes = 4 + (p.matmul_bytes if p.matmul_bytes != 4 else 0)
        head = norm + chunk * v * chunk_bytes + tokens * cfg.dim * p.matmul_bytes + 4 * v * cfg.dim
        logits_held = 0.0
    else:
        head = norm + tokens * (p.matmul_bytes + 4 + 4 + 4) * v
        logits_held = tokens * p.matmul_bytes * v
    return {
        "layers": tokens * layers,
        "recompute": tokens * (per_layer + grad_work) if activation_checkpointing else 0,
        "head": head,
        "logits_held": logits_held,
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
    """One micro-batch: what the layers save plus the larger of the loss head at its peak and (with
    checkpointing) one recomputed block and its backward beside the kept logits."""
    buffers: float
    """autocast's 16-bit weight copies, FSDP's unsharded blocks, DDP's gradient buckets."""
    temporaries: float
    """Optimizer / backward temporaries at the optimizer step (the larger of the two)."""
    runtime: float
    """Non-tensor memory the estimate adds (CPU only: thread pools, loader; see the docstring)."""
    peak_forward: float
    """Forward and backward: states + buffers + activations (+ gradients built so far)."""
    peak_optimizer: float
    """End of the backward / optimizer step: states + full gradients + temporaries."""

    @property
    def peak(self) -> float:
        return max(self.peak_forward, self.peak_optimizer) + self.runtime

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "peak": self.peak}


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
) -> MemoryEstimate:
    """Peak memory of one GPU (or one CPU process) in a training step of trainer/train.py
    (`loss_chunk_tokens` as TrainConfig's: 0 is the full-logits loss)."""
    check(micro_batch >= 1, "micro_batch", micro_batch, ">= 1")
    check(seq_len >= 1, "seq_len", seq_len, ">= 1")
    check(device in ("cuda", "cpu"), "device", device, "cuda or cpu")
    check(precision in PRECISIONS, "precision", precision, f"one of {list(PRECISIONS)}")
    p = _precision_for(PRECISIONS[precision], strategy)
    n = num_params(cfg)
    states = model_state_bytes(n, strategy, num_gpus, p)
    act = activation_bytes(cfg, micro_batch * seq_len, p, activation_checkpointing, loss_chunk_tokens)
    vd = cfg.vocab_size * cfg.dim
    blk = block_params(cfg)
    root = n - cfg.num_layers * blk  # embedding(s) + final norm: FSDP2's root group
    # autocast's 16-bit copy of every Linear weight, incl. the lm_head (the tied embedding).
    cast_cache = p.matmul_bytes * (cfg.num_layers * _block_matmul_params(cfg) + vd) if p.cast_cache else 0.0
    # FSDP: the root unsharded for the whole step, two blocks (current + prefetched) unsharded,
    # one block's unsharded gradient plus its fp32 copy for the reduce-scatter.
    fsdp_unsharded = (
        p.matmul_bytes * (root + 2 * blk) + (p.matmul_bytes + 4) * blk if strategy == "zero3" else 0.0
    )
    # DDP (gradient_as_bucket_view off) copies the gradients into flat buckets for the all-reduce.
    ddp_buckets = p.grad_bytes * n if strategy == "ddp" and num_gpus > 1 else 0.0
    grad_shards = num_gpus if strategy in ("zero2", "zero3") else 1
    opt_shards = 1 if strategy == "ddp" else num_gpus
    # torch's CPU AdamW updates one tensor at a time and allocates two temporaries of its size
    # (sqrt, then divide); the fused CUDA kernel allocates none.
    largest = max(vd, cfg.dim * cfg.ffn_hidden_dim)
    opt_temp = 2 * 4 * largest / opt_shards if device == "cpu" else 0.0
    # A tied embedding's second gradient (the lookup's) is a full vocab x dim tensor before it is
    # added into the lm_head's.
    tied_temp = p.grad_bytes * vd / grad_shards if cfg.tie_embeddings else 0.0
    w, g, o = states["weights"], states["grads"], states["optimizer"]
    # With accumulation the gradients live across micro-steps (set_to_none frees them after the
    # step); otherwise the backward builds them up while it frees activations.
    held_grads = g if grad_accum_steps > 1 else 0.0
    at_head = act["layers"] + act["head"] + held_grads
    activations = act["layers"] + act["head"]
    if activation_checkpointing:
        # The backward recomputes the last block beside every kept block input and the head's
        # gradients, or the first block beside the gradients of all the others.
        g_root, g_block = g * root / n, g * blk / n
        recompute = act["recompute"] + act["logits_held"]
        activations = max(activations, act["layers"] + recompute)
        at_head = max(
            at_head,
            act["layers"] + recompute + max(held_grads, g_root),
            recompute + max(held_grads, g - g_block),
        )
    buffers = cast_cache + fsdp_unsharded + ddp_buckets
    peak_forward = w + o + buffers + at_head
    # End of the backward (still inside autocast, FSDP buffers live) or the optimizer step.
    end_of_step = max(opt_temp, cast_cache + fsdp_unsharded + tied_temp)
    peak_optimizer = w + o + g + act["logits_held"] + ddp_buckets + end_of_step
    return MemoryEstimate(
        strategy=strategy,
        activation_checkpointing=activation_checkpointing,
        num_gpus=num_gpus,
        micro_batch=micro_batch,
        seq_len=seq_len,
        grad_accum_steps=grad_accum_steps,
        weights=w,
        grads=g,
        optimizer=o,
        activations=activations,
        buffers=buffers,
        temporaries=max(opt_temp, tied_temp),
        runtime=CPU_RUNTIME_BYTES if device == "cpu" else 0.0,
        peak_forward=peak_forward,
        peak_optimizer=peak_optimizer,
    )


# --------------------------------------------------------------------------------------------
# Devices and the fit search


@dataclass(frozen=True)
class Device:
    name: str
    memory_bytes: float
    peak_flops: float | None
    """Dense peak FLOP/s at the planned precision (None on CPU: no wall-time estimate)."""
    kind: str
    """cuda or cpu."""


def device_spec(gpu: str, precision: str) -> Device:
    """A --gpu name (or `cpu`: this machine's RAM, no peak) at a precision; peaks from core.accel."""
    if gpu == "cpu":
        return Device("CPU (this machine)", _total_ram_bytes(), None, "cpu")
    check(gpu in GPUS, "gpu", gpu, f"one of {sorted(GPUS)} or cpu")
    key, gb = GPUS[gpu]
    return Device(key, gb * 2**30, PEAK_FLOPS[key]["fp32" if precision == "fp32" else "bf16"], "cuda")


def _total_ram_bytes() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024.0
    except OSError:
        pass
    return float("nan")


def recompute_factor(cfg: Any, seq_len: int) -> float:
    """Hardware FLOPs with activation checkpointing / without: each block's forward runs twice."""
    blocks_forward = cfg.num_layers * (2 * _block_matmul_params(cfg) + 4 * cfg.dim * seq_len)
    return 1.0 + blocks_forward / flops_per_token(cfg, seq_len)


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
    mfu: float = 0.4,
    usable_fraction: float = 0.9,
) -> dict[str, Any]:
    """Everything `pretrain plan` prints, as a JSON-ready dict (bytes, FLOPs, seconds)."""
    overrides = dict(model_overrides or {})
    check(
        sum(x is not None for x in (preset, params, compute_budget)) <= 1,
        "model",
        {"preset": preset, "params": params, "compute_budget": compute_budget},
        "at most one of --preset, --params, --compute-budget",
    )
    check(tokens_per_param > 0, "tokens_per_param", tokens_per_param, "> 0")
    check(0 < mfu <= 1, "mfu", mfu, "in (0, 1]")
    check(0 < usable_fraction <= 1, "usable_fraction", usable_fraction, "in (0, 1]")
    check(num_gpus >= 1, "gpus", num_gpus, ">= 1")
    check(micro_batch >= 1, "micro_batch", micro_batch, ">= 1")
    precision = precision or ("fp32" if gpu == "cpu" else "amp")
    check(precision in PRECISIONS, "precision", precision, f"one of {list(PRECISIONS)}")
    dev = device_spec(gpu, precision)

    source = f"preset {preset or 'tiny'}"
    if compute_budget is not None or params is not None:
        target = chinchilla_params(compute_budget, tokens_per_param) if compute_budget is not None else params
        vocab = overrides.pop("vocab_size", 50304)
        cfg = shape_for_params(target, vocab_size=vocab, max_seq_len=seq_len or 2048, **overrides)
        source = f"{'compute-optimal' if compute_budget is not None else 'derived'} for {target:.3g} params"
    else:
        cfg = model_config(preset or "tiny", **overrides)
    seq_len = seq_len or cfg.max_seq_len
    check(seq_len >= 1, "seq_len", seq_len, ">= 1")
    if seq_len > cfg.max_seq_len:
        cfg = model_config("tiny", **{**_config_fields(cfg), "max_seq_len": seq_len})
    n = num_params(cfg)
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
        "num_steps": math.ceil(tokens / global_batch_tokens),
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
        "num_gpus": num_gpus,
        "micro_batch": micro_batch,
        "wall_time_s": wall_s(num_gpus, False),
        "memory": rows,
        "fit": fits,
    }


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
    wall = (
        f"; {_duration(plan['wall_time_s'])} on {plan['num_gpus']} at {plan['mfu']:.0%} MFU"
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
        caption="FSDP = ZeRO-3. peak = max(end of forward, optimizer step), not the column sum",
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


# --------------------------------------------------------------------------------------------
# CLI


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `pretrain plan` (pretrain/cli.py routes the area here)."""
    model = parser.add_mutually_exclusive_group()
    model.add_argument(
        "--preset", help="model preset of trainer/model.py (tiny, 124m, 350m, 1b); default tiny"
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
    parser.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation for the wall time")
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
    )
    if args.json:
        print(json.dumps(plan, indent=2))
    else:
        render(plan)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pretrain.plan", description=__doc__.splitlines()[0])
    configure(parser)
    return dispatch(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
