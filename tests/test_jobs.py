"""`pretrain run`'s jobs without running them: the records folder of a run made before "stage"
became "job" is adopted, and --dry-run lists every job's state."""

from __future__ import annotations

import json
from pathlib import Path

from pretrain.jobs import JOBS, Run, RunConfig, build_jobs
from pretrain.run import main

REPO = Path(__file__).resolve().parent.parent


def test_old_stages_records_are_renamed_to_jobs_on_open(tmp_path):
    old = tmp_path / "run" / "stages"
    old.mkdir(parents=True)
    (old / "corpus.json").write_text(json.dumps({"stage": "corpus", "status": "done", "key": "k"}))
    run = Run(RunConfig(run_dir=str(tmp_path / "run")))
    assert run.records == tmp_path / "run" / "jobs" and not old.exists()
    assert run.record("corpus")["status"] == "done"
    # A run that already has jobs/ keeps it; a stray stages/ is left alone.
    old.mkdir()
    Run(RunConfig(run_dir=str(tmp_path / "run")))
    assert old.is_dir() and (tmp_path / "run" / "jobs" / "corpus.json").exists()


def test_dry_run_lists_every_job(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert [j.name for j in build_jobs()] == JOBS
    assert main([str(REPO / "configs" / "run_tiny.yaml"), f"run_dir={run_dir}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[1] for line in out.splitlines() if line.startswith("# ")] == JOBS
    assert "# corpus     not run" in out and not (run_dir / "jobs").exists()
