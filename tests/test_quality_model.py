"""The fastText quality classifier: trained on the standard library's prose (documents we want)
against Faker's word salad and Python source (documents we do not), measured on its held-out split;
the `quality_model` stage writes metadata.quality_score on every document and drops below a
threshold; MinHash keeps the higher-scoring copy of a near-duplicate pair.
"""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest

from data_pipeline.document import Doc, Reject
from data_pipeline.quality_classifier import TrainQualityConfig, train_quality_model
from data_pipeline.stages.quality_model import QualityModelConfig
from pretrain.core.config import ConfigError


def _write(path: Path, texts: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    from faker import Faker

    from data_pipeline.corpus import base_texts

    root = tmp_path_factory.mktemp("qmodel")
    prose = [t for _, t in base_texts()]
    fake = Faker("en_US")
    fake.seed_instance(5)
    salad = [fake.text(max_nb_chars=600) for _ in range(250)]  # sentences of random words
    lib = Path(sysconfig.get_paths()["stdlib"])
    code = [p.read_text(errors="replace")[:1500] for p in sorted(lib.glob("*.py"))[:250]]
    return {
        "root": root,
        "pos": _write(root / "pos.jsonl", prose[:500]),
        "neg": _write(root / "neg.jsonl", salad + code),
        "prose_rest": prose[500:],
        "junk_rest": [fake.text(max_nb_chars=600) for _ in range(50)],
    }


@pytest.fixture(scope="module")
def model_dir(data) -> Path:
    out = data["root"] / "model"
    train_quality_model([str(data["pos"])], [str(data["neg"])], out, TrainQualityConfig())
    return out


def test_training_reports_heldout_precision_and_recall_and_is_reproducible(data, model_dir, tmp_path):
    report = json.loads((model_dir / "report.json").read_text())
    assert (model_dir / "model.bin").is_file()
    n = min(len(data["pos"].read_text().splitlines()), len(data["neg"].read_text().splitlines()))
    k = round(n * 0.1)  # balanced classes, a tenth of each held out
    assert n >= 300 and report["num_heldout"] == 2 * k and report["num_train"] == 2 * (n - k)
    assert report["precision"] >= 0.95 and report["recall"] >= 0.95, report
    again = train_quality_model([str(data["pos"])], [str(data["neg"])], tmp_path / "m2", TrainQualityConfig())
    assert again["heldout_score_quantiles"] == report["heldout_score_quantiles"]


def test_stage_scores_every_document_and_drops_below_the_threshold(data, model_dir):
    stage = QualityModelConfig(enabled=True, model=str(model_dir)).build()
    good = [
        stage.process(Doc(id=str(i), text=t, source="web")) for i, t in enumerate(data["prose_rest"][:50])
    ]
    bad = [stage.process(Doc(id=str(i), text=t, source="web")) for i, t in enumerate(data["junk_rest"])]
    scores_good = [d.metadata["quality_score"] for d in good]
    scores_bad = [d.metadata["quality_score"] for d in bad]
    assert all(0.0 <= s <= 1.0 for s in scores_good + scores_bad)
    assert sum(s >= 0.5 for s in scores_good) >= 45 and sum(s < 0.5 for s in scores_bad) >= 45
    strict = QualityModelConfig(enabled=True, model=str(model_dir), threshold=0.5).build()
    out = strict.process(Doc(id="x", text=data["junk_rest"][0], source="web"))
    assert isinstance(out, Reject) and out.reason == "low_quality_score" and out.detail.endswith("< 0.5")


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="quality_model.model"):
        QualityModelConfig(enabled=True)
    with pytest.raises(ConfigError, match="quality_model.threshold"):
        QualityModelConfig(enabled=True, model="m", threshold=1.5)
    with pytest.raises(FileNotFoundError, match="train-quality"):
        QualityModelConfig(enabled=True, model=str(tmp_path)).build()


@pytest.mark.slow
def test_pipeline_scores_every_kept_document_and_minhash_keeps_the_better_copy(
    data, model_dir, ray_local, tmp_path
):
    """Through the chain: quality_score on every kept document, the classifier's held-out figures in
    summary.md; then MinHash: of two near-duplicates, the one without the appended word salad
    (higher score) survives, whatever their ids say."""
    from data_pipeline.config import load_pipeline_config
    from data_pipeline.executor import run_pipeline
    from data_pipeline.groundtruth import read_outputs
    from data_pipeline.minhash.dedup import load_minhash_config, run_minhash_dedup

    base = data["prose_rest"][60]
    worse = base + " " + data["junk_rest"][1][:120]
    docs = [{"id": "a-worse", "text": worse}, {"id": "b-better", "text": base}]
    docs += [{"id": f"other-{i}", "text": t} for i, t in enumerate(data["prose_rest"][61:81])]
    raw = _write(tmp_path / "raw" / "web" / "part-0.jsonl", [d["text"] for d in docs])
    overrides = [f"input.paths=[{raw.parent.parent}]", f"output_dir={tmp_path / 'data'}", "progress=false",
                 "quality_model.enabled=true", f"quality_model.model={model_dir}", "language.enabled=false",
                 "quality.enabled=false", "toxicity.enabled=false"]  # fmt: skip
    run_pipeline(load_pipeline_config(None, overrides))
    kept, _ = read_outputs(tmp_path / "data")
    assert len(kept) == len(docs) and all("quality_score" in d["metadata"] for d in kept.values())
    summary = (tmp_path / "data" / "summary.md").read_text()
    assert "## Quality classifier" in summary and "precision" in summary
    scores = {d["text"]: d["metadata"]["quality_score"] for d in kept.values()}
    assert scores[base] > scores[worse]
    mh = load_minhash_config(None, [f"input_dir={tmp_path / 'data'}", f"output_dir={tmp_path / 'mh'}",
                                    "progress=false", "minhash.threshold=0.5"])  # fmt: skip
    run_minhash_dedup(mh)
    kept2, rejected2 = read_outputs(tmp_path / "mh")
    texts = {d["text"] for d in kept2.values()}
    assert base in texts and worse not in texts
    (removed,) = [r for r in rejected2.values() if r["text"] == worse]
    assert removed["reason"] == "near_duplicate"


def test_train_quality_command(data, tmp_path):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "data_pipeline", "train-quality", "--positive", str(data["pos"]),
           "--negative", str(data["neg"]), "--out", str(tmp_path / "m"), "epochs=3", "dim=8"]  # fmt: skip
    res = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads((tmp_path / "m" / "report.json").read_text())
    assert report["config"]["epochs"] == 3 and report["config"]["dim"] == 8
    assert f"precision {report['precision']:.3f}" in res.stdout
    bad = subprocess.run(cmd[:-2] + ["epochs=0"], cwd=repo, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "epochs=0" in bad.stderr
