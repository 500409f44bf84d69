"""Eval suite: lm-eval's windowing and few-shot rules, held-out metrics, results rows and skipping,
incomplete/corrupt checkpoints, `watch` beside a save in progress, HF export (logits and tokenizer
ids equal), report. One tiny trained run (throwaway tokenizer, 12 steps, 3 checkpoints) is built once
per session by `build_eval_run`; test_eval_lmeval.py reuses it for the lm-evaluation-harness check.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from eval.checkpoint import CheckpointError, load_checkpoint_model  # noqa: E402
from eval.config import EvalConfig  # noqa: E402
from eval.lm import LMScorer, disjoint_window, rolling_token_windows  # noqa: E402
from pretrain.core.tokenizer_file import load_tokenizer  # noqa: E402

MODEL = {
    "dim": 64,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "max_seq_len": 128,
    "rope_theta": 50000.0,
}
STEPS, EVERY = 12, 4
FAST = dict(max_docs_per_source=4, tasks=None, prompts=[], device="cpu", report=False)  # watch tests


def build_eval_run(base: Path) -> dict:
    """Tokenizer + token shards from stdlib docstrings, a 12-step run with checkpoints at 4, 8, 12, and
    held-out documents (every 10th docstring document) as JSONL and as a Parquet document-shard dir.
    Built once per session (a DONE marker), whichever test file asks first."""
    from data_pipeline.corpus import base_texts
    from pretrain.core.config import from_dict
    from pretrain.core.shards import ShardWriter
    from pretrain.core.token_shards import write_token_manifest, write_token_shard
    from tokenizer.bpe import save_tokenizer, train_bpe
    from trainer.config import TrainConfig
    from trainer.train import train

    paths = {
        "root": base,
        "tok": base / "tok",
        "run": base / "run",
        "ckpts": base / "run" / "checkpoints",
        "heldout_jsonl": base / "heldout.jsonl",
        "heldout_dir": base / "heldout",
    }
    if (base / "DONE").exists():
        return paths
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    cands = [("pydoc" if m == "pydoc_data" else "code", t) for m, t in base_texts()]
    train_docs = [d for i, d in enumerate(cands) if i % 10]
    heldout = [{"text": t, "source": s} for i, (s, t) in enumerate(cands) if i % 10 == 0]
    save_tokenizer(train_bpe([t for _, t in train_docs], vocab_size=1024), paths["tok"])
    tok = load_tokenizer(paths["tok"])
    entries = []
    for source in ("code", "pydoc"):
        ids = tok.encode_batch([t for s, t in train_docs if s == source])
        entry = write_token_shard(
            base / "tokens" / f"{source}.arrow", [np.array(x + [tok.eos_id]) for x in ids], tok.vocab_size
        )
        entries.append({**entry, "path": f"{source}.arrow", "source": source})
    write_token_manifest(base / "tokens", tok.hash, entries, appends_eos=True, eos_id=tok.eos_id)
    phase = dict(name="p", num_tokens=STEPS * 2048, mixture={"code": 0.7, "pydoc": 0.3}, seq_len=128,
                 global_batch_tokens=2048, micro_batch_size=16, lr_max=3e-3)  # fmt: skip
    cfg = from_dict(
        TrainConfig,
        {
            "run_dir": str(paths["run"]),
            "model": "tiny",
            "model_overrides": {**MODEL, "vocab_size": tok.vocab_size},
            "curriculum": {"phases": [phase], "schedule": {"warmup_steps": 2, "decay_fraction": 0.3}},
            "data": {
                "sources": {s: str(base / "tokens") for s in ("code", "pydoc")},
                "tokenizer_dir": str(paths["tok"]),
            },
            "checkpoint": {"every_steps": EVERY, "keep_last": 3},
            "device": "cpu",
            "metrics": {"progress": False},
        },
    )
    train(cfg)
    paths["heldout_jsonl"].write_text("".join(json.dumps(d) + "\n" for d in heldout))
    with ShardWriter(paths["heldout_dir"] / "shards" / "00000.parquet") as w:
        w.write_rows([{"id": str(i), "url": None, "metadata": "{}", **d} for i, d in enumerate(heldout)])
    (base / "DONE").write_text("ok")
    return paths


@pytest.fixture(scope="session")
def run(tmp_path_factory) -> dict:
    return build_eval_run(tmp_path_factory.getbasetemp() / "eval_run")


def _ckpt(run, step: int) -> Path:
    return run["ckpts"] / f"step_{step:06d}"


# -- lm-eval's rules, reproduced -----------------------------------------------------------------


@pytest.mark.parametrize("max_len", [1, 4, 16])
def test_rolling_windows_equal_lm_eval(max_len):
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    for n in [0, 1, 3, max_len - 1, max_len, max_len + 1, 3 * max_len + 2, 50]:
        toks = list(range(10, 10 + max(n, 0)))
        ours = [disjoint_window(w) for w in rolling_token_windows(toks, 1, max_len)]
        theirs = [make_disjoint_window(w) for w in get_rolling_token_windows(toks, 1, max_len, 1)]
        assert ours == theirs, (n, max_len)
        assert [t for _, pred in ours for t in pred] == toks  # every token predicted exactly once


def test_encode_pair_moves_trailing_space_and_conditions_empty_context(run):
    tok = load_tokenizer(run["tok"])
    lm = LMScorer(load_checkpoint_model(_ckpt(run, 4)).model, tok)
    ctx, cont = lm.encode_pair("The value is ", "returned.")
    assert ctx == tok.encode("The value is") and ctx + cont == tok.encode("The value is returned.")
    assert lm.encode_pair("", " word") == ([tok.eos_id], tok.encode(" word"))


def test_fewshot_draws_equal_lm_eval_sampler():
    from lm_eval.api.samplers import ContextSampler

    from eval.tasks import MCTask, fewshot_sampler

    docs = [{"context": f"c{i}", "choices": ["a", "b"], "gold": i % 2} for i in range(12)]
    pool = [{"context": f"p{i}", "choices": ["x", "y"], "gold": 0} for i in range(7)]
    separate = MCTask("t", docs, pool, num_fewshot=3)
    same = MCTask("t", docs, docs, num_fewshot=3, exclude_eval_doc=True)
    for task, eval_doc in ((separate, False), (same, True)):
        ours = fewshot_sampler(task, 1234)
        theirs = ContextSampler(list(task.fewshot_docs), rnd=None).set_rnd(1234)
        for d in docs:
            assert ours(d) == list(theirs.sample(3, eval_doc=d if eval_doc else None))
        assert all(d not in fewshot_sampler(same, 7)(d) for d in docs)


# -- scoring -------------------------------------------------------------------------------------


def test_rolling_loglikelihood_is_exact_and_batch_independent(run):
    tok = load_tokenizer(run["tok"])
    model = load_checkpoint_model(_ckpt(run, 12)).model
    texts = [json.loads(line)["text"] for line in run["heldout_jsonl"].read_text().splitlines()[:12]]
    short = "Return the number of items."
    # Direct: one forward over [eos] + tokens, log-prob of each token given all before it.
    ids = tok.encode(short)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([[tok.eos_id] + ids[:-1]]))[0], -1)
    direct = logp[torch.arange(len(ids)), torch.tensor(ids)].sum().item()
    one = LMScorer(model, tok, batch_size=1)
    seven = LMScorer(model, tok, batch_size=7)
    assert one.loglikelihood_rolling([short])[0] == pytest.approx(direct, abs=1e-4)
    assert max(len(tok.encode(t)) for t in texts) > MODEL["max_seq_len"]  # several windows per doc
    np.testing.assert_allclose(
        one.loglikelihood_rolling(texts), seven.loglikelihood_rolling(texts), atol=1e-3
    )


def test_heldout_metrics_follow_lm_eval_definitions(run):
    from eval.heldout import read_heldout, score_heldout

    assert read_heldout(run["heldout_dir"]) == read_heldout(run["heldout_jsonl"])  # Parquet shards too
    docs = read_heldout(run["heldout_jsonl"], max_docs_per_source=12)
    assert [d["source"] for d in docs].count("code") == 12 and {d["source"] for d in docs} == {
        "code",
        "pydoc",
    }
    tok = load_tokenizer(run["tok"])
    lm = LMScorer(load_checkpoint_model(_ckpt(run, 12)).model, tok, batch_size=8)
    m = score_heldout(lm, docs)
    assert set(m) == {"code", "pydoc", "all"}
    code = [d["text"] for d in docs if d["source"] == "code"]
    ll = sum(lm.loglikelihood_rolling(code))
    nbytes = sum(len(t.encode()) for t in code)
    assert m["code"]["num_docs"] == len(code) and m["code"]["num_bytes"] == nbytes
    assert m["code"]["bits_per_byte"] == pytest.approx(-ll / nbytes / math.log(2), rel=1e-6)
    assert m["code"]["loss"] == pytest.approx(-ll / sum(len(tok.encode(t)) for t in code), rel=1e-6)
    assert m["code"]["perplexity"] == pytest.approx(math.exp(m["code"]["loss"]), rel=1e-9)
    assert m["all"]["num_docs"] == len(docs)
    assert 0 < m["all"]["bits_per_byte"] < 8 and m["all"]["loss"] < math.log(tok.vocab_size)  # it learned


def test_score_checkpoint_writes_rows_once_and_force_rescores(run, tmp_path):
    from eval.results import GENERATIONS, RESULTS, read_rows
    from eval.score import score_checkpoint

    out = tmp_path / "eval"
    cfg = EvalConfig(heldout=str(run["heldout_jsonl"]), max_docs_per_source=6, device="cpu", max_new_tokens=8)
    rows = score_checkpoint(_ckpt(run, 8), out_dir=out, cfg=cfg)
    meta = json.loads((_ckpt(run, 8) / "meta.json").read_text())
    assert {(r["step"], r["tokens_seen"], r["checkpoint"]) for r in rows} == {
        (8, meta["tokens_seen"], "step_000008")
    }
    assert meta["tokens_seen"] == 8 * 2048
    tasks = {r["task"] for r in rows}
    assert tasks == {
        "heldout/code",
        "heldout/pydoc",
        "heldout/all",
        "heldout_next_sentence",
        "heldout_cloze",
        "heldout_complete",  # generate_until + regex filter (the rolling heldout_lm_* tasks are skipped)
        "eval",
    }
    per = {(r["task"], r["metric"]): r["value"] for r in rows}
    assert len(per) == len(rows) == 3 * 5 + 2 * 3 + 1 + 1  # one row per (task, metric)
    assert 0 <= per[("heldout_complete", "exact_match,first_word")] <= 1
    assert all(
        0 <= per[(t, m)] <= 1 for t in ("heldout_cloze", "heldout_next_sentence") for m in ("acc", "acc_norm")
    )
    assert read_rows(out / RESULTS) == rows
    gens = read_rows(out / GENERATIONS)
    assert len(gens) == 2 * len(cfg.prompts) and {g["mode"] for g in gens} == {"greedy", "sample"}
    assert (out / "report.md").exists() and (out / "tasks" / "heldout_cloze" / "test.jsonl").exists()

    again = score_checkpoint(_ckpt(run, 8), out_dir=out, cfg=cfg)  # already scored: nothing recomputed
    assert again == rows and read_rows(out / RESULTS) == rows
    forced = score_checkpoint(_ckpt(run, 8), out_dir=out, cfg=cfg, force=True)
    kept = read_rows(out / RESULTS)
    assert len(kept) == len(rows) and [r["value"] for r in forced[:-1]] == [r["value"] for r in rows[:-1]]
    # Same seed, same checkpoint: the same generations.
    assert [g["text"] for g in read_rows(out / GENERATIONS)] == [g["text"] for g in gens]


def test_incomplete_and_corrupt_checkpoints_name_the_directory(run, tmp_path, capsys):
    from eval.cli import main

    partial = tmp_path / "checkpoints" / "step_000004"
    shutil.copytree(_ckpt(run, 4), partial)
    (partial / "meta.json").unlink()
    with pytest.raises(CheckpointError, match=f"incomplete checkpoint {partial}"):
        load_checkpoint_model(partial)
    tmp = tmp_path / "checkpoints" / "step_000008.tmp"
    shutil.copytree(_ckpt(run, 8), tmp)
    with pytest.raises(CheckpointError, match=r"incomplete checkpoint .*step_000008\.tmp"):
        load_checkpoint_model(tmp)
    with pytest.raises(CheckpointError, match=r"step_000008 does not exist \(only step_000008\.tmp exists"):
        load_checkpoint_model(tmp_path / "checkpoints" / "step_000008")

    corrupt = tmp_path / "checkpoints" / "step_000012"
    shutil.copytree(_ckpt(run, 12), corrupt)
    data = next(corrupt.glob("*.distcp"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])  # truncated shard file
    with pytest.raises(CheckpointError, match=f"corrupt checkpoint {corrupt}"):
        load_checkpoint_model(corrupt)
    (corrupt / ".metadata").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match=f"corrupt checkpoint {corrupt}"):
        load_checkpoint_model(corrupt)

    assert main(["run", "--checkpoint", str(partial), "--tasks", "none", "device=cpu"]) == 1
    assert f"incomplete checkpoint {partial}" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(corrupt), "--out", str(tmp_path / "hf")]) == 1
    assert f"corrupt checkpoint {corrupt}" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


def test_tokenizer_other_than_trainings_is_refused(run, tmp_path):
    from eval.checkpoint import load_tokenizer_for
    from tokenizer.bpe import save_tokenizer, train_bpe

    save_tokenizer(
        train_bpe(["another tokenizer, another vocabulary"] * 20, vocab_size=300), tmp_path / "tok"
    )
    ckpt = load_checkpoint_model(_ckpt(run, 4))
    assert load_tokenizer_for(ckpt, None).hash == load_tokenizer(run["tok"]).hash
    with pytest.raises(CheckpointError, match=f"is not the one checkpoint {ckpt.path} was trained with"):
        load_tokenizer_for(ckpt, str(tmp_path / "tok"))


def test_document_prefix_is_what_preceded_documents_in_training(run, tmp_path):
    from eval.checkpoint import document_prefix_id

    tok = load_tokenizer(run["tok"])
    ckpt = load_checkpoint_model(_ckpt(run, 4))
    assert document_prefix_id(ckpt, tok) == tok.eos_id  # shards hold ids + [eos]
    assert document_prefix_id(ckpt, tok, "bos") == tok.bos_id
    (tmp_path / "manifest.json").write_text(json.dumps({"bos_id": tok.bos_id, "eos_id": tok.eos_id}))
    ckpt.meta["config"]["data"]["sources"] = {"code": str(tmp_path)}  # encoded with add_bos
    assert document_prefix_id(ckpt, tok) == tok.bos_id


def test_watch_skips_a_save_in_progress_then_scores_it(run, tmp_path):
    from eval.results import RESULTS, read_rows
    from eval.watch import watch

    run_dir = tmp_path / "run"
    shutil.copytree(run["run"], run_dir, ignore=shutil.ignore_patterns("eval"))
    ckpts = run_dir / "checkpoints"
    # step 12 is "still being written": the trainer's .tmp directory, meta.json not there yet.
    (ckpts / "step_000012" / "meta.json").rename(tmp_path / "meta12.json")
    (ckpts / "step_000012").rename(ckpts / "step_000012.tmp")
    cfg = EvalConfig(heldout=str(run["heldout_jsonl"]), **FAST)
    assert watch(run_dir, cfg, once=True) == [4, 8]
    assert watch(run_dir, cfg, once=True) == []  # each checkpoint once
    (tmp_path / "meta12.json").rename(ckpts / "step_000012.tmp" / "meta.json")
    (ckpts / "step_000012.tmp").rename(ckpts / "step_000012")
    assert watch(run_dir, cfg, interval_s=0.05, until_step=12, timeout_s=120) == [12]
    rows = read_rows(run_dir / "eval" / RESULTS)
    assert sorted({r["step"] for r in rows}) == [4, 8, 12]
    assert sorted(
        r["step"] for r in rows if r["task"] == "heldout/all" and r["metric"] == "bits_per_byte"
    ) == [4, 8, 12]
    # Bounded when nothing new arrives.
    assert watch(run_dir, cfg, interval_s=0.05, timeout_s=0.2) == []


def test_watch_cli_beside_a_save(run, tmp_path, capsys):
    from eval.cli import main

    run_dir = tmp_path / "run"
    shutil.copytree(run["run"], run_dir, ignore=shutil.ignore_patterns("eval", "step_000004", "step_000008"))
    args = ["watch", "--run-dir", str(run_dir), "--heldout", str(run["heldout_jsonl"]), "--tasks", "none"]
    args += ["--once", "max_docs_per_source=2", "prompts=[]", "device=cpu", "report=false"]
    assert main(args) == 0
    assert "scored steps: [12]" in capsys.readouterr().out


# -- export --------------------------------------------------------------------------------------


def _hf_logits_equal(ckpt_dir: Path, hf_dir: Path, vocab: int) -> None:
    from transformers import AutoModelForCausalLM

    ours = load_checkpoint_model(ckpt_dir).model
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    x = torch.randint(0, vocab, (3, ours.cfg.max_seq_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (ours(x) - hf(x).logits).abs().max().item()
    assert diff <= 1e-4, diff


def test_export_loads_in_transformers_with_equal_logits_and_token_ids(run, tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    from eval.export import export_checkpoint

    tok = load_tokenizer(run["tok"])
    out = export_checkpoint(_ckpt(run, 12), tmp_path / "hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # the temporary directory was renamed
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "generation_config.json",
                                               "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}  # fmt: skip
    config = AutoConfig.from_pretrained(out)
    assert (
        config.model_type == "llama" and config.num_key_value_heads == 2 and config.num_attention_heads == 4
    )
    assert config.rope_parameters["rope_theta"] == 50000.0 and config.tie_word_embeddings
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (
        tok.bos_id,
        tok.eos_id,
        tok.pad_id,
    )
    _hf_logits_equal(_ckpt(run, 12), out, tok.vocab_size)
    hf_tok = AutoTokenizer.from_pretrained(out)
    texts = [json.loads(line)["text"] for line in run["heldout_jsonl"].read_text().splitlines()[:20]]
    texts += ["  leading spaces, tabs\tand ünïcödé — 12345 😀\n\nend", ""]
    assert [hf_tok.encode(t) for t in texts] == [tok.encode(t) for t in texts]
    assert (hf_tok.eos_token_id, hf_tok.model_max_length) == (tok.eos_id, MODEL["max_seq_len"])

    with pytest.raises(FileExistsError, match="exists"):
        export_checkpoint(_ckpt(run, 12), out)
    export_checkpoint(_ckpt(run, 4), out, overwrite=True, dtype="bfloat16")
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"


def _save_random_checkpoint(run, path: Path, **overrides) -> Path:
    """A checkpoint as the trainer writes it (DCP + meta.json) for a model shape the run did not train."""
    from trainer.checkpoint import save_checkpoint
    from trainer.model import Transformer, preset

    tok = load_tokenizer(run["tok"])
    model_overrides = {**MODEL, "vocab_size": tok.vocab_size, **overrides}
    torch.manual_seed(0)
    model = Transformer(preset("tiny", **model_overrides))
    opt = torch.optim.AdamW(model.parameters())
    meta = {"tokens_seen": 0, "config": {"model": "tiny", "model_overrides": model_overrides,
                                         "data": {"tokenizer_dir": str(run["tok"]), "tokenizer_hash": tok.hash}}}  # fmt: skip
    return save_checkpoint(path, 1, model, opt, meta)


def test_export_untied_model_and_refuse_qk_norm(run, tmp_path):
    from eval.export import ExportError, export_checkpoint

    untied = _save_random_checkpoint(run, tmp_path / "untied", tie_embeddings=False, num_kv_heads=1)
    out = export_checkpoint(untied, tmp_path / "hf_untied")
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    _hf_logits_equal(untied, out, load_tokenizer(run["tok"]).vocab_size)

    qk = _save_random_checkpoint(run, tmp_path / "qk", qk_norm=True)
    with pytest.raises(ExportError, match=f"checkpoint {qk}: qk_norm=true has no LlamaForCausalLM"):
        export_checkpoint(qk, tmp_path / "hf_qk")
    assert not (tmp_path / "hf_qk").exists() and not list(tmp_path.glob(".hf_qk*"))


# -- tasks and report ----------------------------------------------------------------------------


def test_make_tasks_is_deterministic_and_well_formed(run, tmp_path):
    from eval.heldout import read_heldout
    from eval.tasks import GENERATION_TAG, HELDOUT_LM_TAG, load_tasks, make_tasks

    docs = read_heldout(run["heldout_jsonl"])
    a = make_tasks(docs, tmp_path / "a", seed=3)
    b = make_tasks(docs, tmp_path / "b", seed=3)
    assert sorted(a) == [
        "heldout_cloze", "heldout_complete", "heldout_lm_code", "heldout_lm_pydoc", "heldout_next_sentence"
    ]  # fmt: skip
    for name in a:
        assert (a[name] / "test.jsonl").read_text() == (b[name] / "test.jsonl").read_text()
    # Our own loader (what runs without lm-eval) takes the multiple-choice ones.
    tasks = {t.name: t for t in load_tasks(tmp_path / "a", skip_tags={HELDOUT_LM_TAG, GENERATION_TAG})}
    assert sorted(tasks) == ["heldout_cloze", "heldout_next_sentence"]
    completions = [json.loads(x) for x in (a["heldout_complete"] / "test.jsonl").read_text().splitlines()]
    assert len(completions) >= 20 and all(
        any(d["context"] + " " + d["answer"] in " ".join(t["text"].split()) for t in docs)
        for d in completions
    )
    flat = {" ".join(d["text"].split()) for d in docs}
    for task in tasks.values():
        assert len(task.fewshot_docs) == 16 and task.num_fewshot == 1 and len(task.docs) >= 20
        for d in task.docs:
            assert len(set(d["choices"])) == 4 and 0 <= d["gold"] < 4
            # The gold continuation really follows the context in some held-out document.
            assert any(d["context"] + " " + d["choices"][d["gold"]] in text for text in flat)
    golds = [d["gold"] for t in tasks.values() for d in t.docs]
    assert len(set(golds)) == 4  # the answer position varies
    # A bare directory (no YAML) is a task too: defaults, few-shot pool = its test set minus the doc.
    bare = tmp_path / "a" / "bare"
    bare.mkdir()
    shutil.copy(a["heldout_cloze"] / "test.jsonl", bare / "test.jsonl")
    task = {t.name: t for t in load_tasks(tmp_path / "a", 2, {HELDOUT_LM_TAG, GENERATION_TAG})}["bare"]
    assert task.num_fewshot == 2 and task.exclude_eval_doc and task.fewshot_docs is task.docs


def test_report_has_a_table_row_per_checkpoint_and_png_plots(tmp_path):
    from eval.report import write_report

    rows = [
        {"checkpoint": f"step_{s:06d}", "step": s, "tokens_seen": s * 100, "task": t, "metric": m, "value": v}
        for s in (4, 8, 12)
        for t, m, v in (("heldout/code", "bits_per_byte", 3.0 - s / 10), ("heldout_cloze", "acc", s / 20),
                        ("eval", "seconds", 1.0))
    ]  # fmt: skip
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths = write_report(results, tmp_path)
    md = paths["markdown"].read_text()
    assert "| 12 | 1200 | 1.8000 |" in md and "| 8 | 800 | 0.4000 |" in md and "seconds" not in md
    assert sorted(p.name for p in paths["plots"]) == ["acc.png", "bits_per_byte.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths["plots"])
    assert "<img src='plots/acc.png'" in paths["html"].read_text()


def test_config_validation_names_the_field(tmp_path):
    from pretrain.core.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="batch_size=0 is invalid"):
        load_config(EvalConfig, None, ["batch_size=0"])
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(EvalConfig, None, ["batchsize=4"])
    cfg = load_config(EvalConfig, Path(__file__).parent.parent / "configs" / "eval_tiny.yaml", [])
    assert cfg.tasks == "auto" and cfg.prefix_token == "auto"


def test_cli_dry_run_prints_the_resolved_config_and_scores_nothing(tmp_path, capsys):
    import yaml

    from eval.cli import main

    ckpt = tmp_path / "checkpoints" / "step_000004"  # need not exist: nothing is read
    opts = ["--heldout", "h.jsonl", "--tasks", "none", "batch_size=8", "--dry-run"]
    assert main(["run", "--checkpoint", str(ckpt), *opts]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["batch_size"], printed["heldout"], printed["tasks"]) == (8, "h.jsonl", None)
    assert main(["watch", "--run-dir", str(tmp_path), "--once", *opts]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["batch_size"] == 8
    assert not (tmp_path / "eval").exists() and not (tmp_path / "checkpoints").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_scoring_close_to_cpu_fp32(run):
    from eval.heldout import read_heldout, score_heldout

    tok = load_tokenizer(run["tok"])
    docs = read_heldout(run["heldout_jsonl"], max_docs_per_source=8)
    cpu = score_heldout(LMScorer(load_checkpoint_model(_ckpt(run, 12)).model, tok), docs)
    gpu = score_heldout(LMScorer(load_checkpoint_model(_ckpt(run, 12)).model.cuda(), tok, "cuda"), docs)
    assert gpu["all"]["bits_per_byte"] == pytest.approx(cpu["all"]["bits_per_byte"], rel=2e-2)
