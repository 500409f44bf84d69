"""`pretrain tokenizer encode`: document shards -> token shards, one Ray task per document shard.

    stats = run_encode("runs/data", "runs/tokenizer", "runs/tokens", TokenizerEncodeConfig(workers=2))
    stats = run_encode(["raw/web.jsonl", "raw/books/"], "runs/tokenizer", "runs/tokens", cfg)

The input is what every data stage takes: a stage directory, or files, folders and globs of raw
documents, which are read into OUT/_work/input by the data pipeline's `read` step first (removed
when the encode finishes; a rerun reads them again, to the same shards, and encodes nothing).

A document shard may hold several sources; its task writes one token shard per source,
OUT/shards/<doc-shard-stem>.<source>.arrow, each document stored as [BOS if add_bos] + ids + [EOS],
then a done record OUT/_work/<stem>.done.json. A rerun skips tasks whose record matches (input shard
sha256, tokenizer hash, add_bos) and whose outputs are intact, so a killed run resumes without loss
or duplication; the output is the same for any number of workers. OUT/manifest.json (token counts
per shard and per source, the tokenizer hash, eos/bos ids, appends_eos) is written last;
OUT/stats.json has the timings. Tests kill a worker mid-shard with
DATA_PIPELINE_CRASH=<doc-shard-stem>:<after N docs>:<marker file> (pretrain.core.runner.maybe_crash).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from data_pipeline.inputs import carry_read_rejects, stage_dir_of_inputs
from data_pipeline.readers import InputConfig
from pretrain.core.config import dump_yaml
from pretrain.core.done import load_done_many, output_fingerprints
from pretrain.core.files import read_json, write_json
from pretrain.core.hashing import file_fingerprint, sha256_file
from pretrain.core.progress import Progress
from pretrain.core.runner import maybe_crash, raise_errors, run_tasks
from pretrain.core.shards import iter_batches, list_shards, read_manifest, shard_relpath
from pretrain.core.storage import stage_path, work_dir
from pretrain.core.token_shards import token_dtype, write_token_manifest, write_token_shard
from pretrain.core.tokenizer_file import BPETokenizer, load_tokenizer
from tokenizer.config import TokenizerEncodeConfig
from tokenizer.sample import byte_lengths

READ_DIR = "input"  # OUT/_work/input: raw inputs read into document shards
LAYOUT_VERSION = 1  # bump when the token layout of a document changes: old done records go stale

_TOKENIZERS: dict[str, BPETokenizer] = {}  # Ray reuses worker processes: load once per process


def token_shard_name(doc_stem: str, source: str) -> str:
    """File name of the token shard of one source of one document shard (source name made path-safe)."""
    return f"{doc_stem}.{quote(source, safe='')}.arrow"


def _tokenizer(tok_dir: str, expected_hash: str) -> BPETokenizer:
    bpe = _TOKENIZERS.get(expected_hash)
    if bpe is None:
        bpe = load_tokenizer(tok_dir)
        if bpe.hash != expected_hash:
            raise RuntimeError(
                f"{tok_dir}/tokenizer.json changed during the run (hash {bpe.hash}, expected {expected_hash})"
            )
        _TOKENIZERS.clear()
        _TOKENIZERS[expected_hash] = bpe
    return bpe


def encode_shard(
    doc_path: str, tok_dir: str, out_dir: str, cfg: TokenizerEncodeConfig, fingerprint: dict
) -> dict[str, Any]:
    """The work of one task: encode one document shard, write its token shards and done record."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    # Read by tokenizers on every encode_batch call, so it applies even in a reused worker.
    os.environ["TOKENIZERS_PARALLELISM"] = "false" if cfg.single_threaded else "true"
    bpe = _tokenizer(tok_dir, fingerprint["tokenizer_hash"])
    out, stem = stage_path(out_dir), stage_path(doc_path).stem
    vocab_size, dtype = bpe.vocab_size, token_dtype(bpe.vocab_size)
    head = [bpe.bos_id] if cfg.add_bos else []
    eos = bpe.eos_id
    docs: dict[str, list[np.ndarray]] = {}
    text_bytes: dict[str, int] = {}
    num_in = 0
    for batch in iter_batches(doc_path, cfg.batch_rows, columns=["text", "source"]):
        sources = batch.column(1).to_pylist()
        nbytes = byte_lengths(batch.column(0), doc_path).tolist()
        for src, ids, n in zip(sources, bpe.encode_batch(batch.column(0).to_pylist()), nbytes):
            arr = np.empty(len(head) + len(ids) + 1, dtype=dtype)
            arr[: len(head)] = head
            arr[len(head) : -1] = ids
            arr[-1] = eos
            docs.setdefault(src, []).append(arr)
            text_bytes[src] = text_bytes.get(src, 0) + n
        num_in += batch.num_rows
        maybe_crash(stem, num_in)
    entries, paths = [], []
    for src in sorted(docs):
        paths.append(out / "shards" / token_shard_name(stem, src))
        entry = write_token_shard(paths[-1], docs[src], vocab_size)
        entries.append(
            entry | {"path": f"shards/{entry['path']}", "source": src, "text_bytes": text_bytes[src]}
        )
    record = {
        "unit": stem,
        "fingerprint": fingerprint,
        "num_in": num_in,
        "num_tokens": sum(e["num_tokens"] for e in entries),
        "text_bytes": sum(text_bytes.values()),
        "shards": entries,
        "seconds": round(time.perf_counter() - t0, 3),
        "cpu_seconds": round(time.process_time() - cpu0, 3),
        "outputs": output_fingerprints(out, *paths),
    }
    write_json(work_dir(out) / f"{stem}.done.json", record)
    return record


