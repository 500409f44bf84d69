"""Multiple-choice tasks from local JSONL, scored like lm-evaluation-harness; a default task set made
from held-out documents; the lm-eval task YAMLs that run the same files offline.

Where lm-eval is installed (the eval extra), `pretrain eval` runs task YAMLs through lm-eval's own
task machinery (eval/harness.py); the loader here is what runs without it: multiple-choice YAMLs
whose doc_to_* are bare field names, and bare task directories, with lm-eval's defaults
(num_fewshot 0). Anything else (Jinja templates, other output types, process_docs...) is refused
with TaskConfigError naming the file and the key.

    make_tasks(docs, "runs/x/eval/tasks", seed=0)       # heldout_next_sentence, heldout_cloze, heldout_lm_*
    tasks = load_tasks("runs/x/eval/tasks")            # the multiple-choice ones
    score_task(lm, tasks[0], seed=1234)                # {"acc": .., "acc_norm": .., "acc_bytes": .., "num_docs": n}

A task is a directory NAME/ holding test.jsonl (scored), optionally train.jsonl (the few-shot
pool), and NAME.yaml, an lm-eval task config that both lm-eval and this module read. One JSON
object per line: {"context": str, "choices": [str, ...], "gold": int} (other fields are kept and
ignored; the field names are whatever the YAML's doc_to_text / doc_to_choice / doc_to_target say).

Prompt, as lm-eval builds it with its defaults: each of the k few-shot examples (drawn with
random.Random(seed).sample over the pool, one draw per test document in file order) renders as
`context + target_delimiter + gold choice + fewshot_delimiter`, then the test document's context;
each choice is scored as the continuation `target_delimiter + choice`. acc takes the argmax of the
log-likelihoods, acc_norm of log-likelihood / len(choice) (characters), acc_bytes of
log-likelihood / UTF-8 bytes of the choice.
"""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pretrain.core.files import atomic_path
from pretrain.core.jsonl import read_jsonl, write_jsonl

log = logging.getLogger(__name__)
MC_METRICS = ("acc", "acc_norm", "acc_bytes")
HELDOUT_LM_TAG = "heldout_lm"  # rolling-LL tasks over the held-out docs, which --heldout already scores
GENERATION_TAG = "heldout_generate"  # the auto generation task (runs through lm-eval only)
LM_EVAL_SEED = 1234  # lm_eval.defaults.DEFAULT_OTHER_SEED, its default fewshot_random_seed
# YAML keys that change the prompt in ways this runner does not reproduce (lm-eval's runner does).
_UNSUPPORTED = (
    "description", "process_docs", "doc_to_decontamination_query", "use_prompt", "gen_prefix",
    "filter_list", "fewshot_config", "process_results", "custom_dataset", "doc_to_image", "doc_to_audio",
)  # fmt: skip
NEEDS_LM_EVAL = "install lm-eval (pip install -e '.[eval]') to run it through lm-eval's task machinery"


class TaskConfigError(ValueError):
    """A task YAML that cannot run here; the message names the file and the key."""


@dataclass
class MCTask:
    name: str
    docs: list[dict[str, Any]]
    fewshot_docs: list[dict[str, Any]]  # the few-shot pool (may be `docs` itself)
    num_fewshot: int = 0
    exclude_eval_doc: bool = False
    """lm-eval drops the test document from its own few-shot draw only when fewshot_split == test_split."""
    text_field: str = "context"
    choices_field: str = "choices"
    gold_field: str = "gold"
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    path: Path | None = field(default=None, compare=False)


def _validate(task: MCTask, rows: list[dict[str, Any]], path: Path) -> None:
    for n, d in enumerate(rows, 1):
        text, choices, gold = d.get(task.text_field), d.get(task.choices_field), d.get(task.gold_field)
        ok = (
            isinstance(text, str)
            and isinstance(choices, list)
            and choices
            and all(isinstance(c, str) and c for c in choices)
            and isinstance(gold, int)
            and not isinstance(gold, bool)
            and 0 <= gold < len(choices)
        )
        if not ok:
            raise ValueError(
                f"{path}:{n}: expected {{{task.text_field!r}: str, {task.choices_field!r}: [non-empty str, ...], "
                f"{task.gold_field!r}: int index into the choices}}, got {json.dumps(d)[:200]}"
            )


def load_task(task_dir: str | Path, default_num_fewshot: int = 0) -> MCTask:
    """A task directory: its YAML (if any) gives the settings, test.jsonl / train.jsonl the documents."""
    task_dir = Path(task_dir)
    yamls = sorted(task_dir.glob("*.yaml"))
    conf: dict[str, Any] = yaml.safe_load(yamls[0].read_text()) if yamls else {}
    where = yamls[0] if yamls else task_dir
    if conf and conf.get("output_type") != "multiple_choice":  # lm-eval's default is generate_until
        raise TaskConfigError(
            f"{where}: key output_type={conf.get('output_type', 'generate_until (lm-eval default)')!r}: "
            f"only multiple_choice runs without lm-eval; {NEEDS_LM_EVAL}"
        )
    bad = [k for k in _UNSUPPORTED if conf.get(k)]
    if bad:
        raise TaskConfigError(f"{where}: key(s) {bad} need lm-eval's task machinery; {NEEDS_LM_EVAL}")
    for key in ("doc_to_text", "doc_to_choice", "doc_to_target"):
        value = conf.get(key)
        if value is not None and not (isinstance(value, str) and re.fullmatch(r"\w+", value)):
            raise TaskConfigError(
                f"{where}: key {key}={value!r} is a template or expression, and only bare field names run "
                f"without lm-eval; {NEEDS_LM_EVAL}"
            )
    data_files = (conf.get("dataset_kwargs") or {}).get("data_files") or {}

    def split_path(split: str) -> Path:
        p = Path(data_files[split]) if split in data_files else task_dir / f"{split}.jsonl"
        return p if p.is_absolute() else task_dir / p

    test_split = conf.get("test_split", "test")
    fewshot_split = conf.get("fewshot_split")
    if not conf:  # a bare directory: train.jsonl is the pool, else the test set minus the document
        fewshot_split = "train" if (task_dir / "train.jsonl").exists() else test_split
    task = MCTask(
        name=conf.get("task", task_dir.name),
        docs=[],
        fewshot_docs=[],
        num_fewshot=int(conf.get("num_fewshot", default_num_fewshot) or 0),
        text_field=conf.get("doc_to_text", "context"),
        choices_field=conf.get("doc_to_choice", "choices"),
        gold_field=conf.get("doc_to_target", "gold"),
        target_delimiter=conf.get("target_delimiter", " "),
        fewshot_delimiter=conf.get("fewshot_delimiter", "\n\n"),
        path=task_dir,
    )
    test_path = split_path(test_split)
    if not test_path.exists():
        raise FileNotFoundError(f"task {task.name}: {test_path} not found")
    task.docs = read_jsonl(test_path)
    _validate(task, task.docs, test_path)
    if fewshot_split is None or fewshot_split == test_split:
        # lm-eval: without a fewshot_split the test docs are the pool and the eval doc is NOT excluded
        task.fewshot_docs, task.exclude_eval_doc = task.docs, fewshot_split is not None
    else:
        pool_path = split_path(fewshot_split)
        task.fewshot_docs = read_jsonl(pool_path)
        _validate(task, task.fewshot_docs, pool_path)
    pool = len(task.fewshot_docs) - task.exclude_eval_doc
    if task.num_fewshot > pool:
        raise ValueError(
            f"task {task.name}: num_fewshot={task.num_fewshot} but only {pool} few-shot examples"
        )
    return task


def load_tasks(
    tasks_dir: str | Path, default_num_fewshot: int = 0, skip_tags: set[str] = frozenset()
) -> list[MCTask]:
    """Every task directory under tasks_dir (a YAML or a test.jsonl), except those tagged with one of
    skip_tags; a task this loader cannot run is a TaskConfigError (see load_task)."""
    out = []
    for d in sorted(p for p in Path(tasks_dir).iterdir() if p.is_dir()):
        yamls = sorted(d.glob("*.yaml"))
        if yamls and skip_tags & task_tags(yaml.safe_load(yamls[0].read_text()) or {}):
            continue
        if yamls or (d / "test.jsonl").exists():
            out.append(load_task(d, default_num_fewshot))
    return out


def task_tags(conf: dict[str, Any]) -> set[str]:
    tag = conf.get("tag") or []
    return {tag} if isinstance(tag, str) else set(tag)


def fewshot_sampler(task: MCTask, seed: int):
    """Per test document, the few-shot examples lm-eval's default ContextSampler draws."""
    rnd = random.Random(seed)
    pool = task.fewshot_docs

    def sample(doc: dict[str, Any]) -> list[dict[str, Any]]:
        n = task.num_fewshot
        if n == 0:
            return []
        if not task.exclude_eval_doc:
            return rnd.sample(pool, n)
        res = [x for x in rnd.sample(pool, n + 1) if x != doc][:n]
        if len(res) < n:  # duplicates of the eval doc were drawn: lm-eval resamples without them
            res = rnd.sample([x for x in pool if x != doc], n)
        return res

    return sample


def build_requests(task: MCTask, seed: int = LM_EVAL_SEED) -> list[tuple[str, list[str], int]]:
    """(context, continuations, gold) per test document, the strings lm-eval would score."""
    sample = fewshot_sampler(task, seed)
    out = []
    for doc in task.docs:
        shots = "".join(
            fs[task.text_field]
            + task.target_delimiter
            + fs[task.choices_field][fs[task.gold_field]]
            + task.fewshot_delimiter
            for fs in sample(doc)
        )
        context = shots + doc[task.text_field]
        conts = [task.target_delimiter + c for c in doc[task.choices_field]]
        out.append((context, conts, doc[task.gold_field]))
    return out


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))  # first maximum, like np.argmax


def score_task(lm, task: MCTask, seed: int = LM_EVAL_SEED) -> dict[str, float]:
    """acc, acc_norm, acc_bytes (means over test documents) and num_docs."""
    built = build_requests(task, seed)
    flat = [(ctx, cont) for ctx, conts, _ in built for cont in conts]
    results = lm.loglikelihood(flat)
    totals = dict.fromkeys(MC_METRICS, 0.0)
    i = 0
    for doc, (_, conts, gold) in zip(task.docs, built):
        lls = [ll for ll, _ in results[i : i + len(conts)]]
        i += len(conts)
        choices = doc[task.choices_field]
        totals["acc"] += _argmax(lls) == gold
        totals["acc_norm"] += _argmax([ll / len(c) for ll, c in zip(lls, choices)]) == gold
        totals["acc_bytes"] += _argmax([ll / len(c.encode("utf-8")) for ll, c in zip(lls, choices)]) == gold
    n = len(task.docs)
    return {**{k: v / n for k, v in totals.items()}, "num_docs": n}


# -- the default task set, made from held-out documents --------------------------------------------

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_LAST_WORD = re.compile(r"^(.*\S)\s+([A-Za-z][A-Za-z'-]{2,})([.!?])$", re.S)
NUM_CHOICES = 4


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(" ".join(text.split())) if s.strip()]


def _next_sentence_examples(docs: list[dict[str, str]], rng: random.Random) -> list[dict[str, Any]]:
    """Context: up to two sentences of a document; choices: its next sentence and sentences of other
    documents of similar length."""
    per_doc = [_sentences(d["text"]) for d in docs]
    all_sents = [(i, s) for i, ss in enumerate(per_doc) for s in ss if len(s) >= 20]
    out = []
    for i, ss in enumerate(per_doc):
        if len(ss) < 3:
            continue
        j = rng.randrange(1, len(ss))
        gold_text = ss[j]
        near = [s for k, s in all_sents if k != i and s != gold_text and 0.5 <= len(s) / len(gold_text) <= 2]
        distractors = sorted(set(near))
        if len(distractors) < NUM_CHOICES - 1:
            continue
        choices = rng.sample(distractors, NUM_CHOICES - 1)
        gold = rng.randrange(NUM_CHOICES)
        choices.insert(gold, gold_text)
        context = " ".join(ss[max(0, j - 2) : j])
        out.append({"context": context, "choices": choices, "gold": gold, "source": docs[i]["source"]})
    return out


