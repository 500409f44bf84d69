"""trainer/model.py: shapes, causality, GQA and RoPE against hand-written references, init, presets."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pretrain.core.config import ConfigError
from trainer.model import (
    PRESETS,
    ModelConfig,
    Transformer,
    apply_rope,
    hf_name,
    preset,
    rope_cos_sin,
)


def tiny(**overrides) -> ModelConfig:
    kw = dict(vocab_size=64, dim=32, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=32)
    return ModelConfig(**{**kw, **overrides})


def model_for(cfg: ModelConfig, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(cfg).eval()


def test_shapes_and_loss_matches_cross_entropy():
    m = model_for(tiny())
    idx = torch.randint(0, 64, (3, 10))
    targets = torch.randint(0, 64, (3, 10))
    targets[0, :4] = -100
    logits = m(idx)
    assert logits.shape == (3, 10, 64)
    logits2, loss = m(idx, targets)
    assert torch.equal(logits, logits2)
    expected = F.cross_entropy(logits.reshape(-1, 64), targets.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(loss, expected)
    with pytest.raises(AssertionError, match="max_seq_len"):
        m(torch.zeros(1, 33, dtype=torch.long))


def test_causal_future_tokens_never_change_earlier_logits():
    m = model_for(tiny())
    idx = torch.randint(0, 64, (2, 16))
    base = m(idx)
    for t in (0, 5, 15):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % 64
        out = m(changed)
        torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=1e-6)
        assert not torch.allclose(out[:, t], base[:, t])


def hf_rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def hf_apply_rotary_pos_emb(q, k, cos, sin):
    """Copied in spirit from transformers' modeling_llama (unsqueeze_dim=1)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + hf_rotate_half(q) * sin, k * cos + hf_rotate_half(k) * sin


def hf_cos_sin(head_dim, positions, theta):
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    freqs = positions[:, None].float() * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos()[None], emb.sin()[None]  # (1, T, head_dim) like HF's batch of position_ids