def _input_fingerprints(inp: Path, shards: list[Path]) -> dict[str, Any]:
    """Per document shard: its sha256 from the input manifest, else its file_fingerprint."""
    by_name = {e["path"]: e.get("sha256") for e in read_manifest(inp).get("shards", [])}
    rels = {p: shard_relpath(inp, p) for p in shards}
    return {
        p.stem: {"sha256": by_name[rels[p]]} if by_name.get(rels[p]) else file_fingerprint(p) for p in shards
    }


def run_encode(
    input_paths: str | Path | list[str], tok_dir: str | Path, out_dir: str | Path, cfg: TokenizerEncodeConfig
) -> dict[str, Any]:
    """Encode every document shard of INPUT (skipping finished ones); write the manifest and stats.
    INPUT: a stage directory, or raw files, folders and globs (see the module docstring)."""
    t_start = time.perf_counter()
    out = stage_path(out_dir)
    bpe = load_tokenizer(tok_dir)
    run_cfg = cfg
    if cfg.workers:
        ray_cfg = dataclasses.replace(
            cfg.ray, max_in_flight=cfg.workers, num_cpus=cfg.ray.num_cpus or cfg.workers
        )
        run_cfg = dataclasses.replace(cfg, ray=ray_cfg)
    paths = [str(p) for p in input_paths] if isinstance(input_paths, list) else [str(input_paths)]
    read_dir = work_dir(out) / READ_DIR
    inp = stage_dir_of_inputs(InputConfig(paths=paths), read_dir, run_cfg.ray, cfg.progress)
    shards = list_shards(inp)
    if not shards:
        raise FileNotFoundError(f"no document shards listed in {inp / 'manifest.json'}")
    stems = [p.stem for p in shards]
    if len(set(stems)) != len(stems):
        raise ValueError(f"document shard names in {inp} are not unique: {stems}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_yaml(cfg))
    inputs = _input_fingerprints(inp, shards)
    tok_dir_abs = str(Path(tok_dir).resolve())

    records: dict[str, dict] = {}
    jobs = []
    fps = [
        {
            "input": inputs[p.stem],
            "tokenizer_hash": bpe.hash,
            "add_bos": cfg.add_bos,
            "layout": LAYOUT_VERSION,
        }
        for p in shards
    ]
    done = load_done_many(out, [(work_dir(out) / f"{p.stem}.done.json", fp) for p, fp in zip(shards, fps)])
    for path, fp, rec in zip(shards, fps, done):
        if rec is not None:
            records[path.stem] = rec
        else:
            jobs.append((path.stem, (str(path), tok_dir_abs, str(out), cfg, fp)))
    progress = Progress(enabled=cfg.progress)
    progress.start("encode", total=len(shards), done=len(shards) - len(jobs))
    t_tasks = time.perf_counter()
    results, errors = run_tasks(encode_shard, jobs, run_cfg.ray, progress, "encode")
    t_tasks = time.perf_counter() - t_tasks
    progress.stop()
    records.update(results)
    raise_errors(errors, "encode")

    _remove_stale(out, {e["path"] for r in records.values() for e in r["shards"]}, set(stems))
    entries = [e for stem in stems for e in records[stem]["shards"]]
    manifest = write_token_manifest(
        out,
        bpe.hash,
        entries,
        vocab_size=bpe.vocab_size,
        dtype=str(token_dtype(bpe.vocab_size)),
        eos_id=bpe.eos_id,
        bos_id=bpe.bos_id if cfg.add_bos else None,
        appends_eos=True,
        tokenizer_dir=tok_dir_abs,
        input_dir=str(inp.resolve()) if inp != read_dir else None,
        inputs=paths,
        input_manifest_sha256=sha256_file(inp / "manifest.json"),
        layout_version=LAYOUT_VERSION,
    )
    stats = _stats(manifest, entries, records, results, time.perf_counter() - t_start, t_tasks, run_cfg)
    if inp == read_dir:  # raw inputs: what the read step rejected is kept and counted
        read = read_json(read_dir / "stats.json")
        stats["read"] = read["stages"]["read"] | {"rejects": carry_read_rejects(read_dir, out)}
    write_json(out / "stats.json", stats)
    shutil.rmtree(read_dir, ignore_errors=True)  # the read documents: not needed any more
    return stats


def _remove_stale(out: Path, keep: set[str], stems: set[str]) -> None:
    """Drop token shards and done records of inputs no longer in the run, and temp files of killed tasks."""
    for f in (out / "shards").glob("*"):
        if f"shards/{f.name}" not in keep:
            f.unlink()
    for f in work_dir(out).glob("*"):
        if f.is_file() and (f.name.startswith(".") or f.name.removesuffix(".done.json") not in stems):
            f.unlink()


def _stats(
    manifest: dict, entries: list[dict], records: dict, ran: dict, seconds: float, task_seconds: float, cfg
) -> dict[str, Any]:
    text_bytes = sum(e["text_bytes"] for e in entries)
    per_source: dict[str, dict] = {}
    for e in entries:
        s = per_source.setdefault(e["source"], {"num_tokens": 0, "text_bytes": 0})
        s["num_tokens"] += e["num_tokens"]
        s["text_bytes"] += e["text_bytes"]
    for s in per_source.values():
        s["bytes_per_token"] = round(s["text_bytes"] / s["num_tokens"], 4) if s["num_tokens"] else None
    ran_bytes = sum(r["text_bytes"] for r in ran.values())
    ran_cpu = sum(r["cpu_seconds"] for r in ran.values())
    ran_tokens = sum(r["num_tokens"] for r in ran.values())
    return {
        "num_docs": manifest["num_docs"],
        "num_tokens": manifest["num_tokens"],
        "text_bytes": text_bytes,
        "bytes_per_token": round(text_bytes / manifest["num_tokens"], 4) if manifest["num_tokens"] else None,
        "sources": per_source,
        "num_tasks_run": len(ran),
        "num_tasks_skipped": len(records) - len(ran),
        "workers": cfg.workers,
        "single_threaded": cfg.single_threaded,
        "seconds": round(seconds, 3),
        "task_phase_seconds": round(task_seconds, 3),
        "mb_per_second": round(ran_bytes / 1e6 / task_seconds, 3) if ran and task_seconds else None,
        "tokens_per_second": round(ran_tokens / task_seconds, 1) if ran and task_seconds else None,
        "task_cpu_seconds": round(ran_cpu, 3),
        "mb_per_cpu_second": round(ran_bytes / 1e6 / ran_cpu, 3) if ran and ran_cpu else None,
    }
