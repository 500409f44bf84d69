"""Text generation with a KV cache: batched, greedy or seeded sampling, stop sequences.

    new = generate_batch(model, [ids_a, ids_b], max_new_tokens=32, eos_id=tok.eos_id,
                         stop=lambda new_ids: "\\n" in tok.decode(new_ids))   # [[ids], [ids]]
    generate_ids(model, ids, 32, eos_id)                       # one sequence, greedy
    rows = generate_samples(model, tok, ["The module", ...], max_new_tokens=32, seed=0, device="cpu")
    # [{"prompt", "mode": "greedy"|"sample", "text"}, ...]

The cache is inference-only (eval/kv.py, shared with scoring), not in the trainer. A batch is
left-padded; every row gets its own RoPE positions (0 at its first real token) and a key mask,
so a padded row computes what it would alone. The prompt plus the new tokens must fit the model's
max_seq_len (callers left-truncate the prompt, as lm-eval does with `max_length - max_gen_toks`).

Sampling: temperature, then top-k, then top-p (nucleus), with one torch.Generator per sequence, so
the same checkpoint, prompt and seed give the same text whatever the batch. A sequence stops at EOS
(not included), at `max_new_tokens`, or when `stop(new_ids)` says so. generate_samples conditions
each prompt on EOS, the token that precedes every document in training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from eval.kv import cached_forward, new_cache
from eval.lm import autocast_for


def _sample(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator) -> int:
    """A seeded sample from one row of logits: temperature, then top-k, then top-p."""
    logits = logits / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = torch.softmax(sorted_logits, -1).cumsum(-1)
        drop = cum - torch.softmax(sorted_logits, -1) >= top_p  # keep the smallest set reaching top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    probs = torch.softmax(logits, -1).cpu()
    return int(torch.multinomial(probs, 1, generator=generator))


def generate_batch(
    model: Any,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    eos_id: int | None,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generators: Sequence[torch.Generator | None] | None = None,
    stop: Callable[[list[int]], bool] | None = None,
    device: str | torch.device = "cpu",
    dtype: str = "auto",
) -> list[list[int]]:
    """New token ids for each prompt (one forward per new token for the whole batch, KV cached)."""
    assert all(prompts), "every prompt needs at least one token"
    width = max(len(p) for p in prompts)
    limit = model.cfg.max_seq_len
    assert width + max_new_tokens <= limit, (
        f"prompt ({width} tokens) + max_new_tokens ({max_new_tokens}) > max_seq_len {limit}"
    )
    B = len(prompts)
    pad = [width - len(p) for p in prompts]
    idx = torch.zeros((B, width), dtype=torch.long)
    pos = torch.zeros((B, width), dtype=torch.long)
    key_valid = torch.ones((B, width + max_new_tokens), dtype=torch.bool)
    for r, p in enumerate(prompts):
        idx[r, pad[r] :] = torch.tensor(p)
        pos[r, pad[r] :] = torch.arange(len(p))
        key_valid[r, : pad[r]] = False
    idx, pos, key_valid = idx.to(device), pos.to(device), key_valid.to(device)
    cache = new_cache(model)
    new: list[list[int]] = [[] for _ in prompts]
    done = [max_new_tokens == 0] * B
    generators = generators or [None] * B
    with torch.inference_mode(), autocast_for(device, dtype):
        logits = (
            model.lm_head(cached_forward(model, idx, pos, cache, 0, key_valid)[:, -1])
            if max_new_tokens
            else None
        )
        for step in range(max_new_tokens):
            greedy = logits.argmax(-1).tolist() if temperature <= 0 else None  # one transfer per step
            nxt = []
            for r in range(B):
                if done[r]:
                    tok = eos_id
                elif greedy is not None:
                    tok = greedy[r]
                else:
                    tok = _sample(logits[r].float(), temperature, top_k, top_p, generators[r])
                if not done[r]:
                    if eos_id is not None and tok == eos_id:
                        done[r] = True
                    else:
                        new[r].append(tok)
                        done[r] = len(new[r]) >= max_new_tokens or bool(stop and stop(new[r]))
                nxt.append(0 if tok is None else tok)
            if all(done):
                break
            col = width + step
            idx = torch.tensor(nxt, dtype=torch.long, device=device)[:, None]
            pos = torch.tensor([len(p) + step for p in prompts], dtype=torch.long, device=device)[:, None]
            logits = model.lm_head(cached_forward(model, idx, pos, cache, col, key_valid)[:, -1])
    return new


def generate_ids(
    model: Any,
    ids: list[int],
    max_new_tokens: int,
    eos_id: int | None,
    temperature: float = 0.0,
    top_k: int = 0,
    generator=None,
    device: str | torch.device = "cpu",
) -> list[int]:
    """New token ids after `ids` (left-truncated to leave room for them); temperature 0 is greedy.
    Stops at EOS (not included)."""
    keep = model.cfg.max_seq_len - max_new_tokens
    assert keep >= 1, f"max_new_tokens={max_new_tokens} leaves no room in max_seq_len={model.cfg.max_seq_len}"
    return generate_batch(
        model,
        [list(ids)[-keep:]],
        max_new_tokens,
        eos_id,
        temperature,
        top_k,
        1.0,
        [generator],
        device=device,
    )[0]


def generate_samples(
    model: Any,
    tok: Any,
    prompts: list[str],
    max_new_tokens: int = 32,
    temperature: float = 0.8,
    top_k: int = 50,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> list[dict[str, str]]:
    """A greedy and a seeded sampled continuation of each prompt (both batched over the prompts)."""
    ids = [[tok.eos_id] + tok.encode(p) for p in prompts]
    keep = model.cfg.max_seq_len - max_new_tokens
    ids = [x[-keep:] for x in ids]
    greedy = generate_batch(model, ids, max_new_tokens, tok.eos_id, device=device)
    gens = [torch.Generator().manual_seed(seed * 1_000_003 + i) for i in range(len(prompts))]
    sampled = generate_batch(
        model, ids, max_new_tokens, tok.eos_id, temperature, top_k, 1.0, gens, device=device
    )
    rows = []
    for prompt, g, s in zip(prompts, greedy, sampled):
        rows.append({"prompt": prompt, "mode": "greedy", "text": tok.decode(g)})
        rows.append({"prompt": prompt, "mode": "sample", "text": tok.decode(s)})
    return rows
