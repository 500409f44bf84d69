"""lm-eval native: our checkpoints as lm-eval's `pretrain` model, task YAMLs through lm-eval's own task
machinery, generation with a KV cache. Compared with `lm_eval --model hf` on the export of the same
checkpoint (offline, CPU, fp32), task by task. Reuses the session run of test_eval.py.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

from tests.test_eval import build_eval_run  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MAX_DOCS = 24
PERPLEXITIES = ("word_perplexity", "byte_perplexity")


@pytest.fixture(scope="session")
def run(tmp_path_factory) -> dict:
    return build_eval_run(tmp_path_factory.getbasetemp() / "eval_run")


def _metrics(results: dict, task: str) -> dict[str, float]:
    out = {}
    for key, value in results["results"][task].items():
        metric, _, filt = key.partition(",")
        if filt and not metric.endswith("_stderr") and isinstance(value, (int, float)):
            out[metric if filt == "none" else key] = float(value)
    return out


def _close(metric: str, a: float, b: float) -> bool:
    if metric in PERPLEXITIES:  # compared as nats per word/byte: a perplexity of 1e5 carries float noise
        return abs(math.log(a) - math.log(b)) < 1e-4
    return abs(a - b) < 1e-4


def _jinja_task(tasks_dir: Path, source: Path) -> None:
    """A task written the way lm-eval's own tasks are: Jinja templates, no num_fewshot, no fewshot_split."""
    d = tasks_dir / "jinja_mc"
    d.mkdir(parents=True)
    (d / "test.jsonl").write_text(source.read_text())
    conf = {
        "task": "jinja_mc",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(d / "test.jsonl")}},
        "output_type": "multiple_choice",
        "test_split": "test",
        "doc_to_text": "Context: {{context}}\nAnswer:",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{gold}}",
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
    }
    (d / "jinja_mc.yaml").write_text(yaml.safe_dump(conf))


