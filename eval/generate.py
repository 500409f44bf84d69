"""Greedy and seeded sampled continuations of a fixed prompt list (what a checkpoint "says").

    rows = generate_samples(model, tok, ["The module", ...], max_new_tokens=32, seed=0, device="cpu")
    # [{"prompt", "mode": "greedy"|"sample", "text"}, ...]

No KV cache: each new token reruns the (short) sequence, which is plenty for a few prompts of a few
dozen tokens. The prompt is conditioned on EOS, the token that precedes every document in training.
Sampling uses temperature and top-k with a torch.Generator seeded per prompt, so the same
checkpoint, prompt and seed give the same text.
"""

from __future__ import annotations

from typing import Any

import torch

from eval.lm import autocast_for


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
    """New token ids after `ids`; temperature 0 is greedy. Stops at EOS (not included)."""
    max_len = model.cfg.max_seq_len
    seq = list(ids)
    new: list[int] = []
    with torch.inference_mode(), autocast_for(device):
        for _ in range(max_new_tokens):
            window = torch.tensor([seq[-max_len:]], dtype=torch.long, device=device)
            logits = model(window)[0, -1].float()  # (vocab,)
            if temperature <= 0:
                nxt = int(logits.argmax())
            else:
                logits = logits / temperature
                if top_k > 0:
                    kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = torch.softmax(logits, -1).cpu()
                nxt = int(torch.multinomial(probs, 1, generator=generator))
            if eos_id is not None and nxt == eos_id:
                break
            seq.append(nxt)
            new.append(nxt)
    return new


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
    rows = []
    for i, prompt in enumerate(prompts):
        ids = [tok.eos_id] + tok.encode(prompt)
        greedy = generate_ids(model, ids, max_new_tokens, tok.eos_id, device=device)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + i)
        sampled = generate_ids(model, ids, max_new_tokens, tok.eos_id, temperature, top_k, gen, device)
        rows.append({"prompt": prompt, "mode": "greedy", "text": tok.decode(greedy)})
        rows.append({"prompt": prompt, "mode": "sample", "text": tok.decode(sampled)})
    return rows
