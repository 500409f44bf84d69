"""Model shape: ModelConfig and the named presets (no torch, so `pretrain plan` imports it instantly).

cfg = preset("124m", vocab_size=32768)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pretrain.core.config import check


@dataclass
class ModelConfig:
    vocab_size: int = 8192
    """Embedding rows and logits width (pad to a multiple of 64 for speed)."""
    dim: int = 128
    """Residual stream width; head_dim = dim // num_heads."""
    num_layers: int = 4
    """Number of transformer blocks."""
    num_heads: int = 4
    """Query heads."""
    num_kv_heads: int = 2
    """Key/value heads (grouped-query attention); must divide num_heads. Equal to num_heads = MHA."""
    ffn_hidden_dim: int | None = None
    """SwiGLU hidden width; None derives Llama's rule: ffn_multiple_of * ceil((8/3 * dim) / ffn_multiple_of)."""
    ffn_multiple_of: int = 256
    """Rounding used when ffn_hidden_dim is derived."""
    max_seq_len: int = 1024
    """Longest sequence the RoPE tables cover."""
    rope_theta: float = 10000.0
    """RoPE base frequency (Llama 2: 1e4, Llama 3: 5e5)."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    qk_norm: bool = False
    """RMSNorm each query/key head before RoPE (stabilises training; not part of plain HF Llama)."""
    tie_embeddings: bool = True
    """lm_head shares the embedding matrix (HF `tie_word_embeddings`)."""
    init_std: float = 0.02
    """Std of the normal init; attention/MLP output projections get init_std / sqrt(2 * num_layers)."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "num_layers", "num_heads", "num_kv_heads", "max_seq_len"):
            check(getattr(self, name) > 0, name, getattr(self, name), "> 0")
        check(self.dim % self.num_heads == 0, "dim", self.dim, f"a multiple of num_heads={self.num_heads}")
        check(self.head_dim % 2 == 0, "dim", self.dim, "dim // num_heads even (RoPE rotates pairs)")
        check(
            self.num_heads % self.num_kv_heads == 0,
            "num_kv_heads",
            self.num_kv_heads,
            f"a divisor of num_heads={self.num_heads}",
        )
        check(self.ffn_multiple_of > 0, "ffn_multiple_of", self.ffn_multiple_of, "> 0")
        if self.ffn_hidden_dim is None:
            hidden = int(8 * self.dim / 3)
            self.ffn_hidden_dim = self.ffn_multiple_of * math.ceil(hidden / self.ffn_multiple_of)
        check(self.ffn_hidden_dim > 0, "ffn_hidden_dim", self.ffn_hidden_dim, "> 0 or null")
        check(self.rope_theta > 0, "rope_theta", self.rope_theta, "> 0")
        check(self.norm_eps > 0, "norm_eps", self.norm_eps, "> 0")
        check(self.init_std > 0, "init_std", self.init_std, "> 0")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


# Kwargs, not ModelConfig objects, so an override of `dim` re-derives ffn_hidden_dim.
# Parameter counts (from tests/test_model.py; pretrain/plan.py `num_params` gives the same): tiny 2.03M,
# 124m 123.6M, 350m 359.7M, 1b 1.076B (all tied); 8b 8,030,261,248 (untied, = Meta-Llama-3-8B's).
PRESETS: dict[str, dict[str, Any]] = {
    # CPU smoke tests and the tiny corpus.
    "tiny": dict(vocab_size=8192, dim=128, num_layers=4, num_heads=4, num_kv_heads=2, max_seq_len=512),
    # GPT-2 small shape (MHA, vocab 50304 = 50257 padded to 64); SwiGLU 2048 matches a 4x GELU MLP.
    "124m": dict(vocab_size=50304, dim=768, num_layers=12, num_heads=12, num_kv_heads=12),
    # GPT-2 medium shape.
    "350m": dict(vocab_size=50304, dim=1024, num_layers=24, num_heads=16, num_kv_heads=16),
    # Llama-3.2-1B shape (GQA 32/8, ffn 8192, theta 5e5) with our 50304 vocab.
    "1b": dict(
        vocab_size=50304,
        dim=2048,
        num_layers=16,
        num_heads=32,
        num_kv_heads=8,
        ffn_hidden_dim=8192,
        max_seq_len=2048,
        rope_theta=500000.0,
    ),
    # Llama 3 8B's shape (Meta-Llama-3-8B config.json): for `pretrain plan` and the meta-device
    # init test; it never trains here.
    "8b": dict(
        vocab_size=128256,
        dim=4096,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        ffn_hidden_dim=14336,
        max_seq_len=8192,
        rope_theta=500000.0,
        tie_embeddings=False,
    ),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A named size with field overrides, e.g. `preset("124m", vocab_size=32768)`."""
    check(name in PRESETS, "preset", name, f"one of {sorted(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides})