def _cloze_examples(docs: list[dict[str, str]], rng: random.Random) -> list[dict[str, Any]]:
    """LAMBADA-like: the text up to a sentence's last word; choices: that word and last words of
    sentences in other documents."""
    cands = []
    for i, d in enumerate(docs):
        ss = _sentences(d["text"])
        picks = [(k, m) for k, s in enumerate(ss) if (m := _LAST_WORD.match(s)) and len(s.split()) >= 6]
        if picks:
            k, m = picks[rng.randrange(len(picks))]
            context = " ".join(ss[max(0, k - 1) : k] + [m.group(1)])
            cands.append((i, context, m.group(2)))
    words = sorted({w for _, _, w in cands})
    out = []
    for i, context, word in cands:
        others = [w for w in words if w.lower() != word.lower()]
        if len(others) < NUM_CHOICES - 1:
            continue
        choices = rng.sample(others, NUM_CHOICES - 1)
        gold = rng.randrange(NUM_CHOICES)
        choices.insert(gold, word)
        out.append({"context": context, "choices": choices, "gold": gold, "source": docs[i]["source"]})
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_") or "x"


def mc_task_yaml(name: str, task_dir: Path, num_fewshot: int, has_pool: bool) -> dict[str, Any]:
    """lm-eval task config for a multiple-choice task directory (absolute data_files: lm-eval
    resolves relative paths against its working directory)."""
    files = {"test": str((task_dir / "test.jsonl").resolve())}
    if has_pool:
        files["train"] = str((task_dir / "train.jsonl").resolve())
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": files},
        "output_type": "multiple_choice",
        "test_split": "test",
        "fewshot_split": "train" if has_pool else "test",
        "num_fewshot": num_fewshot,
        "doc_to_text": "context",
        "doc_to_choice": "choices",
        "doc_to_target": "gold",
        "target_delimiter": " ",
        "fewshot_delimiter": "\n\n",
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in MC_METRICS],
        "metadata": {"version": 1.0},
    }


def rolling_task_yaml(name: str, task_dir: Path) -> dict[str, Any]:
    """lm-eval loglikelihood_rolling task over test.jsonl's `text`: word/byte perplexity, bits per byte."""
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str((task_dir / "test.jsonl").resolve())}},
        "output_type": "loglikelihood_rolling",
        "test_split": "test",
        "doc_to_text": "",
        "doc_to_target": "text",
        "tag": [HELDOUT_LM_TAG],
        "metric_list": [
            {"metric": m, "aggregation": agg, "higher_is_better": False}
            for m, agg in (
                ("word_perplexity", "weighted_perplexity"),
                ("byte_perplexity", "weighted_perplexity"),
                ("bits_per_byte", "bits_per_byte"),
            )
        ],  # fmt: skip
        "metadata": {"version": 1.0},
    }


def generation_task_yaml(name: str, task_dir: Path, num_fewshot: int) -> dict[str, Any]:
    """lm-eval generate_until task: complete the context with one word. Greedy, at most 8 new tokens,
    stopping at a newline or sentence punctuation; a regex filter takes the first word generated and
    exact_match compares it with `answer` ignoring case."""
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {
            "data_files": {s: str((task_dir / f"{s}.jsonl").resolve()) for s in ("test", "train")}
        },
        "output_type": "generate_until",
        "tag": [GENERATION_TAG],
        "test_split": "test",
        "fewshot_split": "train",
        "num_fewshot": num_fewshot,
        "doc_to_text": "{{context}}",
        "doc_to_target": "{{answer}}",
        "target_delimiter": " ",
        "fewshot_delimiter": "\n\n",
        "generation_kwargs": {"until": ["\n", ".", "!", "?"], "max_gen_toks": 8, "do_sample": False},
        "filter_list": [
            {
                "name": "first_word",
                "filter": [
                    {"function": "regex", "regex_pattern": r"([A-Za-z][A-Za-z'-]*)", "group_select": 0},
                    {"function": "take_first"},
                ],
            }
        ],
        "metric_list": [
            {"metric": "exact_match", "aggregation": "mean", "higher_is_better": True, "ignore_case": True}
        ],
        "metadata": {"version": 1.0},
    }


