"""Our checkpoints as an lm-evaluation-harness model (`pretrain`), and lm-eval's task machinery as
the task loader of `pretrain eval`.

    python -m eval.harness --model pretrain --model_args checkpoint=runs/tiny/train/checkpoints/step_000160 \\
        --include_path TASK_DIR --tasks my_task --batch_size 16    # lm_eval's CLI, `pretrain` registered
    pretrain eval lm-eval ...                                      # the same command
    import eval.harness; lm_eval.simple_evaluate(model="pretrain", model_args="checkpoint=DIR", ...)
    # (lm_eval, the heavy optional library of the eval extra, is imported only here in our code)
    evaluate_tasks(PretrainLM(scorer=lm), "runs/x/eval/tasks")     # {task: {metric: value}} (eval/score.py)

`PretrainLM` reads a native (DCP) checkpoint, no export: loglikelihood and loglikelihood_rolling go
through eval/lm.py's LMScorer (lm-eval HFLM's tokenisation and windows, length-sorted batches),
generate_until through eval/generate.py (batched, longest prompt first, KV cache, stop sequences,
greedy or seeded sampling). Model args: checkpoint, tokenizer, device, batch_size, max_length,
prefix_token (auto|eos|bos, see EvalConfig), dtype (auto|float32|bfloat16), seed, max_gen_toks.

lm-eval 0.4 reads no plugin entry points: its own `lm_eval` command knows only its built-in models,
so `--model pretrain` works in any process that imported this module; `python -m eval.harness` is
exactly lm-eval's CLI after that import.

Tasks: `evaluate_tasks` hands a task directory to lm-eval's TaskManager (include_path, lm-eval's own
tasks left out), so Jinja templates, doc_to_choice lists, delimiters, fewshot_split, process_docs,
filter_list, generation tasks and defaults (num_fewshot 0) are lm-eval's. `check_task_dir` first
refuses, naming the file and the key, what lm-eval would turn into a download or a crash.
"""

from __future__ import annotations

import json
import logging
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import lm_eval.models  # noqa: F401 (registers lm-eval's own models: its registry skips that once non-empty)
import numpy as np
import torch
import yaml
from lm_eval.__main__ import cli_evaluate
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.config.task import TaskConfig  # the keys a task YAML may hold
from lm_eval.defaults import DEFAULT_OTHER_SEED, DEFAULT_RANDOM_SEED
from lm_eval.evaluator import evaluate
from lm_eval.tasks import TaskManager

from eval.checkpoint import document_prefix_id, load_checkpoint_model, load_tokenizer_for
from eval.generate import generate_batch
from eval.lm import LMScorer
from eval.tasks import LM_EVAL_SEED, TaskConfigError, task_tags
from pretrain.core.devices import resolve_device

log = logging.getLogger(__name__)
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval HFLM's default when a task's generation_kwargs name none


