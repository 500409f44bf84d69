"""Score one checkpoint: held-out LM per source, multiple-choice tasks, generations -> results.jsonl.

    rows = score_checkpoint("runs/x/checkpoints/step_000400", heldout="runs/data/heldout")
    # rows appended to runs/x/eval/results.jsonl; generations to runs/x/eval/generations.jsonl

One results row per (checkpoint, task, metric):
    {"checkpoint": "step_000400", "step": 400, "tokens_seen": 1638400, "task": "heldout/code",
     "metric": "bits_per_byte", "value": 1.27, "num_docs": 200, "time": "2026-..."}
Held-out tasks are `heldout/<source>` (and `heldout/all` pooled over sources when there are
several); multiple-choice tasks use their own names; task `eval`, metric `seconds` is the time
the scoring took. A checkpoint already in results.jsonl is
skipped (its rows returned) unless force=True, which replaces its rows. The file is rewritten
atomically (eval/results.py), so a reader never sees half a checkpoint's rows.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from eval.checkpoint import (
    document_prefix_id,
    load_checkpoint_model,
    load_tokenizer_for,
    read_checkpoint_meta,
)
from eval.config import EvalConfig
from eval.generate import generate_samples
from eval.heldout import HELDOUT_METRICS, read_heldout, score_heldout
from eval.lm import LMScorer
from eval.report import write_report
from eval.results import GENERATIONS, RESULTS, read_rows, replace_rows, scored_checkpoints
from eval.tasks import (
    GENERATION_TAG,
    HELDOUT_LM_TAG,
    MC_METRICS,
    load_tasks,
    make_tasks,
    score_task,
)
from pretrain.core.devices import resolve_device
from pretrain.core.files import read_json, write_json
from pretrain.core.hashing import json_digest

try:  # lm-eval (the eval extra) runs task YAMLs as lm-eval reads them; without it, our own MC loader
    from eval import harness
except ModuleNotFoundError as e:  # only a missing lm-eval is optional; any other import error is a bug
    if not (e.name or "").startswith("lm_eval"):
        raise
    harness = None

log = logging.getLogger(__name__)


def default_out_dir(ckpt_dir: str | Path) -> Path:
    """RUN_DIR/eval for RUN_DIR/checkpoints/step_N; else a sibling `eval` of the checkpoint."""
    ckpt_dir = Path(ckpt_dir).resolve()
    if ckpt_dir.parent.name == "checkpoints":
        return ckpt_dir.parent.parent / "eval"
    return ckpt_dir.parent / "eval"


def ensure_tasks(cfg: EvalConfig, docs: list[dict[str, str]] | None, out_dir: Path) -> Path | None:
    """The task directory to score: cfg.tasks, or for "auto" the default set made once from `docs`."""
    if cfg.tasks is None:
        return None
    if cfg.tasks != "auto":
        return Path(cfg.tasks)
    if not docs:
        return None
    tasks_dir = out_dir / "tasks"
    fingerprint = json_digest([cfg.task_seed, cfg.num_fewshot, [[d["source"], d["text"]] for d in docs]])
    stamp = tasks_dir / "tasks.json"
    if stamp.exists():
        if read_json(stamp).get("fingerprint") != fingerprint:
            log.warning("%s was made from other held-out documents or settings; keeping it", tasks_dir)
        return tasks_dir
    made = make_tasks(docs, tasks_dir, seed=cfg.task_seed, num_fewshot=cfg.num_fewshot)
    write_json(stamp, {"fingerprint": fingerprint, "tasks": sorted(made), "seed": cfg.task_seed})
    return tasks_dir


def score_tasks(
    lm: LMScorer, task_root: Path, skip_tags: set[str], cfg: EvalConfig
) -> dict[str, dict[str, Any]]:
    """{task: {"metrics", "num_docs", "num_fewshot"}} for every task under task_root not tagged with
    one of skip_tags: through lm-eval's task machinery when lm-eval is installed, else our own
    multiple-choice loader (lm-eval's defaults; the auto generation task is skipped with a notice)."""
    if harness is not None:
        return harness.evaluate_tasks(
            harness.PretrainLM(scorer=lm), task_root, None, cfg.fewshot_seed, skip_tags
        )
    if cfg.tasks == "auto":
        log.warning("lm-eval is not installed: the generation task is skipped (pip install -e '.[eval]')")
        skip_tags = skip_tags | {GENERATION_TAG}
    out = {}
    for task in load_tasks(task_root, 0, skip_tags):
        m = score_task(lm, task, cfg.fewshot_seed)
        out[task.name] = {"metrics": {k: m[k] for k in MC_METRICS}, "num_docs": m["num_docs"],
                          "num_fewshot": task.num_fewshot}  # fmt: skip
    return out


def score_checkpoint(
    ckpt_dir: str | Path,
    heldout: str | Path | None = None,
    tasks_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    cfg: EvalConfig | None = None,
    force: bool = False,
) -> list[dict[str, Any]]:
    """Score a checkpoint and record it in OUT/results.jsonl; `heldout` / `tasks_dir` override cfg's."""
    cfg = cfg or EvalConfig()
    if heldout is not None:
        cfg = dataclasses.replace(cfg, heldout=str(heldout))
    if tasks_dir is not None:
        cfg = dataclasses.replace(cfg, tasks=str(tasks_dir))
    ckpt_dir = Path(ckpt_dir)
    out = Path(out_dir) if out_dir is not None else default_out_dir(ckpt_dir)
    name = ckpt_dir.name
    meta = read_checkpoint_meta(ckpt_dir)  # fails fast on an incomplete checkpoint
    if not force and name in scored_checkpoints(out):
        log.info("%s already scored in %s; skipping (force=True rescores)", name, out / RESULTS)
        return [r for r in read_rows(out / RESULTS) if r["checkpoint"] == name]

    t0 = time.time()
    ckpt = load_checkpoint_model(ckpt_dir)
    tok = load_tokenizer_for(ckpt, cfg.tokenizer_dir)
    device = resolve_device(cfg.device)
    model = ckpt.model.to(device)
    prefix = document_prefix_id(ckpt, tok, cfg.prefix_token)
    lm = LMScorer(model, tok, device, cfg.batch_size, cfg.max_length, prefix)
    base = {"checkpoint": name, "step": ckpt.step, "tokens_seen": meta.get("tokens_seen")}
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    rows: list[dict[str, Any]] = []

    docs = read_heldout(cfg.heldout, cfg.max_docs_per_source) if cfg.heldout else []
    if docs:
        for source, m in score_heldout(lm, docs).items():
            for metric in HELDOUT_METRICS:
                rows.append(
                    {**base, "task": f"heldout/{source}", "metric": metric, "value": m[metric],
                     "num_docs": m["num_docs"], "time": stamp}
                )  # fmt: skip
    task_root = ensure_tasks(cfg, docs, out)
    skip = {HELDOUT_LM_TAG} if docs else set()  # the held-out scoring above covered those documents
    for task, r in (score_tasks(lm, task_root, skip, cfg) if task_root else {}).items():
        for metric, value in r["metrics"].items():
            rows.append(
                {**base, "task": task, "metric": metric, "value": value, "num_docs": r["num_docs"],
                 "num_fewshot": r["num_fewshot"], "time": stamp}
            )  # fmt: skip
    if cfg.prompts and cfg.max_new_tokens > 0:
        gens = generate_samples(
            model, tok, cfg.prompts, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.sample_seed, device
        )
        replace_rows(out / GENERATIONS, name, [{**base, **g} for g in gens])
    # Always at least one row, so a checkpoint with nothing else to score still counts as scored.
    rows.append({**base, "task": "eval", "metric": "seconds", "value": time.time() - t0, "time": stamp})
    replace_rows(out / RESULTS, name, rows)
    log.info("scored %s in %.1fs: %d rows -> %s", name, time.time() - t0, len(rows), out / RESULTS)
    if cfg.report:
        write_report(out / RESULTS, out)
    return rows