def test_rope_matches_hf_rotate_half_formula():
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 7, 16), torch.randn(2, 2, 7, 16)
    pos = torch.arange(7)
    cos, sin = rope_cos_sin(16, pos, 10000.0)
    hcos, hsin = hf_cos_sin(16, pos, 10000.0)
    torch.testing.assert_close(cos, hcos[0])
    hq, hk = hf_apply_rotary_pos_emb(q, k, hcos, hsin)
    torch.testing.assert_close(apply_rope(q, cos, sin), hq)
    torch.testing.assert_close(apply_rope(k, cos, sin), hk)


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 8, 16), torch.randn(1, 1, 8, 16)
    pos = torch.arange(8)

    def scores(offset):
        cos, sin = rope_cos_sin(16, pos + offset, 10000.0)
        return apply_rope(q, cos, sin) @ apply_rope(k, cos, sin).transpose(-1, -2)

    torch.testing.assert_close(scores(0), scores(37), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(scores(0), q @ k.transpose(-1, -2), atol=1e-3)  # RoPE did something


def reference_attention(attn, x, cos, sin):
    """Explicit GQA: repeat each kv head for its group of query heads, softmax with a causal mask."""
    B, T, _ = x.shape
    H, KV, D = attn.num_heads, attn.num_kv_heads, attn.head_dim
    q = (x @ attn.q_proj.weight.T).view(B, T, H, D).transpose(1, 2)
    k = (x @ attn.k_proj.weight.T).view(B, T, KV, D).transpose(1, 2)
    v = (x @ attn.v_proj.weight.T).view(B, T, KV, D).transpose(1, 2)
    q, k = hf_apply_rotary_pos_emb(q, k, cos[None], sin[None])
    k, v = k.repeat_interleave(H // KV, dim=1), v.repeat_interleave(H // KV, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(D)
    scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    y = torch.softmax(scores, dim=-1) @ v
    return y.transpose(1, 2).reshape(B, T, H * D) @ attn.o_proj.weight.T


@pytest.mark.parametrize("num_kv_heads", [1, 2, 4])
def test_gqa_attention_matches_explicit_reference(num_kv_heads):
    m = model_for(tiny(num_kv_heads=num_kv_heads))
    attn = m.layers["0"].self_attn
    assert attn.k_proj.weight.shape == (num_kv_heads * 8, 32)
    x = torch.randn(2, 9, 32)
    cos, sin = m.rope_cos[:9], m.rope_sin[:9]
    torch.testing.assert_close(attn(x, cos, sin), reference_attention(attn, x, cos, sin))


def test_qk_norm_runs_and_changes_output():
    idx = torch.randint(0, 64, (2, 8))
    plain, normed = model_for(tiny()), model_for(tiny(qk_norm=True))
    assert normed.layers["0"].self_attn.q_norm.weight.shape == (8,)
    assert plain.layers["0"].self_attn.q_norm is None
    assert normed.num_params() - plain.num_params() == 2 * 2 * 8
    normed.load_state_dict(plain.state_dict(), strict=False)  # same projections, only the norms differ
    assert not torch.allclose(plain(idx), normed(idx), atol=1e-4)
    assert torch.isfinite(normed(idx)).all()


def test_tied_embeddings_share_storage_and_count_once():
    tied, untied = model_for(tiny()), model_for(tiny(tie_embeddings=False))
    assert tied.lm_head.weight.data_ptr() == tied.embed_tokens.weight.data_ptr()
    assert untied.lm_head.weight.data_ptr() != untied.embed_tokens.weight.data_ptr()
    assert untied.num_params() - tied.num_params() == 64 * 32
    assert tied.num_params(exclude_embeddings=True) == untied.num_params(exclude_embeddings=True)
    assert "lm_head.weight" not in tied.hf_state_dict_names()
    assert untied.hf_state_dict_names()["lm_head.weight"] == "lm_head.weight"


def test_hf_names_are_llama_layout():
    names = model_for(tiny()).hf_state_dict_names()
    assert names["embed_tokens.weight"] == "model.embed_tokens.weight"
    assert names["layers.1.self_attn.k_proj.weight"] == "model.layers.1.self_attn.k_proj.weight"
    assert names["layers.0.mlp.gate_proj.weight"] == "model.layers.0.mlp.gate_proj.weight"
    assert (
        names["layers.0.post_attention_layernorm.weight"] == "model.layers.0.post_attention_layernorm.weight"
    )
    assert names["norm.weight"] == "model.norm.weight"
    assert len(names) == 1 + 2 * 9 + 1  # embed, 9 tensors per layer, final norm; no rope buffers
    assert hf_name("lm_head.weight") == "lm_head.weight"


def test_scaled_residual_init():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=256, dim=256, num_layers=8, num_heads=4, num_kv_heads=4)
    m = Transformer(cfg)
    scaled = 0.02 / math.sqrt(16)
    for layer in m.layers.values():
        assert layer.self_attn.o_proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
        assert layer.mlp.down_proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
        assert layer.self_attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert torch.equal(layer.input_layernorm.weight, torch.ones(256))
    assert m.embed_tokens.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_init_weights_after_meta_device_matches_eager_init():
    cfg = tiny()
    eager = Transformer(cfg).eval()
    torch.manual_seed(3)
    eager.init_weights()  # module constructors draw from the RNG too, so seed right before init
    with torch.device("meta"):
        meta = Transformer(cfg)
    meta.to_empty(device="cpu")
    torch.manual_seed(3)
    meta.init_weights()
    assert meta.lm_head.weight is meta.embed_tokens.weight  # re-tied after to_empty
    idx = torch.randint(0, 64, (1, 8))
    torch.testing.assert_close(meta.eval()(idx), eager(idx))


def test_preset_sizes_and_ffn_rule():
    # Counted on the meta device (no memory); vocab 50304 except tiny and 8b (Llama 3's 128256,
    # untied: Meta-Llama-3-8B's 8,030,261,248 exactly); the others tie embeddings.
    expected = {"tiny": (1e6, 5e6), "124m": (110e6, 135e6), "350m": (330e6, 380e6), "1b": (1.0e9, 1.3e9),
                "8b": (8_030_261_248, 8_030_261_248)}  # fmt: skip
    assert set(PRESETS) == set(expected)
    for name, (lo, hi) in expected.items():
        with torch.device("meta"):
            n = Transformer(preset(name)).num_params()
        assert lo <= n <= hi, (name, n)
    assert preset("124m").ffn_hidden_dim == 2048  # 8/3 * 768 = 2048, already a multiple of 256
    assert preset("tiny").ffn_hidden_dim == 512  # 341 rounded up to 256
    assert preset("124m", dim=1024, num_heads=16, num_kv_heads=16).ffn_hidden_dim == 2816
    assert preset("1b").ffn_hidden_dim == 8192


def test_flops_per_token_convention():
    m = model_for(tiny())
    n_matmul = m.num_params(exclude_embeddings=True) + 64 * 32
    assert m.flops_per_token(16) == 6 * n_matmul + 12 * 2 * 32 * 16
    with torch.device("meta"):
        m124 = Transformer(preset("124m"))
    # 6 * 123.6M + 12 * 12 * 768 * 1024 = 741.5M + 113.2M FLOPs per token.
    assert m124.flops_per_token(1024) == 6 * 123_587_328 + 12 * 12 * 768 * 1024


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(num_kv_heads=3), "num_kv_heads"),
        (dict(dim=30), "dim"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(ffn_hidden_dim=0), "ffn_hidden_dim"),
        (dict(rope_theta=-1.0), "rope_theta"),
        (dict(norm_eps=0.0), "norm_eps"),
        (dict(init_std=0.0), "init_std"),
        (dict(max_seq_len=0), "max_seq_len"),
        (dict(num_layers=0), "num_layers"),
    ],
)
def test_config_errors_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=rf"^{field}="):
        tiny(**overrides)


