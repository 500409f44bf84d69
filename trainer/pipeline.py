"""Pipeline parallelism: split the Transformer's blocks into stages and run them with
torch.distributed.pipelining (GPipe, 1F1B, interleaved 1F1B).

    prune_for_rank(model, pp_rank, pp, stages_per_rank)     # keep only this rank's blocks
    runner = PipelineRunner(model, pp_mesh, pp_rank, pp, "1f1b", 1, n_microbatches=8, device=device)
    # FSDP2 / compile go on the blocks and on each of runner.stage_modules here, before the first step
    loss_sum = runner.step(ids, labels, token_scale)        # forward + backward of this rank's batch
    grad_norm = clip_grads_pp(model.parameters(), max_norm, pp_mesh)

Virtual stage s of pp * stages_per_rank lives on pp rank s % pp (the "loop" placement that
interleaved 1F1B expects). The pruned Transformer stays the one module that the optimizer and
checkpoints see: its state_dict keys are the full model's minus the pruned blocks, so DCP
checkpoints move across layouts. A StageModule is a view over it (shared parameters) that the
schedule runs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.pipelining import (
    PipelineStage,
    Schedule1F1B,
    ScheduleGPipe,
    ScheduleInterleaved1F1B,
)
from torch.distributed.tensor import DTensor

from trainer.layout_config import check_pp_microbatches
from trainer.model import Transformer

SCHEDULES = ("gpipe", "1f1b", "interleaved_1f1b")


def stage_layer_ids(num_layers: int, pp: int, stages_per_rank: int = 1) -> list[list[int]]:
    """Contiguous block ids of each of the pp * stages_per_rank virtual stages. An uneven split
    gives one extra block to each of the middle stages; the last stage (which also runs the
    lm_head and the loss) is the last to get one, then the first (the embedding)."""
    if pp < 1 or stages_per_rank < 1:
        raise ValueError(f"parallel.pp={pp}, stages_per_rank={stages_per_rank}: both must be >= 1")
    num_stages = pp * stages_per_rank
    if num_stages > num_layers:
        raise ValueError(
            f"parallel.pp={pp} x stages_per_rank={stages_per_rank} = {num_stages} pipeline stages, "
            f"but the model has num_layers={num_layers}: each stage needs at least one block "
            f"(lower parallel.pp or stages_per_rank)"
        )
    base, extra = divmod(num_layers, num_stages)
    first_extra = (num_stages - extra) // 2  # the `extra` stages around the middle, rounding early
    sizes = [base + (first_extra <= s < first_extra + extra) for s in range(num_stages)]
    bounds = [sum(sizes[:s]) for s in range(num_stages + 1)]
    return [list(range(bounds[s], bounds[s + 1])) for s in range(num_stages)]


def rank_stage_ids(pp_rank: int, pp: int, stages_per_rank: int = 1) -> list[int]:
    """The virtual stages that pp rank `pp_rank` runs, in pipeline order (loop placement)."""
    if not 0 <= pp_rank < pp:
        raise ValueError(f"pp_rank={pp_rank}: expected 0 <= pp_rank < parallel.pp={pp}")
    return list(range(pp_rank, pp * stages_per_rank, pp))


def prune_for_rank(model: Transformer, pp_rank: int, pp: int, stages_per_rank: int = 1) -> Transformer:
    """Delete, in place, what pp rank `pp_rank` does not run: the other ranks' blocks (the rest
    keep their "i" keys), the embedding unless it runs stage 0, the final norm and lm_head unless
    it runs the last stage. Returns `model`."""
    if model.cfg.tie_embeddings:
        raise ValueError(
            "model_overrides.tie_embeddings=True cannot run with parallel.pp > 1: the tied matrix "
            "would live on both the first stage (embedding) and the last (lm_head), on different "
            "ranks; set model_overrides.tie_embeddings=False"
        )
    num_stages = pp * stages_per_rank
    stages = rank_stage_ids(pp_rank, pp, stages_per_rank)
    per_stage = stage_layer_ids(model.cfg.num_layers, pp, stages_per_rank)
    keep = {str(i) for s in stages for i in per_stage[s]}
    for key in [k for k in model.layers if k not in keep]:
        del model.layers[key]
    if 0 not in stages:
        model.embed_tokens = None
    if num_stages - 1 not in stages:
        model.norm = None
        model.lm_head = None
    return model


class StageModule(nn.Module):
    """One virtual stage over a pruned Transformer: its blocks, plus the embedding on the first
    stage and norm + lm_head on the last, registered here as the parent's own submodules (shared
    parameters, same FQNs). forward: token ids (B, T) or hidden states (B, T, dim) in; hidden
    states, or logits (B, T, vocab) on the last stage, out. FSDP2 may wrap it as a root."""

    def __init__(
        self,
        model: Transformer,
        stage_index: int,
        num_stages: int,
        layer_ids: list[int],
        autocast_dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.stage_index, self.num_stages = stage_index, num_stages
        self.is_first, self.is_last = stage_index == 0, stage_index == num_stages - 1
        missing = [i for i in layer_ids if str(i) not in model.layers]
        if (
            missing
            or (self.is_first and model.embed_tokens is None)
            or (self.is_last and model.lm_head is None)
        ):
            raise ValueError(
                f"stage {stage_index}: the model lacks its blocks {missing} or its embedding/lm_head; "
                f"prune_for_rank for the rank that runs it (model has blocks {list(model.layers)})"
            )
        self.embed_tokens = model.embed_tokens if self.is_first else None
        self.layers = nn.ModuleDict({str(i): model.layers[str(i)] for i in layer_ids})
        self.norm = model.norm if self.is_last else None
        self.lm_head = model.lm_head if self.is_last else None
        self.autocast_dtype = autocast_dtype
        # Not a submodule: the RoPE tables are read from the parent at each call, because
        # init_weights (after a meta-device build) replaces them there.
        self.__dict__["_parent"] = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        parent = self.__dict__["_parent"]
        assert T <= parent.rope_cos.shape[0], f"sequence length {T} > RoPE table {parent.rope_cos.shape[0]}"
        cos, sin = parent.rope_cos[:T], parent.rope_sin[:T]
        autocast = (
            torch.autocast(x.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            if self.embed_tokens is not None:
                x = self.embed_tokens(x)  # (B, T) ids -> (B, T, dim)
            for layer in self.layers.values():
                x = layer(x, cos, sin)
            if self.lm_head is not None:
                x = self.lm_head(self.norm(x))  # (B, T, vocab)
        return x


def _group(pp_group: dist.ProcessGroup | DeviceMesh) -> dist.ProcessGroup:
    if isinstance(pp_group, DeviceMesh):
        if pp_group.ndim != 1:
            raise ValueError(f"pp_group: expected the 1-D 'pp' sub-mesh, got a {pp_group.ndim}-D mesh")
        return pp_group.get_group()
    return pp_group


class PipelineRunner:
    """Runs forward + backward of one rank's batch through the pipeline. The stages and the
    schedule are built at the first step and rebuilt when the micro-batch shape changes (a new
    curriculum phase): torch's runtime shape inference runs one micro-batch through each stage
    and exchanges shapes, once per shape."""

    def __init__(
        self,
        model: Transformer,
        pp_group: dist.ProcessGroup | DeviceMesh,
        pp_rank: int,
        pp: int,
        schedule: str,
        stages_per_rank: int,
        n_microbatches: int,
        device: torch.device,
        autocast_dtype: torch.dtype | None = None,
    ):
        if schedule not in SCHEDULES:
            raise ValueError(f"parallel.pp_schedule={schedule!r}: expected one of {SCHEDULES}")
        interleaved = schedule == "interleaved_1f1b"
        if interleaved != (stages_per_rank >= 2) or stages_per_rank < 1:
            raise ValueError(
                f"stages_per_rank={stages_per_rank} with parallel.pp_schedule={schedule!r}: "
                "gpipe and 1f1b run 1 stage per rank, interleaved_1f1b 2 or more"
            )
        check_pp_microbatches(n_microbatches, pp, schedule)
        self.group = _group(pp_group)
        if dist.get_rank(self.group) != pp_rank or dist.get_world_size(self.group) != pp:
            raise ValueError(
                f"pp_rank={pp_rank}, parallel.pp={pp}, but this rank is {dist.get_rank(self.group)} "
                f"of {dist.get_world_size(self.group)} in pp_group"
            )
        self.schedule_name, self.n_microbatches, self.device = schedule, n_microbatches, device
        self.num_stages = pp * stages_per_rank
        per_stage = stage_layer_ids(model.cfg.num_layers, pp, stages_per_rank)
        self.stage_modules = [
            StageModule(model, s, self.num_stages, per_stage[s], autocast_dtype)
            for s in rank_stage_ids(pp_rank, pp, stages_per_rank)
        ]
        self.has_first = self.stage_modules[0].is_first
        self.has_last = self.stage_modules[-1].is_last
        self._schedule = None
        self._shape: tuple[int, ...] | None = None
        self._ce_sums: list[torch.Tensor] = []

    def _loss(self, logits: torch.Tensor, target: torch.Tensor, token_scale) -> torch.Tensor:
        ce = F.cross_entropy(
            logits.flatten(0, 1).float(), target.flatten(), ignore_index=-100, reduction="sum"
        )
        self._ce_sums.append(ce.detach())
        return ce * token_scale

    def _build(self) -> None:
        stages = [
            PipelineStage(m, m.stage_index, self.num_stages, self.device, group=self.group)
            for m in self.stage_modules
        ]
        if self.schedule_name == "interleaved_1f1b":
            self._schedule = ScheduleInterleaved1F1B(
                stages, self.n_microbatches, loss_fn=self._loss, scale_grads=False
            )
        else:
            cls = ScheduleGPipe if self.schedule_name == "gpipe" else Schedule1F1B
            self._schedule = cls(stages[0], self.n_microbatches, loss_fn=self._loss, scale_grads=False)

    def step(
        self,
        ids: torch.Tensor,
        labels: torch.Tensor,
        token_scale: float | torch.Tensor,
        n_microbatches: int | None = None,
    ) -> torch.Tensor:
        """Forward + backward of this rank's batch, ids/labels (B, T) (every pp rank passes the same
        ones; the first stage reads ids, the last labels). Gradients accumulate into the parameters'
        .grad as for loss = sum CE * token_scale. Returns the unscaled CE sum over the batch (a device
        tensor) on the rank that runs the last stage, zero elsewhere. `n_microbatches`: a new split
        (the phase's), rebuilding the schedule."""
        if n_microbatches is not None and n_microbatches != self.n_microbatches:  # a new phase's split
            check_pp_microbatches(n_microbatches, dist.get_world_size(self.group), self.schedule_name)
            self.n_microbatches, self._shape = n_microbatches, None
        B = ids.shape[0]
        if B % self.n_microbatches:
            raise ValueError(f"batch of {B} rows does not split into n_microbatches={self.n_microbatches}")
        shape = (B // self.n_microbatches, *ids.shape[1:])
        if shape != self._shape:
            self._build()
            self._shape = shape
        self._ce_sums = []
        self._schedule.step(
            *((ids,) if self.has_first else ()),
            target=labels if self.has_last else None,
            return_outputs=False,
            loss_kwargs={"token_scale": token_scale},
        )
        if not self.has_last:
            return torch.zeros((), device=self.device)
        # the last n: shape inference at a (re)build calls the loss once more, before the step
        return torch.stack(self._ce_sums[-self.n_microbatches :]).sum()


def pp_grad_norm(
    params: Iterable[torch.Tensor], pp_group: dist.ProcessGroup | DeviceMesh, norm_type: float = 2.0
) -> torch.Tensor:
    """The norm of all gradients of all pipeline stages: this rank's norm (a DTensor's full one,
    over its FSDP/TP mesh) combined over the pp group. A device tensor; no host sync."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads, norm_type)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    group = _group(pp_group)
    if math.isinf(norm_type):
        dist.all_reduce(norm, op=dist.ReduceOp.MAX, group=group)
        return norm
    norm = norm**norm_type
    dist.all_reduce(norm, op=dist.ReduceOp.SUM, group=group)
    return norm ** (1.0 / norm_type)


def clip_grads_pp(
    params: Iterable[torch.Tensor],
    max_norm: float,
    pp_group: dist.ProcessGroup | DeviceMesh,
    norm_type: float = 2.0,
) -> torch.Tensor:
    """clip_grad_norm_ across pipeline stages: scale every gradient by min(1, max_norm / (norm +
    1e-6)) with the norm over all stages; returns that norm (before clipping)."""
    params = list(params)
    norm = pp_grad_norm(params, pp_group, norm_type)
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm
