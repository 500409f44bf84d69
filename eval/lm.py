"""Log-likelihood of continuations and of whole documents, batched, with lm-evaluation-harness's rules.

    lm = LMScorer(model, tokenizer, device="cpu", batch_size=16)
    lm.loglikelihood([("The cat", " sat"), ...])      # [(logprob, None), ...]; with_greedy=True: is_greedy
    lm.loglikelihood_rolling(["a whole document", ...])  # [logprob summed over every token, ...]

Requests are tokenised and windowed exactly as lm-eval's HFLM does (`_encode_pair`, rolling windows
with `get_rolling_token_windows` + `make_disjoint_window`, left truncation to max_length + 1), so the
numbers match `lm_eval --model hf` on the exported model. What differs is only how the windows are
run: sorted by length (longest first) and right-padded without an attention mask, which is exact
for a causal model because padding after the last real token cannot reach it. Log-softmax is in
fp32; on CUDA the forward runs under bf16 autocast.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F


def rolling_token_windows(
    tokens: list[int], prefix_token: int, max_seq_len: int, context_len: int = 1
) -> Iterator[tuple[list[int], list[int]]]:
    """(input tokens, predicted tokens) windows covering every token once; lm_eval.utils'
    get_rolling_token_windows (the first window is conditioned on `prefix_token` alone)."""
    assert 1 <= context_len <= max_seq_len, (context_len, max_seq_len)
    if not tokens:
        return
    pred_len = max_seq_len - context_len + 1
    first = min(max_seq_len, len(tokens))
    yield [prefix_token] + tokens[: first - 1], tokens[:first]
    predicted = first
    while predicted < len(tokens):
        window_pred_len = min(len(tokens) - predicted, pred_len)
        end = predicted + window_pred_len
        yield tokens[end - max_seq_len - 1 : end - 1], tokens[end - window_pred_len : end]
        predicted += window_pred_len


def disjoint_window(pair: tuple[list[int], list[int]]) -> tuple[list[int], list[int]]:
    """Split a rolling window into (context, continuation) that do not overlap (lm-eval's rule)."""
    inp, pred = pair
    return inp[: len(inp) - (len(pred) - 1)], pred


def autocast_for(device: str | torch.device) -> contextlib.AbstractContextManager:
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class LMScorer:
    """Scores token requests with a causal LM (`model(idx) -> logits`, e.g. trainer.model.Transformer)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        device: str | torch.device = "cpu",
        batch_size: int = 16,
        max_length: int | None = None,
        prefix_token_id: int | None = None,
    ):
        self.model = model
        self.tok = tokenizer
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length or model.cfg.max_seq_len
        if self.max_length > model.cfg.max_seq_len:
            raise ValueError(
                f"max_length={max_length} exceeds the model's max_seq_len={model.cfg.max_seq_len}"
            )
        # Documents are packed as `ids + [eos]` in training, so EOS is what precedes a document start.
        self.prefix_token_id = tokenizer.eos_id if prefix_token_id is None else prefix_token_id
        self.num_tokens_scored = 0  # input positions run through the model (for throughput figures)

    # -- tokenisation (lm-eval HFLM rules) --------------------------------------------------------

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if context == "":  # lm-eval conditions an empty context on the prefix token
            cont = self.tok.encode(continuation)
            if cont and cont[0] == self.prefix_token_id:
                return cont[:1], cont[1:]
            return [self.prefix_token_id], cont
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:  # trailing spaces belong to the continuation, as a word-boundary token would
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.tok.encode(context + continuation)
        ctx = self.tok.encode(context)
        return ctx, whole[len(ctx) :]

    def document_windows(self, tokens: list[int]) -> list[tuple[list[int], list[int]]]:
        windows = rolling_token_windows(tokens, self.prefix_token_id, self.max_length)
        return [disjoint_window(w) for w in windows]

    # -- public API -------------------------------------------------------------------------------

    def loglikelihood(
        self, requests: Sequence[tuple[str, str]], with_greedy: bool = False
    ) -> list[tuple[float, bool | None]]:
        """Sum of log-probs of each continuation given its context, and (with_greedy) whether every
        continuation token is the argmax one."""
        return self.score_tokens([self.encode_pair(c, x) for c, x in requests], with_greedy)

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[float]:
        """Log-prob of every token of each whole text (lm-eval's loglikelihood_rolling)."""
        return self.loglikelihood_rolling_tokens([self.tok.encode(t) for t in texts])

    def loglikelihood_rolling_tokens(self, token_lists: Sequence[list[int]]) -> list[float]:
        per_text = [self.document_windows(t) for t in token_lists]
        flat = [w for ws in per_text for w in ws]
        results = self.score_tokens(flat)
        out, i = [], 0
        for ws in per_text:
            out.append(sum(ll for ll, _ in results[i : i + len(ws)]))
            i += len(ws)
        return out

    def score_tokens(
        self, requests: Sequence[tuple[list[int], list[int]]], with_greedy: bool = False
    ) -> list[tuple[float, bool | None]]:
        """(context ids, continuation ids) -> (logprob, is_greedy or None unless with_greedy); the input
        is truncated from the left to max_length tokens as lm-eval does."""
        prepared = []
        for i, (ctx, cont) in enumerate(requests):
            assert ctx and cont, f"request {i}: empty context or continuation ({len(ctx)}, {len(cont)})"
            assert len(cont) <= self.max_length, f"request {i}: continuation {len(cont)} > {self.max_length}"
            inp = (ctx + cont)[-(self.max_length + 1) :][:-1]
            prepared.append((i, inp, cont))
        # Longest first, like lm-eval, so batches hold similar lengths and little padding.
        prepared.sort(key=lambda r: -len(r[1]))
        out: list[tuple[float, bool | None]] = [(0.0, None)] * len(requests)
        with torch.inference_mode(), autocast_for(self.device):
            for b in range(0, len(prepared), self.batch_size):
                chunk = prepared[b : b + self.batch_size]
                width = len(chunk[0][1])
                idx = torch.zeros((len(chunk), width), dtype=torch.long)
                target = torch.full((len(chunk), width), -100, dtype=torch.long)
                for row, (_, inp, cont) in enumerate(chunk):
                    idx[row, : len(inp)] = torch.tensor(inp)
                    # Position t predicts token t + 1: the last len(cont) input positions predict `cont`.
                    target[row, len(inp) - len(cont) : len(inp)] = torch.tensor(cont)
                idx, target = idx.to(self.device), target.to(self.device)
                logits = self.model(idx)  # (B, T, vocab)
                self.num_tokens_scored += sum(len(r[1]) for r in chunk)
                vocab = logits.shape[-1]
                step = max(1, (1 << 26) // (width * vocab))  # rows per fp32 log-softmax (<= 256 MiB)
                for r0 in range(0, len(chunk), step):
                    lg, tg = logits[r0 : r0 + step].float(), target[r0 : r0 + step]
                    nll = F.cross_entropy(lg.flatten(0, 1), tg.flatten(), ignore_index=-100, reduction="none")
                    lls = (-nll.view(tg.shape).sum(1)).tolist()
                    greedy = ((lg.argmax(-1) == tg) | (tg == -100)).all(1).tolist() if with_greedy else None
                    for k, ll in enumerate(lls):
                        out[chunk[r0 + k][0]] = (ll, greedy[k] if greedy is not None else None)
        return out