@pytest.fixture(scope="module")
def compared(run, tmp_path_factory):
    """The same tasks through lm-eval with `--model pretrain` (native checkpoint), with `--model hf`
    (export), and through `pretrain eval`'s scoring."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    import eval.harness  # noqa: F401 (registers `pretrain`)
    from eval.config import EvalConfig
    from eval.export import export_checkpoint
    from eval.heldout import read_heldout
    from eval.score import score_checkpoint
    from eval.tasks import make_tasks
    from pretrain.core.tokenizer_file import load_tokenizer

    tmp = tmp_path_factory.mktemp("harness")
    ckpt = run["ckpts"] / "step_000012"
    docs = read_heldout(run["heldout_jsonl"], max_docs_per_source=MAX_DOCS)
    tasks_dir = tmp / "tasks"
    made = make_tasks(docs, tasks_dir, seed=1, num_fewshot=2)
    _jinja_task(tasks_dir, made["heldout_next_sentence"] / "test.jsonl")
    names = sorted(made) + ["jinja_mc"]
    rolling = [n for n in names if n.startswith("heldout_lm_")]
    tm = TaskManager(include_path=str(tasks_dir), include_defaults=False)
    common = dict(task_manager=tm, device="cpu", log_samples=True, bootstrap_iters=0)
    ours = lm_eval.simple_evaluate(
        model="pretrain", model_args=f"checkpoint={ckpt}", tasks=names, batch_size=8, **common
    )
    hf_dir = export_checkpoint(ckpt, tmp / "hf")
    eos = load_tokenizer(run["tok"]).eos_id
    hf_args = f"pretrained={hf_dir},dtype=float32,prefix_token_id={eos},device_map=cpu"
    hf = lm_eval.simple_evaluate(model="hf", model_args=hf_args, tasks=names, batch_size=8, **common)
    hf_bs1 = lm_eval.simple_evaluate(model="hf", model_args=hf_args, tasks=rolling, batch_size=1, **common)
    cfg = EvalConfig(device="cpu", prompts=[], report=False, batch_size=8)
    rows = score_checkpoint(ckpt, tasks_dir=tasks_dir, out_dir=tmp / "out", cfg=cfg)
    return {
        "names": names, "rolling": rolling, "ours": ours, "hf": hf, "hf_bs1": hf_bs1, "rows": rows,
        "tasks_dir": tasks_dir, "ckpt": ckpt, "hf_dir": hf_dir, "docs": docs, "tmp": tmp,
    }  # fmt: skip


@pytest.mark.slow
def test_lm_eval_model_pretrain_equals_hf_on_the_export_task_by_task(compared):
    names, ours, hf = compared["names"], compared["ours"], compared["hf"]
    for task in names:
        ref = _metrics(compared["hf_bs1"] if task in compared["rolling"] else hf, task)
        mine = _metrics(ours, task)
        assert set(mine) == set(ref) and mine, (task, sorted(mine), sorted(ref))
        for metric, value in mine.items():
            assert _close(metric, value, ref[metric]), (task, metric, value, ref[metric])
    # Not a degenerate comparison: every request type ran on real documents.
    assert {ours["configs"][t]["output_type"] for t in names} == {
        "multiple_choice", "loglikelihood_rolling", "generate_until"
    }  # fmt: skip
    assert ours["n-samples"]["heldout_next_sentence"]["effective"] >= 15
    assert ours["n-shot"]["heldout_cloze"] == 2 and ours["n-shot"]["jinja_mc"] == 0


@pytest.mark.slow
def test_generate_until_with_stop_sequences_and_regex_filter_agrees_string_by_string(compared):
    ours = sorted(compared["ours"]["samples"]["heldout_complete"], key=lambda x: x["doc_id"])
    hf = sorted(compared["hf"]["samples"]["heldout_complete"], key=lambda x: x["doc_id"])
    assert len(ours) == len(hf) >= 10
    conf = yaml.safe_load((compared["tasks_dir"] / "heldout_complete" / "heldout_complete.yaml").read_text())
    until = conf["generation_kwargs"]["until"]
    assert "." in until and "\n" in until
    for a, b in zip(ours, hf):
        assert a["resps"] == b["resps"] and a["filtered_resps"] == b["filtered_resps"], (a["doc_id"],)
        text = a["resps"][0][0]
        assert not any(u in text for u in until), (text, until)  # cut at the first stop sequence
        assert len(text) > 0
    # The regex filter took the first word of each generation.
    assert all(a["filtered_resps"][0] == a["resps"][0][0].split()[0].strip(".,;:!?") for a in ours
               if a["resps"][0][0].split() and a["resps"][0][0].split()[0].isalpha())  # fmt: skip


@pytest.mark.slow
def test_generations_of_a_model_that_says_many_things_agree_with_hf(run, compared):
    """A 12-step model mostly repeats one word; a random one with a wide init writes a different
    string for every prompt: the KV-cached, batched, left-padded generation still equals HF's."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from eval.export import export_checkpoint
    from pretrain.core.tokenizer_file import load_tokenizer
    from tests.test_eval import _save_random_checkpoint

    tmp = compared["tmp"]
    ckpt = _save_random_checkpoint(run, tmp / "wide", init_std=0.3)
    hf_dir = export_checkpoint(ckpt, tmp / "wide_hf")
    eos = load_tokenizer(run["tok"]).eos_id
    common = dict(tasks=["heldout_complete"], batch_size=8, device="cpu", log_samples=True, bootstrap_iters=0,
                  task_manager=TaskManager(include_path=str(compared["tasks_dir"]), include_defaults=False))  # fmt: skip
    ours = lm_eval.simple_evaluate(model="pretrain", model_args=f"checkpoint={ckpt}", **common)
    hf = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={hf_dir},dtype=float32,device_map=cpu,prefix_token_id={eos}",
        **common,
    )
    a = [x["resps"] for x in sorted(ours["samples"]["heldout_complete"], key=lambda x: x["doc_id"])]
    b = [x["resps"] for x in sorted(hf["samples"]["heldout_complete"], key=lambda x: x["doc_id"])]
    assert a == b
    assert len({json.dumps(x) for x in a}) >= len(a) // 2, a


