"""The data pipeline's config: input, the per-document stages in order, exact dedup, and Ray.

Load with `load_pipeline_config(path, overrides)`; every field is documented where it is defined
(each stage owns its config dataclass in its own file).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_pipeline.pack import ShardSizeConfig
from data_pipeline.readers import InputConfig
from data_pipeline.stages.code_quality import CodeQualityConfig
from data_pipeline.stages.decontaminate import DecontaminateConfig
from data_pipeline.stages.language import LanguageConfig
from data_pipeline.stages.normalize import NormalizeConfig
from data_pipeline.stages.pii import PIIConfig
from data_pipeline.stages.quality import QualityConfig
from data_pipeline.stages.quality_model import QualityModelConfig
from data_pipeline.stages.toxicity import ToxicityConfig
from pretrain.core.config import ConfigError, check, deep_merge, from_dict, load_config, to_dict

# Order of the fused per-document chain; exact dedup runs after it across the whole run.
# Decontamination reads the text before PII scrubbing rewrites numbers and addresses in it.
STAGE_ORDER = (
    "normalize", "language", "quality", "code_quality", "quality_model", "decontaminate", "pii", "toxicity",
)  # fmt: skip
ALL_STAGES = (*STAGE_ORDER, "exact_dedup")

# Built-in profiles: stage settings laid over the config for the documents of a source that names
# the profile (`source_profiles`). `prose` is the config as written.
# - code: The Stack / StarCoder data rules instead of the prose ones. No language id (code is no
#   natural language: it scores as `zxx` or a low-confidence guess), no Gopher/C4/FineWeb rules
#   (they reject every Python file: no stop words, curly brackets, lines without punctuation), no
#   prose classifier; the code filters of `code_quality`; PII without phone numbers (numeric
#   literals in code look like phones) but with secrets, e-mails and addresses, as StarCoder
#   redacts; toxicity off (identifiers such as `kill`, `abort`, `execute` are no insults).
# - docs: manuals, READMEs, man pages: prose with option lists, commands and code samples. The
#   language stage and the Gopher repetition rules stay; Gopher quality accepts half the words
#   without letters (flags, paths, numbers; prose: 20%) and more symbols; C4 and FineWeb's
#   line-punctuation and short-line rules (made for web paragraphs) are off, and FineWeb allows 5% of
#   characters in repeated lines (separators, repeated headings) instead of 1%. Measured on 2,807 README,
#   NEWS, changelog, copyright and .txt/.md files of /usr/share/doc here: prose keeps 91, docs 1,138
#   (most of the rest: changelogs and licence files repeating themselves, which Gopher rightly drops).
BUILTIN_PROFILES: dict[str, dict[str, Any]] = {
    "prose": {},
    "code": {
        "language": {"enabled": False},
        "quality": {"enabled": False},
        "quality_model": {"enabled": False},
        "code_quality": {"enabled": True},
        "pii": {"types": ["secret", "email", "iban", "credit_card", "ssn", "ip_address"]},
        "toxicity": {"enabled": False},
    },
    "docs": {
        "quality": {
            "gopher_quality": {"params": {"max_non_alpha_words_ratio": 0.5, "max_symbol_word_ratio": 0.5}},
            "c4": {"enabled": False},
            "fineweb": {"params": {"line_punct_thr": 0.0, "short_line_thr": 1.0, "char_duplicates_ratio": 0.05}},
        },
    },
}  # fmt: skip


@dataclass
class ExactDedupConfig:
    enabled: bool = True
    """Drop documents whose normalised text equals an earlier one (run-wide, not per shard)."""
    num_partitions: int | None = None
    """Reducers of the hash shuffle, each deduplicating one range of hashes; null: derived from the
    number of kept documents and the task memory budget (`ray.task_memory_mb`). Measured here, a
    reducer's peak memory is 282 bytes per document (`tasks.HASH_ROW_BYTES` = 300: 200,000
    documents take 56 MiB and 0.15 s), so each reducer gets at most 64 MiB of rows (about 224,000
    documents), or half the budget when that is less, and reads its range in chunks that fit what
    is left of its budget (`data_pipeline.shuffle`): 5 reducers for a million documents, 4,471 for
    a billion."""

    def __post_init__(self) -> None:
        check(
            self.num_partitions is None or 1 <= self.num_partitions <= 65536,
            "exact_dedup.num_partitions",
            self.num_partitions,
            "1..65536 or null",
        )


@dataclass
class PipelineConfig(ShardSizeConfig):
    """The whole chain; `ray`, `batch_rows`, `progress` and the output shards' size
    (`target_shard_bytes`, `target_shard_rows`) come from ShardSizeConfig."""

    output_dir: str = "runs/data"
    """Stage directory: shards/, rejects/, manifest.json, stats.json, summary.md, config.yaml."""
    input: InputConfig = field(default_factory=InputConfig)
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    code_quality: CodeQualityConfig = field(default_factory=CodeQualityConfig)
    quality_model: QualityModelConfig = field(default_factory=QualityModelConfig)
    decontaminate: DecontaminateConfig = field(default_factory=DecontaminateConfig)
    pii: PIIConfig = field(default_factory=PIIConfig)
    toxicity: ToxicityConfig = field(default_factory=ToxicityConfig)
    exact_dedup: ExactDedupConfig = field(default_factory=ExactDedupConfig)
    num_example_rejects: int = 3
    """Example rejects per reason and language shown in the summary."""
    source_profiles: dict[str, str] = field(default_factory=dict)
    """Source name (or a glob over source names) -> profile (`prose`, `code`, `docs`, or one in
    `profiles`); documents of other sources use `prose`, this config as written. A document's source
    is its record's source field, `input.source`, or its top-level input folder."""
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Stage settings per profile, laid over this config's: new profiles, or changes to the built-in
    ones (BUILTIN_PROFILES), e.g. `profiles.code.code_quality.max_line_length=2000`."""
    only_stages: list[str] | None = None
    """Run only these of the enabled stages in every profile (the one-stage commands such as
    `pretrain data quality` set it); null: all enabled stages."""
    partition_by_language: bool = False
    """Write the shards into one folder per document language, shards/lang=xx/part-NNNNN.parquet
    (metadata.language; a profile without a language stage uses its own name, e.g. lang=code)."""
    keep_work: bool = False
    """Keep `_work/` (intermediate files and task records) after the run finishes (`--keep-work`);
    by default it is removed, and a rerun knows the run is done from `done.json` and the outputs.
    Kept, a rerun after a config or input change redoes only the tasks it changes."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(bool(self.output_dir), "output_dir", self.output_dir, "a folder path")
        for name in self.only_stages or []:
            check(name in STAGE_ORDER, "only_stages", name, f"stages among {', '.join(STAGE_ORDER)}")
        known = {*BUILTIN_PROFILES, *self.profiles}
        for src, name in self.source_profiles.items():
            check(name in known, f"source_profiles.{src}", name, f"a profile: {', '.join(sorted(known))}")
        self._profile_cfgs: dict[str, PipelineConfig] = {"prose": self}
        for name in sorted(known - {"prose"}) if self.source_profiles or self.profiles else []:
            self._profile_cfgs[name] = self._build_profile(name)
        if "prose" in self.profiles:
            self._profile_cfgs["prose"] = self._build_profile("prose")

    def _build_profile(self, name: str) -> PipelineConfig:
        over = deep_merge(BUILTIN_PROFILES.get(name, {}), self.profiles.get(name, {}))
        unknown = sorted(set(over) - set(STAGE_ORDER))
        if unknown:
            raise ConfigError(
                f"profiles.{name}.{unknown[0]}: a profile sets stages only ({', '.join(STAGE_ORDER)})"
            )
        data = deep_merge(to_dict(self) | {"source_profiles": {}, "profiles": {}}, over)
        try:
            return from_dict(PipelineConfig, data)
        except ConfigError as e:
            raise ConfigError(f"profiles.{name}: {e}") from None

    def profile_of(self, source: str) -> str:
        """The profile of a source: an exact name in source_profiles, else the first matching glob."""
        if source in self.source_profiles:
            return self.source_profiles[source]
        for pattern, name in self.source_profiles.items():
            if fnmatch.fnmatchcase(source, pattern):
                return name
        return "prose"

    def profile(self, name: str) -> PipelineConfig:
        """The whole config as the documents of profile `name` see it."""
        return self._profile_cfgs[name]

    def used_profiles(self) -> list[str]:
        return ["prose", *sorted(set(self.source_profiles.values()) - {"prose"})]

    def stage_configs(self, profile: str = "prose") -> list[tuple[str, object]]:
        cfg = self.profile(profile)
        return [
            (name, getattr(cfg, name))
            for name in STAGE_ORDER
            if getattr(cfg, name).enabled and (self.only_stages is None or name in self.only_stages)
        ]

    def enabled_stages(self) -> list[str]:
        """Stages any used profile runs, in chain order."""
        on = {name for p in self.used_profiles() for name, _ in self.stage_configs(p)}
        return [name for name in STAGE_ORDER if name in on]

    def chain_identity(self) -> dict:
        """What determines a shard's chain output (not Ray, progress or output placement)."""
        return {
            # a unit's own range is in its fingerprint: a new unit_bytes redoes only the units it changes
            "input": to_dict(self.input) | {"paths": None, "unit_bytes": None},
            "batch_rows": self.batch_rows,
            **{name: to_dict(getattr(self, name)) for name in STAGE_ORDER},
            "profiles": {
                p: [[n, to_dict(c)] for n, c in self.stage_configs(p)] for p in self.used_profiles()
            },
            "source_profiles": self.source_profiles,
            "eval_sets": self.decontaminate.fingerprint(),  # editing an eval set redoes the shards
            "quality_model_file": self.quality_model.fingerprint(),  # so does retraining the model
        }


def load_pipeline_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> PipelineConfig:
    return load_config(PipelineConfig, path, overrides)
