"""Stages on an object store: the tiny data chain reads its corpus from a real S3-compatible server
(moto's server mode, started here on 127.0.0.1, spoken to over HTTP by s3fs exactly as AWS would
be) and writes every stage there: `pretrain data run` -> `pretrain data minhash` -> the held-out
split -> the tokenizer (trained on the split's train side there) -> `pretrain tokenizer encode`.
Each stage's shards must equal, byte for byte, those the same chain writes on local disk (the same
commands, called in this process on the session's Ray rather than a Ray started and stopped per
stage); a data stage killed with SIGKILL mid-stage resumes on the store without redoing finished
tasks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.pipeline_helpers import REPO

pytestmark = pytest.mark.slow
BUCKET = "pretrain-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A local S3 server, the environment that points clients at it, and an s3fs client."""
    moto_server = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    assert host == "127.0.0.1"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "PRETRAIN_WORK_ROOT": str(tmp_path_factory.mktemp("work_root")),
    }
    mp = pytest.MonkeyPatch()
    for k, v in env.items():
        mp.setenv(k, v)
    fs = s3fs.S3FileSystem(
        key="testing", secret="testing", endpoint_url=env["AWS_ENDPOINT_URL"], use_listings_cache=False
    )
    fs.mkdir(BUCKET)
    yield env, fs
    mp.undo()
    server.stop()


CWD = None  # each test's own empty folder: a URL mistaken for a local path (`s3:/...`) would land here


def _env(extra: dict) -> dict:
    env = os.environ | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONPATH": str(REPO), **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def _data_args(inp: str, out: str, *extra: str) -> list[str]:
    return [
        "run", "--config", str(REPO / "configs" / "data_tiny.yaml"),
        f"input.paths=[{inp}]", f"output_dir={out}", "progress=false", "partition_by_language=true", *extra,
    ]  # fmt: skip


def _data_cmd(inp: str, out: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "data_pipeline", *_data_args(inp, out, *extra)]


SPLIT = (
    "import sys; from data_pipeline.split import split_heldout; "
    "split_heldout(sys.argv[1], sys.argv[2], 0.1, 2, 0)"
)


def _chain_steps(root: str, corpus: str, tok: Path) -> list[tuple[str, list[str]]]:
    """(program, arguments): data -> minhash -> split -> tokenizer -> encode, every stage under
    `root` (a folder or URL)."""
    return [
        ("data_pipeline", _data_args(corpus, f"{root}/data")),
        ("data_pipeline", ["minhash", "--input", f"{root}/data", "--output", f"{root}/dedup",
                           "progress=false"]),
        ("split", [f"{root}/dedup", f"{root}/split"]),
        ("tokenizer", ["train", "--input", f"{root}/split/train", "--out", str(tok),
                       "--config", str(REPO / "configs" / "tokenizer_tiny.yaml"), "vocab_size=512"]),
        ("tokenizer", ["encode", "--input", f"{root}/split/train", "--tokenizer", str(tok),
                       "--output", f"{root}/tokens", "progress=false"]),
    ]  # fmt: skip


