"""Process group setup and model wrapping: none, DDP, or FSDP2 (`fully_shard` per block + root).

    dist_env = init_distributed("cuda")           # reads torchrun's RANK/WORLD_SIZE/LOCAL_RANK
    model = parallelize(model, "fsdp2", device, activation_checkpointing=True)

gloo on CPU, nccl on GPU. Without torchrun (no WORLD_SIZE) no process group is created and
"ddp"/"fsdp2" fall back to the plain module, so the same config runs in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from trainer.launch import INIT_ENV


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


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= dist.get_world_size()
    return x


def parallelize(
    model: nn.Module,
    mode: str,
    device: torch.device,
    activation_checkpointing: bool = False,
    param_dtype: torch.dtype | None = None,
    compile: bool = False,
) -> nn.Module:
    """Wrap `model` (already on `device`, already initialised) for `mode`. `param_dtype` (FSDP2
    only): the dtype its MixedPrecisionPolicy casts parameters to for compute, gradients reduced
    in fp32; None: fp32 throughout. `compile`: compile each block (after activation checkpointing,
    before sharding)."""
    if activation_checkpointing:
        for i, block in enumerate(model.layers):
            model.layers[i] = checkpoint_wrapper(block)
    if compile:
        compile_blocks(model)
    if mode == "none" or not dist.is_initialized():
        return model
    if mode == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    if mode == "fsdp2":
        mp = (
            MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
            if param_dtype is not None
            else MixedPrecisionPolicy()
        )
        for block in model.layers:
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        return model
    raise ValueError(f"parallel={mode!r}: expected none, ddp or fsdp2")


def compile_blocks(model: nn.Module) -> None:
    """torch.compile every transformer block in place (`Module.compile`: state_dict keys unchanged),
    with static shapes: a new sequence length compiles a new graph instead of a dynamic one. Call
    after activation checkpointing wraps the blocks and before FSDP2 shards them."""
    for block in model.layers:
        block.compile(dynamic=False)


def unwrap(model: nn.Module) -> nn.Module:
    """The Transformer inside a DDP wrapper (FSDP2 modifies the module in place)."""
    return model.module if hasattr(model, "module") and not isinstance(model, nn.ModuleList) else model
