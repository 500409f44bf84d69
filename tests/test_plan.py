"""Compute planner (`pretrain plan`): FLOPs and memory against published figures, the real module,
the live tensor bytes of a training step (torch profiler) and the peak the trainer records on CPU.

The memory runs start a fresh Python process each (the peak is a per-process high-water mark) and
train a few steps on synthetic token shards; the 124M one is marked slow.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import yaml

from pretrain.core.config import ConfigError
from pretrain.plan import (
    OLMO_1B,
    OLMO_LLAMA3_8B,
    PRECISIONS,
    Layout,
    Precision,
    Workload,
    check_layout,
    checkpointed_blocks,
    chinchilla_params,
    default_mfu,
    device_spec,
    enumerate_layouts,
    evaluate_layout,
    flops_per_token,
    in_flight_microbatches,
    layer_saved_bytes,
    layout_memory,
    make_plan,
    memory_estimate,
    mfu_anchors,
    model_config,
    model_state_bytes,
    num_params,
    parse_count,
    pipeline_bubble,
    pipeline_stages,
    recompute_factor,
    resolve_layout,
    shape_for_params,
    step_time,
)

REPO = Path(__file__).resolve().parent.parent
GB = 1e9
GiB = 2**30
MiB = 2**20
H100 = 989.4e12  # bf16 dense peak, core.accel

# Published shapes, written as ModelConfig overrides of any preset.
LLAMA2_7B = dict(
    vocab_size=32000, dim=4096, num_layers=32, num_heads=32, num_kv_heads=32, ffn_hidden_dim=11008,
    tie_embeddings=False, max_seq_len=4096,
)  # fmt: skip
# GPT-3 175B (Brown et al. 2020, Table 2.1) with a SwiGLU of the same width as its 4 * dim GELU MLP.
GPT3_175B = dict(
    vocab_size=50257, dim=12288, num_layers=96, num_heads=96, num_kv_heads=96, ffn_hidden_dim=32768,
    max_seq_len=2048,
)  # fmt: skip


# ------------------------------------------------------------------------------------- FLOPs


def test_llama2_7b_parameter_count_and_6nd():
    cfg = model_config("1b", **LLAMA2_7B)
    assert num_params(cfg) == 6_738_415_616  # meta-llama/Llama-2-7b-hf, sum of numel
    plan = make_plan(preset="1b", model_overrides=LLAMA2_7B, tokens=2e12, seq_len=4096)
    assert plan["flops"]["six_nd"] == 6 * 6_738_415_616 * 2e12
    assert plan["flops"]["six_nd"] == pytest.approx(8.4e22, rel=0.04)  # "7B x 2T ~ 8.4e22"
    assert plan["tokens_per_param"] == pytest.approx(2e12 / 6_738_415_616)


def test_gpt3_175b_training_flops():
    cfg = model_config("1b", **GPT3_175B)
    assert num_params(cfg) == pytest.approx(175e9, rel=0.01)
    plan = make_plan(preset="1b", model_overrides=GPT3_175B, tokens=300e9, seq_len=2048)
    assert plan["flops"]["six_nd"] == pytest.approx(3.14e23, rel=0.01)  # 3640 PF-days, Table D.1
    # Attention at T=2048 adds 12*L*d*T / 6N: about 2.7%, which the paper's 6ND figure leaves out.
    extra = 12 * 96 * 12288 * 2048 / (6 * num_params(cfg))
    assert plan["flops"]["total"] == pytest.approx(plan["flops"]["six_nd"] * (1 + extra), rel=1e-9)


def test_chinchilla_compute_budget_inverts_to_70b_and_1_4t_tokens():
    # Chinchilla: 70B parameters, 1.4T tokens, 5.76e23 FLOPs (Hoffmann et al. 2022, Table 3).
    assert chinchilla_params(5.76e23) == pytest.approx(70e9, rel=0.015)  # 69.3B
    assert chinchilla_params(5.76e23, tokens_per_param=20) ** 2 * 120 == pytest.approx(5.76e23)
    plan = make_plan(compute_budget=5.76e23, seq_len=2048)
    n = plan["model"]["num_params"]
    assert n == pytest.approx(70e9, rel=0.06)  # a real shape near the optimum
    assert plan["flops"]["six_nd"] == pytest.approx(5.76e23, rel=1e-9)  # the budget is spent exactly
    assert plan["tokens"] == pytest.approx(1.4e12, rel=0.06)
    assert plan["tokens_per_param"] == pytest.approx(5.76e23 / (6 * n * n))
    assert 18 < plan["tokens_per_param"] < 22
    # And 6 * 70B * 1.4T, the brief's ~5.9e23:
    assert make_plan(params=70e9, tokens=1.4e12)["flops"]["six_nd"] == pytest.approx(5.9e23, rel=0.06)


def test_token_budget_defaults_to_20_per_param():
    plan = make_plan(preset="124m")
    assert plan["tokens"] == 20 * plan["model"]["num_params"]
    assert make_plan(preset="124m", tokens_per_param=5)["tokens"] == 5 * plan["model"]["num_params"]


def test_param_shapes_pick_presets_or_derive():
    assert shape_for_params(124e6).dim == 768  # the 124m preset (123.6M)
    for target in (20e6, 1.3e9, 7e9, 175e9):
        cfg = shape_for_params(target)
        assert num_params(cfg) == pytest.approx(target, rel=0.05)
        assert cfg.dim % cfg.num_heads == 0 and cfg.num_heads % 2 == 0
        if target >= 1e9:  # GPT-3 / Llama aspect ratios
            assert 64 <= cfg.dim / cfg.num_layers <= 160


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("tiny", {}),
        ("124m", {}),
        ("350m", {}),
        ("1b", {}),
        ("8b", {}),
        ("tiny", {"qk_norm": True, "tie_embeddings": False, "num_kv_heads": 1}),
        ("124m", {"ffn_hidden_dim": 3000, "vocab_size": 1000}),
    ],
)
def test_counts_equal_the_real_module(name, overrides):
    torch = pytest.importorskip("torch")
    from trainer.model import Transformer

    cfg = model_config(name, **overrides)
    with torch.device("meta"):
        model = Transformer(cfg)
    assert num_params(cfg) == sum(p.numel() for p in model.parameters())
    assert num_params(cfg, exclude_embeddings=True) == model.num_params(exclude_embeddings=True)
    for seq_len in (128, cfg.max_seq_len):
        assert flops_per_token(cfg, seq_len) == model.flops_per_token(seq_len)


# ------------------------------------------------------------------------------------- memory


def test_mixed_precision_adam_is_16_bytes_per_param_and_zero_paper_example():
    # ZeRO (Rajbhandari et al. 2020), Figure 1: 7.5B parameters, K = 12, N_d = 64.
    n = 7.5e9
    per_stage = {
        s: sum(model_state_bytes(n, s, 64, "bf16-mixed").values()) for s in ("ddp", "zero1", "zero2", "zero3")
    }
    assert per_stage["ddp"] == 16 * n == 120 * GB
    assert per_stage["zero1"] == pytest.approx(31.4 * GB, rel=0.002)
    assert per_stage["zero2"] == pytest.approx(16.6 * GB, rel=0.005)  # 15 + 1.64
    assert per_stage["zero3"] == pytest.approx(1.9 * GB, rel=0.02) and per_stage["zero3"] == 120 * GB / 64
    # The trainer's layouts (fp32 master = the weights) hold 16 bytes per parameter as well.
    for precision in ("amp", "fp32"):
        assert sum(model_state_bytes(n, "ddp", 8, precision).values()) == 16 * n
        assert sum(model_state_bytes(n, "zero3", 8, precision).values()) == 2 * n


def test_fp32_layer_activations_formula():
    cfg = model_config("tiny")  # dim 128, kv_dim 64, ffn 512, 4 heads
    d, kv, f = 128, 64, 512
    assert sum(layer_saved_bytes(cfg, PRECISIONS["fp32"])) == 4 * (8 * d + 2 * kv + 4 * f) + 4 * 4
    # autocast: fp32 residual and norms, bf16 matmul tensors, one bf16 copy of a norm's output per
    # consuming projection (3 for attention, 2 for the MLP).
    amp = (4 + 4 + 3 * 2) * d + 2 * (2 * d + 2 * kv) + 16 + (4 + 4 + 2 * 2) * d + 2 * 4 * f
    assert sum(layer_saved_bytes(cfg, PRECISIONS["amp"])) == amp


def test_estimate_responds_to_sharding_checkpointing_and_accumulation():
    cfg = model_config("1b")
    kw = dict(seq_len=2048, micro_batch=4, precision="amp")
    base = memory_estimate(cfg, **kw)
    ckpt = memory_estimate(cfg, activation_checkpointing=True, **kw)
    assert ckpt.activations < base.activations / 2 and ckpt.peak < base.peak
    accum = memory_estimate(cfg, grad_accum_steps=4, **kw)  # gradients live across micro-steps
    assert accum.peak_forward == pytest.approx(base.peak_forward + base.grads)
    ddp8, fsdp8 = (memory_estimate(cfg, strategy=s, num_gpus=8, **kw) for s in ("ddp", "zero3"))
    assert fsdp8.weights == ddp8.weights / 8 and fsdp8.optimizer == ddp8.optimizer / 8
    assert fsdp8.peak < ddp8.peak
    assert ddp8.buffers > base.buffers  # gradient buckets
    with pytest.raises(ConfigError, match="strategy"):
        memory_estimate(cfg, strategy="zero4", **kw)


def test_fit_search_finds_smallest_gpu_count():
    plan = make_plan(preset="1b", model_overrides=LLAMA2_7B, seq_len=4096, gpu="a100-40gb", num_gpus=8)
    fits = {(f["strategy"], f["activation_checkpointing"]): f for f in plan["fit"]}
    assert fits[("ddp", False)]["min_gpus"] is None  # 16 bytes x 6.7B = 108 GB > 36 GiB usable
    fsdp = fits[("zero3", True)]
    usable = plan["device"]["usable_bytes"]
    assert fsdp["peak"] <= usable
    n = fsdp["min_gpus"]
    assert n > 1 and (6.738e9 * 16 / n) < usable
    smaller = memory_estimate(
        model_config("1b", **LLAMA2_7B), seq_len=4096, micro_batch=1, strategy="zero3", num_gpus=n // 2,
        activation_checkpointing=True, grad_accum_steps=128 // (n // 2),
    )  # fmt: skip
    assert smaller.peak > usable
    # The fit table's time is the compute alone, at the size-dependent default MFU.
    assert plan["mfu"] == default_mfu(6_738_415_616)
    assert fsdp["wall_time_s"] == pytest.approx(
        plan["flops"]["total"]
        * plan["flops"]["recompute_factor_with_checkpointing"]
        / (n * 312e12 * plan["mfu"])
    )


def test_parse_count_and_bad_input():
    assert parse_count("124M") == 124e6 and parse_count("1.3B") == 1.3e9 and parse_count("2T") == 2e12
    assert parse_count("5.9e23") == 5.9e23 and parse_count("7e9") == 7e9
    with pytest.raises(ConfigError, match="params"):
        parse_count("lots", "params")
    with pytest.raises(ConfigError, match="gpu"):
        make_plan(preset="tiny", gpu="tpu")
    with pytest.raises(ConfigError, match="dimm"):
        make_plan(preset="tiny", model_overrides={"dimm": 3})


def test_cli_json_and_table():
    from pretrain.cli import main

    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["plan", "--preset", "124m", "--gpu", "h100", "--gpus", "8", "--json"]) == 0
    plan = json.loads(out.getvalue())
    assert plan["model"]["num_params"] == 123_587_328
    assert plan["device"]["name"] == "H100 SXM" and plan["device"]["peak_flops"] == 989.4e12
    assert plan["mfu"] == pytest.approx(0.20)  # the 124m anchor of default_mfu
    assert plan["wall_time_s"] == pytest.approx(plan["flops"]["total"] / (8 * 989.4e12 * 0.20))
    assert len(plan["memory"]) == len(plan["fit"]) == 8
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["plan", "--params", "1.3B", "--model-config", "vocab_size=32000", "--gpu", "a100"]) == 0
    text = out.getvalue()
    for expected in ("tokens", "FLOPs", "memory per GPU", "FSDP", "fewest GPUs", "vocab 32000"):
        assert expected in text, (expected, text)


def test_plan_module_imports_neither_torch_nor_ray():
    code = "import sys, pretrain.plan; print(sorted(m for m in ('torch', 'ray') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------- layouts: memory


def test_8b_preset_is_llama3_8b():
    cfg = model_config("8b")
    assert num_params(cfg) == 8_030_261_248  # meta-llama/Meta-Llama-3-8B, sum of numel
    shape = (cfg.vocab_size, cfg.dim, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.ffn_hidden_dim)
    assert shape == (128256, 4096, 32, 32, 8, 14336)
    assert (cfg.rope_theta, cfg.max_seq_len, cfg.tie_embeddings) == (5e5, 8192, False)
    # --params 8B is this preset with its own vocabulary; 7B (15% off) stays a derived shape.
    assert shape_for_params(8e9, max_seq_len=8192) == cfg
    assert num_params(shape_for_params(7e9)) == pytest.approx(7e9, rel=0.05)


def test_grad_sync_step_holds_unsharded_fp32_gradients():
    """Issue 14: with accumulation the trainer's FSDP2 keeps unsharded fp32 gradients between
    micro-batches; for the 1b preset on 8 GPUs the planner said 7.08 GiB (sharded gradients, now
    grad_sync=micro) and the run needs about 11 GiB."""
    cfg = model_config("1b")
    n = num_params(cfg)
    kw = dict(seq_len=2048, micro_batch=1, grad_accum_steps=32, precision="amp")
    step = layout_memory(cfg, Layout(dp_shard=8), **kw)
    micro = layout_memory(cfg, Layout(dp_shard=8, grad_sync="micro"), **kw)
    assert step.held_grads == 4 * n and micro.held_grads == 4 * n / 8
    assert step.peak - micro.peak == pytest.approx(4 * n * 7 / 8, rel=1e-12)  # 3.51 GiB
    assert micro.peak / GiB == pytest.approx(7.078, abs=0.001)
    assert step.peak / GiB == pytest.approx(11, rel=0.05)  # 10.59
    # The ZeRO-stage API agrees, and without accumulation the regimes are one.
    assert memory_estimate(cfg, strategy="zero3", num_gpus=8, **kw).peak == step.peak
    assert memory_estimate(cfg, strategy="zero3", num_gpus=8, grad_sync="micro", **kw).peak == micro.peak
    one = {**kw, "grad_accum_steps": 1}
    assert (
        layout_memory(cfg, Layout(dp_shard=8), **one).peak
        == layout_memory(cfg, Layout(dp_shard=8, grad_sync="micro"), **one).peak
    )
    # DDP holds full gradients in either regime (no_sync or not).
    ddp = [layout_memory(cfg, Layout(dp_replicate=8, grad_sync=g), **kw).peak for g in ("step", "micro")]
    assert ddp[0] == ddp[1]


def test_tp_divides_matmuls_and_activations():
    cfg = model_config("8b")
    d, kv, f, v, heads, L = 4096, 1024, 14336, 128256, 32, 32
    matmul, norms = 2 * d * d + 2 * d * kv + 3 * d * f, 2 * d
    kw = dict(seq_len=8192, micro_batch=1, precision="amp")
    tp1 = layout_memory(cfg, Layout(dp_shard=8), **kw)
    tp2 = layout_memory(cfg, Layout(dp_shard=4, tp=2), **kw)
    # fp32 master weights over dp_shard; tp halves every matmul and both vocab matrices, not the norms.
    assert tp1.weights == 4 * (L * (matmul + norms) + d + 2 * v * d) / 8
    assert tp2.weights == 4 * (L * (matmul / 2 + norms) + d + 2 * v * d / 2) / 4
    assert tp2.optimizer == 2 * tp2.weights
    # Saved per token and block under FSDP's bf16 (residual bf16): norms' input and normalised
    # tensor sequence-parallel (/ tp), the gathered matmul inputs whole, attention and MLP / tp.
    bf16 = Precision("amp", 4, 4, 8, 2, 2, False)
    assert sum(layer_saved_bytes(cfg, bf16)) == 20 * d + 4 * kv + 4 * heads + 8 * f  # 200,832
    assert (
        sum(layer_saved_bytes(cfg, bf16, tp=2))
        == 2 * (3 * d + 2 * d) + (4 * d + 4 * kv + 4 * heads + 8 * f) / 2
    )


def test_pp_splits_layers_and_keeps_in_flight_microbatches():
    cfg = model_config("8b")
    lay = Layout(dp_shard=4, pp=2, pp_microbatches=8)
    assert [s.layers for s in pipeline_stages(cfg, lay)] == [tuple(range(16)), tuple(range(16, 32))]
    inter = Layout(pp=2, pp_schedule="interleaved_1f1b", pp_stages_per_rank=2, pp_microbatches=8)
    assert [s.layers for s in pipeline_stages(cfg, inter)] == [
        tuple(range(8)) + tuple(range(16, 24)),
        tuple(range(8, 16)) + tuple(range(24, 32)),
    ]  # the trainer's loop placement: virtual stage c on rank c % pp
    # The stage with the most memory: 16 blocks + the embedding (the last: + final norm + head).
    block = 2 * 4096 + 2 * 4096**2 + 2 * 4096 * 1024 + 3 * 4096 * 14336
    est = layout_memory(cfg, lay, seq_len=8192, micro_batch=1, precision="amp")
    assert est.stage == 0 and est.weights == 4 * (16 * block + 128256 * 4096) / 4
    # In flight: 1F1B pp - stage, GPipe all, interleaved + (pp - 1) / v (Korthikanti et al. 2022).
    four = dict(dp_shard=2, pp=4, pp_microbatches=8)
    assert [in_flight_microbatches(Layout(**four), s) for s in range(4)] == [4, 3, 2, 1]
    assert [in_flight_microbatches(Layout(**four, pp_schedule="gpipe"), s) for s in range(4)] == [8] * 4
    i4 = Layout(**four, pp_schedule="interleaved_1f1b", pp_stages_per_rank=2)
    assert [in_flight_microbatches(i4, s) for s in range(4)] == [5.5, 4.5, 3.5, 2.5]
    # With a small head the first stage is the fullest: 2 micro-batches (1F1B, pp 2) of 16 blocks.
    small = model_config("8b", vocab_size=1024)
    per_token_block = 200_832  # bf16, see test_tp_divides_matmuls_and_activations
    one_f = layout_memory(small, lay, seq_len=8192, micro_batch=1, precision="amp")
    assert one_f.stage == 0 and one_f.activations == 2 * 16 * 8192 * per_token_block
    gpipe = layout_memory(
        small, Layout(**{**lay.__dict__, "pp_schedule": "gpipe"}), seq_len=8192, micro_batch=1
    )
    assert gpipe.activations >= 8 * 16 * 8192 * per_token_block  # all 8 in flight (+ the last stage's head)


def test_pipeline_bubble_and_its_share_of_the_step():
    assert pipeline_bubble(1, 1) == 0
    assert pipeline_bubble(4, 8) == pipeline_bubble(4, 8, "gpipe") == 3 / 11
    assert pipeline_bubble(4, 8, "interleaved_1f1b", virtual_stages=2) == 3 / 22
    assert pipeline_bubble(8, 64) == 7 / 71
    cfg, dev = model_config("8b"), device_spec("h100", "amp")
    t = step_time(cfg, Layout(dp_shard=2, pp=4, pp_microbatches=8), seq_len=8192,
                  global_batch_tokens=2**19, grad_accum_steps=4, dev=dev)  # fmt: skip
    assert t["bubble_fraction"] == 3 / 11
    busy = t["compute_s"] + t["tp_comm_s"] + t["pp_comm_s"]
    assert t["step_s"] == pytest.approx(busy / (1 - 3 / 11) + t["dp_exposed_s"], rel=1e-12)
    # compute: 6N + attention FLOPs of the batch over 8 GPUs at the size's MFU
    assert t["compute_s"] == pytest.approx(
        2**19 * flops_per_token(cfg, 8192) / (8 * H100 * default_mfu(num_params(cfg)))
    )


def test_ac_every_checkpoints_blocks_0_k_2k_like_the_trainer():
    lay = lambda k: Layout(activation_checkpointing=True, ac_every=k)  # noqa: E731
    assert checkpointed_blocks(lay(1), range(16)) == 16
    assert checkpointed_blocks(lay(2), range(16)) == 8
    assert checkpointed_blocks(lay(3), range(16)) == 6  # 0, 3, 6, 9, 12, 15
    assert checkpointed_blocks(Layout(), range(16)) == 0
    cfg = model_config("1b")
    kw = dict(seq_len=2048, micro_batch=4, precision="amp")
    peaks = [layout_memory(cfg, Layout(dp_shard=8, activation_checkpointing=k > 0, ac_every=max(k, 1)), **kw).peak
             for k in (0, 4, 2, 1)]  # fmt: skip
    assert peaks == sorted(peaks, reverse=True)  # more checkpointed blocks, less memory
    assert recompute_factor(cfg, 2048, 8) - 1 == pytest.approx((recompute_factor(cfg, 2048) - 1) / 2)


def test_layout_errors_name_the_field():
    cfg = model_config("8b")
    bad = [
        (dict(tp=3, dp_shard=1), "parallel.tp=3.*num_heads=32"),
        (dict(tp=16, dp_shard=1), "parallel.tp=16.*num_kv_heads=8"),
        (dict(pp=64, dp_shard=1), "parallel.pp=64.*num_layers=32"),
        (dict(pp=4, dp_shard=2, pp_microbatches=2), "parallel.pp_microbatches=2.*>= parallel.pp=4"),
        (dict(dp_replicate=8, dp_shard=1, cpu_offload=True), "parallel.cpu_offload"),
    ]
    for fields_, match in bad:
        with pytest.raises(ConfigError, match=match):
            check_layout(cfg, Layout(**fields_))
    with pytest.raises(ConfigError, match=r"parallel=.*dp_shard=16.*product equal to the world size 8"):
        check_layout(cfg, Layout(dp_shard=16), num_gpus=8)
    with pytest.raises(ConfigError, match="model_overrides.tie_embeddings=True"):
        check_layout(model_config("1b"), Layout(pp=2))  # the 1b preset ties its embeddings
    with pytest.raises(ConfigError, match="parallel.grad_sync='sometimes'"):
        Layout(grad_sync="sometimes")
    with pytest.raises(ConfigError, match="parallel.pp_stages_per_rank=1.*interleaved"):
        Layout(pp=2, pp_schedule="interleaved_1f1b")
    with pytest.raises(ConfigError, match="parallel.cp=2"):
        Layout(cp=2)
    # From the plan and the CLI: tp is named before the mesh is resolved.
    with pytest.raises(ConfigError, match="parallel.tp=3"):
        make_plan(preset="8b", num_gpus=8, parallel={"tp": 3})
    from pretrain.cli import main

    err = io.StringIO()
    with redirect_stderr(err):
        assert main(["plan", "--preset", "8b", "--gpus", "8", "--parallel", "tp=3"]) == 2
    assert "parallel.tp=3" in err.getvalue()


def test_resolve_layout_reads_the_trainer_config():
    cfg = model_config("8b")
    assert resolve_layout("ddp", 8) == Layout(dp_replicate=8)
    assert resolve_layout("fsdp2", 8) == Layout(dp_shard=8)
    assert resolve_layout(None, 1) == Layout()
    assert resolve_layout({"tp": 2}, 8) == Layout(dp_shard=4, tp=2)  # dp_shard: -1 as in ParallelConfig
    assert resolve_layout({"dp_replicate": 2, "tp": 2}, 16, cfg) == Layout(dp_replicate=2, dp_shard=4, tp=2)
    with pytest.raises(ConfigError, match="at most one"):
        resolve_layout({"dp_replicate": -1}, 8)  # dp_shard's default is -1 too
    with pytest.raises(ConfigError, match="parallel.dp_shard=-1.*other dims \\(3\\)"):
        resolve_layout({"tp": 3}, 8)
    assert Layout(dp_shard=8).fsdp and Layout(dp_replicate=8).is_ddp
    assert Layout(dp_replicate=4, tp=2).fsdp  # HSDP with one shard, as the trainer builds it


# --------------------------------------------------------------------- layouts: time, choice


def test_default_mfu_grows_with_size_from_published_anchors():
    # OLMo-core (README at 7f7c4894d): 55,000 tokens/s/GPU for its 1B; FLOPs by our convention.
    assert flops_per_token(model_config("tiny", **OLMO_1B), 4096) == 8_594_611_200
    anchors = {name: (n, mfu) for n, mfu, name in mfu_anchors()}
    assert anchors["OLMo-1124 1B"][1] == pytest.approx(55_000 * 8_594_611_200 / H100)  # 47.8%
    assert anchors["Llama 3 8B (OLMo-core)"][1] == pytest.approx(9_500 * 50_786_230_272 / H100)  # 48.8%
    assert default_mfu(num_params(model_config("124m"))) == 0.20  # this trainer, issue 14
    sizes = [10 ** (6 + i / 20) for i in range(121)]  # 1M .. 1T
    mfus = [default_mfu(n) for n in sizes]
    assert mfus == sorted(mfus) and mfus[0] == 0.20 and mfus[-1] == anchors["Llama 3 8B (OLMo-core)"][1]
    assert default_mfu(1e9) < default_mfu(3e9) < default_mfu(7.5e9)
    assert default_mfu(num_params(model_config("1b"))) == pytest.approx(0.4525, abs=5e-4)


def test_tensor_and_data_parallel_communication():
    cfg, dev = model_config("8b"), device_spec("h100", "amp")
    nvlink, network = 450e9 * 0.8, 50e9 * 0.8
    tokens = 2**19
    t = step_time(
        cfg, Layout(dp_shard=4, tp=2), seq_len=8192, global_batch_tokens=tokens, grad_accum_steps=16, dev=dev
    )
    # 8 collectives per block over (tp - 1) / tp of a DP rank's (tokens x dim) bf16 activations
    assert t["tp_comm_s"] == pytest.approx(8 * 32 * 0.5 * (tokens / 4) * 4096 * 2 / nvlink)
    # HSDP 2 x 8: all-gathers (2 per micro-batch) and the reduce-scatter inside a node, the replicas'
    # all-reduce of the shards over the network, once per step (grad_sync=step).
    n = num_params(cfg)
    hsdp = step_time(cfg, Layout(dp_replicate=2, dp_shard=8), seq_len=8192, global_batch_tokens=tokens,
                     grad_accum_steps=4, dev=dev)  # fmt: skip
    gathers = 4 * 2 * 7 / 8 * 2 * n / nvlink
    reduce = 7 / 8 * 4 * n / nvlink + 2 * 1 / 2 * 4 * n / 8 / network
    assert hsdp["dp_comm_s"] == pytest.approx(gathers + reduce)
    assert hsdp["dp_exposed_s"] == 0  # hidden behind 2 s of compute per micro-batch
    # FSDP over 32 GPUs (4 nodes) at OLMo-core's batch: the network cannot keep up with compute.
    olmo8b = model_config("tiny", **OLMO_LLAMA3_8B)
    work = Workload(4096, 1024 * 4096, "amp", dev, dev.memory_bytes * 0.9)
    fsdp32 = evaluate_layout(olmo8b, Layout(dp_shard=32, grad_sync="micro"), work, 2)["time"]
    hsdp4x8 = evaluate_layout(olmo8b, Layout(dp_replicate=4, dp_shard=8, grad_sync="micro"), work, 2)["time"]
    assert (
        fsdp32["dp_exposed_s"] > 0 and fsdp32["tokens_per_s_per_gpu"] < 0.6 * hsdp4x8["tokens_per_s_per_gpu"]
    )
    # OLMo-core publishes 9,500 tokens/s/GPU for this setup (HSDP, 2 x 4096 tokens per rank): the
    # anchor itself, so the time model adds nothing where communication hides.
    assert hsdp4x8["tokens_per_s_per_gpu"] == pytest.approx(9_500)


def test_recommendation_for_8b_on_8_h100s_fits_and_is_not_ddp():
    cfg = model_config("8b")
    plan = make_plan(preset="8b", gpu="h100", num_gpus=8)
    lay, usable = plan["layouts"], plan["device"]["usable_bytes"]
    rec = lay["recommended"]
    assert rec is not None and rec["fits"] and rec["peak"] <= usable
    layout = Layout(**rec["layout"])
    check_layout(cfg, layout, num_gpus=8)
    assert not layout.is_ddp
    # DDP cannot fit: 16 bytes of states per parameter, 128 GB, before any activation.
    ddp = make_plan(preset="8b", gpu="h100", num_gpus=8, parallel="ddp")["layouts"]["given"]
    states = sum(ddp["memory"][k] for k in ("weights", "grads", "optimizer"))
    assert states == 16 * 8_030_261_248 and not ddp["fits"]
    # The recommendation is the fastest of everything that fits, and the list is ordered.
    work = Workload(8192, 2**19, "amp", device_spec("h100", "amp"), usable)
    every = enumerate_layouts(cfg, 8, work)["fit"]
    assert all(not Layout(**r["layout"]).is_ddp and r["peak"] <= usable for r in every)
    assert rec["step_s"] == min(r["step_s"] for r in every)
    steps = [r["step_s"] for r in lay["top"]]
    assert steps == sorted(steps) and 1 < len(lay["top"]) <= 5
    assert rec["wall_time_s"] == pytest.approx(rec["step_s"] * plan["num_steps"])


def test_8b_against_torchtitan_published_figures():
    """torchtitan benchmarks/llama3_h100_202412_torchtitan.md: Llama 3.1 8B, FSDP, local batch
    2 x 8192, per-op selective checkpointing, full-logits loss, bf16 (Tables 1 and 3): 82.4 GiB
    and 5,762 tokens/s/GPU on 8 H100s, 67.0 GiB and 5,605 on 128 (eager; max reserved memory)."""
    cfg = model_config("8b")
    kw = dict(seq_len=8192, micro_batch=2, precision="amp", loss_chunk_tokens=0)
    for gpus, published in ((8, 82.4), (128, 67.0)):
        none, every_block = (
            layout_memory(cfg, Layout(dp_shard=gpus, activation_checkpointing=ac), **kw).peak / GiB
            for ac in (False, True)
        )
        # per-op checkpointing keeps the matmul outputs it does not recompute: between the two
        assert every_block < published < none
        if gpus == 8:  # the figures README.md quotes
            assert (none, every_block) == (pytest.approx(141.2, abs=0.05), pytest.approx(47.1, abs=0.05))
    dev = device_spec("h100", "amp")
    tps = [
        step_time(
            cfg,
            Layout(dp_shard=g),
            seq_len=8192,
            global_batch_tokens=g * 2 * 8192,
            grad_accum_steps=1,
            dev=dev,
        )["tokens_per_s_per_gpu"]  # fmt: skip
        for g in (8, 128)
    ]
    # 8 -> 128 GPUs: published -2.7%; the planner hides the all-gathers behind compute on both
    assert tps[1] / tps[0] == pytest.approx(5_605 / 5_762, abs=0.03)
    # at 48.8% MFU without checkpointing, 37.1% with every block recomputed (published: 33.7% eager,
    # 39.0% compiled, at 500 W)
    assert tps[0] == pytest.approx(8_331, abs=1)
    ckpt = step_time(cfg, Layout(dp_shard=8, activation_checkpointing=True), seq_len=8192,
                     global_batch_tokens=8 * 2 * 8192, grad_accum_steps=1, dev=dev)  # fmt: skip
    assert ckpt["tokens_per_s_per_gpu"] == pytest.approx(6_334, abs=1)
    assert 5_762 < ckpt["tokens_per_s_per_gpu"] < 6_667 < tps[0]


def test_cli_lists_layouts_and_evaluates_a_given_one():
    from pretrain.cli import main

    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["plan", "--preset", "1b", "--gpus", "8", "--parallel", "dp_shard=8", "grad_sync=micro",
                     "--top", "3", "--json"]) == 0  # fmt: skip
    plan = json.loads(out.getvalue())
    given = plan["layouts"]["given"]
    assert given["label"] == "FSDP 8" and given["layout"]["grad_sync"] == "micro"
    assert given["micro_batch"] == 1 and given["grad_accum_steps"] == 32
    assert given["peak"] / GiB == pytest.approx(7.078, abs=0.001)
    assert len(plan["layouts"]["top"]) == 3 and plan["mfu_source"].startswith("default_mfu")
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["plan", "--preset", "8b", "--gpus", "8"]) == 0
    text = out.getvalue()
    for expected in ("layouts on 8 x H100 SXM", "tok/s", "8.03B params", "MFU (by model size)"):
        assert expected in text, (expected, text)


# --------------------------------------------------- against the live tensor bytes of a step


def _profiled_step_peak(
    cfg, seq_len: int, micro_batch: int, activation_checkpointing: bool, loss_chunk_tokens: int = 4096
) -> float:
    """Peak bytes held by torch tensors in the third step of the trainer's loop body (same order:
    forward (chunked loss, or the logits kept with 0), backward, clip, fused AdamW, zero_grad)."""
    torch = pytest.importorskip("torch")
    from torch.profiler import ProfilerActivity, profile

    from trainer.model import Transformer
    from trainer.parallelize import build_layout, parallelize
    from trainer.train import _param_groups

    torch.manual_seed(0)
    one_process = build_layout(dict.fromkeys(("pp", "dp_replicate", "dp_shard", "tp"), 1), "cpu")
    model = parallelize(Transformer(cfg), one_process, torch.device("cpu"), activation_checkpointing)
    opt = torch.optim.AdamW(_param_groups(model), lr=1e-3, weight_decay=0.1, fused=True)
    ids = torch.randint(0, cfg.vocab_size, (micro_batch, seq_len))

    def step():
        _, loss = model(ids, ids, loss_chunk_tokens=loss_chunk_tokens)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    try:
        events = prof.profiler.kineto_results.events()
        deltas = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    except AttributeError:
        pytest.skip("this torch's profiler exposes no per-allocation events")
    live = peak = 0
    for _, nbytes in deltas:
        live += nbytes
        peak = max(peak, live)
    states = sum(p.numel() * 4 * 3 for p in model.parameters())  # weights + 2 moments; grads are None
    return states + peak


@pytest.mark.parametrize(
    "overrides, seq_len, micro_batch, ckpt, chunk",
    [
        ({}, 64, 8, False, 0),  # the full-logits loss head is the peak (vocab 8192, dim 128)
        ({}, 64, 8, False, 128),  # the chunked head: 4 chunks of 128 tokens
        ({}, 64, 8, True, 0),
        ({}, 64, 8, True, 4096),
        ({"qk_norm": True, "tie_embeddings": False, "num_layers": 2}, 64, 8, False, 4096),
        ({"vocab_size": 512, "dim": 256, "num_layers": 6}, 128, 2, False, 4096),  # the optimizer step
        ({"vocab_size": 512, "dim": 256, "num_layers": 3}, 128, 8, True, 4096),  # a recomputed block
    ],
)
def test_estimate_matches_live_tensor_bytes(overrides, seq_len, micro_batch, ckpt, chunk):
    cfg = model_config("tiny", **overrides)
    measured = _profiled_step_peak(cfg, seq_len, micro_batch, ckpt, chunk)
    est = memory_estimate(
        cfg, seq_len=seq_len, micro_batch=micro_batch, precision="fp32", device="cpu",
        activation_checkpointing=ckpt, loss_chunk_tokens=chunk,
    )  # fmt: skip
    assert est.peak - est.runtime == pytest.approx(measured, rel=0.03), (est, measured / MiB)


# ------------------------------------------- acceptance: the peak `pretrain train` records on CPU

_MEASURE = """
import json, sys
import torch.optim.lr_scheduler, trainer.checkpoint, trainer.data, trainer.parallelize  # train() imports these first
from pretrain.core.config import load_config
from trainer.metrics import read_metrics, reset_peak_memory
from trainer.config import TrainConfig
from trainer.train import train
cfg = load_config(TrainConfig, sys.argv[1])
reset_peak_memory(sys.argv[2])  # the baseline: everything but the model, optimizer and activations
train(cfg)
print(json.dumps(max(r["mem_peak_above_base_gib"] for r in read_metrics(cfg.run_dir))))
"""


def _measured_peak_bytes(tmp: Path, preset: str, seq_len: int, micro_batch: int, *, steps: int = 3,
                         ckpt: bool = False, env: dict | None = None, device: str = "cpu",
                         loss_chunk_tokens: int = 4096) -> float:  # fmt: skip
    """Train `steps` steps in a fresh process (one micro-batch per step) and return the largest
    mem_peak_above_base_gib the trainer logged, in bytes."""
    from pretrain.core.token_shards import write_token_manifest, write_token_shard

    vocab = model_config(preset).vocab_size
    rng = np.random.default_rng(0)
    tokens_needed = seq_len * micro_batch * (steps + 2)
    docs = [rng.integers(1, vocab, size=int(rng.integers(50, 400))) for _ in range(tokens_needed // 200 + 10)]
    entry = write_token_shard(tmp / "shards" / "00000.arrow", docs, vocab)
    write_token_manifest(tmp / "shards", tokenizer_hash="tok-test", shards=[{**entry, "source": "web"}])
    batch_tokens = seq_len * micro_batch
    cfg = {
        "run_dir": str(tmp / "run"),
        "model": preset,
        "curriculum": {
            "phases": [
                dict(
                    name="p",
                    num_tokens=batch_tokens * steps,
                    mixture={"web": 1.0},
                    seq_len=seq_len,
                    global_batch_tokens=batch_tokens,
                    micro_batch_size=micro_batch,
                    lr_max=1e-3,
                )
            ],
            "schedule": {"warmup_steps": 1},
        },  # fmt: skip
        "data": {"sources": {"web": str(tmp / "shards")}, "tokenizer_hash": "tok-test"},
        "activation_checkpointing": ckpt,
        "loss_chunk_tokens": loss_chunk_tokens,
        "checkpoint": {"every_steps": 0},
        "device": device,
        "metrics": {"progress": False, "memory_every": 1},
    }
    path = tmp / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path), device],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )
    shutil.rmtree(tmp / "run" / "checkpoints", ignore_errors=True)  # 124M: 1.5 GB of weights + Adam
    assert out.returncode == 0, out.stderr[-3000:]
    return float(out.stdout.strip().splitlines()[-1]) * 2**30


def _cpu_estimate(
    preset: str, seq_len: int, micro_batch: int, ckpt: bool = False, loss_chunk_tokens: int = 4096
) -> float:
    return memory_estimate(
        model_config(preset), seq_len=seq_len, micro_batch=micro_batch, precision="fp32", device="cpu",
        activation_checkpointing=ckpt, loss_chunk_tokens=loss_chunk_tokens,
    ).peak  # fmt: skip


@pytest.mark.parametrize("phase", [0, 1], ids=["short", "long"])
def test_tiny_estimate_within_20_percent_of_trainer_peak(tmp_path, phase):
    """Both phases of the default tiny curriculum: (seq 128, micro-batch 16) and (512, 4)."""
    from trainer.schedule import default_tiny_phases

    p = default_tiny_phases()[phase]
    measured = _measured_peak_bytes(tmp_path, "tiny", p.seq_len, p.micro_batch_size)
    estimate = _cpu_estimate("tiny", p.seq_len, p.micro_batch_size)
    assert estimate == pytest.approx(measured, rel=0.20), (estimate / MiB, measured / MiB)


def test_tiny_checkpointed_estimate_with_allocator_returning_memory(tmp_path):
    """With glibc's mmap threshold pinned low, freed tensors go back to the OS and RSS tracks the
    live bytes: the estimate (tensors + the runtime constant) then holds to within 8%, with
    activation checkpointing too (where default glibc keeps the most freed memory). Measured with
    the full-logits loss: the chunked loss leaves about 180 MiB, of which the non-tensor runtime
    (which varies by some 20 MiB between a warm checkout and a fresh clone's first run) is half,
    too large a share to test the tensor model to 8%; the chunked head is checked within 3%
    against live tensors above and to 20% here."""
    env = {"MALLOC_MMAP_THRESHOLD_": "65536"}
    measured = _measured_peak_bytes(tmp_path, "tiny", 128, 16, ckpt=True, env=env, loss_chunk_tokens=0)
    estimate = _cpu_estimate("tiny", 128, 16, ckpt=True, loss_chunk_tokens=0)
    assert estimate == pytest.approx(measured, rel=0.08), (estimate / MiB, measured / MiB)


@pytest.mark.slow
def test_124m_estimate_within_20_percent_of_trainer_peak(tmp_path):
    """124M in fp32 on CPU: about 2.2 GiB, dominated by 16 bytes/param and the optimizer step."""
    measured = _measured_peak_bytes(tmp_path, "124m", 128, 2)
    estimate = _cpu_estimate("124m", 128, 2)
    assert estimate == pytest.approx(measured, rel=0.20), (estimate / MiB, measured / MiB)


@pytest.mark.gpu
@pytest.mark.parametrize("preset, seq_len, micro_batch", [("tiny", 512, 16), ("124m", 1024, 8)])
def test_gpu_estimate_within_20_percent_of_trainer_peak(tmp_path, preset, seq_len, micro_batch):
    """bf16 autocast, fused AdamW, one GPU: against max allocated above the pre-model baseline."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    measured = _measured_peak_bytes(tmp_path, preset, seq_len, micro_batch, device="cuda")
    estimate = memory_estimate(
        model_config(preset), seq_len=seq_len, micro_batch=micro_batch, precision="amp", device="cuda"
    ).peak
    assert estimate == pytest.approx(measured, rel=0.20), (estimate / MiB, measured / MiB)
