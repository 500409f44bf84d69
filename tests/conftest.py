"""Shared fixtures: one local Ray per test session (loopback only), the generated tiny corpus."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keep Ray on 127.0.0.1
# Nothing may download at run time: transformers / lm-eval / datasets fail instead of reaching a hub
# (subprocesses inherit these).
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"
sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def ray_local():
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            configure_logging=False,
            log_to_driver=False,
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    from data_pipeline.corpus import generate_corpus

    out = tmp_path_factory.mktemp("corpus")
    generate_corpus(out, seed=0)
    return out


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """A smaller corpus for tests that run the pipeline several times (kill/resume)."""
    from data_pipeline.corpus import generate_corpus

    out = tmp_path_factory.mktemp("small_corpus")
    generate_corpus(out, seed=1, num_base_docs=300)
    return out


@pytest.fixture(scope="session")
def data_run(tiny_corpus, ray_local, tmp_path_factory) -> dict:
    """The whole data pipeline once over the tiny corpus, read back by document id."""
    from data_pipeline.executor import run_pipeline
    from data_pipeline.groundtruth import load_truth, read_outputs
    from tests.pipeline_helpers import pipeline_config

    out = tmp_path_factory.mktemp("data_run")
    stats = run_pipeline(pipeline_config(tiny_corpus, out))
    kept, rejected = read_outputs(out)
    return {"out": out, "stats": stats, "kept": kept, "rejected": rejected, "truth": load_truth(tiny_corpus)}
