"""The inference forward with a KV cache, shared by generation and by scoring requests that share a
context: per-row RoPE positions, key masks, cache columns written in place.

    cache = new_cache(model)                                      # [[keys, values] per layer]
    h = cached_forward(model, idx, pos, cache, 0, key_valid)      # (B, T, dim) final-norm states
    logits = model.lm_head(h[:, -1])

It runs the trainer's `Transformer` blocks itself (their public submodules and `Attention.qkv`), so
the training forward stays single-purpose and untouched. cache[layer] = [keys, values], each
(B, kv_heads, S, head_dim), allocated on first use (in the dtype autocast gives the projections) or
filled beforehand by the caller (e.g. a shared context's keys copied to every row that continues it).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

Cache = list[list[torch.Tensor | None]]


def new_cache(model: Any) -> Cache:
    return [[None, None] for _ in model.layers.values()]


def cached_forward(
    model: Any,
    idx: torch.Tensor,
    pos: torch.Tensor,
    cache: Cache,
    start: int,
    key_valid: torch.Tensor | None,
) -> torch.Tensor:
    """Final-norm hidden states (B, T, dim) for tokens idx (B, T) at RoPE positions pos (B, T), which
    occupy cache columns start..start+T; key_valid (B, S) marks the columns holding real tokens.
    Query t (column start + t) sees the real keys up to its own column, and always itself, so a
    padding query has one key and stays finite (its column is masked for every real query).
    key_valid=None: a right-padded prefill from column 0 (cache width T), plain causal attention
    (the fast kernel; padding after a row's last token cannot reach its real tokens)."""
    B, T = idx.shape
    end = start + T
    cos = model.rope_cos[pos].unsqueeze(1)  # (B, 1, T, head_dim): per-row positions
    sin = model.rope_sin[pos].unsqueeze(1)
    mask = None
    if key_valid is not None:
        cols = torch.arange(end, device=idx.device)
        rows = torch.arange(start, end, device=idx.device)
        causal = cols[None, :] <= rows[:, None]  # (T, end)
        mask = (causal[None] & key_valid[:, None, :end]) | (cols[None, :] == rows[:, None])[None]
        mask = mask[:, None]  # (B, 1, T, end)
    else:
        assert start == 0, f"a prefill without key_valid starts at column 0, not {start}"
    x = model.embed_tokens(idx)
    for layer, kv in zip(model.layers.values(), cache):
        attn = layer.self_attn
        q, k, v = attn.qkv(layer.input_layernorm(x), cos, sin)  # (B, H, T, head_dim)
        if kv[0] is None:
            shape = (B, attn.num_kv_heads, T if key_valid is None else key_valid.shape[1], attn.head_dim)
            kv[0] = torch.zeros(shape, dtype=k.dtype, device=k.device)
            kv[1] = torch.zeros(shape, dtype=v.dtype, device=v.device)
        kv[0][:, :, start:end] = k
        kv[1][:, :, start:end] = v
        y = F.scaled_dot_product_attention(
            q, kv[0][:, :, :end], kv[1][:, :, :end], attn_mask=mask, is_causal=mask is None,
            enable_gqa=attn.num_kv_heads != attn.num_heads,
        )  # fmt: skip
        x = x + attn.o_proj(y.transpose(1, 2).reshape(B, T, -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return model.norm(x)
