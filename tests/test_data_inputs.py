"""Every stage takes the same inputs (stage directories, files, folders, globs; one clear line for
anything else), done records carry a content fingerprint, and `_work/` goes once a stage is done
(kept with keep_work) while a rerun still finds it finished and does nothing."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import data_pipeline.executor as executor
import data_pipeline.minhash.dedup as dedup
from data_pipeline.cli import main
from data_pipeline.config import load_pipeline_config
from data_pipeline.executor import run_pipeline
from data_pipeline.groundtruth import read_outputs
from data_pipeline.inputs import stage_dir_of_inputs
from data_pipeline.minhash.dedup import load_minhash_config, run_minhash_dedup
from data_pipeline.readers import InputConfig, InputError, scan_inputs
from data_pipeline.split import split_heldout
from pretrain.core.done import STAGE_DONE, load_done, output_fingerprints
from pretrain.core.files import atomic_path, write_json
from pretrain.core.hashing import SAMPLE_BYTES, file_fingerprint, fingerprint_matches
from pretrain.core.runner import RayConfig
from tests.pipeline_helpers import REPO
from tests.test_tokenizer import tiny_cfg
from tokenizer.config import TokenizerEncodeConfig
from tokenizer.encode import run_encode
from tokenizer.train import train_tokenizer

# Real prose nobody here wrote: the docstrings of the standard library (present wherever Python is).
STDLIB = ("json", "argparse", "collections", "pathlib", "subprocess", "logging", "inspect", "functools")


def _shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    words = text.split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _stdlib_paragraphs(min_words: int = 40) -> list[str]:
    """Docstrings of at least `min_words`, none near another (json.dump and json.dumps say almost
    the same: only the first is taken)."""
    texts, seen = [], []
    for name in STDLIB:
        module = __import__(name)
        for _, obj in sorted(inspect.getmembers(module)):
            doc = inspect.getdoc(obj) if callable(obj) else None
            if not doc or len(doc.split()) < min_words:
                continue
            sh = _shingles(doc)
            if all(len(sh & other) / len(sh | other) < 0.2 for other in seen):
                texts.append(doc)
                seen.append(sh)
    return texts


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> dict:
    """raw/web.jsonl: stdlib docstrings, near duplicates of some (one word changed), a malformed
    line and a record without text."""
    texts = _stdlib_paragraphs()
    assert len(texts) >= 40, len(texts)
    base = texts[:40]
    rows = [{"text": t} for t in base]
    planted = []
    for i in range(0, 40, 5):  # 8 near duplicates, planted after their originals
        words = base[i].split()
        words[len(words) // 2] = "CHANGED"
        rows.append({"text": " ".join(words)})
        planted.append(i)
    root = tmp_path_factory.mktemp("raw")
    lines = [json.dumps(r) for r in rows] + ["{not json", json.dumps({"body": "no text field"})]
    (root / "raw").mkdir()
    (root / "raw" / "web.jsonl").write_text("\n".join(lines) + "\n")
    return {
        "dir": root / "raw",
        "file": root / "raw" / "web.jsonl",
        "num_rows": len(lines),
        "planted": planted,
    }


def _minhash(inputs: list[str], out: Path, *overrides: str) -> dict:
    paths = json.dumps([str(p) for p in inputs])
    cfg = load_minhash_config(
        None, [f"input.paths={paths}", f"output_dir={out}", "progress=false", *overrides]
    )
    return run_minhash_dedup(cfg)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env, timeout=120)


def _mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted(out.rglob("*"))}


# --- inputs ---------------------------------------------------------------------------------------


def test_missing_or_unreadable_input_fails_with_one_line_naming_it(tmp_path):
    (tmp_path / "binary.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    missing, binary = tmp_path / "nonexistent", tmp_path / "binary.bin"
    res = _cli("data_pipeline", "minhash", "--input", str(missing), "--output", str(tmp_path / "o"))
    assert (res.returncode, res.stderr) == (1, f"error: input path {missing} does not exist\n"), res.stderr
    res = _cli("data_pipeline", "minhash", "--input", str(binary), "--output", str(tmp_path / "o"))
    assert res.returncode == 1 and len(res.stderr.splitlines()) == 1, res.stderr
    assert res.stderr.startswith(f"error: input file {binary} cannot be read: binary file (suffix '.bin'")
    res = _cli(
        "data_pipeline", "quality", "--input", str(tmp_path / "*.jsonl"), "--output", str(tmp_path / "q")
    )
    assert (res.returncode, res.stderr) == (1, f"error: input glob {tmp_path / '*.jsonl'} matches no file\n")
    assert not (tmp_path / "o").exists() and not (tmp_path / "q").exists()
    # the split and the encoder resolve their input with the same function and say the same
    with pytest.raises(InputError, match=f"^input path {missing} does not exist$"):
        split_heldout(missing, tmp_path / "split", 0.1, 1, 0)
    with pytest.raises(InputError, match=f"^input file {binary} cannot be read: binary file"):
        scan_inputs(InputConfig(paths=[str(binary)]))
    # a stage killed midway (shards/ but no manifest.json) is refused, not read as raw Parquet files
    (tmp_path / "half" / "shards").mkdir(parents=True)
    (tmp_path / "half" / "shards" / "a.parquet").write_bytes(b"PAR1")
    with pytest.raises(InputError, match=f"^input {tmp_path / 'half'} has shards/ but no manifest.json"):
        stage_dir_of_inputs(InputConfig(paths=[str(tmp_path / "half")]), tmp_path / "w", RayConfig())


def test_minhash_on_a_file_a_folder_or_a_glob_keeps_the_same_ids(raw, ray_local, tmp_path):
    stats = _minhash([raw["file"]], tmp_path / "file")
    kept, rejected = read_outputs(tmp_path / "file")
    near = {i for i, r in rejected.items() if r["reason"] == "near_duplicate"}
    # ids are positional (relpath:line): each planted copy sits after the 40 originals; of a pair,
    # the smaller id (as a string) survives
    pairs = [(f"web.jsonl:{i + 1}", f"web.jsonl:{41 + k}") for k, i in enumerate(raw["planted"])]
    assert {i: rejected[i]["detail"] for i in near} == {max(p): min(p) for p in pairs}
    read = {i: (r["stage"], r["reason"]) for i, r in rejected.items() if i not in near}
    assert read == {"web.jsonl:49": ("read", "malformed_json"), "web.jsonl:50": ("read", "missing_text")}
    assert stats["num_in"] == raw["num_rows"] == len(kept) + len(rejected)
    assert stats["stage_order"] == ["read", "minhash_dedup"]
    assert stats["stages"]["read"]["rejected"] == 2 and stats["stages"]["minhash_dedup"]["rejected"] == 8
    assert sorted(p.name for p in (tmp_path / "file" / "rejects" / "read").iterdir()) == ["web.jsonl.parquet"]
    for other in ([raw["dir"]], [raw["dir"] / "*.jsonl"]):
        out = tmp_path / hashlib.sha1(str(other).encode()).hexdigest()[:8]
        _minhash(other, out)
        k2, r2 = read_outputs(out)
        assert k2.keys() == kept.keys()
        assert {i: (r["stage"], r["reason"], r["detail"]) for i, r in r2.items()} == {
            i: (r["stage"], r["reason"], r["detail"]) for i, r in rejected.items()
        }


def test_split_and_encode_take_raw_files_like_their_stage_directory(raw, ray_local, tmp_path):
    stage = stage_dir_of_inputs(InputConfig(paths=[str(raw["dir"])]), tmp_path / "stage", RayConfig())
    assert stage == tmp_path / "stage" and (stage / STAGE_DONE).exists()
    assert stage_dir_of_inputs(InputConfig(paths=[str(stage)]), tmp_path / "unused", RayConfig()) == stage

    from_raw = split_heldout(raw["file"], tmp_path / "split_raw", 0.2, 1, seed=0)
    from_stage = split_heldout(stage, tmp_path / "split_stage", 0.2, 1, seed=0)
    for side in ("train", "heldout"):
        ids = [
            {
                i
                for f in sorted((tmp_path / d / side / "shards").glob("*.parquet"))
                for i in pq.read_table(f)["id"].to_pylist()
            }
            for d in ("split_raw", "split_stage")
        ]
        assert ids[0] == ids[1] and ids[0]
    assert (
        from_raw["read"]["rejected"] == 2
        and from_raw["num_in"] == from_stage["num_in"] == raw["num_rows"] - 2
    )
    assert (tmp_path / "split_raw" / "rejects" / "read" / "web.jsonl.parquet").exists()
    assert not (tmp_path / "split_raw" / "_work").exists()

    tok = tmp_path / "tok"
    train_tokenizer(stage, tok, tiny_cfg("vocab_size=400"))
    cfg = TokenizerEncodeConfig(workers=1, progress=False)
    a = run_encode(str(raw["file"]), tok, tmp_path / "enc_raw", cfg)
    b = run_encode(stage, tok, tmp_path / "enc_stage", cfg)
    shas = [
        {e["path"]: e["sha256"] for e in json.loads((tmp_path / d / "manifest.json").read_text())["shards"]}
        for d in ("enc_raw", "enc_stage")
    ]
    assert shas[0] == shas[1] and a["num_tokens"] == b["num_tokens"] > 0
    assert a["read"]["rejected"] == 2 and not (tmp_path / "enc_raw" / "_work" / "input").exists()


# --- fingerprints ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1000, 5 * SAMPLE_BYTES + 17])
def test_fingerprint_changes_with_content_at_the_same_size_and_mtime(tmp_path, size):
    path = tmp_path / "x.bin"
    data = bytearray(hashlib.shake_256(b"seed").digest(size))
    path.write_bytes(data)
    before = file_fingerprint(path)
    assert before["size"] == size and fingerprint_matches(path, before)
    st = path.stat()
    for where in (0, size // 2, size - 1):  # the first, middle and last window
        data[where] ^= 0xFF
        path.write_bytes(data)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # what `touch -d` would restore
        assert (path.stat().st_size, path.stat().st_mtime_ns) == (size, st.st_mtime_ns)
        assert file_fingerprint(path)["sample_sha256"] != before["sample_sha256"], where
        assert not fingerprint_matches(path, before)
        data[where] ^= 0xFF
        path.write_bytes(data)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert fingerprint_matches(path, before)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # same bytes, touched: redo to be safe
    assert not fingerprint_matches(path, before)


def test_done_record_is_stale_when_an_output_changes_in_place(tmp_path):
    shard = tmp_path / "shards" / "a.txt"
    with atomic_path(shard) as tmp:
        tmp.write_text("abcdef")
    write_json(tmp_path / "a.done.json", {"fingerprint": 1, "outputs": output_fingerprints(tmp_path, shard)})
    assert load_done(tmp_path, tmp_path / "a.done.json", 1) is not None
    assert load_done(tmp_path, tmp_path / "a.done.json", 2) is None
    st = shard.stat()
    shard.write_text("abcdeX")
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert load_done(tmp_path, tmp_path / "a.done.json", 1) is None
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporary behind


def test_minhash_reruns_when_an_input_changes_at_the_same_size_and_mtime(raw, ray_local, tmp_path):
    src = tmp_path / "web.jsonl"
    src.write_bytes(raw["file"].read_bytes())
    out = tmp_path / "out"
    _minhash([src], out)
    record = (out / STAGE_DONE).read_bytes()
    st = src.stat()
    text = src.read_text()
    src.write_text(text.replace("CHANGED", "ALTERED", 1))  # one near duplicate is now less near
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert src.stat().st_size == st.st_size
    _minhash([src], out)
    assert (out / STAGE_DONE).read_bytes() != record  # the stage ran again, on the new content
    kept, rejected = read_outputs(out)
    assert "ALTERED" in (kept | rejected)["web.jsonl:41"]["text"]


# --- _work cleanup and resume ---------------------------------------------------------------------


def _no_tasks(monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError(f"a task ran on a finished stage: {getattr(args[0], '__name__', args[0])}")

    monkeypatch.setattr(dedup, "run_tasks", fail)
    monkeypatch.setattr(executor, "run_tasks", fail)
    monkeypatch.setattr(dedup, "components", fail)


def test_minhash_work_removed_after_success_kept_with_flag_and_rerun_is_a_no_op(
    raw, ray_local, tmp_path, monkeypatch, capsys
):
    out, kept_out = tmp_path / "out", tmp_path / "kept"
    assert main(["minhash", "--input", str(raw["file"]), "--output", str(out), "progress=false"]) == 0
    assert not (out / "_work").exists() and (out / STAGE_DONE).exists()
    assert (
        main(
            [
                "minhash",
                "--input",
                str(raw["file"]),
                "--output",
                str(kept_out),
                "progress=false",
                "--keep-work",
            ]
        )
        == 0
    )
    work = kept_out / "_work"
    assert (work / "minhash" / "sig").is_dir() and (work / "input" / "shards").is_dir()
    assert read_outputs(out) == read_outputs(kept_out)
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(
        f"{raw['num_rows']} in = {raw['num_rows'] - 10} kept + 8 near duplicates + 2 rejected"
    )

    before = _mtimes(out)
    _no_tasks(monkeypatch)
    assert main(["minhash", "--input", str(raw["file"]), "--output", str(out), "progress=false"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == first  # the same result, from stats.json
    assert _mtimes(out) == before and not (out / "_work").exists()
    # kept work: the rerun is a no-op too, and keeps it
    before = _mtimes(kept_out)
    _minhash([raw["file"]], kept_out, "keep_work=true")
    assert _mtimes(kept_out) == before
    # ... and a rerun without the flag removes the work it no longer needs, touching nothing else
    _minhash([raw["file"]], kept_out)
    assert not work.exists() and {k: v for k, v in before.items() if not k.startswith("_work")} == _mtimes(
        kept_out
    )


def test_pipeline_work_removed_after_success_and_rerun_is_a_no_op(raw, ray_local, tmp_path, monkeypatch):
    def cfg(out: Path, *extra: str):
        off = [f"{s}.enabled=false" for s in ("language", "quality", "pii", "toxicity")]
        return load_pipeline_config(
            None, [f"input.paths=[{raw['dir']}]", f"output_dir={out}", "progress=false", *off, *extra]
        )

    stats = run_pipeline(cfg(tmp_path / "out"))
    kept = run_pipeline(cfg(tmp_path / "kept", "keep_work=true"))
    assert stats["num_in"] == kept["num_in"] == raw["num_rows"]
    assert not (tmp_path / "out" / "_work").exists()
    assert sorted(p.name for p in (tmp_path / "kept" / "_work").iterdir()) == [
        "chain",
        "dup_lists",
        "dups",
        "final",
        "hashes",
        "pack",
    ]
    before = _mtimes(tmp_path / "out")
    _no_tasks(monkeypatch)
    assert run_pipeline(cfg(tmp_path / "out")) == stats
    assert _mtimes(tmp_path / "out") == before
    # a lost output: the stage record no longer holds, so the stage runs again (and says so)
    (tmp_path / "out" / "shards" / "part-00000.parquet").unlink()
    with pytest.raises(AssertionError, match="a task ran on a finished stage"):
        run_pipeline(cfg(tmp_path / "out"))
