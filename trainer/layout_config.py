"""The layout of the ranks: ParallelConfig, the device mesh pp x dp_replicate x dp_shard x tp.

    pc = ParallelConfig(dp_shard=-1, tp=2)      # or TrainConfig.parallel from a YAML `parallel:`
    pc.degrees(8)                               # {"pp": 1, "dp_replicate": 1, "dp_shard": 4, "tp": 2}
    pc.check_model(preset("8b"), 8)             # tp divides the heads, ... (errors name the field)

No torch: the trainer's config, `--dry-run` and `pretrain plan` (whose Layout extends it) share
these rules, so the planner accepts exactly the layouts the trainer runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pretrain.core.config import check, to_dict
from trainer.model_config import ModelConfig

PP_SCHEDULES = ("gpipe", "1f1b", "interleaved_1f1b")
GRAD_SYNCS = ("step", "micro")


def check_pp_microbatches(n_microbatches: int, pp: int, schedule: str) -> None:
    """The pipeline schedule can run `n_microbatches` per step: 1F1B needs one per stage at least,
    interleaved 1F1B a multiple of max(1, n // pp) (torch.distributed.pipelining's rules)."""
    check(
        n_microbatches >= 1 and (schedule != "1f1b" or n_microbatches >= pp),
        "parallel.pp_microbatches",
        n_microbatches,
        f">= 1{f' and >= parallel.pp={pp} with 1f1b' if schedule == '1f1b' else ''}",
    )
    rounds = max(1, n_microbatches // pp)
    check(
        schedule != "interleaved_1f1b" or n_microbatches % rounds == 0,
        "parallel.pp_microbatches",
        n_microbatches,
        f"a multiple of max(1, n // pp) = {rounds} with interleaved_1f1b (e.g. a multiple of pp={pp})",
    )


MESH_DIMS = ("pp", "dp_replicate", "dp_shard", "tp")
"""The device mesh's named dimensions, outermost first (torchtitan's order): pipeline stages
across nodes, then data-parallel replicas, then data-parallel shards, tensor parallelism
innermost (fastest links). Room for `cp` (context parallelism) beside tp; not built yet."""

SHORT_FORMS = {
    "none": {"dp_shard": 1},
    "ddp": {"dp_replicate": -1, "dp_shard": 1},
    "fsdp2": {"dp_shard": -1},
}
"""`parallel: ddp | fsdp2 | none` as mesh settings."""


@dataclass
class ParallelConfig:
    """The layout of the ranks: one device mesh (pp x dp_replicate x dp_shard x tp) whose product
    is the world size. `parallel: fsdp2` is short for {dp_shard: -1}, `ddp` for {dp_replicate: -1,
    dp_shard: 1}, `none` for one process. HSDP is dp_replicate x dp_shard; tp and pp compose with
    either."""

    dp_replicate: int = 1
    """Data-parallel replicas: ranks holding whole copies (of their dp_shard group's shards); -1:
    the rest of the world. Alone (dp_shard = tp = pp = 1) it is DDP."""
    dp_shard: int = -1
    """Data-parallel ranks that shard parameters, gradients and optimizer states (FSDP2,
    `fully_shard` on each block and the root); -1: the rest of the world."""
    tp: int = 1
    """Tensor parallelism (torch.distributed.tensor.parallel): attention and SwiGLU split by heads
    and hidden units, norms sequence-parallel, vocab-parallel embedding and output with a loss that
    never gathers the logits. Must divide num_heads and num_kv_heads; keep it within a node."""
    pp: int = 1
    """Pipeline stages (torch.distributed.pipelining), the layers split into pp * pp_stages_per_rank
    contiguous stages. Needs untied embeddings (model_overrides.tie_embeddings: false)."""
    cp: int = 1
    """Context parallelism: reserved, must be 1."""
    pp_schedule: Literal["gpipe", "1f1b", "interleaved_1f1b"] = "1f1b"
    """Pipeline schedule: 1F1B (activations of at most pp micro-batches alive), interleaved 1F1B
    (smaller bubble, pp_stages_per_rank >= 2), GPipe (all forwards, then all backwards)."""
    pp_stages_per_rank: int = 1
    """Virtual stages per pipeline rank (interleaved 1F1B: 2 or more, placed round-robin)."""
    pp_microbatches: int | None = None
    """Micro-batches a pipeline step splits its batch into; null: the phase's gradient-accumulation
    count (at least pp, so every stage has work)."""
    grad_sync: Literal["step", "micro"] = "step"
    """Gradient accumulation across micro-batches. step: gradients are reduced once, after the last
    micro-batch (FSDP2 keeps unsharded fp32 gradients in between: more memory, less communication;
    DDP skips the all-reduce via no_sync). micro: reduce(-scatter) after every micro-batch, so FSDP2
    holds only sharded gradients. `pretrain plan` counts the one chosen."""
    reshard_after_forward: bool = True
    """FSDP2: free the gathered parameters after each block's forward and gather them again for the
    backward (ZeRO-3); false keeps them until the backward (ZeRO-2-like: more memory, less traffic)."""
    cpu_offload: bool = False
    """FSDP2 CPUOffloadPolicy: sharded parameters, gradients and the optimizer step live in host
    memory, copied to the GPU per block (slow; for models that do not fit otherwise)."""

    def __post_init__(self) -> None:
        check(
            self.pp_schedule in PP_SCHEDULES,
            "parallel.pp_schedule",
            self.pp_schedule,
            f"one of {list(PP_SCHEDULES)}",
        )
        check(
            self.grad_sync in GRAD_SYNCS, "parallel.grad_sync", self.grad_sync, f"one of {list(GRAD_SYNCS)}"
        )
        for name in ("dp_replicate", "dp_shard", "tp", "pp"):
            v = getattr(self, name)
            check(v == -1 or v >= 1, f"parallel.{name}", v, ">= 1, or -1 for the rest of the world")
        check(self.cp == 1, "parallel.cp", self.cp, "1 (context parallelism is not built yet)")
        check(
            [self.dp_replicate, self.dp_shard, self.tp, self.pp].count(-1) <= 1,
            "parallel",
            to_dict(self),
            "at most one of dp_replicate, dp_shard, tp, pp set to -1",
        )
        check(self.pp_stages_per_rank >= 1, "parallel.pp_stages_per_rank", self.pp_stages_per_rank, ">= 1")
        interleaved = self.pp_schedule == "interleaved_1f1b"
        check(
            self.pp_stages_per_rank >= 2 if interleaved else self.pp_stages_per_rank == 1,
            "parallel.pp_stages_per_rank",
            self.pp_stages_per_rank,
            ">= 2 with interleaved_1f1b" if interleaved else f"1 with {self.pp_schedule}",
        )
        check(
            self.pp_microbatches is None or self.pp_microbatches >= 1,
            "parallel.pp_microbatches",
            self.pp_microbatches,
            ">= 1 or null",
        )

    def degrees(self, world_size: int) -> dict[str, int]:
        """{pp, dp_replicate, dp_shard, tp} for `world_size` ranks, -1 resolved; a product that
        cannot equal the world size is an error naming the fields."""
        sizes = {n: getattr(self, n) for n in MESH_DIMS}
        fixed = math.prod(v for v in sizes.values() if v != -1)
        rest = [n for n, v in sizes.items() if v == -1]
        if rest:
            check(
                world_size % fixed == 0,
                f"parallel.{rest[0]}",
                -1,
                f"a layout whose other dims ({fixed}) divide the world size {world_size}",
            )
            sizes[rest[0]] = world_size // fixed
        check(
            math.prod(sizes.values()) == world_size,
            "parallel",
            " x ".join(f"{n}={v}" for n, v in sizes.items()),
            f"a product equal to the world size {world_size} (nproc or torchrun's WORLD_SIZE)",
        )
        return sizes

    def check_model(self, model: ModelConfig, world_size: int) -> None:
        """The layout fits the model and the world: tp divides the heads and kv-heads (and ffn and
        vocab), pp's stages do not outnumber the layers, pipeline stages have untied embeddings,
        the degrees multiply to the world size. A tp or pp given outright is judged against the
        model first, so `tp=3` with 32 heads names tp, not the product."""
        _check_dims(model, self.tp, self.pp, self.pp_stages_per_rank)
        d = self.degrees(world_size)
        _check_dims(model, d["tp"], d["pp"], self.pp_stages_per_rank)
        check(
            d["tp"] == 1 or d["pp"] == 1,
            "parallel.tp",
            d["tp"],
            "1 with parallel.pp > 1: pipeline stages pass full-sequence activations, not TP's "
            "sequence shards (TP x PP is not built yet)",
        )

    def describe(self, world_size: int) -> str:
        """e.g. `pp 2 x dp_shard 2 (FSDP2), 1F1B`: the layout in words for logs and --dry-run."""
        d = self.degrees(world_size)
        parts = [f"{n} {v}" for n, v in d.items() if v > 1] or ["one process"]
        kind = (
            "DDP"
            if d["dp_replicate"] > 1 and d["dp_shard"] == d["tp"] == d["pp"] == 1
            else (
                "HSDP"
                if d["dp_replicate"] > 1 and d["dp_shard"] > 1
                else "FSDP2"
                if d["dp_shard"] > 1
                else ""
            )
        )
        return (
            " x ".join(parts)
            + (f" ({kind})" if kind else "")
            + (f", {self.pp_schedule}" if d["pp"] > 1 else "")
        )


def _check_dims(model: ModelConfig, tp: int, pp: int, stages_per_rank: int) -> None:
    """tp and pp against the model's shape; -1 (not resolved yet) passes."""
    if tp != -1:
        for name in ("num_heads", "num_kv_heads", "ffn_hidden_dim", "vocab_size"):
            size = getattr(model, name)
            check(size % tp == 0, "parallel.tp", tp, f"a divisor of {name}={size}")
    if pp != -1:
        stages = pp * stages_per_rank
        check(
            stages <= model.num_layers,
            "parallel.pp",
            pp,
            f"pp x pp_stages_per_rank ({stages}) <= num_layers={model.num_layers}",
        )
        check(
            pp == 1 or not model.tie_embeddings,
            "model_overrides.tie_embeddings",
            model.tie_embeddings,
            "false with parallel.pp > 1 (a tied matrix would live on the first and the last stage)",
        )
