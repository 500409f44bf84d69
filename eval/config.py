"""EvalConfig: what `pretrain eval run|watch` scores and how (YAML + dotted overrides).

    cfg = load_config(EvalConfig, "configs/eval_tiny.yaml", ["heldout=runs/heldout", "batch_size=8"])
    rows = score_checkpoint(ckpt_dir, cfg=cfg)      # eval/score.py

configs/eval_tiny.yaml lists every field with its default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pretrain.core.config import check

DEFAULT_PROMPTS = [
    "The",
    "In this module,",
    "Return a new",
    "This function",
    "When the",
]
"""What a checkpoint is asked to continue (eval/generate.py), greedy and sampled."""


def _default_prompts() -> list[str]:
    return list(DEFAULT_PROMPTS)


@dataclass
class EvalConfig:
    """Held-out LM scoring, multiple-choice tasks and generations for one checkpoint."""

    heldout: str | None = None
    """Held-out documents: a document-shard directory (shards/*.parquet with text, source), a
    directory of .parquet/.jsonl files, or one file. null: no held-out scoring (and no auto tasks)."""
    max_docs_per_source: int = 200
    """Score at most this many held-out documents per source (the first ones, in file order)."""
    tasks: str | None = "auto"
    """Task directory: lm-eval task YAMLs with local data files (run through lm-eval's own task
    machinery), or bare multiple-choice directories (see eval/README.md); "auto": make the default
    task set from the held-out documents once, under OUT/tasks; null: no tasks."""
    task_seed: int = 0
    """Seed of the auto task set (which sentences, distractors and answer positions)."""
    num_fewshot: int = 1
    """Few-shot examples per prompt in the auto tasks (written to their YAML). Other tasks say their
    own; a YAML without num_fewshot runs 0-shot, lm-eval's default."""
    fewshot_seed: int = 1234
    """Seed of the few-shot draws; 1234 is lm-eval's default `fewshot_random_seed`."""
    batch_size: int = 16
    """Sequences per forward pass."""
    max_length: int | None = None
    """Window length for scoring; null: the model's max_seq_len (what lm-eval reads from config.json)."""
    prefix_token: Literal["auto", "eos", "bos"] = "auto"
    """Token a document's first window (and an empty context) is conditioned on. auto: what preceded
    a document in training: BOS if the token shards were encoded with add_bos, else EOS (documents
    are packed as [bos] + ids + [eos]). lm-eval uses BOS when the tokenizer has one: pass it
    `prefix_token_id=<id>` to compare (the export's README.md names the id)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: cuda when available. bf16 autocast on cuda, fp32 on cpu."""
    tokenizer_dir: str | None = None
    """Tokenizer directory; null: the checkpoint's config.data.tokenizer_dir."""
    prompts: list[str] = field(default_factory=_default_prompts)
    """Prompts for the greedy and sampled generations; [] disables generations."""
    max_new_tokens: int = 32
    """Tokens generated per prompt."""
    temperature: float = 0.8
    """Sampling temperature of the sampled generation (the greedy one ignores it)."""
    top_k: int = 50
    """Sample among the k most likely tokens; 0: all."""
    sample_seed: int = 0
    """Seed of the sampled generations."""
    report: bool = True
    """Rewrite OUT/report.md (+ report.html and plots) after each scored checkpoint."""

    def __post_init__(self) -> None:
        check(self.max_docs_per_source >= 1, "max_docs_per_source", self.max_docs_per_source, ">= 1")
        check(self.num_fewshot >= 0, "num_fewshot", self.num_fewshot, ">= 0")
        check(self.batch_size >= 1, "batch_size", self.batch_size, ">= 1")
        check(self.max_length is None or self.max_length >= 2, "max_length", self.max_length, ">= 2 or null")
        check(self.max_new_tokens >= 0, "max_new_tokens", self.max_new_tokens, ">= 0")
        check(self.temperature > 0, "temperature", self.temperature, "> 0")
        check(self.top_k >= 0, "top_k", self.top_k, ">= 0 (0: no top-k)")
