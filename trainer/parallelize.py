"""Process group, device mesh and model wrapping: DDP, FSDP2, HSDP and tensor parallelism on one
mesh (pipeline stages: trainer/pipeline.py).

    dist_env = init_distributed("cuda")                  # torchrun's RANK/WORLD_SIZE/LOCAL_RANK
    layout = build_layout(cfg.parallel.degrees(dist_env.world_size), "cuda")
    model = parallelize(model, layout, device, activation_checkpointing=True)

gloo on CPU, nccl on GPU. Without torchrun (no WORLD_SIZE) no process group is created and the
layout is one process, so the same config runs anywhere.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)
from torch.nn.parallel import DistributedDataParallel

from pretrain.core.config import ConfigError
from trainer import pipeline
from trainer.config import TrainConfig
from trainer.launch import INIT_ENV
from trainer.model import Transformer


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or dist.is_initialized()


def init_distributed(device_type: str, timeout_s: float = 600.0) -> DistEnv:
    """Join the process group when launched by torchrun (env:// rendezvous) or by trainer/launch.py
    (a file:// rendezvous in PRETRAIN_DIST_INIT); a no-op in a plain process. Collectives time out
    after `timeout_s`; on CUDA the group is bound to this rank's GPU (`device_id`), so NCCL
    connects eagerly and a wrong device mapping fails here, not at the first all-reduce."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device_type == "cuda" else "gloo",
            init_method=os.environ.get(INIT_ENV, "env://"),
            rank=int(os.environ["RANK"]),
            world_size=world_size,
            timeout=timedelta(seconds=timeout_s),
            device_id=torch.device("cuda", local_rank) if device_type == "cuda" else None,
        )
    rank = dist.get_rank() if dist.is_initialized() else 0
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank)


class CollectiveTimeout(RuntimeError):
    """A collective did not complete within the process group's timeout: a peer stalled or died."""


def is_timeout(e: BaseException) -> bool:
    """Whether `e` is a process-group collective that timed out (gloo: "Timed out waiting ... for
    recv", NCCL's watchdog: "Watchdog caught collective operation timeout", torch's DistTimeoutError)."""
    if isinstance(e, getattr(dist, "DistTimeoutError", ())):
        return True
    msg = str(e).lower()
    return isinstance(e, RuntimeError) and ("timed out" in msg or "timeout" in msg)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@dataclass
class Layout:
    """Where this rank sits on the device mesh (pp, dp_replicate, dp_shard, tp) and the groups
    the loop needs: `dp_*` for data (ranks with the same dp coordinates read the same batch), the
    loss and token counts; `pp_*` for the pipeline. One process: no mesh, every size 1."""

    degrees: dict[str, int]
    mesh: DeviceMesh | None = None

    def size(self, dim: str) -> int:
        return self.degrees[dim]

    def local_rank(self, dim: str) -> int:
        return self.mesh.get_local_rank(dim) if self.mesh is not None and self.degrees[dim] > 1 else 0

    @property
    def dp_size(self) -> int:
        return self.degrees["dp_replicate"] * self.degrees["dp_shard"]

    @property
    def dp_rank(self) -> int:
        return self.local_rank("dp_replicate") * self.degrees["dp_shard"] + self.local_rank("dp_shard")

    @property
    def dp_group(self) -> dist.ProcessGroup | None:
        """The data-parallel ranks with this rank's tp and pp coordinates (None: just this one)."""
        return self._flat("dp_replicate", "dp_shard") if self.dp_size > 1 else None

    @property
    def fsdp_mesh(self) -> DeviceMesh | None:
        """fully_shard's mesh: (dp_replicate, dp_shard) for HSDP, else the dp_shard dim alone; None
        without data parallelism (or with DDP's plain replicas)."""
        if self.mesh is None or self.dp_size == 1 or self.is_ddp:
            return None
        if self.degrees["dp_replicate"] > 1:
            return self.mesh["dp_replicate", "dp_shard"]
        return self.mesh["dp_shard"]

    @property
    def is_ddp(self) -> bool:
        """Plain replicas (DDP): dp_replicate only."""
        d = self.degrees
        return d["dp_replicate"] > 1 and d["dp_shard"] == d["tp"] == d["pp"] == 1

    @property
    def tp_mesh(self) -> DeviceMesh | None:
        return self.mesh["tp"] if self.mesh is not None and self.degrees["tp"] > 1 else None

    @property
    def pp_group(self) -> dist.ProcessGroup | None:
        return self.mesh.get_group("pp") if self.mesh is not None and self.degrees["pp"] > 1 else None

    def _flat(self, *dims: str) -> dist.ProcessGroup:
        name = "_".join(dims) + "_flat"
        if name not in self._groups:
            self._groups[name] = self.mesh[dims]._flatten(name).get_group()
        return self._groups[name]

    def __post_init__(self) -> None:
        self._groups: dict[str, dist.ProcessGroup] = {}


