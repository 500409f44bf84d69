"""Shared by the trainer tests: learnable synthetic token shards, the tiny two-phase config, and
the private loopback-only network namespace multi-process torchrun runs go into."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import numpy as np

from pretrain.token_shards import write_token_manifest, write_token_shard

VOCAB = 512
# torch's TCPStore (torchrun's rendezvous) listens on every interface whatever host it is given,
# so multi-process runs go into a private network namespace that has nothing but loopback.
NETNS = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]


def arith_docs(rng, n: int, lo: int, hi: int) -> list[np.ndarray]:
    """Documents with learnable structure: runs of an arithmetic progression mod a band of ids."""
    out = []
    for _ in range(n):
        length = int(rng.integers(8, 60))
        start, stride = int(rng.integers(lo, hi)), int(rng.integers(1, 4))
        out.append(lo + (start + stride * np.arange(length)) % (hi - lo))
    return out


def write_arith_shards(root: Path, tokenizer_hash: str = "tok-test") -> Path:
    """web: 2 shards of ids 1..299, code: 1 shard of ids 300..511; returns root."""
    rng = np.random.default_rng(0)
    entries = []
    for i, (source, lo, hi) in enumerate([("web", 1, 300), ("code", 300, 512), ("web", 1, 300)]):
        entry = write_token_shard(root / f"{i:05d}.arrow", arith_docs(rng, 80, lo, hi), VOCAB)
        entries.append({**entry, "source": source})
    write_token_manifest(root, tokenizer_hash=tokenizer_hash, shards=entries)
    return root


def tiny_config_dict(shards: Path, run_dir: Path, **top) -> dict:
    """12 steps: phase "short" (seq 16, steps 0-5) then "long" (seq 32, steps 6-11), 512 tokens each."""
    phases = [
        dict(name="short", num_tokens=6 * 512, mixture={"web": 0.8, "code": 0.2}, seq_len=16,
             global_batch_tokens=512, micro_batch_size=8, lr_max=3e-3),
        dict(name="long", num_tokens=6 * 512, mixture={"web": 0.4, "code": 0.6}, seq_len=32,
             global_batch_tokens=512, micro_batch_size=4, lr_max=3e-3),
    ]  # fmt: skip
    cfg = {
        "run_dir": str(run_dir),
        "model": "tiny",
        "model_overrides": {"dim": 64, "num_layers": 2, "vocab_size": VOCAB, "max_seq_len": 64},
        "curriculum": {"phases": phases, "schedule": {"warmup_steps": 2, "decay_fraction": 0.3}},
        "data": {
            "sources": {"web": str(shards), "code": str(shards)},
            "tokenizer_hash": "tok-test",
            "seed": 3,
        },
        "checkpoint": {"every_steps": 4, "keep_last": 2},
        "seed": 7,
        "device": "cpu",
        "metrics": {"progress": False},
    }
    cfg.update(top)
    return cfg


@functools.cache
def private_netns_ok() -> bool:
    try:
        return subprocess.run([*NETNS[:-1], "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