@pytest.mark.slow
def test_our_eval_runs_task_yamls_as_lm_eval_does(compared):
    """`pretrain eval` on the task directory: a Jinja YAML with no num_fewshot gives lm-eval's numbers
    and is run 0-shot; the generation task's filtered exact_match and the rolling tasks are there too."""
    rows = {(r["task"], r["metric"]): r for r in compared["rows"]}
    for task in compared["names"]:
        ref = _metrics(compared["hf_bs1"] if task in compared["rolling"] else compared["hf"], task)
        for metric, value in ref.items():
            assert _close(metric, rows[(task, metric)]["value"], value), (task, metric)
    assert rows[("jinja_mc", "acc")]["num_fewshot"] == 0
    assert rows[("heldout_cloze", "acc")]["num_fewshot"] == 2
    assert ("heldout_complete", "exact_match,first_word") in rows


@pytest.mark.slow
def test_lm_eval_command_line_with_model_pretrain(compared):
    """`pretrain eval lm-eval --model pretrain ...` (lm-eval's own CLI, our model registered) on the
    native checkpoint writes the same accuracy as the in-process run."""
    out = compared["tmp"] / "cli_out"
    cmd = [sys.executable, "-m", "eval", "lm-eval", "--model", "pretrain"]
    cmd += ["--model_args", f"checkpoint={compared['ckpt']}", "--device", "cpu", "--tasks", "heldout_cloze"]
    cmd += ["--include_path", str(compared["tasks_dir"]), "--batch_size", "8", "--output_path", str(out)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "heldout_cloze" in res.stdout
    written = json.loads(next(out.rglob("results_*.json")).read_text())
    assert (
        written["results"]["heldout_cloze"]["acc,none"]
        == compared["ours"]["results"]["heldout_cloze"]["acc,none"]
    )


# -- clear errors --------------------------------------------------------------------------------


def _write_task(d: Path, conf: dict) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "test.jsonl").write_text('{"context": "a", "choices": ["b", "c"], "gold": 0}\n')
    conf = {"task": d.name, "dataset_path": "json", "output_type": "multiple_choice",
            "dataset_kwargs": {"data_files": {"test": str(d / "test.jsonl")}}, **conf}  # fmt: skip
    conf = {k: v for k, v in conf.items() if v is not None}  # None: the key is left out
    path = d / f"{d.name}.yaml"
    path.write_text(yaml.safe_dump(conf))
    return path


