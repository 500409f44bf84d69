"""`pretrain tokenizer train`: a byte-level BPE from a stage directory of document shards.

    report = train_tokenizer("runs/data", "runs/tokenizer", load_config(TokenizerTrainConfig, yaml))

Writes OUT/tokenizer.json (+ the transformers files, via bpe.save_tokenizer), OUT/config.yaml,
OUT/report.json and OUT/report.md (vocab size, sample per source, bytes per token on held-out text
per source, seconds, peak RSS). report.json is written last and records the hashes of the input
manifest and of the config: a rerun with both unchanged (and tokenizer.json intact) does nothing.
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pretrain.core.config import config_hash, dump_yaml, to_dict
from pretrain.core.files import read_json, write_json
from pretrain.core.hashing import sha256_file
from pretrain.core.shards import list_shards, read_manifest
from pretrain.core.storage import stage_path
from pretrain.core.tokenizer_file import BPETokenizer, tokenizer_hash
from tokenizer.bpe import save_tokenizer, special_tokens, train_bpe
from tokenizer.config import TokenizerTrainConfig
from tokenizer.sample import SamplePlan, plan_sample

log = logging.getLogger(__name__)


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def up_to_date(out_dir: str | Path, input_sha: str, cfg_hash: str) -> dict | None:
    """The existing report when OUT already holds a tokenizer trained from this input and config."""
    out = Path(out_dir)
    try:
        report = read_json(out / "report.json")
        ok = (
            report.get("input_manifest_sha256") == input_sha
            and report.get("config_hash") == cfg_hash
            and report.get("tokenizer_hash") == tokenizer_hash(out)
        )
    except (OSError, ValueError):
        return None
    return report if ok else None


def train_tokenizer(
    input_dir: str | Path, out_dir: str | Path, cfg: TokenizerTrainConfig, force: bool = False
) -> dict[str, Any]:
    """Sample, train, save and report; returns the report (with "up_to_date": true when skipped)."""
    t_start, cpu_start = time.perf_counter(), time.process_time()
    inp, out = stage_path(input_dir), Path(out_dir)
    read_manifest(inp)  # a clear error when INPUT is not a finished stage directory
    input_sha = sha256_file(inp / "manifest.json")
    cfg_hash = config_hash(cfg.identity())
    if not force and (report := up_to_date(out, input_sha, cfg_hash)) is not None:
        return report | {"up_to_date": True}
    shards = list_shards(inp)
    if not shards:
        raise FileNotFoundError(f"no document shards listed in {inp / 'manifest.json'}")

    plan = plan_sample(shards, cfg)
    if not any(s.train for s in plan.sources.values()):
        raise ValueError(
            f"no training text drawn from {inp}: sources present {sorted(plan.sources)}, "
            f"source_weights {cfg.source_weights or 'equal'} "
            "(are all documents empty, or is no weighted source present?)"
        )
    t_sampled = time.perf_counter()
    heldout: dict[str, list[str]] = {s: [] for s in plan.sources}
    tok = train_bpe(_train_texts(plan, heldout), cfg.vocab_size, cfg.num_reserved)
    t_trained = time.perf_counter()

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_yaml(cfg))
    tok_hash = save_tokenizer(tok, out)
    bpe = BPETokenizer(tok=tok, path=out, hash=tok_hash)
    sources = _source_report(plan, heldout, bpe)
    t_end = time.perf_counter()
    if bpe.vocab_size < cfg.vocab_size:
        log.warning(
            "vocabulary has %d tokens, fewer than vocab_size=%d: the sample has too few distinct pairs "
            "(raise sample_bytes or lower vocab_size)",
            bpe.vocab_size,
            cfg.vocab_size,
        )
    held_bytes = sum(s["heldout_bytes"] for s in sources.values())
    held_tokens = sum(s["heldout_tokens"] for s in sources.values())
    report = {
        "tokenizer_hash": tok_hash,
        "input_dir": str(inp),
        "input_manifest_sha256": input_sha,
        "config_hash": cfg_hash,
        "config": to_dict(cfg),
        "vocab_size": bpe.vocab_size,
        "requested_vocab_size": cfg.vocab_size,
        "num_special_tokens": len(special_tokens(cfg.num_reserved)),
        "special_ids": {"bos": bpe.bos_id, "eos": bpe.eos_id, "pad": bpe.pad_id},
        "num_input_shards": len(shards),
        "sample_docs": sum(s["sample_docs"] for s in sources.values()),
        "sample_bytes": sum(s["sample_bytes"] for s in sources.values()),
        "heldout_bytes_per_token": round(held_bytes / held_tokens, 4) if held_tokens else None,
        "sources": sources,
        "seconds": {
            "sample": round(t_sampled - t_start, 3),
            "train": round(t_trained - t_sampled, 3),
            "save_and_heldout": round(t_end - t_trained, 3),
            "total": round(t_end - t_start, 3),
        },
        "cpu_seconds": round(time.process_time() - cpu_start, 3),  # every thread of this process
        "peak_rss_bytes": peak_rss_bytes(),
    }
    (out / "report.md").write_text(format_report(report))
    write_json(out / "report.json", report)  # last: its presence with matching hashes means done
    return report | {"up_to_date": False}


def _train_texts(plan: SamplePlan, heldout: dict[str, list[str]]) -> Iterator[str]:
    """Stream the training texts to the trainer; keep the (small) held-out ones aside."""
    for source, text, is_heldout in plan.iter_texts():
        if is_heldout:
            heldout[source].append(text)
        else:
            yield text


def _source_report(plan: SamplePlan, heldout: dict[str, list[str]], bpe: BPETokenizer) -> dict[str, dict]:
    report = {}
    for name, s in plan.sources.items():
        texts = heldout[name]
        num_bytes = sum(len(t.encode("utf-8")) for t in texts)
        num_tokens = sum(len(ids) for ids in bpe.encode_batch(texts)) if texts else 0
        report[name] = {
            "corpus_docs": s.num_docs,
            "corpus_bytes": s.num_bytes,
            "share_bytes": s.share_bytes,
            "sample_docs": len(s.train),
            "sample_bytes": sum(n for _, _, n in s.train),
            "heldout_docs": len(texts),
            "heldout_bytes": num_bytes,
            "heldout_tokens": num_tokens,
            "bytes_per_token": round(num_bytes / num_tokens, 4) if num_tokens else None,
        }
    return report


def format_report(r: dict[str, Any]) -> str:
    mib = 1 << 20
    lines = [
        "# Tokenizer report",
        "",
        f"- vocab size {r['vocab_size']} (requested {r['requested_vocab_size']}, "
        f"{r['num_special_tokens']} special tokens), tokenizer sha256 `{r['tokenizer_hash'][:16]}`",
        f"- trained on {r['sample_docs']} documents, {r['sample_bytes'] / mib:.2f} MiB "
        f"from {r['num_input_shards']} shards of {r['input_dir']}",
        f"- held-out bytes per token: {r['heldout_bytes_per_token']}",
        f"- seconds: sample {r['seconds']['sample']}, train {r['seconds']['train']}, "
        f"total {r['seconds']['total']}; peak RSS {r['peak_rss_bytes'] / mib:.0f} MiB",
        "",
        "| source | corpus MiB | sample docs | sample MiB | held-out docs | bytes/token |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, s in r["sources"].items():
        lines.append(
            f"| {name} | {s['corpus_bytes'] / mib:.2f} | {s['sample_docs']} | {s['sample_bytes'] / mib:.2f} "
            f"| {s['heldout_docs']} | {s['bytes_per_token'] if s['bytes_per_token'] is not None else '-'} |"
        )
    return "\n".join(lines) + "\n"