def _chain(root: str, corpus: str, tok: Path, env: dict) -> None:
    """The chain as a user runs it: each stage its own process, with its own local Ray."""
    for prog, args in _chain_steps(root, corpus, tok):
        head = ["-c", SPLIT] if prog == "split" else ["-m", prog]
        cmd = [sys.executable, *head, *args]
        res = subprocess.run(cmd, env=_env(env), cwd=CWD, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, f"{cmd}\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}"


def _chain_here(root: str, corpus: str, tok: Path) -> None:
    """The same commands called in this process, on the session's Ray (`ray_local`): the same
    configs and inputs, so the same bytes, without a Ray started and stopped for each stage."""
    from data_pipeline.cli import main as data_main
    from data_pipeline.split import split_heldout
    from tokenizer.cli import main as tokenizer_main

    for prog, args in _chain_steps(root, corpus, tok):
        if prog == "split":
            split_heldout(args[0], args[1], 0.1, 2, 0)  # as SPLIT
        else:
            assert {"data_pipeline": data_main, "tokenizer": tokenizer_main}[prog](args) == 0, args


def _read_json(fs, path: str):
    if path.startswith("s3://"):
        return json.loads(fs.cat(path[len("s3://") :]))
    return json.loads(Path(path).read_text())


def _shards(fs, stage: str) -> list[tuple]:
    """(path, rows, sha256) of every document shard a stage's manifest lists."""
    return [(e["path"], e["rows"], e["sha256"]) for e in _read_json(fs, f"{stage}/manifest.json")["shards"]]


def test_tiny_chain_on_s3_equals_local_disk_and_resumes_after_kill(s3, small_corpus, ray_local, tmp_path):
    global CWD
    env, fs = s3
    CWD = tmp_path / "cwd"
    CWD.mkdir()
    fs.put(str(small_corpus / "raw"), f"{BUCKET}/corpus/raw", recursive=True)
    url = f"s3://{BUCKET}/runs"
    _chain_here(str(tmp_path / "local"), str(small_corpus / "raw"), tmp_path / "tok_local")
    _chain(url, f"s3://{BUCKET}/corpus/raw", tmp_path / "tok_s3", env)

    # Every stage's shards, byte for byte, and its counts, as on local disk.
    for stage in ("data", "dedup", "split/train", "split/heldout"):
        local, remote = _shards(fs, f"{tmp_path}/local/{stage}"), _shards(fs, f"{url}/{stage}")
        assert local and remote == local, stage
        for path, _, sha in remote:  # the objects are what the manifest says
            assert fs.info(f"{BUCKET}/runs/{stage}/shards/{path}")["size"] > 0
            assert (
                __import__("hashlib").sha256(fs.cat(f"{BUCKET}/runs/{stage}/shards/{path}")).hexdigest()
                == sha
            )
    local_stats = _read_json(fs, f"{tmp_path}/local/data/stats.json")
    remote_stats = _read_json(fs, f"{url}/data/stats.json")
    for key in ("num_in", "num_kept", "num_rejected", "stages"):
        assert remote_stats[key] == local_stats[key], key
    assert (tmp_path / "tok_s3" / "tokenizer.json").read_bytes() == (
        tmp_path / "tok_local" / "tokenizer.json"
    ).read_bytes()
    tokens = [_read_json(fs, f"{r}/tokens/manifest.json") for r in (f"{tmp_path}/local", url)]
    assert [(e["path"], e["sha256"]) for e in tokens[1]["shards"]] == [
        (e["path"], e["sha256"]) for e in tokens[0]["shards"]
    ]
    assert tokens[1]["num_tokens"] == tokens[0]["num_tokens"] > 0
    from pretrain.core.storage import work_dir  # noqa: I001  (after the env points at the server)

    # Each stage finished: its record written last, its work folder (local, under PRETRAIN_WORK_ROOT) removed.
    for stage in ("data", "dedup"):
        assert fs.exists(f"{BUCKET}/runs/{stage}/done.json")
        assert not fs.exists(f"{BUCKET}/runs/{stage}/_work")
        assert not work_dir(f"{url}/{stage}").exists()

    # A rerun finds every stage finished from its record on the store and rewrites nothing.
    before = {p: fs.info(p)["LastModified"] for p in fs.find(f"{BUCKET}/runs/data")}
    res = subprocess.run(_data_cmd(f"s3://{BUCKET}/corpus/raw", f"{url}/data"), env=_env(env), cwd=CWD,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert {p: fs.info(p)["LastModified"] for p in fs.find(f"{BUCKET}/runs/data")} == before

    # kill -9 mid-stage (driver and its local Ray), then resume on the store.
    out = f"{url}/killed"
    work = work_dir(out)
    cmd = _data_cmd(f"s3://{BUCKET}/corpus/raw", out, "ray.max_in_flight=1", "--keep-work")
    proc = subprocess.Popen(
        cmd,
        env=_env(env),
        cwd=CWD,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not list((work / "chain").glob("*.done.json")):
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not fs.exists(f"{BUCKET}/runs/killed/manifest.json")
    finished = {p: p.stat().st_mtime_ns for p in work.rglob("*.done.json")}
    res = subprocess.run(cmd, env=_env(env), cwd=CWD, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    assert finished and all(p.stat().st_mtime_ns == t for p, t in finished.items()), (
        "finished tasks were redone"
    )
    assert _shards(fs, out) == _shards(fs, f"{url}/data")
    listed = {f"shards/{e['path']}" for e in _read_json(fs, f"{out}/manifest.json")["shards"]}
    on_store = {p.split("/killed/", 1)[1] for p in fs.find(f"{BUCKET}/runs/killed/shards")}
    assert on_store == listed  # nothing half-written or left over
    assert not any(CWD.iterdir()), "a URL was written as a local path"