@pytest.mark.parametrize(
    "conf, message",
    [
        ({"dataset_path": "hellaswag"}, r"dataset_path 'hellaswag' would be downloaded"),
        ({"doc_to_txt": "context"}, r"unsupported key\(s\) \['doc_to_txt'\]"),
        (
            {"dataset_kwargs": {"data_files": {"test": "test.jsonl"}}},
            r"data_files 'test.jsonl' is not an existing absolute",
        ),
        ({"dataset_kwargs": {}}, r"needs dataset_kwargs.data_files"),
    ],
)
def test_unsupported_yaml_names_the_key_and_the_file(tmp_path, conf, message):
    from eval.harness import check_task_dir
    from eval.tasks import TaskConfigError

    path = _write_task(tmp_path / "bad", conf)
    with pytest.raises(TaskConfigError, match=message) as e:
        check_task_dir(tmp_path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize(
    "conf, message",
    [
        ({"doc_to_text": "{{context}}"}, r"key doc_to_text='\{\{context\}\}' is a template"),
        ({"output_type": "generate_until"}, r"key output_type='generate_until'"),
        ({"output_type": None}, r"generate_until \(lm-eval default\)"),
        ({"filter_list": [{"name": "x"}]}, r"key\(s\) \['filter_list'\] need lm-eval"),
    ],
)
def test_own_loader_without_lm_eval_refuses_what_it_cannot_reproduce(tmp_path, conf, message):
    from eval.tasks import TaskConfigError, load_task

    path = _write_task(tmp_path / "t", conf)
    with pytest.raises(TaskConfigError, match=message) as e:
        load_task(path.parent)
    assert str(path) in str(e.value) and "install lm-eval" in str(e.value)


def test_own_loader_defaults_to_zero_shot_like_lm_eval(tmp_path):
    from eval.tasks import load_task

    task = load_task(_write_task(tmp_path / "t", {"doc_to_text": "context"}).parent)
    assert task.num_fewshot == 0 and not task.exclude_eval_doc


@pytest.mark.slow
def test_without_lm_eval_our_loader_gives_the_same_mc_numbers(compared, monkeypatch, caplog):
    """A bare GPU box has no lm-eval: `pretrain eval` then scores the auto set's multiple-choice tasks
    with its own loader (same numbers) and skips the generation task with a notice."""
    from eval import score
    from eval.config import EvalConfig

    monkeypatch.setattr(score, "harness", None)
    heldout = compared["tmp"] / "heldout.jsonl"
    heldout.write_text("".join(json.dumps(d) + "\n" for d in compared["docs"]))
    cfg = EvalConfig(device="cpu", prompts=[], report=False, batch_size=8, num_fewshot=2, task_seed=1,
                     max_docs_per_source=MAX_DOCS)  # fmt: skip
    rows = score.score_checkpoint(compared["ckpt"], heldout=heldout, out_dir=compared["tmp"] / "own", cfg=cfg)
    got = {(r["task"], r["metric"]): r["value"] for r in rows}
    for task in ("heldout_next_sentence", "heldout_cloze"):
        for metric in ("acc", "acc_norm", "acc_bytes"):
            assert abs(got[(task, metric)] - _metrics(compared["hf"], task)[metric]) < 1e-9, (task, metric)
    assert not any(t == "heldout_complete" for t, _ in got)
    assert "generation task is skipped" in caplog.text


# -- generation ------------------------------------------------------------------------------------


def _random_model(max_seq_len: int = 64):
    from trainer.model import Transformer, preset

    torch.manual_seed(0)
    cfg = preset("tiny", vocab_size=300, dim=64, num_layers=2, num_heads=4, num_kv_heads=2,
                 max_seq_len=max_seq_len, init_std=0.5)  # fmt: skip
    return Transformer(cfg).eval()


def _greedy_without_cache(model, ids: list[int], n: int) -> list[int]:
    seq = list(ids)
    with torch.inference_mode():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(ids) :]


def test_kv_cached_batched_generation_equals_one_sequence_at_a_time_without_cache():
    from eval.generate import generate_batch

    model = _random_model()
    prompts = [[5, 17, 9], [200, 3, 3, 45, 99, 120, 7], [1], [250, 251]]
    batched = generate_batch(model, prompts, 12, eos_id=None)
    for p, got in zip(prompts, batched):
        ref = _greedy_without_cache(model, p, 12)
        assert got == ref, (p, got, ref)
        assert generate_batch(model, [p], 12, eos_id=None)[0] == ref
    assert len({tuple(x) for x in batched}) == len(prompts)  # the model does not say one thing


def test_generation_stops_at_eos_and_at_a_stop_callback():
    from eval.generate import generate_batch

    model = _random_model()
    free = generate_batch(model, [[5, 17, 9]], 12, eos_id=None)[0]
    eos = free[4]
    cut = generate_batch(model, [[5, 17, 9]], 12, eos_id=eos)[0]
    assert cut == free[: free.index(eos)]
    stopped = generate_batch(model, [[5, 17, 9], [8, 8]], 12, eos_id=None, stop=lambda ids: len(ids) >= 3)
    assert [len(x) for x in stopped] == [3, 3] and stopped[0] == free[:3]