@register_model("pretrain")
class PretrainLM(LM):
    """lm-eval model over a native checkpoint (or over an LMScorer already built by `pretrain eval`)."""

    def __init__(
        self,
        checkpoint: str | None = None,
        tokenizer: str | None = None,
        device: str | None = "auto",
        batch_size: int | str = 16,
        max_length: int | None = None,
        prefix_token: str = "auto",
        dtype: str = "auto",
        seed: int = 0,
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        scorer: LMScorer | None = None,
        max_batch_size: int | None = None,  # lm-eval passes it with batch_size=auto; unused
    ):
        super().__init__()
        if isinstance(batch_size, str) and batch_size.startswith("auto"):
            log.warning("batch_size=%s: no automatic batch search here; using 16", batch_size)
            batch_size = 16
        if scorer is None:
            if checkpoint is None:
                raise ValueError("the pretrain model needs model_args checkpoint=<a step_N checkpoint dir>")
            ckpt = load_checkpoint_model(checkpoint)
            tok = load_tokenizer_for(ckpt, tokenizer)
            dev = resolve_device(device or "auto")
            if dev.type == "cuda" and not torch.cuda.is_available():
                raise ValueError(f"device={device}: no CUDA device here (use device=cpu)")
            prefix = document_prefix_id(ckpt, tok, prefix_token)
            scorer = LMScorer(
                ckpt.model.to(dev), tok, dev, int(batch_size), max_length and int(max_length), prefix, dtype
            )  # fmt: skip
        self.scorer = scorer
        self.seed = int(seed)
        self.max_gen_toks = int(max_gen_toks)
        self._device = scorer.device

    @property
    def tokenizer_name(self) -> str:
        return f"pretrain-bpe-{self.scorer.tok.hash[:16]}"

    @property
    def eot_token_id(self) -> int:
        return self.scorer.tok.eos_id

    # -- the three request types ---------------------------------------------------------------

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        args = [r.args for r in requests]
        out = self.scorer.loglikelihood(args, with_greedy=True)
        for a, res in zip(args, out):
            self.cache_hook.add_partial("loglikelihood", a, res)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        texts = [r.args[0] for r in requests]
        out = self.scorer.loglikelihood_rolling(texts)
        for t, res in zip(texts, out):
            self.cache_hook.add_partial("loglikelihood_rolling", (t,), res)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Requests grouped by their generation kwargs, each group longest prompt first in batches."""
        args = [r.args for r in requests]
        groups: dict[str, list[int]] = {}
        for i, (_, kw) in enumerate(args):
            groups.setdefault(json.dumps(kw, sort_keys=True, default=str), []).append(i)
        out: list[str] = [""] * len(args)
        for members in groups.values():
            for i, text in zip(
                members, self._generate_group([args[i][0] for i in members], args[members[0]][1], members)
            ):
                out[i] = text
                self.cache_hook.add_partial("generate_until", args[i], text)
        return out

    def _generate_group(
        self, contexts: list[str], gen_kwargs: dict[str, Any], indices: list[int]
    ) -> list[str]:
        s = self.scorer
        opts = GenerationOptions.parse(gen_kwargs, self.max_gen_toks)
        room = s.max_length - opts.max_gen_toks
        if room < 1:
            raise ValueError(
                f"max_gen_toks={opts.max_gen_toks} leaves no room for a prompt in max_length={s.max_length}"
            )
        prompts = [s.tok.encode(c)[-room:] or [s.prefix_token_id] for c in contexts]
        order = sorted(range(len(prompts)), key=lambda k: (-len(prompts[k]), k))
        texts: list[str] = [""] * len(prompts)

        def stop(ids: list[int]) -> bool:
            text = s.tok.decode(ids, skip_special_tokens=True)
            return any(u in text for u in opts.until)

        for b in range(0, len(order), s.batch_size):
            chunk = order[b : b + s.batch_size]
            gens = None
            if opts.temperature > 0:  # one generator per request: the same text whatever the batch
                gens = [torch.Generator().manual_seed(self.seed * 1_000_003 + indices[k]) for k in chunk]
            new = generate_batch(
                s.model, [prompts[k] for k in chunk], opts.max_gen_toks, s.tok.eos_id, opts.temperature,
                opts.top_k, opts.top_p, gens, stop if opts.until else None, s.device, s.dtype,
            )  # fmt: skip
            for k, ids in zip(chunk, new):
                texts[k] = opts.cut(s.tok.decode(ids, skip_special_tokens=True))
        return texts


@dataclass
class GenerationOptions:
    """A task's generation_kwargs, read as lm-eval's HF model reads them (greedy unless sampling is asked
    for with a temperature > 0); a key we do not implement is an error that names it."""

    until: list[str]
    max_gen_toks: int
    temperature: float
    top_k: int
    top_p: float
    KNOWN: ClassVar[set[str]] = {
        "until",
        "max_gen_toks",
        "max_new_tokens",
        "do_sample",
        "temperature",
        "top_k",
        "top_p",
    }

    @classmethod
    def parse(cls, kw: dict[str, Any], default_max_gen_toks: int) -> GenerationOptions:
        unknown = sorted(set(kw) - cls.KNOWN)
        if unknown:
            raise ValueError(
                f"generation_kwargs {unknown} are not supported by the pretrain model (known: {sorted(cls.KNOWN)})"
            )
        until = kw.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        max_gen = int(kw.get("max_gen_toks", kw.get("max_new_tokens", default_max_gen_toks)))
        temperature = float(kw.get("temperature", 0.0) or 0.0)
        if kw.get("do_sample") is False:
            temperature = 0.0
        elif kw.get("do_sample") and temperature == 0.0:
            temperature = 1.0  # do_sample without a temperature: transformers' default
        return cls(
            until, max_gen, temperature, int(kw.get("top_k", 0) or 0), float(kw.get("top_p", 1.0) or 1.0)
        )

    def cut(self, text: str) -> str:
        """lm-eval's postprocessing: the text before the first occurrence of each stop sequence."""
        for u in self.until:
            if u:
                text = text.split(u)[0]
        return text


# -- task directories through lm-eval's TaskManager ------------------------------------------------

_LOCAL_LOADERS = {"json", "csv", "parquet", "text", "arrow"}


