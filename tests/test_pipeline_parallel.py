"""Pipeline parallelism (trainer/pipeline.py): stage splits, pruning, and GPipe / 1F1B /
interleaved 1F1B on gloo ranks against one process: the summed loss, every parameter's gradient
(by FQN) and the grad norm within 1e-5 relative, at two sequence lengths in a row.

One launch of 4 CPU ranks on a (pp=2, dp_shard=2) mesh serves every distributed case: each
pp group runs plain PP on its own batch, then both run PP 2 x FSDP2 2 on halves of one batch.
Run by hand: .venv/bin/pytest -q tests/test_pipeline_parallel.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from trainer.model import ModelConfig, Transformer
from trainer.pipeline import (
    PipelineRunner,
    StageModule,
    clip_grads_pp,
    pp_grad_norm,
    prune_for_rank,
    rank_stage_ids,
    stage_layer_ids,
)

REPO = Path(__file__).resolve().parent.parent
SEED = 1234
CFG = dict(
    vocab_size=64, dim=32, num_layers=4, num_heads=4, num_kv_heads=2, max_seq_len=32, tie_embeddings=False
)
SEQ_LENS = (16, 8)  # a curriculum: the second step runs a shorter sequence through the same runner
TOL = 1e-5
# name: (schedule, stages_per_rank, n_microbatches, fsdp)
CASES = {
    "gpipe": ("gpipe", 1, 2, False),
    "1f1b": ("1f1b", 1, 4, False),
    "interleaved_1f1b": ("interleaved_1f1b", 2, 4, False),
    "1f1b_fsdp2": ("1f1b", 1, 2, True),
    "interleaved_1f1b_fsdp2": ("interleaved_1f1b", 2, 2, True),
}


def _model(**overrides) -> Transformer:
    model = Transformer(ModelConfig(**{**CFG, **overrides}))
    model.init_weights(SEED)
    return model


def _batch(seed: int, rows: int, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, CFG["vocab_size"], (rows, T), generator=g)
    labels = torch.randint(0, CFG["vocab_size"], (rows, T), generator=g)
    labels[torch.rand(rows, T, generator=g) < 0.25] = -100  # padding and masked prompts
    return ids, labels


# -- splits and pruning (one process) --------------------------------------------------------------


def test_stage_layer_ids_even_uneven_and_interleaved():
    assert stage_layer_ids(4, 2) == [[0, 1], [2, 3]]
    assert stage_layer_ids(8, 2, 2) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    # extra blocks go to the middle stages; the last (lm_head + loss) is the last to get one
    assert stage_layer_ids(6, 4) == [[0], [1, 2], [3, 4], [5]]
    assert stage_layer_ids(5, 4) == [[0], [1, 2], [3], [4]]
    assert stage_layer_ids(7, 4) == [[0, 1], [2, 3], [4, 5], [6]]
    assert stage_layer_ids(5, 2) == [[0, 1, 2], [3, 4]]
    assert rank_stage_ids(1, 2, 2) == [1, 3]  # loop placement: stage s on rank s % pp


def test_too_many_stages_and_tied_embeddings_are_refused():
    with pytest.raises(ValueError, match=r"parallel\.pp=4 x stages_per_rank=2 = 8 .* num_layers=4"):
        stage_layer_ids(4, 4, 2)
    with pytest.raises(ValueError, match=r"model_overrides\.tie_embeddings"):
        prune_for_rank(_model(tie_embeddings=True), 0, 2)


def test_pruned_stages_chain_to_the_full_model_with_shared_parameters():
    full = _model()
    ids, _ = _batch(0, 2, 12)
    pruned = [prune_for_rank(_model(), r, 2, 2) for r in range(2)]
    # state_dict keys: the full model's, split between the ranks, none renamed
    keys = [set(m.state_dict()) for m in pruned]
    assert keys[0] | keys[1] == set(full.state_dict()) and not keys[0] & keys[1]
    assert set(pruned[1].layers) == {"1", "3"} and pruned[1].embed_tokens is None
    assert pruned[0].lm_head is None and pruned[0].norm is None
    stages = {
        s: StageModule(pruned[s % 2], s, 4, layers) for s, layers in enumerate(stage_layer_ids(4, 2, 2))
    }
    # a view: the stage's parameters are the parent's objects, under the same names
    parent = dict(pruned[1].named_parameters())
    for name, p in stages[3].named_parameters():
        assert p is parent[name], name
    x = ids
    for s in range(4):
        x = stages[s](x)
    torch.testing.assert_close(x, full(ids), rtol=0, atol=0)
    # autocast inside each stage (the backward then runs outside it, as in the trainer)
    for stage in stages.values():
        stage.autocast_dtype = torch.bfloat16
    x = ids
    for s in range(4):
        x = stages[s](x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = full(ids)
    assert x.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(x, want, rtol=0, atol=0)


def test_pruned_on_meta_then_initialised_holds_the_full_models_weights():
    """The meta-device path: build on meta, prune, take stage views, materialise, init_weights."""
    full = _model().state_dict()
    with torch.device("meta"):
        model = Transformer(ModelConfig(**CFG))
    prune_for_rank(model, 1, 2)
    stage = StageModule(model, 1, 2, [2, 3])
    model.to_empty(device="cpu")
    model.init_weights(SEED)
    got = model.state_dict()
    assert set(got) == {k for k in full if not k.startswith(("embed_tokens", "layers.0.", "layers.1."))}
    for k, v in got.items():
        assert torch.equal(v, full[k]), k
    h = torch.randn(2, 8, CFG["dim"])
    assert stage(h).shape == (2, 8, CFG["vocab_size"])  # RoPE tables read from the initialised parent


def test_a_model_pruned_for_another_rank_is_refused():
    model = prune_for_rank(_model(), 0, 2)
    with pytest.raises(ValueError, match=r"lacks its blocks \[2, 3\]"):
        StageModule(model, 1, 2, [2, 3])


# -- 4 gloo ranks: one launch, every case ----------------------------------------------------------


def _reference(ids: torch.Tensor, labels: torch.Tensor) -> dict:
    """One process, the whole batch: CE sum, gradients of CE sum / valid tokens, their norm."""
    model = _model()
    logits = model(ids)
    ce = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum")
    (ce / (labels != -100).sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    norm = torch.nn.utils.get_total_norm(list(grads.values()))
    return {"ce": ce.detach(), "grads": grads, "norm": norm}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _run_case(name: str, mesh, out: dict) -> None:
    schedule, spr, n_mb, fsdp = CASES[name]
    pp_mesh, dp_mesh = mesh["pp"], mesh["dp_shard"]
    pp_rank, dp_rank, dp = pp_mesh.get_local_rank(), dp_mesh.get_local_rank(), dp_mesh.size()
    model = prune_for_rank(_model(), pp_rank, 2, spr)
    runner = PipelineRunner(model, pp_mesh, pp_rank, 2, schedule, spr, n_mb, torch.device("cpu"))
    if fsdp:  # the lead's layout: each owned block, then each stage as the root
        for block in model.layers.values():
            fully_shard(block, mesh=dp_mesh)
        for stage in runner.stage_modules:
            fully_shard(stage, mesh=dp_mesh)
    results = []
    for T in SEQ_LENS:
        # plain PP: each pp group its own batch of 4 rows; FSDP2: both halves of one batch of 8
        ids, labels = _batch(T, 8, T) if fsdp else _batch(100 * dp_rank + T, 4, T)
        ref = _reference(ids, labels)
        # the trainer's weighting: dp / valid target tokens of the global batch
        token_scale = (dp if fsdp else 1) / int((labels != -100).sum())
        if fsdp:
            ids, labels = ids[dp_rank * 4 : (dp_rank + 1) * 4], labels[dp_rank * 4 : (dp_rank + 1) * 4]
        loss = runner.step(ids, labels, token_scale)
        if fsdp:
            dist.all_reduce(loss, group=dp_mesh.get_group())
        grads = {}
        for n, p in model.named_parameters():
            g = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
            grads[n] = _rel(g, ref["grads"][n])
        norm = pp_grad_norm(model.parameters(), pp_mesh)
        max_norm = float(ref["norm"]) / 3
        clip_grads_pp(model.parameters(), max_norm, pp_mesh)
        coef = max_norm / (float(ref["norm"]) + 1e-6)
        clipped = max(
            _rel(p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad, ref["grads"][n] * coef)
            for n, p in model.named_parameters()
        )
        results.append(
            {
                "T": T,
                "loss_rel": _rel(loss, ref["ce"]) if runner.has_last else None,
                "loss_zero": None if runner.has_last else float(loss),
                "grad_rel": grads,
                "norm_rel": _rel(norm, ref["norm"]),
                "clip_rel": clipped,
            }
        )
        model.zero_grad(set_to_none=True)
    out[name] = results


def _worker(rank: int, world: int, init: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    # a short timeout: a schedule that hangs fails here instead of after gloo's 30 minutes
    dist.init_process_group(
        "gloo", init_method=init, rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("pp", "dp_shard"))
    out: dict = {"pp_rank": mesh["pp"].get_local_rank(), "seconds": {}}
    for name in CASES:
        t0 = time.perf_counter()
        try:
            _run_case(name, mesh, out)
        except Exception:  # reported per case: the other cases still run and report
            out[name] = traceback.format_exc()
            dist.barrier()
        out["seconds"][name] = round(time.perf_counter() - t0, 2)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(out))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("pp")
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(REPO)
    init = f"file://{tmp}/store"
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(r), "4", init, str(tmp)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(4)
    ]
    try:
        logs = [p.communicate(timeout=120)[0] for p in procs]
    finally:  # a hung pipeline must not outlive the test
        for p in procs:
            p.kill()
    for r, p in enumerate(procs):
        assert p.returncode == 0, f"rank {r} exited {p.returncode}:\n{logs[r][-4000:]}"
    return [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(4)]


@pytest.mark.parametrize("case", list(CASES))
def test_pipeline_matches_one_process(ranks, case):
    names = set()
    for r, out in enumerate(ranks):
        res = out[case]
        assert not isinstance(res, str), f"rank {r}, {case}:\n{res}"
        assert [row["T"] for row in res] == list(SEQ_LENS)
        for row in res:
            where = f"rank {r} (pp {out['pp_rank']}), {case}, T={row['T']}"
            if row["loss_rel"] is not None:
                assert row["loss_rel"] <= TOL, (where, row["loss_rel"])
            else:
                assert row["loss_zero"] == 0.0, (where, row["loss_zero"])
            bad = {n: d for n, d in row["grad_rel"].items() if d > TOL}
            assert not bad, (where, bad)
            assert row["norm_rel"] <= TOL and row["clip_rel"] <= TOL, (where, row)
            names |= set(row["grad_rel"])
    assert names == set(dict(_model().named_parameters())), "some gradient was never compared"
    assert sum(row["loss_rel"] is not None for out in ranks for row in out[case]) == 2 * len(SEQ_LENS)


if __name__ == "__main__":
    cli = argparse.ArgumentParser()
    for arg in ("rank", "world", "init", "out_dir"):
        cli.add_argument(arg)
    a = cli.parse_args()
    _worker(int(a.rank), int(a.world), a.init, a.out_dir)