def build_layout(degrees: dict[str, int], device_type: str) -> Layout:
    """The device mesh for `degrees` (ParallelConfig.degrees of the world size); none for one rank."""
    if math.prod(degrees.values()) == 1 or not dist.is_initialized():
        return Layout(degrees)
    names = tuple(degrees)
    mesh = init_device_mesh(device_type, tuple(degrees[n] for n in names), mesh_dim_names=names)
    return Layout(degrees, mesh)


def tensor_parallel(model: nn.Module, tp_mesh: DeviceMesh) -> None:
    """Megatron-style tensor parallelism with sequence parallelism, torchtitan's plan for a Llama
    block: q/k/v and gate/up split by output (heads, hidden units), o/down by input; the norms and
    the residual stream hold a slice of the sequence (Shard(1)), gathered before attention and the
    MLP and reduce-scattered after; the embedding splits the vocabulary (rows), the output head
    too (logits stay sharded over the vocabulary: the loss runs under `loss_parallel`)."""
    for block in model.layers.values():
        parallelize_module(
            block,
            tp_mesh,
            {
                "input_layernorm": SequenceParallel(),
                "self_attn": PrepareModuleInput(
                    input_layouts=(Shard(1), None, None), desired_input_layouts=(Replicate(), None, None)
                ),
                "self_attn.q_proj": ColwiseParallel(),
                "self_attn.k_proj": ColwiseParallel(),
                "self_attn.v_proj": ColwiseParallel(),
                "self_attn.o_proj": RowwiseParallel(output_layouts=Shard(1)),
                "post_attention_layernorm": SequenceParallel(),
                "mlp": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
                "mlp.gate_proj": ColwiseParallel(),
                "mlp.up_proj": ColwiseParallel(),
                "mlp.down_proj": RowwiseParallel(output_layouts=Shard(1)),
            },
        )
    plan = {}
    if model.embed_tokens is not None:
        plan["embed_tokens"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1))
    if model.norm is not None:
        plan["norm"] = SequenceParallel()
        plan["lm_head"] = ColwiseParallel(
            input_layouts=Shard(1), output_layouts=Shard(-1), use_local_output=False
        )
    parallelize_module(model, tp_mesh, plan)
    if model.cfg.tie_embeddings and model.embed_tokens is not None and model.lm_head is not None:
        model.lm_head.weight = model.embed_tokens.weight  # both Shard(0) over the vocabulary


