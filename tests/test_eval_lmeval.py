"""Acceptance: our bits-per-byte and multiple-choice accuracies equal lm-evaluation-harness's for the
exported model on the same task files (offline, CPU, fp32), within 1e-3; greedy generations equal
transformers' `generate`. Reuses the session run of test_eval.py (`build_eval_run`).

lm-eval's `hf` model needs `accelerate` (in the `eval` extra); `device_map=cpu` keeps it on the CPU.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

from tests.test_eval import build_eval_run  # noqa: E402
from tests.train_helpers import slow_steps  # noqa: E402

MAX_DOCS = 24  # held-out documents per source: about 25 MC documents per task, a few seconds in lm-eval


@pytest.fixture(scope="session")
def run(tmp_path_factory) -> dict:
    return build_eval_run(tmp_path_factory.getbasetemp() / "eval_run")


@pytest.fixture(scope="module")
def compared(run, tmp_path_factory):
    """Our scores and lm-eval's for step 12 on the same task directory."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from eval.config import EvalConfig
    from eval.export import export_checkpoint
    from eval.heldout import read_heldout
    from eval.score import score_checkpoint
    from eval.tasks import make_tasks, write_mc_task
    from pretrain.core.tokenizer_file import load_tokenizer

    tmp = tmp_path_factory.mktemp("lmeval")
    ckpt = run["ckpts"] / "step_000012"
    docs = read_heldout(run["heldout_jsonl"], max_docs_per_source=MAX_DOCS)
    tasks_dir = tmp / "tasks"
    made = make_tasks(docs, tasks_dir, seed=1, num_fewshot=2)
    # A task whose few-shot examples come from its own test split (lm-eval then excludes the test doc).
    ns = (made["heldout_next_sentence"] / "test.jsonl").read_text().splitlines()[:12]
    write_mc_task(tasks_dir, "own_split", [json.loads(x) for x in ns], None, num_fewshot=3)
    cfg = EvalConfig(device="cpu", prompts=[], report=False, batch_size=8, max_docs_per_source=MAX_DOCS)
    ours = score_checkpoint(
        ckpt, heldout=run["heldout_jsonl"], tasks_dir=tasks_dir, out_dir=tmp / "out", cfg=cfg
    )
    hf_dir = export_checkpoint(ckpt, tmp / "hf")
    eos = load_tokenizer(run["tok"]).eos_id
    names = sorted(made) + ["own_split"]
    res = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={hf_dir},dtype=float32,prefix_token_id={eos},device_map=cpu",
        tasks=names,
        task_manager=TaskManager(include_path=str(tasks_dir)),
        batch_size=8,
        device="cpu",
    )
    return {(r["task"], r["metric"]): r["value"] for r in ours}, res["results"], docs, hf_dir


@pytest.mark.slow
def test_bits_per_byte_equals_lm_eval(compared):
    ours, theirs, docs, _ = compared
    for source in sorted({d["source"] for d in docs}):
        t = theirs[f"heldout_lm_{source}"]
        for metric in ("bits_per_byte", "byte_perplexity", "word_perplexity"):
            assert math.isclose(ours[(f"heldout/{source}", metric)], t[f"{metric},none"], rel_tol=1e-3), (
                source,
                metric,
            )
        assert abs(ours[(f"heldout/{source}", "bits_per_byte")] - t["bits_per_byte,none"]) < 1e-3


@pytest.mark.slow
def test_multiple_choice_accuracies_equal_lm_eval(compared):
    ours, theirs, _, _ = compared
    for task in ("heldout_next_sentence", "heldout_cloze", "own_split"):
        for metric in ("acc", "acc_norm", "acc_bytes"):
            assert abs(ours[(task, metric)] - theirs[task][f"{metric},none"]) < 1e-3, (task, metric)
    # Not a degenerate comparison: the tasks have a few dozen documents and the scores vary.
    assert theirs["heldout_next_sentence"]["sample_len"] >= 15
    assert len({ours[(t, "acc_norm")] for t in ("heldout_next_sentence", "heldout_cloze", "own_split")}) > 1


