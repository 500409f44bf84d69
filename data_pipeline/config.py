"""The data pipeline's config: input, the per-document stages in order, exact dedup, and Ray.

Load with `load_pipeline_config(path, overrides)`; every field is documented where it is defined
(each stage owns its config dataclass in its own file).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from data_pipeline.readers import InputConfig
from data_pipeline.stages.decontaminate import DecontaminateConfig
from data_pipeline.stages.language import LanguageConfig
from data_pipeline.stages.normalize import NormalizeConfig
from data_pipeline.stages.pii import PIIConfig
from data_pipeline.stages.quality import QualityConfig
from data_pipeline.stages.quality_model import QualityModelConfig
from data_pipeline.stages.toxicity import ToxicityConfig
from pretrain.core.config import check, load_config, to_dict
from pretrain.core.sections import TaskConfig

# Order of the fused per-document chain; exact dedup runs after it across the whole run.
# Decontamination reads the text before PII scrubbing rewrites numbers and addresses in it.
STAGE_ORDER = ("normalize", "language", "quality", "quality_model", "decontaminate", "pii", "toxicity")
ALL_STAGES = (*STAGE_ORDER, "exact_dedup")


@dataclass
class ExactDedupConfig:
    enabled: bool = True
    """Drop documents whose normalised text equals an earlier one (run-wide, not per shard)."""
    num_partitions: int = 8
    """Hash partitions of the shuffle; each is deduplicated by one task. Scale with corpus size
    (about one per 50M documents keeps a task's memory near 3 GB)."""

    def __post_init__(self) -> None:
        check(
            1 <= self.num_partitions <= 65536, "exact_dedup.num_partitions", self.num_partitions, "1..65536"
        )


@dataclass
class PipelineConfig(TaskConfig):
    """The whole chain; `ray`, `batch_rows` and `progress` come from TaskConfig."""

    output_dir: str = "runs/data"
    """Stage directory: shards/, rejects/, manifest.json, stats.json, summary.md, config.yaml."""
    input: InputConfig = field(default_factory=InputConfig)
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    quality_model: QualityModelConfig = field(default_factory=QualityModelConfig)
    decontaminate: DecontaminateConfig = field(default_factory=DecontaminateConfig)
    pii: PIIConfig = field(default_factory=PIIConfig)
    toxicity: ToxicityConfig = field(default_factory=ToxicityConfig)
    exact_dedup: ExactDedupConfig = field(default_factory=ExactDedupConfig)
    num_example_rejects: int = 3
    """Example rejects per reason shown in the summary."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(bool(self.output_dir), "output_dir", self.output_dir, "a folder path")

    def stage_configs(self) -> list[tuple[str, object]]:
        return [(name, getattr(self, name)) for name in STAGE_ORDER if getattr(self, name).enabled]

    def chain_identity(self) -> dict:
        """What determines a shard's chain output (not Ray, progress or output placement)."""
        return {
            "input": to_dict(self.input) | {"paths": None},
            "batch_rows": self.batch_rows,
            **{name: to_dict(getattr(self, name)) for name in STAGE_ORDER},
            "eval_sets": self.decontaminate.fingerprint(),  # editing an eval set redoes the shards
            "quality_model_file": self.quality_model.fingerprint(),  # so does retraining the model
        }


def load_pipeline_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> PipelineConfig:
    return load_config(PipelineConfig, path, overrides)