def write_yaml(path: Path, obj: dict[str, Any]) -> None:
    class Dumper(yaml.SafeDumper):
        pass

    def string(dumper, s: str):  # "\n\n" stays readable as a double-quoted escape
        return dumper.represent_scalar("tag:yaml.org,2002:str", s, style='"' if "\n" in s else None)

    Dumper.add_representer(str, string)
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.dump(obj, Dumper=Dumper, sort_keys=False, allow_unicode=True))


def write_mc_task(
    out_dir: str | Path, name: str, test: list[dict], pool: list[dict] | None = None, num_fewshot: int = 0
) -> Path:
    """Write NAME/test.jsonl (+ train.jsonl) and NAME/NAME.yaml; returns the task directory."""
    task_dir = Path(out_dir) / name
    write_jsonl(task_dir / "test.jsonl", test)
    if pool:
        write_jsonl(task_dir / "train.jsonl", pool)
    write_yaml(task_dir / f"{name}.yaml", mc_task_yaml(name, task_dir, num_fewshot, bool(pool)))
    return task_dir


def make_tasks(
    heldout_docs: list[dict[str, str]],
    out_dir: str | Path,
    seed: int = 0,
    num_fewshot: int = 1,
    max_examples: int = 500,
    pool_size: int = 16,
) -> dict[str, Path]:
    """The default task set from held-out documents (deterministic in docs + seed):

    heldout_next_sentence and heldout_cloze (multiple choice; min(pool_size, a quarter) of the
    examples set aside as the few-shot pool), heldout_complete (generate_until: the cloze word written
    by the model, regex filter + exact_match; needs lm-eval to run), and heldout_lm_<source> (rolling
    log-likelihood over the documents themselves, tagged heldout_lm, for lm-eval's bits_per_byte). Returns task name -> directory. A task
    with too few examples for its few-shot pool and two test documents is left out (logged).
    """
    out = Path(out_dir)
    rng = random.Random(seed)
    made: dict[str, Path] = {}
    for name, maker in (
        ("heldout_next_sentence", _next_sentence_examples),
        ("heldout_cloze", _cloze_examples),
    ):
        examples = maker(heldout_docs, rng)
        rng.shuffle(examples)
        k = min(pool_size, len(examples) // 4)  # a small held-out set still gives a task
        if k < max(1, num_fewshot) or len(examples) - k < 2:
            log.warning(
                "%s: only %d examples from %d documents; task left out",
                name,
                len(examples),
                len(heldout_docs),
            )
            continue
        pool, test = examples[:k], examples[k : k + max_examples]
        made[name] = write_mc_task(out, name, test, pool, num_fewshot)
    # A generation task from the cloze examples: the model writes the missing last word itself.
    completions = [{"context": e["context"], "answer": e["choices"][e["gold"]], "source": e["source"]}
                   for e in _cloze_examples(heldout_docs, random.Random(seed + 1))]  # fmt: skip
    k = min(pool_size, len(completions) // 4)
    if k >= max(1, num_fewshot) and len(completions) - k >= 2:
        name, task_dir = "heldout_complete", out / "heldout_complete"
        write_jsonl(task_dir / "train.jsonl", completions[:k])
        write_jsonl(task_dir / "test.jsonl", completions[k : k + max_examples])
        write_yaml(task_dir / f"{name}.yaml", generation_task_yaml(name, task_dir, num_fewshot))
        made[name] = task_dir
    by_source: dict[str, list[dict[str, str]]] = {}
    for d in heldout_docs:
        by_source.setdefault(d["source"], []).append({"text": d["text"], "source": d["source"]})
    for source, rows in sorted(by_source.items()):
        name = f"heldout_lm_{_safe(source)}"
        task_dir = out / name
        write_jsonl(task_dir / "test.jsonl", rows)
        write_yaml(task_dir / f"{name}.yaml", rolling_task_yaml(name, task_dir))
        made[name] = task_dir
    return made