def _task_yamls(tasks_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in sorted(tasks_dir.rglob("*.yaml")):
        try:
            # lm-eval's tags (!function) are resolved by lm-eval itself; here only the keys matter.
            conf = yaml.load(path.read_text(), Loader=_Loader) or {}
        except yaml.YAMLError as e:
            raise TaskConfigError(f"{path}: not valid YAML: {e}") from None
        if isinstance(conf, dict) and "task" in conf:
            out.append((path, conf))
    return out


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_multi_constructor("!", lambda loader, suffix, node: f"!{suffix}")


def check_task_dir(tasks_dir: str | Path) -> dict[str, dict[str, Any]]:
    """{task name: its YAML} for the tasks defined under tasks_dir, after refusing what cannot run
    offline here."""
    allowed = set(TaskConfig.__dataclass_fields__) | {"include", "group", "tag"}
    names: dict[str, dict[str, Any]] = {}
    for path, conf in _task_yamls(Path(tasks_dir)):
        unknown = sorted(set(conf) - allowed)
        if unknown:
            raise TaskConfigError(
                f"{path}: unsupported key(s) {unknown} (lm-eval's task keys: see TaskConfig)"
            )
        ds = conf.get("dataset_path")
        if ds is not None and ds not in _LOCAL_LOADERS and not Path(str(ds)).exists():
            raise TaskConfigError(
                f"{path}: dataset_path {ds!r} would be downloaded from the Hugging Face Hub; nothing is "
                f"downloaded here: use dataset_path: json with dataset_kwargs.data_files pointing at local files"
            )
        files = (conf.get("dataset_kwargs") or {}).get("data_files")
        if ds in _LOCAL_LOADERS:
            if not files:
                raise TaskConfigError(
                    f"{path}: dataset_path {ds!r} needs dataset_kwargs.data_files (local files)"
                )
            flat = [files] if isinstance(files, str) else [
                f for v in (files.values() if isinstance(files, dict) else files) for f in ([v] if isinstance(v, str) else v)
            ]  # fmt: skip
            for f in flat:
                if not Path(f).is_absolute() or not Path(f).exists():
                    raise TaskConfigError(
                        f"{path}: dataset_kwargs.data_files {f!r} is not an existing absolute path "
                        f"(lm-eval resolves relative paths against its working directory)"
                    )
        names[str(conf["task"])] = conf
    return names


def evaluate_tasks(
    lm: PretrainLM,
    tasks_dir: str | Path,
    names: Sequence[str] | None = None,
    fewshot_seed: int = LM_EVAL_SEED,
    skip_tags: set[str] = frozenset(),
    limit: int | None = None,
    log_samples: bool = False,
) -> dict[str, dict[str, Any]]:
    """Run tasks of tasks_dir (`names`, or all not tagged with one of skip_tags) through lm-eval's
    evaluator with `lm`.

    Returns {task: {"metrics": {metric: value}, "num_docs": n, "num_fewshot": k}} (+ "samples": lm-eval's
    per-document records with log_samples); a metric computed after a filter other than lm-eval's
    "none" is named "metric,filter" (e.g. "exact_match,first_word")."""
    defined = check_task_dir(tasks_dir)
    if names is None:
        names = [name for name, conf in sorted(defined.items()) if not skip_tags & task_tags(conf)]
    if not names:
        return {}
    missing = sorted(set(names) - set(defined))
    if missing:
        raise TaskConfigError(f"{tasks_dir}: no task YAML defines {missing} (tasks there: {sorted(defined)})")
    # simple_evaluate's steps, minus its environment report (a `pip list` subprocess per call): lm-eval's
    # seeds, num_fewshot 0 where a task names none, the few-shot seed on every task, then its evaluate().
    random.seed(DEFAULT_RANDOM_SEED)
    np.random.seed(DEFAULT_OTHER_SEED)
    torch.manual_seed(DEFAULT_OTHER_SEED)
    loaded = TaskManager(include_path=str(tasks_dir), include_defaults=False).load(list(names))
    for task_obj in loaded["tasks"].values():
        if task_obj.get_config("num_fewshot") is None:
            task_obj.set_config(key="num_fewshot", value=0)
        task_obj.set_fewshot_seed(seed=fewshot_seed)
    res = evaluate(lm=lm, task_dict=loaded, limit=limit, bootstrap_iters=0, log_samples=log_samples)
    out = {}
    for task in names:
        raw = res["results"][task]
        metrics = {}
        for key, value in raw.items():
            metric, _, filt = key.partition(",")
            if not filt or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            metrics[metric if filt == "none" else key] = float(value)
        n = res.get("n-samples", {}).get(task, {})
        out[task] = {
            "metrics": metrics,
            "num_docs": n.get("effective", n.get("original")),
            "num_fewshot": res.get("n-shot", {}).get(task, 0),
        }
        if log_samples:
            out[task]["samples"] = sorted(res["samples"][task], key=lambda x: x["doc_id"])
    return out


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line with `pretrain` registered (`--model pretrain --model_args checkpoint=...`)."""
    sys.argv = ["lm_eval", *(sys.argv[1:] if argv is None else argv)]
    cli_evaluate()


if __name__ == "__main__":
    main()
