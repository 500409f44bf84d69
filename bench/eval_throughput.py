"""Held-out scoring tokens/s: ours (eval.lm.LMScorer) vs a plain transformers loop over the exported model.

    .venv/bin/python bench/eval_throughput.py                      # CPU: tiny preset, 120 documents
    .venv/bin/python bench/eval_throughput.py --preset 124m --max-docs 2000   # on a GPU

Setup (untimed): a throwaway tokenizer trained on the standard library's docstrings, a randomly
initialised model of the preset saved as a trainer checkpoint (DCP + meta.json), exported with
eval.export (what `pretrain eval export` runs). Documents: the same docstrings, cut into lm-eval
rolling windows (max length = the model's max_seq_len, prefix EOS), the same windows for both sides:
- ours: `LMScorer.loglikelihood_rolling_tokens` on the checkpoint loaded by eval.checkpoint
  (length-sorted batches, right padding without an attention mask, fused fp32 cross-entropy; bf16
  autocast on a GPU).
- reference: batches of windows in document order, right-padded with an attention mask, HF
  `LlamaForCausalLM` forward, log_softmax, gather: the loop lm-eval's HFLM runs (fp32 on CPU,
  dtype=bfloat16 on a GPU).
Both use the same batch size; tokens = window input positions. Timed rounds alternate ours/HF after
one warmup each; each side reports its median round (wall clock, and process CPU time, which moves
less when other jobs share the machine). Both totals must agree (rel 1e-4 in fp32).
Last line: JSON with "ratio" (ours / reference tokens/s), "cpu_ratio" and "target" 1.0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402


def setup(args: argparse.Namespace, work: Path):
    """Tokenizer, checkpoint, HF export and the token lists of the documents."""
    from data_pipeline.corpus import base_texts
    from eval.export import export_checkpoint
    from pretrain.core.tokenizer_file import load_tokenizer
    from tokenizer.bpe import save_tokenizer, train_bpe
    from trainer.checkpoint import save_checkpoint
    from trainer.model import Transformer, preset

    texts = [t for _, t in base_texts()]
    save_tokenizer(train_bpe(texts, vocab_size=args.vocab_size), work / "tok")
    tok = load_tokenizer(work / "tok")
    overrides = {"vocab_size": max(args.vocab_size, tok.vocab_size)}
    torch.manual_seed(0)
    model = Transformer(preset(args.preset, **overrides))
    meta = {
        "tokens_seen": 0,
        "config": {
            "model": args.preset,
            "model_overrides": overrides,
            "data": {"tokenizer_dir": str(work / "tok"), "tokenizer_hash": tok.hash},
        },
    }
    ckpt = save_checkpoint(work / "checkpoints", 0, model, torch.optim.AdamW(model.parameters()), meta)
    hf_dir = export_checkpoint(ckpt, work / "hf")
    docs = [tok.encode(t) for t in texts[: args.max_docs]]
    return tok, ckpt, hf_dir, docs


def hf_loop(model, windows, batch_size: int, device: str) -> float:
    """lm-eval HFLM's per-batch work: pad, attention mask, forward, log_softmax, gather the continuation."""
    total = 0.0
    with torch.inference_mode():
        for b in range(0, len(windows), batch_size):
            chunk = windows[b : b + batch_size]
            inps = [(ctx + cont)[:-1] for ctx, cont in chunk]  # rolling windows fit: no truncation needed
            width = max(len(x) for x in inps)
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, x in enumerate(inps):
                ids[r, : len(x)], mask[r, : len(x)] = torch.tensor(x), 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            for r, ((_, cont), x) in enumerate(zip(chunk, inps)):
                rows = logp[r, len(x) - len(cont) : len(x)]
                total += rows.gather(1, torch.tensor(cont, device=rows.device)[:, None]).sum().item()
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--max-docs", type=int, default=120)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)

    from transformers import AutoModelForCausalLM

    from eval.checkpoint import load_checkpoint_model
    from eval.lm import LMScorer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        tok, ckpt, hf_dir, docs = setup(args, Path(tmp))
        ours = LMScorer(load_checkpoint_model(ckpt).model.to(device), tok, device, args.batch_size)
        windows = [w for d in docs for w in ours.document_windows(d)]
        num_tokens = sum(len(ctx) + len(cont) - 1 for ctx, cont in windows)
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype).to(device).eval()

        def run_ours() -> float:
            return sum(ours.loglikelihood_rolling_tokens(docs))

        def run_hf() -> float:
            return hf_loop(hf, windows, args.batch_size, device)

        times: dict[str, list[float]] = {"ours": [], "hf": []}
        cpu: dict[str, list[float]] = {"ours": [], "hf": []}
        totals = {"ours": run_ours(), "hf": run_hf()}  # warmup (and the agreement check)
        for _ in range(args.rounds):
            for name, fn in (("ours", run_ours), ("hf", run_hf)):
                if device == "cuda":
                    torch.cuda.synchronize()
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                if device == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    rel = abs(totals["ours"] - totals["hf"]) / abs(totals["hf"])
    tps = {k: num_tokens / statistics.median(v) for k, v in times.items()}
    cpu_tps = {k: num_tokens / statistics.median(v) for k, v in cpu.items()}
    for k in ("ours", "hf"):
        print(
            f"{k:5s} {tps[k]:10.0f} tokens/s  {cpu_tps[k]:10.0f} tokens per CPU-second  "
            f"rounds {[round(t, 3) for t in times[k]]} s"
        )
    print(f"total log-likelihood ours {totals['ours']:.4f} hf {totals['hf']:.4f} (rel diff {rel:.2e})")
    result = {
        "device": device if device == "cpu" else torch.cuda.get_device_name(),
        "preset": args.preset,
        "num_docs": len(docs),
        "num_windows": len(windows),
        "num_tokens": num_tokens,
        "batch_size": args.batch_size,
        "ours_tokens_per_s": round(tps["ours"], 1),
        "hf_tokens_per_s": round(tps["hf"], 1),
        "ratio": round(tps["ours"] / tps["hf"], 3),
        "target": 1.0,
        # Tokens per process CPU-second: steadier than wall time on a machine shared with other jobs.
        "cpu_ratio": round(cpu_tps["ours"] / cpu_tps["hf"], 3),
        "threads": torch.get_num_threads(),
        "loglik_rel_diff": rel,
    }
    print(json.dumps(result))
    if device == "cpu" and rel > 1e-4:
        print(f"ours and the HF loop disagree: rel diff {rel:.2e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