def parallelize(
    model: nn.Module,
    layout: Layout,
    device: torch.device,
    activation_checkpointing: bool = False,
    param_dtype: torch.dtype | None = None,
    compile: bool = False,
    ac_every: int = 1,
    reshard_after_forward: bool = True,
    cpu_offload: bool = False,
    roots: Callable[[nn.Module], list[nn.Module]] | None = None,
) -> nn.Module:
    """Apply the layout to `model` (on `meta` or materialised): tensor parallelism, activation
    checkpointing of every `ac_every`-th block, per-block compile, then FSDP2/HSDP (`fully_shard`
    on each block, then on each root: the model, or the pipeline's stage modules `roots(model)`
    returns once the blocks are wrapped) or
    DDP. `param_dtype` (FSDP2 only): the dtype its MixedPrecisionPolicy casts parameters to for
    compute, gradients reduced in fp32; None: fp32 throughout. DDP needs a materialised model;
    the others are applied on `meta` by the Trainer and initialised per shard afterwards."""
    if layout.tp_mesh is not None:
        tensor_parallel(model, layout.tp_mesh)
    if activation_checkpointing:
        for key in list(model.layers.keys()):
            if int(key) % ac_every == 0:
                model.layers[key] = checkpoint_wrapper(model.layers[key])
    if compile:
        compile_blocks(model)
    root_modules = roots(model) if roots is not None else [model]  # after the blocks are wrapped
    if layout.is_ddp:
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    mesh = layout.fsdp_mesh
    if mesh is None:
        return model
    kw: dict = {
        "mesh": mesh,
        "mp_policy": MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
        if param_dtype is not None
        else MixedPrecisionPolicy(),
        "offload_policy": CPUOffloadPolicy() if cpu_offload else OffloadPolicy(),
    }
    for block in model.layers.values():
        fully_shard(block, reshard_after_forward=reshard_after_forward, **kw)
    for root in root_modules:
        # the root's parameters (embedding, final norm, head) are needed again at once: keep them
        fully_shard(root, reshard_after_forward=False, **kw)
    return model


def compile_blocks(model: nn.Module) -> None:
    """torch.compile every transformer block in place (`Module.compile`: state_dict keys unchanged),
    with static shapes: a new sequence length compiles a new graph instead of a dynamic one. Call
    after activation checkpointing wraps the blocks and before FSDP2 shards them."""
    for block in model.layers.values():
        block.compile(dynamic=False)


def unwrap(model: nn.Module) -> nn.Module:
    """The Transformer inside a DDP wrapper (FSDP2 modifies the module in place)."""
    return model.module if hasattr(model, "module") and not isinstance(model, nn.ModuleList) else model


def compute_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    """The dtype matmuls run in: `precision`, auto meaning bf16 on CUDA and fp32 elsewhere."""
    if cfg.precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.precision]


def build_model(
    cfg: TrainConfig, layout: Layout, device: torch.device, roots: Callable[[nn.Module], list] | None = None
) -> nn.Module:
    """The run's model under `layout`, initialised: built on `meta`, cut to this rank's pipeline
    stages, tensor-parallelised and sharded there, then materialised with `to_empty` and initialised
    shard by shard (`Transformer.init_weights(cfg.seed)`: the same weights as one process builds),
    so no rank ever holds the whole model. DDP (replicas) is applied after initialisation.
    `roots(model)`: the pipeline's stage modules, FSDP2's roots instead of the model."""
    if cfg.parallel.cpu_offload and device.type != "cuda":
        raise ConfigError(f"parallel.cpu_offload=true needs a GPU; this run's device is {device.type}")
    with torch.device("meta"):
        model = Transformer(cfg.model_config())
    if layout.size("pp") > 1:
        pc = cfg.parallel
        pipeline.prune_for_rank(model, layout.local_rank("pp"), layout.size("pp"), pc.pp_stages_per_rank)
    dtype = compute_dtype(cfg, device)
    fsdp = layout.fsdp_mesh is not None
    kw = dict(
        activation_checkpointing=cfg.activation_checkpointing,
        ac_every=cfg.ac_every,
        param_dtype=dtype if fsdp and dtype != torch.float32 else None,
        compile=cfg.compile if cfg.compile is not None else device.type == "cuda",
        reshard_after_forward=cfg.parallel.reshard_after_forward,
        cpu_offload=cfg.parallel.cpu_offload,
    )
    if not layout.is_ddp:
        model = parallelize(model, layout, device, roots=roots, **kw)
    model.to_empty(device="cpu" if cfg.parallel.cpu_offload else device)
    unwrap(model).init_weights(cfg.seed)
    if layout.is_ddp:
        model = parallelize(model, layout, device, **kw)
    return model
