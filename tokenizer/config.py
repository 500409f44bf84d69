"""Configs of `pretrain tokenizer train` and `pretrain tokenizer encode` (YAML + dotted overrides).

cfg = load_config(TokenizerTrainConfig, "configs/tokenizer_tiny.yaml", ["vocab_size=8192"])
cfg = load_config(TokenizerEncodeConfig, None, ["add_bos=true", "workers=2"])
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pretrain.core.config import check, to_dict
from pretrain.core.sections import TaskConfig
from tokenizer.bpe import DEFAULT_NUM_RESERVED, special_tokens


@dataclass
class TokenizerTrainConfig:
    """Byte-level BPE trained on a deterministic, source-balanced sample of document shards."""

    vocab_size: int = 32768
    """Final vocabulary size, special tokens included (256 byte tokens + specials + merges)."""
    sample_bytes: int = 100_000_000
    """UTF-8 bytes of text sampled for training (held-out part included). Bounds RAM whatever the
    corpus size: HF `tokenizers` peaks at roughly 25x this (see tokenizer/README.md)."""
    heldout_fraction: float = 0.01
    """Share of each source's sample kept out of training to measure bytes per token."""
    source_weights: dict[str, float] = field(default_factory=dict)
    """Share of the byte budget per source (normalised). Empty: equal shares. A source with less
    text than its share gives the rest to the others; a source missing from a non-empty mapping
    is left out of the sample."""
    max_doc_bytes: int = 1_000_000
    """Longer documents contribute only their first this many bytes, so one huge document cannot
    take a source's whole share."""
    seed: int = 0
    """Seed of the sample (a keyed hash of each document id decides whether it is drawn)."""
    num_reserved: int = DEFAULT_NUM_RESERVED
    """Reserved special tokens after <|bos|>, <|eos|>, <|pad|> (ids 3..)."""
    batch_rows: int = 8192
    """Rows per read batch while sampling (memory only; does not change the result)."""

    def __post_init__(self) -> None:
        check(self.num_reserved >= 0, "num_reserved", self.num_reserved, ">= 0")
        lo = 256 + len(special_tokens(self.num_reserved))
        check(lo <= self.vocab_size <= 1 << 31, "vocab_size", self.vocab_size, f"{lo}..2^31")
        check(self.sample_bytes >= 1024, "sample_bytes", self.sample_bytes, ">= 1024")
        check(0.0 <= self.heldout_fraction <= 0.5, "heldout_fraction", self.heldout_fraction, "0..0.5")
        check(self.max_doc_bytes >= 1, "max_doc_bytes", self.max_doc_bytes, ">= 1")
        check(self.batch_rows >= 1, "batch_rows", self.batch_rows, ">= 1")
        for name, w in self.source_weights.items():
            check(w >= 0, f"source_weights.{name}", w, ">= 0")
        if self.source_weights:
            check(
                sum(self.source_weights.values()) > 0,
                "source_weights",
                self.source_weights,
                "at least one positive weight (or {} for equal shares)",
            )

    def identity(self) -> dict:
        """What determines the trained tokenizer (batch_rows does not)."""
        return {k: v for k, v in to_dict(self).items() if k != "batch_rows"}


@dataclass
class TokenizerEncodeConfig(TaskConfig):
    """Encoding document shards into token shards, one Ray task per document shard. `ray`,
    `batch_rows` (documents encoded per call; memory only, the output is the same) and `progress`
    come from TaskConfig."""

    add_bos: bool = False
    """Start every document with <|bos|>. Every document always ends with <|eos|>."""
    workers: int = 0
    """Encode tasks running at once; 0 = one per CPU of the Ray cluster. A local Ray started for
    the run gets this many CPUs."""
    single_threaded: bool = True
    """Each task encodes on one thread and parallelism comes from running one task per CPU (what
    scales to a cluster). False lets `tokenizers` use every core inside each task (workers=1)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.workers >= 0, "workers", self.workers, ">= 0 (0 = one per CPU)")
