"""Llama-style decoder, single device: RMSNorm, RoPE, GQA, optional QK-norm, SwiGLU.

    cfg = preset("tiny", vocab_size=8192)
    model = Transformer(cfg)
    logits, loss = model(idx, targets)  # idx, targets: (B, T) int64; loss ignores -100

Parameter names are Hugging Face `LlamaForCausalLM` names without the `model.` prefix, and RoPE
uses HF's rotate-half layout, so export is a prefix rule (`hf_name`) with no weight permutation.
Parallelism, compile and checkpointing wrap this module from outside (trainer/parallelize etc.).
"""

from __future__ import annotations

import importlib
import math
import zlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.core import accel
from trainer.model_config import PRESETS, ModelConfig, preset  # noqa: F401 (re-exported)


def hf_name(name: str) -> str:
    """Our parameter name -> HF LlamaForCausalLM name: everything but lm_head gains `model.`."""
    return name if name.startswith("lm_head.") else f"model.{name}"


class RMSNorm(nn.Module):
    """HF LlamaRMSNorm: normalise in fp32, cast back, then scale."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_cos_sin(head_dim: int, positions: torch.Tensor, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (len(positions), head_dim), halves duplicated as in HF Llama."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    freqs = torch.outer(positions.float(), inv_freq)  # (T, head_dim/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # rotate-half layout: pair i with i + head_dim/2
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, head_dim); cos/sin: (T, head_dim). Same formula as HF apply_rotary_pos_emb."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.num_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.dim, bias=False)
        # Qwen3's names for the same per-head norms, so a QK-norm export has a target layout.
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None

    def qkv(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries (B, H, T, head_dim), keys and values (B, kv_heads, T, head_dim), QK-norm and RoPE
        applied; cos/sin are (T, head_dim) or per row (B, 1, T, head_dim) (eval's KV cache)."""
        B, T, _ = x.shape
        # -1 heads: under tensor parallelism each rank holds num_heads / tp of them
        q = self.q_proj(x).view(B, T, -1, self.head_dim)
        k = self.k_proj(x).view(B, T, -1, self.head_dim)
        v = self.v_proj(x).view(B, T, -1, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, head_dim)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x, cos, sin)
        # enable_gqa repeats each kv head for num_heads // num_kv_heads consecutive query heads,
        # the same grouping as HF repeat_kv; the flash kernel handles it without copying.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))  # (B, T, dim)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.ffn_hidden_dim, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.ffn_hidden_dim, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_hidden_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm residual block (HF LlamaDecoderLayer names)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `h @ weight.T` over the targets that are not -100, computed `chunk`
    rows at a time: each chunk's fp32 logits become its loss and, at once, its gradients with
    respect to h and weight (softmax minus one-hot), then are freed. The backward only scales the
    stored gradients, so nothing is recomputed (the fused linear + cross-entropy of Liger/torchtune)."""

    @staticmethod
    def forward(
        ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int, mean: bool = True
    ) -> torch.Tensor:
        valid = targets != -100
        count = valid.sum().clamp(min=1) if mean else torch.ones((), dtype=torch.long, device=h.device)
        loss_sum = torch.zeros((), dtype=torch.float32, device=h.device)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        for i in range(0, h.shape[0], chunk):
            hc, tc, vc = h[i : i + chunk], targets[i : i + chunk], valid[i : i + chunk]
            logits = (hc @ weight.t()).float()  # (chunk, vocab): the only vocab-wide tensor alive
            tgt = tc.clamp(min=0).unsqueeze(1)
            picked = logits.gather(1, tgt).squeeze(1)
            peak = logits.amax(dim=-1, keepdim=True)
            total = logits.sub_(peak).exp_().sum(dim=-1, keepdim=True)  # in place: no second buffer
            loss_sum += ((peak.squeeze(1) + total.squeeze(1).log() - picked) * vc).sum()
            if need_h or need_w:
                g = logits.div_(total)  # softmax, in place
                g.scatter_add_(1, tgt, -torch.ones_like(tgt, dtype=g.dtype))
                g.masked_fill_(~vc.unsqueeze(1), 0.0)  # ignored targets: no gradient
                g = g.to(h.dtype)
                if need_h:
                    grad_h[i : i + chunk] = g @ weight.to(h.dtype)
                if need_w:
                    if g.dtype == grad_w.dtype:
                        grad_w.addmm_(g.t(), hc)  # in place: no vocab x dim temporary
                    else:  # 16-bit activations: a 16-bit product, added into the fp32 sum
                        grad_w += (g.t() @ hc).float()
                del g
            del logits  # before the next chunk's matmul, or two chunks of logits are alive at once
        ctx.save_for_backward(grad_h, grad_w, count)
        ctx.weight_dtype = weight.dtype
        return loss_sum / count

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w, count = ctx.saved_tensors
        scale = grad_out / count
        # Scaled in place (the backward runs once): the stored gradients become the returned ones.
        gh = grad_h.mul_(scale.to(grad_h.dtype)) if grad_h is not None else None
        gw = grad_w.mul_(scale).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None, None


def chunked_linear_cross_entropy(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_tokens: int, reduction: str = "mean"
) -> torch.Tensor:
    """F.cross_entropy(h @ weight.T, targets, ignore_index=-100) with at most `chunk_tokens` rows of
    fp32 logits in memory at a time, in the forward and in the backward. h: (N, dim), targets: (N,)."""
    return _ChunkedLinearCrossEntropy.apply(h, weight, targets, chunk_tokens, reduction == "mean")


def canonical_name(name: str) -> str:
    """A parameter's model name without the wrappers' infixes (activation checkpointing, compile)."""
    return name.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", "")


@torch.no_grad()
def init_param(param: torch.Tensor, make, seed: int | None = None) -> None:
    """Fill `param` with `make(shape, device, generator)` of its full (global) shape; a DTensor
    (FSDP2/TP shard) keeps its own piece of that full tensor. The generator is seeded with `seed`
    on the parameter's device, so a sharded and an unsharded parameter get the same values."""
    local = param.to_local() if hasattr(param, "to_local") else param
    g = torch.Generator(device=local.device)
    if seed is not None:
        g.manual_seed(seed)
    full = make(tuple(param.shape), local.device, g).to(param.dtype)
    if local is param:
        param.copy_(full)
        return
    mod = importlib.import_module("torch.distributed.tensor")  # only for sharded parameters
    piece = mod.distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)
    local.copy_(piece.to_local())
    del full, piece


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        # A dict keyed "0".."n-1" (same state_dict keys as a list): a pipeline stage deletes the
        # blocks it does not own and the rest keep their names, so checkpoints move across layouts.
        self.layers = nn.ModuleDict({str(i): Block(cfg) for i in range(cfg.num_layers)})
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        # Derived, not state: non-persistent so checkpoints hold only weights.
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """(Re)initialise weights and RoPE tables; call after `to_empty()` from the meta device.

        Each parameter is drawn from a generator of its own, seeded by (`seed`, its name), so its
        values do not depend on which other parameters exist, their order or their sharding: a
        model built on `meta`, split into pipeline stages or sharded by FSDP2/TP and initialised
        here holds exactly the single-process weights (a sharded parameter draws its full tensor,
        one at a time, and keeps its own shard). seed None: drawn from torch's global RNG."""
        if self.cfg.tie_embeddings and self.embed_tokens is not None and self.lm_head is not None:
            self.lm_head.weight = self.embed_tokens.weight  # to_empty() unties shared parameters
        device = next(self.parameters()).device
        if device.type == "meta":  # built on meta: initialised after to_empty(), per shard
            return
        if seed is None:
            seed = int(torch.randint(2**62, (1,), device="cpu"))
        cos, sin = rope_cos_sin(self.cfg.head_dim, torch.arange(self.cfg.max_seq_len), self.cfg.rope_theta)
        self.rope_cos, self.rope_sin = cos.to(device), sin.to(device)
        std = self.cfg.init_std
        for name, param in self.named_parameters():
            name = canonical_name(name)
            if name.endswith("norm.weight"):
                init_param(param, lambda shape, dev, g: torch.ones(shape, device=dev))
                continue
            # GPT-2/nanoGPT: each block adds two residual writes, so scale them down with depth.
            s = (
                std / math.sqrt(2 * self.cfg.num_layers)
                if name.endswith(("o_proj.weight", "down_proj.weight"))
                else std
            )
            g_seed = (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63
            init_param(
                param,
                lambda shape, dev, g, s=s: torch.empty(shape, device=dev).normal_(0.0, s, generator=g),
                g_seed,
            )

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        loss_chunk_tokens: int = 0,
        reduction: str = "mean",
    ) -> torch.Tensor | tuple[torch.Tensor | None, torch.Tensor]:
        """idx (B, T) -> logits (B, T, vocab); with targets also the mean token cross-entropy.
        `loss_chunk_tokens` > 0 computes the loss `chunked_linear_cross_entropy`'s way and returns
        (None, loss): no (B, T, vocab) logits are ever held whole."""
        h = self.hidden_states(idx)
        if self.lm_head is None:  # a pipeline stage before the last: hidden states out
            return h
        if targets is not None and loss_chunk_tokens > 0:
            loss = chunked_linear_cross_entropy(
                h.flatten(0, 1), self.lm_head.weight, targets.flatten(), loss_chunk_tokens, reduction
            )
            return None, loss
        logits = self.lm_head(h)  # (B, T, vocab)
        if targets is None:
            return logits
        loss = F.cross_entropy(
            logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction=reduction
        )
        return logits, loss

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) -> the final-norm output (B, T, dim) that lm_head maps to logits (eval applies the
        head only at the positions it scores). In a pipeline stage (trainer/pipeline.py) the parts
        it does not own are None: no embedding, input hidden states; no norm, its blocks' output."""
        T = idx.shape[1]
        assert T <= self.cfg.max_seq_len, f"sequence length {T} > max_seq_len {self.cfg.max_seq_len}"
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        # A pipeline stage after the first gets hidden states (B, T, dim) instead of token ids.
        x = self.embed_tokens(idx) if self.embed_tokens is not None else idx
        for layer in self.layers.values():
            x = layer(x, cos, sin)
        return self.norm(x) if self.norm is not None else x

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Unique parameters (a tied matrix counts once); exclude_embeddings drops every vocab x dim matrix."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.embed_tokens.weight.numel()
            if not self.cfg.tie_embeddings:
                n -= self.lm_head.weight.numel()
        return n

    def flops_per_token(self, seq_len: int, causal: bool = False) -> int:
        """Training FLOPs per token (forward + backward): core.accel's formula over this model's
        matmul parameters (non-embedding params + the lm_head's vocab * dim); `causal` counts half
        the attention square (the work a causal kernel does) instead of all of it (PaLM convention)."""
        cfg = self.cfg
        n = self.num_params(exclude_embeddings=True) + cfg.vocab_size * cfg.dim
        return accel.flops_per_token(n, cfg.num_layers, cfg.dim, seq_len, causal=causal)

    def hf_state_dict_names(self) -> dict[str, str]:
        """Our state_dict key -> HF LlamaForCausalLM key; a tied lm_head is omitted (HF re-ties it)."""
        return {
            k: hf_name(k)
            for k in self.state_dict()
            if not (self.cfg.tie_embeddings and k == "lm_head.weight")
        }

    def hf_config(self) -> dict[str, Any]:
        """`config.json` fields for LlamaForCausalLM with these weights (qk_norm has no Llama field)."""
        cfg = self.cfg
        assert not cfg.qk_norm, "qk_norm=True has no LlamaForCausalLM equivalent (Qwen3 has q_norm/k_norm)"
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.dim,
            "intermediate_size": cfg.ffn_hidden_dim,
            "num_hidden_layers": cfg.num_layers,
            "num_attention_heads": cfg.num_heads,
            "num_key_value_heads": cfg.num_kv_heads,
            "head_dim": cfg.head_dim,
            "max_position_embeddings": cfg.max_seq_len,
            "rope_theta": cfg.rope_theta,
            "rms_norm_eps": cfg.norm_eps,
            "tie_word_embeddings": cfg.tie_embeddings,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "initializer_range": cfg.init_std,
        }
