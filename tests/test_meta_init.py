"""Meta-device init (issue 14): no rank ever holds the whole model, and the weights are exactly the
ones one process builds."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest
import torch

from pretrain.core.config import from_dict
from tests.train_helpers import build_report, tiny_config_dict
from trainer.config import ParallelConfig, TrainConfig
from trainer.model import Transformer, preset
from trainer.parallelize import build_layout, build_model

REPO = Path(__file__).resolve().parents[1]


def test_meta_build_equals_the_plain_single_process_init(tmp_path):
    """build_model (meta, to_empty, per-parameter seeded init) == Transformer(cfg).init_weights(seed)."""
    cfg = from_dict(TrainConfig, tiny_config_dict(tmp_path / "tok", tmp_path / "r", seed=11))
    built = build_model(cfg, build_layout(ParallelConfig(dp_shard=1).degrees(1), "cpu"), torch.device("cpu"))
    plain = Transformer(cfg.model_config())
    plain.init_weights(11)
    a, b = built.state_dict(), plain.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert built.lm_head.weight is built.embed_tokens.weight  # still tied
    other = Transformer(cfg.model_config())
    other.init_weights(12)
    assert not torch.equal(other.layers["0"].mlp.up_proj.weight, plain.layers["0"].mlp.up_proj.weight)


def test_8b_on_meta_plans_without_allocating():
    """The Llama-3-8B-shaped preset on the meta device: 8.03B parameters, its FLOPs, no memory."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.device("meta"):
        model = Transformer(preset("8b"))
    assert model.num_params() == pytest.approx(8.03e9, rel=0.001)
    assert model.flops_per_token(8192) > 6 * 8e9
    assert all(p.device.type == "meta" for p in model.parameters())
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 64 * 1024, f"peak RSS grew {grown_kib} KiB building 8B on meta"


@pytest.mark.slow
def test_1b_under_fsdp2_on_two_ranks_never_holds_the_whole_model(tmp_path):
    """`python -m trainer build`: the 1B preset (4.3 GB in fp32) on 2 gloo ranks under FSDP2 keeps
    each rank's peak RSS (torch included) below 0.75x of the full model, each holding half."""
    report = build_report(tmp_path)
    full = report["full_fp32_bytes"]
    assert full > 4.2e9
    assert [r["param_bytes"] for r in report["ranks"]] == [full // 2, full // 2]
    assert report["max_peak_ratio"] < 0.75, report
