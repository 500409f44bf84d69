"""lm-eval parity and speed: the same tasks through `lm_eval --model hf` on the export and through
our eval on the native checkpoint, in one run.

    .venv/bin/python bench/eval_parity.py                  # CPU: tiny preset, 80 training steps
    .venv/bin/python bench/eval_parity.py --preset 124m --steps 200 --max-docs 400   # on a GPU

Setup (untimed): a tokenizer trained on the standard library's docstrings, token shards of 90% of
them, a short training run of the preset (trainer.train, so the checkpoint is a real DCP one), its
HF export (eval.export), and the default task set made from the held-out 10% (eval.tasks.make_tasks:
two multiple-choice tasks, one generate_until task with a regex filter, rolling log-likelihood per
source). Timed, alternating, `--rounds` each after one warmup of each:
- ours: `PretrainLM(checkpoint=...)` (DCP load) + `eval.harness.evaluate_tasks` (lm-eval's task
  machinery and evaluate() over the task directory): what `pretrain eval run` runs;
- lm-eval: `simple_evaluate(model="hf", model_args="pretrained=EXPORT,...")`, model load included.
Both at --batch-size, same tasks, fp32 on CPU (bf16 autocast / dtype=bfloat16 on a GPU).
Parity: every metric of every task; the rolling tasks compared with lm-eval at batch size 1 (an
untimed extra run: its batched padding can shift a document's value), perplexities compared as
their logs (nats per word or byte; a perplexity of 1e5 carries float noise far above 1e-4 in
absolute terms); the generated strings compared document by document.
Last line: JSON with "max_abs_diff" (target <= 1e-4) and "speed_ratio" (lm-eval's wall time / ours,
target >= 1.2).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

PERPLEXITIES = ("word_perplexity", "byte_perplexity")


def setup(args: argparse.Namespace, work: Path) -> dict:
    """Tokenizer, token shards, a short training run, HF export, held-out docs and the task set."""
    from data_pipeline.corpus import base_texts
    from eval.export import export_checkpoint
    from eval.tasks import make_tasks
    from pretrain.core.config import from_dict
    from pretrain.core.token_shards import write_token_manifest, write_token_shard
    from pretrain.core.tokenizer_file import load_tokenizer
    from tokenizer.bpe import save_tokenizer, train_bpe
    from trainer.config import TrainConfig
    from trainer.train import train

    texts = [t for _, t in base_texts()]
    train_texts = [t for i, t in enumerate(texts) if i % 10]
    heldout = [{"text": t, "source": "pydoc"} for i, t in enumerate(texts) if i % 10 == 0][: args.max_docs]
    save_tokenizer(train_bpe(train_texts, vocab_size=args.vocab_size), work / "tok")
    tok = load_tokenizer(work / "tok")
    ids = tok.encode_batch(train_texts)
    entry = write_token_shard(
        work / "tokens" / "pydoc.arrow", [np.array(x + [tok.eos_id]) for x in ids], tok.vocab_size
    )
    write_token_manifest(
        work / "tokens",
        tok.hash,
        [{**entry, "path": "pydoc.arrow", "source": "pydoc"}],
        appends_eos=True,
        eos_id=tok.eos_id,
    )
    batch_tokens = args.seq_len * 16
    phase = dict(name="p", num_tokens=args.steps * batch_tokens, mixture={"pydoc": 1.0}, seq_len=args.seq_len,
                 global_batch_tokens=batch_tokens, micro_batch_size=16, lr_max=3e-3)  # fmt: skip
    cfg = from_dict(
        TrainConfig,
        {
            "run_dir": str(work / "run"),
            "model": args.preset,
            "model_overrides": {"vocab_size": tok.vocab_size},
            "curriculum": {"phases": [phase], "schedule": {"warmup_steps": 4, "decay_fraction": 0.3}},
            "data": {"sources": {"pydoc": str(work / "tokens")}, "tokenizer_dir": str(work / "tok")},
            "checkpoint": {"every_steps": args.steps, "keep_last": 1},
            "metrics": {"progress": False},
        },
    )
    train(cfg)
    ckpt = work / "run" / "checkpoints" / f"step_{args.steps:06d}"
    hf_dir = export_checkpoint(ckpt, work / "hf")
    made = make_tasks(heldout, work / "tasks", seed=0, num_fewshot=args.num_fewshot)
    return {
        "tok": tok,
        "ckpt": ckpt,
        "hf": hf_dir,
        "tasks": work / "tasks",
        "names": sorted(made),
        "num_docs": len(heldout),
    }


def parse_results(res: dict, names: list[str]) -> dict[str, dict[str, float]]:
    """{task: {metric(,filter): value}} from lm-eval's results, stderr and bookkeeping left out."""
    out = {}
    for task in names:
        out[task] = {}
        for key, value in res["results"][task].items():
            metric, _, filt = key.partition(",")
            if filt and not metric.endswith("_stderr") and isinstance(value, (int, float)):
                out[task][metric if filt == "none" else key] = float(value)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--max-docs", type=int, default=150)
    p.add_argument("--num-fewshot", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)

    import logging

    import lm_eval
    from lm_eval.tasks import TaskManager

    from eval import harness

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    import datasets

    datasets.disable_progress_bars()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = "bfloat16" if device == "cuda" else "float32"
    with tempfile.TemporaryDirectory() as tmp:
        s = setup(args, Path(tmp))
        names, num_docs = s["names"], s["num_docs"]
        rolling = [n for n in names if n.startswith("heldout_lm_")]
        tm = TaskManager(include_path=str(s["tasks"]), include_defaults=False)
        hf_args = f"pretrained={s['hf']},dtype={dtype},prefix_token_id={s['tok'].eos_id},device_map={device}"
        common = dict(task_manager=tm, log_samples=True, bootstrap_iters=0, device=device)

        def run_ours(samples: bool = False):
            lm = harness.PretrainLM(checkpoint=str(s["ckpt"]), device=device, batch_size=args.batch_size)
            return harness.evaluate_tasks(lm, s["tasks"], names, log_samples=samples)

        def run_lmeval(samples: bool = False, batch_size: int = args.batch_size, tasks=names):
            return lm_eval.simple_evaluate(
                model="hf",
                model_args=hf_args,
                tasks=tasks,
                batch_size=batch_size,
                **{**common, "log_samples": samples},
            )

        results = {"ours": run_ours(True), "lm_eval": run_lmeval(True)}  # warmup, and the parity runs
        bs1 = run_lmeval(batch_size=1, tasks=rolling)
        times: dict[str, list[float]] = {"ours": [], "lm_eval": []}
        for _ in range(args.rounds):
            for name, fn in (("ours", run_ours), ("lm_eval", run_lmeval)):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)

    ours = {task: r["metrics"] for task, r in results["ours"].items()}
    theirs = parse_results(results["lm_eval"], names)
    theirs.update(parse_results(bs1, rolling))
    table, max_diff = [], 0.0
    for task in names:
        assert set(ours[task]) == set(theirs[task]), (task, sorted(ours[task]), sorted(theirs[task]))
        for metric, a in sorted(ours[task].items()):
            b = theirs[task][metric]
            logs = metric in PERPLEXITIES
            diff = abs(math.log(a) - math.log(b)) if logs else abs(a - b)
            max_diff = max(max_diff, diff)
            table.append((task, metric + (" (log)" if logs else ""), a, b, diff))
    gen_task = [n for n in names if n == "heldout_complete"]
    mismatched, num_gen, distinct = 0, 0, set()
    for task in gen_task:
        a = [x["resps"] for x in results["ours"][task]["samples"]]
        b = [x["resps"] for x in sorted(results["lm_eval"]["samples"][task], key=lambda x: x["doc_id"])]
        num_gen += len(a)
        mismatched += sum(x != y for x, y in zip(a, b))
        distinct |= {json.dumps(x) for x in a}
    print(f"{'task':24s} {'metric':28s} {'ours':>14s} {'lm-eval hf':>14s} {'abs diff':>10s}")
    for task, metric, a, b, diff in table:
        print(f"{task:24s} {metric:28s} {a:14.8g} {b:14.8g} {diff:10.2e}")
    print(f"generations: {num_gen - mismatched}/{num_gen} strings equal ({len(distinct)} distinct)")
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:8s} median {med[k]:.2f} s  rounds {[round(t, 2) for t in v]}")
    result = {
        "device": device if device == "cpu" else torch.cuda.get_device_name(),
        "preset": args.preset,
        "tasks": names,
        "num_heldout_docs": num_docs,
        "num_docs_per_task": {t: results["ours"][t]["num_docs"] for t in names},
        "batch_size": args.batch_size,
        "ours_s": round(med["ours"], 3),
        "lm_eval_s": round(med["lm_eval"], 3),
        "speed_ratio": round(med["lm_eval"] / med["ours"], 3),
        "max_abs_diff": max_diff,
        "generations_equal": f"{num_gen - mismatched}/{num_gen}",
        "distinct_generations": len(distinct),
        "targets": {"max_abs_diff": 1e-4, "speed_ratio": 1.2},
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