@pytest.mark.slow
def test_greedy_generation_equals_transformers_generate(run, compared):
    from transformers import AutoModelForCausalLM

    from eval.checkpoint import load_checkpoint_model
    from eval.generate import generate_ids
    from pretrain.core.tokenizer_file import load_tokenizer

    hf_dir = compared[3]
    tok = load_tokenizer(run["tok"])
    ours = load_checkpoint_model(run["ckpts"] / "step_000012").model
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    for prompt in ("The", "Return a new"):
        ids = [tok.eos_id] + tok.encode(prompt)
        mine = generate_ids(ours, ids, 20, eos_id=None)
        out = hf.generate(
            torch.tensor([ids]), max_new_tokens=20, do_sample=False, eos_token_id=None, min_new_tokens=20
        )
        assert mine == out[0, len(ids) :].tolist()


@pytest.mark.slow
def test_fsdp2_sharded_checkpoint_loads_and_exports_on_cpu(run, tmp_path):
    """Two gloo processes train with FSDP2 (one DCP shard file per rank); this process, without a
    process group or GPU, loads the full weights and exports them."""
    import shutil
    import subprocess

    from eval.checkpoint import load_checkpoint_model
    from eval.export import export_checkpoint
    from pretrain.core.tokenizer_file import load_tokenizer
    from tests.test_eval import _hf_logits_equal

    if (
        shutil.which("unshare") is None
        or subprocess.run(
            ["unshare", "--net", "sh", "-c", "ip link set lo up"], capture_output=True
        ).returncode
    ):
        pytest.skip("needs `unshare --net` to keep torchrun's rendezvous on loopback")
    repo = Path(__file__).resolve().parent.parent
    run_dir = tmp_path / "fsdp"
    cmd = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", sys.executable, "-m"]
    cmd += ["torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "trainer", "train"]
    cmd += [
        "--config",
        str(run["run"] / "config.yaml"),
        f"run_dir={run_dir}",
        "parallel=fsdp2",
        "max_steps=4",
    ]
    cmd += ["curriculum.phases.0.micro_batch_size=8"]
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", PYTHONPATH=str(repo))
    res = subprocess.run(cmd, env=env, cwd=repo, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    sharded = run_dir / "checkpoints" / "step_000004"
    assert sorted(p.name for p in sharded.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    loaded = load_checkpoint_model(sharded).model.state_dict()
    single = load_checkpoint_model(run["ckpts"] / "step_000004").model.state_dict()
    for k, v in single.items():  # same data and steps in one process: the same weights
        torch.testing.assert_close(loaded[k], v, atol=1e-4, rtol=1e-3)
    out = export_checkpoint(sharded, tmp_path / "hf")
    _hf_logits_equal(sharded, out, load_tokenizer(run["tok"]).vocab_size)


@pytest.mark.slow
def test_watch_beside_a_training_process(run, tmp_path):
    """`pretrain train` in a subprocess saves checkpoints while watch polls: each is scored once, none
    is read half-written."""
    import subprocess

    from eval.config import EvalConfig
    from eval.results import RESULTS, read_rows
    from eval.watch import watch

    repo = Path(__file__).resolve().parent.parent
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "trainer", "train", "--config", str(run["run"] / "config.yaml")]
    cmd += [f"run_dir={run_dir}", slow_steps(0.3)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(repo))
    trainer = subprocess.Popen(cmd, env=env, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        cfg = EvalConfig(
            heldout=str(run["heldout_jsonl"]), max_docs_per_source=2, tasks=None, prompts=[], device="cpu"
        )
        scored = watch(run_dir, cfg, interval_s=0.1, until_step=12, timeout_s=240)
    finally:
        _, err = trainer.communicate(timeout=240)
    assert trainer.returncode == 0, err[-2000:]
    assert scored == [4, 8, 12]
    rows = read_rows(run_dir / "eval" / RESULTS)
    assert [r["step"] for r in rows if r["metric"] == "bits_per_byte" and r["task"] == "heldout/all"] == [
        4,
        8,
        12,
    ]