def test_unknown_preset_names_the_field():
    with pytest.raises(ConfigError, match="^preset='2b'"):
        preset("2b")


def test_adamw_overfits_a_repeated_sequence_deterministically():
    def run() -> list[float]:
        torch.manual_seed(0)
        m = Transformer(tiny())
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
        seq = torch.randint(0, 64, (1, 17)).repeat(4, 1)
        losses = []
        for _ in range(30):
            _, loss = m(seq[:, :-1], seq[:, 1:])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    losses = run()
    assert losses[0] == pytest.approx(math.log(64), abs=0.3)  # near-uniform at init
    assert losses[-1] < 0.1 * losses[0], losses
    assert run() == losses


def test_matches_hf_llama_logits():
    transformers = pytest.importorskip("transformers")
    m = model_for(tiny(tie_embeddings=False))
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**m.hf_config())).eval()
    sd = m.state_dict()
    missing, unexpected = hf.load_state_dict(
        {v: sd[k] for k, v in m.hf_state_dict_names().items()}, strict=False
    )
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    idx = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, m(idx), atol=1e-4, rtol=1e-4)


def test_chunked_loss_equals_full_logits_loss_and_gradients():
    """chunked_linear_cross_entropy against F.cross_entropy on full logits: loss and the gradients
    of hidden states and weight within 1e-5, ignored targets (-100) included, for chunks that do
    and do not divide the token count."""
    import torch.nn.functional as F

    from trainer.model import chunked_linear_cross_entropy

    torch.manual_seed(0)
    h = torch.randn(300, 16, requires_grad=True)
    w = (torch.randn(1000, 16) * 0.1).requires_grad_()
    t = torch.randint(0, 1000, (300,))
    t[::7] = -100
    ref = F.cross_entropy((h @ w.t()).float(), t, ignore_index=-100)
    gh, gw = torch.autograd.grad(ref, (h, w))
    for chunk in (64, 100, 300, 1000):
        out = chunked_linear_cross_entropy(h, w, t, chunk)
        ch, cw = torch.autograd.grad(out * 3.0, (h, w))  # a scaled upstream gradient
        assert abs(out.item() - ref.item()) < 1e-5
        assert torch.allclose(ch, 3 * gh, atol=1e-5) and torch.allclose(cw, 3 * gw, atol=1e-5)


def test_model_loss_chunked_matches_and_needs_less_memory():
    """Forward + backward of the tiny model at vocab 32768 (4,096 tokens), each in a fresh process:
    equal loss and grad norm within 1e-5, and a peak at most 70% of the full-logits one."""
    from trainer.metrics import measure_loss_memory

    full = measure_loss_memory(32768, batch=8, seq_len=512, loss_chunk_tokens=0)
    chunked = measure_loss_memory(32768, batch=8, seq_len=512, loss_chunk_tokens=1024)
    assert abs(full["loss"] - chunked["loss"]) < 1e-5 and abs(full["grad_norm"] - chunked["grad_norm"]) < 1e-5
    assert chunked["peak_above_base_bytes"] <= 0.7 * full["peak_above_base_bytes"], (full, chunked)