def test_seeded_sampling_is_the_same_whatever_the_batch():
    from eval.generate import generate_batch

    model = _random_model()
    prompts = [[5, 17, 9], [200, 3, 3, 45], [7]]

    def gens(seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    together = generate_batch(
        model, prompts, 10, None, temperature=1.0, top_k=50, top_p=0.9, generators=gens([1, 2, 3])
    )
    alone = [
        generate_batch(model, [p], 10, None, 1.0, 50, 0.9, gens([s]))[0] for p, s in zip(prompts, [1, 2, 3])
    ]
    assert together == alone
    other = generate_batch(model, prompts, 10, None, 1.0, 50, 0.9, gens([4, 5, 6]))
    assert other != together
    assert together != generate_batch(model, prompts, 10, None)  # sampling is not greedy here


def test_requests_sharing_a_context_score_as_they_do_alone():
    """The shared-prefix path (one pass over a multiple-choice context, its KV cache reused per
    choice) gives what each request gives scored alone, truncated inputs included."""
    from eval.lm import LMScorer

    class Tok:
        eos_id = 1

    model = _random_model(max_seq_len=32)
    lm = LMScorer(model, Tok(), batch_size=3)
    ctx, long_ctx = [5, 17, 9, 40, 41], list(range(2, 40))  # long_ctx + cont exceeds max_length
    requests = [(ctx, [7]), (ctx, [8, 9, 10]), (ctx, [11, 12]), ([3, 4], [5, 6]), (long_ctx, [9, 9]),
                (long_ctx, [8]), (ctx, [2]), ([6, 6, 6], [1]), ([6, 6, 6], [2])]  # fmt: skip
    # (the last two: a group whose continuations are all one token, so no suffix pass at all)
    together = lm.score_tokens(requests, with_greedy=True)
    alone = [lm.score_tokens([r], with_greedy=True)[0] for r in requests]
    for (a, ga), (b, gb) in zip(together, alone):
        assert a == pytest.approx(b, rel=1e-5) and ga == gb  # fp32 noise on large logits (init_std 0.5)
    with torch.inference_mode():  # and alone is the plain full forward
        ctx_ids, cont = requests[1]
        logp = torch.log_softmax(model(torch.tensor([ctx_ids + cont[:-1]]))[0].float(), -1)
        ref = sum(logp[len(ctx_ids) - 1 + j, t].item() for j, t in enumerate(cont))
    assert alone[1][0] == pytest.approx(ref, rel=1e-5)


def test_generation_options_read_as_lm_eval_hf_reads_them():
    from eval.harness import GenerationOptions

    o = GenerationOptions.parse({"until": "\n", "max_gen_toks": 5}, 256)
    assert (o.until, o.max_gen_toks, o.temperature) == (["\n"], 5, 0.0)
    assert GenerationOptions.parse({"do_sample": True}, 256).temperature == 1.0
    assert GenerationOptions.parse({"do_sample": False, "temperature": 0.7}, 256).temperature == 0.0
    assert o.cut("abc\ndef") == "abc"
    with pytest.raises(ValueError, match=r"\['num_beams'\] are not supported"):
        GenerationOptions.parse({"num_beams": 4}, 256)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pretrain_model_on_a_gpu(compared):
    """On a GPU: fp32 gives the CPU numbers (within 1e-3), bf16 autocast runs every task type."""
    from eval.harness import PretrainLM, evaluate_tasks

    cpu = {t: r for t, r in ((t, _metrics(compared["ours"], t)) for t in compared["names"])}
    fp32 = evaluate_tasks(PretrainLM(checkpoint=str(compared["ckpt"]), device="cuda", dtype="float32"),
                          compared["tasks_dir"], compared["names"])  # fmt: skip
    for task, r in fp32.items():
        for metric, value in r["metrics"].items():
            if task not in compared["rolling"] or metric == "bits_per_byte":
                assert abs(value - cpu[task][metric]) < 1e-3 or metric.startswith("exact_match"), (
                    task,
                    metric,
                )
    bf16 = evaluate_tasks(PretrainLM(checkpoint=str(compared["ckpt"]), device="cuda", dtype="bfloat16"),
                          compared["tasks_dir"], compared["names"])  # fmt: skip
    assert set(bf16) == set(compared["names"])
    assert all(math.isfinite(v) for r in bf16.values() for v in r["metrics"].values())
