"""Log-likelihood of continuations and of whole documents, batched, with lm-evaluation-harness's rules.

    lm = LMScorer(model, tokenizer, device="cpu", batch_size=16)
    lm.loglikelihood([("The cat", " sat"), ...])      # [(logprob, None), ...]; with_greedy=True: is_greedy
    lm.loglikelihood_rolling(["a whole document", ...])  # [logprob summed over every token, ...]

Requests are tokenised and windowed exactly as lm-eval's HFLM does (`_encode_pair`, rolling windows
with `get_rolling_token_windows` + `make_disjoint_window`, left truncation to max_length + 1), so the
numbers match `lm_eval --model hf` on the exported model. What differs is only how the windows are
run: sorted by length (longest first) and right-padded without an attention mask, which is exact
for a causal model because padding after the last real token cannot reach it, and the vocab-sized
head applied only at the positions that predict a scored token. Log-softmax is in fp32 (sums in
fp64); on CUDA the forward runs under bf16 autocast.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from eval.kv import cached_forward, new_cache


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


def autocast_for(device: str | torch.device, dtype: str = "auto") -> contextlib.AbstractContextManager:
    """auto: bf16 autocast on CUDA, fp32 on CPU; "bfloat16": bf16 autocast anywhere; "float32": none."""
    kind = torch.device(device).type
    if dtype == "bfloat16" or (dtype == "auto" and kind == "cuda"):
        return torch.autocast(kind, dtype=torch.bfloat16)
    assert dtype in ("auto", "float32"), f"dtype {dtype!r}: one of auto, float32, bfloat16"
    return contextlib.nullcontext()


class LMScorer:
    """Scores token requests with trainer.model.Transformer (its `hidden_states` and `lm_head`)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        device: str | torch.device = "cpu",
        batch_size: int = 16,
        max_length: int | None = None,
        prefix_token_id: int | None = None,
        dtype: str = "auto",
    ):
        self.model = model
        self.tok = tokenizer
        self.device = device
        self.batch_size = batch_size
        self.dtype = dtype  # autocast_for's choice: auto (bf16 on CUDA), float32, bfloat16
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
        is truncated from the left to max_length tokens as lm-eval does.

        A request's input splits into a prefix (up to the position that predicts the continuation's
        first token) and a suffix (the rest of the continuation but its last token). Requests with
        the same prefix (a multiple-choice question: one per choice), when it is at least twice as long
        as their suffixes, run it once and continue from its KV cache; the others run whole, longest
        first."""
        groups: dict[tuple[int, ...], list[tuple[int, list[int], list[int]]]] = {}
        for i, (ctx, cont) in enumerate(requests):
            assert ctx and cont, f"request {i}: empty context or continuation ({len(ctx)}, {len(cont)})"
            assert len(cont) <= self.max_length, f"request {i}: continuation {len(cont)} > {self.max_length}"
            inp = (ctx + cont)[-(self.max_length + 1) :][:-1]
            groups.setdefault(tuple(inp[: len(inp) - len(cont) + 1]), []).append((i, inp, cont))
        out: list[tuple[float, bool | None]] = [(0.0, None)] * len(requests)

        def worth_sharing(prefix: tuple[int, ...], members: list) -> bool:
            # A rolling window's prefix is one token before a long suffix: nothing to save there.
            return len(members) > 1 and len(prefix) >= 2 * max(
                len(inp) - len(prefix) for _, inp, _ in members
            )

        shared = sorted(
            ((k, g) for k, g in groups.items() if worth_sharing(k, g)), key=lambda kg: -len(kg[0])
        )
        whole = sorted(
            (r for k, g in groups.items() if not worth_sharing(k, g) for r in g), key=lambda r: -len(r[1])
        )
        with torch.inference_mode(), autocast_for(self.device, self.dtype):
            for b in range(0, len(whole), self.batch_size):
                self._score_whole(whole[b : b + self.batch_size], out, with_greedy)
            for b in range(0, len(shared), self.batch_size):
                self._score_shared(shared[b : b + self.batch_size], out, with_greedy)
        return out

    def _score_whole(self, chunk, out, with_greedy: bool) -> None:
        """Right-padded rows, one forward; only the positions that predict `cont` reach the head."""
        width = len(chunk[0][1])
        idx = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (_, inp, _) in enumerate(chunk):
            idx[row, : len(inp)] = torch.tensor(inp)
        # Position t predicts token t + 1: the last len(cont) input positions predict `cont`.
        rows = [r for r, (_, _, cont) in enumerate(chunk) for _ in cont]
        cols = [c for _, inp, cont in chunk for c in range(len(inp) - len(cont), len(inp))]
        hidden = self.model.hidden_states(idx.to(self.device))[self._t(rows), self._t(cols)]  # (N, dim)
        self.num_tokens_scored += sum(len(r[1]) for r in chunk)
        targets = [t for _, _, cont in chunk for t in cont]
        self._accumulate([i for i, _, _ in chunk], hidden, targets, rows, out, with_greedy)

    def _score_shared(self, groups, out, with_greedy: bool) -> None:
        """Prefixes right-padded into one causal prefill; then every member's suffix, right-padded,
        attends to its group's cached keys (copied per member row)."""
        G, Wp = len(groups), len(groups[0][0])
        idx = torch.zeros((G, Wp), dtype=torch.long)
        for g, (prefix, _) in enumerate(groups):
            idx[g, : len(prefix)] = torch.tensor(prefix)
        pos = torch.arange(Wp, device=self.device).expand(G, Wp)
        cache = new_cache(self.model)
        h = cached_forward(self.model, idx.to(self.device), pos, cache, 0, None)
        last = h[
            self._t(list(range(G))), self._t([len(p) - 1 for p, _ in groups])
        ]  # (G, dim): predicts cont[0]
        members = [
            (g, i, inp[len(prefix) :], cont) for g, (prefix, m) in enumerate(groups) for i, inp, cont in m
        ]
        self.num_tokens_scored += sum(len(p) for p, _ in groups) + sum(len(s) for _, _, s, _ in members)
        self._accumulate(
            [i for _, i, _, _ in members], last[self._t([g for g, *_ in members])],
            [cont[0] for *_, cont in members], list(range(len(members))), out, with_greedy,
        )  # fmt: skip
        # Suffixes longest first, in chunks that hold about as many cached keys as a batch of whole rows.
        todo = sorted((m for m in members if m[2]), key=lambda m: -len(m[2]))
        rows_per_chunk = max(1, self.batch_size * self.max_length // (Wp + len(todo[0][2]))) if todo else 1
        for b in range(0, len(todo), rows_per_chunk):
            chunk = todo[b : b + rows_per_chunk]
            R, Ws = len(chunk), len(chunk[0][2])
            gidx = self._t([g for g, *_ in chunk])
            sidx = torch.zeros((R, Ws), dtype=torch.long)
            spos = torch.zeros((R, Ws), dtype=torch.long)
            svalid = torch.zeros((R, Wp + Ws), dtype=torch.bool)
            for r, (g, _, suffix, _) in enumerate(chunk):
                n = len(groups[g][0])
                sidx[r, : len(suffix)] = torch.tensor(suffix, dtype=torch.long)
                spos[r] = torch.arange(n, n + Ws).clamp(max=self.model.cfg.max_seq_len - 1)  # pads: any
                svalid[r, :n] = True
                svalid[r, Wp : Wp + len(suffix)] = True
            scache = []
            for k, v in cache:
                sk = torch.zeros((R, k.shape[1], Wp + Ws, k.shape[3]), dtype=k.dtype, device=k.device)
                sv = torch.zeros_like(sk)
                sk[:, :, :Wp], sv[:, :, :Wp] = k[gidx], v[gidx]
                scache.append([sk, sv])
            h = cached_forward(
                self.model, sidx.to(self.device), spos.to(self.device), scache, Wp, svalid.to(self.device)
            )
            rows = [r for r, (_, _, suffix, _) in enumerate(chunk) for _ in suffix]
            cols = [c for _, _, suffix, _ in chunk for c in range(len(suffix))]
            self._accumulate(
                [i for _, i, _, _ in chunk], h[self._t(rows), self._t(cols)],
                [t for *_, cont in chunk for t in cont[1:]], rows, out, with_greedy,
            )  # fmt: skip

    def _t(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)

    def _accumulate(self, ids, hidden, targets, owner, out, with_greedy: bool) -> None:
        """Add the log-probs of `targets` under lm_head(hidden) to their requests' running totals in
        `out` (owner[n]: which of `ids` target n belongs to); log-softmax in fp32 chunks <= 256 MiB."""
        if not targets:
            return
        target, owner_t = self._t(targets), self._t(owner)
        ll = torch.zeros(len(ids), dtype=torch.float64, device=self.device)
        wrong = torch.zeros(len(ids), dtype=torch.long, device=self.device)
        step = max(1, (1 << 26) // self.model.cfg.vocab_size)
        for p0 in range(0, len(targets), step):
            sl = slice(p0, p0 + step)
            lg = self.model.lm_head(hidden[sl]).float()  # (n, vocab)
            ll.index_add_(0, owner_t[sl], -F.cross_entropy(lg, target[sl], reduction="none").double())
            if with_greedy:
                wrong.index_add_(0, owner_t[sl], (lg.argmax(-1) != target[sl]).long())
        for i, add, miss in zip(ids, ll.tolist(), wrong.tolist()):
            prev, greedy = out[i]
            if with_greedy:
                greedy = (greedy is not False) and miss == 0
            out[i] = (prev + add, greedy)
