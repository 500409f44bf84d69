"""Decontamination against eval sets: every planted eval item, and its variants with up to 10% of
words changed or a large part quoted, is found and named by task; nothing else is, on the tiny
corpus and on this machine's prose (the standard library's docstrings). Eval items are written by
Faker (sentences nobody here wrote), as a `pretrain eval` task directory and as an lm-eval task
YAML with Jinja templates over local data.
"""

from __future__ import annotations

import json
import random

import pytest
import yaml

from data_pipeline.document import Doc, Reject
from data_pipeline.stages.decontaminate import DecontaminateConfig, load_eval_items, normalize_words
from pretrain.core.config import ConfigError

NUM_ITEMS = 40


@pytest.fixture(scope="module")
def eval_sets(tmp_path_factory) -> dict:
    from faker import Faker

    fake = Faker("en_US")
    fake.seed_instance(11)
    root = tmp_path_factory.mktemp("evalsets")
    # A pretrain-eval multiple-choice task directory: {context, choices, gold}.
    mc = root / "tasks" / "trivia_mc"
    mc.mkdir(parents=True)
    mc_rows = [
        {"context": fake.paragraph(nb_sentences=3, variable_nb_sentences=False), "gold": 1,
         "choices": [fake.sentence(nb_words=6), fake.sentence(nb_words=6)]}
        for _ in range(NUM_ITEMS)
    ]  # fmt: skip
    (mc / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mc_rows))
    # An lm-eval task written the way lm-eval's are: Jinja templates, local data files.
    qa = root / "lmeval" / "reading_qa"
    qa.mkdir(parents=True)
    qa_rows = [{"passage": fake.paragraph(nb_sentences=8, variable_nb_sentences=False),
                "question": fake.sentence(nb_words=8), "answer": fake.word()} for _ in range(NUM_ITEMS)]  # fmt: skip
    (qa / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in qa_rows))
    (qa / "reading_qa.yaml").write_text(
        yaml.safe_dump(
            {
                "task": "reading_qa",
                "dataset_path": "json",
                "dataset_kwargs": {"data_files": {"test": str(qa / "test.jsonl")}},
                "test_split": "test",
                "output_type": "generate_until",
                "doc_to_text": "{{passage}}\nQuestion: {{question}}\nAnswer:",
                "doc_to_target": "{{answer}}",
            }
        )
    )
    return {"paths": [str(root / "tasks"), str(qa / "reading_qa.yaml")], "mc": mc_rows, "qa": qa_rows}


def _change_words(text: str, fraction: float, rng: random.Random) -> str:
    """Replace floor(fraction * words) of the text's words by other words, spread out."""
    words = text.split()
    k = int(fraction * len(normalize_words(text)))
    for i in rng.sample(range(len(words)), k):
        tail = words[i][len(words[i].rstrip(".,;:!?")) :]
        words[i] = f"zqxw{chr(97 + i % 26)}{tail}"  # one word for another (no digits), punctuation kept
    return " ".join(words)


def _planted(eval_sets: dict, hosts: list[str]) -> list[tuple[str, str, str]]:
    """(document text, how, task) with an eval item inside a host document of ordinary prose."""
    rng = random.Random(3)
    out = []
    for i, row in enumerate(eval_sets["mc"]):
        item = f"{row['context']} {row['choices'][row['gold']]}"
        variant = [item, _change_words(item, 0.1, rng)][i % 2]
        how = ["exact", "10% changed"][i % 2]
        out.append((f"{hosts[i]}\n\n{variant}\n\n{hosts[i + 1]}", how, "trivia_mc"))
    for i, row in enumerate(eval_sets["qa"]):
        passage = row["passage"]
        quoted = " ".join(passage.split()[: len(passage.split()) // 2])  # half of the passage
        variant = [passage, _change_words(passage, 0.1, rng), quoted][i % 3]
        how = ["exact", "10% changed", "half quoted"][i % 3]
        out.append((f"{hosts[-i - 1]} {variant}", how, "reading_qa"))
    return out


@pytest.fixture(scope="module")
def hosts() -> list[str]:
    from data_pipeline.corpus import base_texts

    return [t for _, t in base_texts()]


def test_every_planted_item_and_variant_is_found_and_named(eval_sets, hosts):
    stage = DecontaminateConfig(enabled=True, paths=eval_sets["paths"]).build()
    planted = _planted(eval_sets, hosts)
    for text, how, task in planted:
        out = stage.process(Doc(id="x", text=text, source="web"))
        assert isinstance(out, Reject) and out.reason == "contaminated", (how, task, text[-200:])
        assert task in out.detail, (how, out.detail)
    assert {how for _, how, _ in planted} == {"exact", "10% changed", "half quoted"}


def test_nothing_else_is_found_in_real_prose(eval_sets, hosts):
    stage = DecontaminateConfig(enabled=True, paths=eval_sets["paths"]).build()
    assert len(hosts) > 500
    flagged = [t[:80] for t in hosts if isinstance(stage.process(Doc(id="x", text=t, source="web")), Reject)]
    assert flagged == []


def test_tag_action_keeps_the_document_and_names_the_tasks(eval_sets, hosts):
    stage = DecontaminateConfig(enabled=True, paths=eval_sets["paths"], action="tag").build()
    text, _, task = _planted(eval_sets, hosts)[0]
    out = stage.process(Doc(id="x", text=text, source="web"))
    assert isinstance(out, Doc) and out.metadata["contaminated"] == [task]


def test_items_come_from_task_dirs_and_jinja_yamls(eval_sets):
    items = load_eval_items(eval_sets["paths"])
    by_task: dict[str, int] = {}
    for it in items:
        by_task[it.task] = by_task.get(it.task, 0) + 1
    # MC: prompt + gold choice per row; the Jinja YAML: every string field of each row.
    assert by_task == {"trivia_mc": NUM_ITEMS, "reading_qa": 3 * NUM_ITEMS}
    mc0 = eval_sets["mc"][0]
    assert items[0].text == f"{mc0['context']} {mc0['choices'][1]}" and items[0].where == "test.jsonl:1"


def test_bad_eval_sets_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="decontaminate.paths"):
        DecontaminateConfig(enabled=True, paths=[])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DecontaminateConfig(enabled=True, paths=[str(tmp_path / "nope")]).build()
    hub = tmp_path / "hub.yaml"
    hub.write_text(yaml.safe_dump({"task": "hellaswag", "dataset_path": "Rowan/hellaswag"}))
    with pytest.raises(ValueError, match=f"{hub}: dataset_path='Rowan/hellaswag'"):
        DecontaminateConfig(enabled=True, paths=[str(hub)]).build()


@pytest.mark.slow
def test_pipeline_drops_exactly_the_planted_documents(eval_sets, hosts, tiny_corpus, ray_local, tmp_path):
    """The tiny corpus plus a file of planted documents through the chain with decontamination on:
    rejects with reason `contaminated` are exactly the planted documents, each naming its task."""
    from data_pipeline.executor import run_pipeline
    from data_pipeline.groundtruth import read_outputs
    from tests.pipeline_helpers import pipeline_config

    raw = tmp_path / "raw"
    (raw / "planted").mkdir(parents=True)
    planted = _planted(eval_sets, hosts)
    rows = [{"text": t, "how": how, "task": task} for t, how, task in planted]
    (raw / "planted" / "part-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for src in (tiny_corpus / "raw").iterdir():
        (raw / src.name).symlink_to(src)
    cfg = pipeline_config(
        tmp_path, tmp_path / "out", "decontaminate.enabled=true",
        f"decontaminate.paths={json.dumps(eval_sets['paths'])}",
        # only the stages that read the text before decontamination can remove a planted document first
        "quality.gopher_quality.enabled=false", "quality.gopher_repetition.enabled=false",
        "quality.c4.enabled=false", "quality.fineweb.enabled=false", "language.enabled=false",
    )  # fmt: skip
    stats = run_pipeline(cfg)
    kept, rejected = read_outputs(tmp_path / "out")
    contaminated = {i: r for i, r in rejected.items() if r["reason"] == "contaminated"}
    assert sorted(contaminated) == sorted(f"planted/part-0.jsonl:{n}" for n in range(1, len(rows) + 1))
    for doc_id, r in contaminated.items():
        row = rows[int(doc_id.rsplit(":", 1)[1]) - 1]
        assert r["stage"] == "decontaminate" and row["task"] in r["detail"], (row["how"], r["detail"])
    assert stats["stages"]["decontaminate"]["reasons"] == {"contaminated": len(rows)}


def test_pretrain_run_decontaminates_against_the_eval_tasks_it_scores(eval_sets, tmp_path):
    """In `pretrain run`, data.decontaminate.enabled with no paths reads eval.tasks (the task
    directory the run's eval scores); explicit paths win; off by default."""
    from pretrain.jobs import Run, RunConfig, pipeline_config

    tasks = eval_sets["paths"][0]

    def cfg(data: dict, eval_: dict):
        return pipeline_config(Run(RunConfig(run_dir=str(tmp_path / "run"), data=data, eval=eval_)))

    assert cfg({"decontaminate": {"enabled": True}}, {"tasks": tasks}).decontaminate.paths == [tasks]
    explicit = eval_sets["paths"][1]
    on = {"decontaminate": {"enabled": True, "paths": [explicit]}}
    assert cfg(on, {"tasks": tasks}).decontaminate.paths == [explicit]
    assert cfg({}, {"tasks": tasks}).decontaminate.enabled is False
    with pytest.raises(ConfigError, match="decontaminate.paths"):
        cfg({"decontaminate": {"enabled": True}}, {"tasks": "auto"})
