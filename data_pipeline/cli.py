"""`pretrain data ...` / `python -m data_pipeline ...`: run the whole chain or one stage.

pretrain data generate-corpus --out runs/corpus
pretrain data run --config configs/data_tiny.yaml [key.sub=value ...] [--dry-run] [--restart]
pretrain data quality --input runs/data --output runs/quality   # one stage over document shards
pretrain data make-pii-set --out pii.jsonl && pretrain data score-pii --input pii.jsonl
ray job submit --working-dir . -- python -m data_pipeline run --config configs/data_tiny.yaml
"""

from __future__ import annotations

import argparse
import json
import sys

from data_pipeline.config import ALL_STAGES, STAGE_ORDER, load_pipeline_config
from data_pipeline.corpus import generate_corpus
from data_pipeline.executor import run_pipeline
from data_pipeline.groundtruth import print_score, score_run
from data_pipeline.minhash.dedup import load_minhash_config, run_minhash_dedup
from data_pipeline.minhash.lsh import format_s_curve
from data_pipeline.pii_eval import DEFAULT_PII_LOCALES, format_table, make_pii_set, score_pii
from data_pipeline.quality_classifier import TrainQualityConfig, train_quality_model
from data_pipeline.readers import InputError, discover_inputs
from pretrain.core.cli import add_config_args, dispatch
from pretrain.core.config import dump_yaml, load_config
from pretrain.core.done import restart
from pretrain.core.jsonl import read_jsonl, write_jsonl
from pretrain.core.runner import PipelineError

STAGE_COMMANDS = {s.replace("_", "-"): s for s in ALL_STAGES}


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run every enabled stage: input -> document shards")
    add_config_args(
        p,
        overrides_help="dotted overrides, e.g. quality.c4.enabled=false",
        dry_run_help="print the resolved config and inputs, run nothing",
        restart_help="delete output_dir first instead of resuming",
    )
    _add_keep_work(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("generate-corpus", help="write the deterministic tiny corpus with ground truth")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-base-docs", type=int, default=600)
    p.set_defaults(func=cmd_corpus)

    p = sub.add_parser(
        "minhash", help="MinHash near-duplicate removal (input: raw files or a stage directory)"
    )
    p.add_argument(
        "--input",
        required=True,
        nargs="+",
        help="a stage directory (e.g. runs/data), files, folders or globs",
    )
    p.add_argument("--output", required=True, help="output stage directory")
    add_config_args(
        p,
        config_help="YAML with minhash:/input:/ray: sections",
        overrides_help="e.g. minhash.threshold=0.7 minhash.num_perm=256",
        dry_run_help="print the resolved config and the S-curve",
    )
    _add_keep_work(p)
    p.set_defaults(func=cmd_minhash)

    p = sub.add_parser("score", help="score a run against the generated corpus's ground truth")
    p.add_argument("--corpus", required=True, help="folder written by generate-corpus")
    p.add_argument("--run", required=True, help="the run's output_dir")
    p.add_argument("--json", action="store_true", help="print the full score as JSON")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser(
        "train-quality", help="train a fastText quality classifier (for the quality_model stage)"
    )
    p.add_argument(
        "--positive", required=True, nargs="+", help="documents to keep: JSONL, Parquet, stage dirs"
    )
    p.add_argument("--negative", required=True, nargs="+", help="documents to drop")
    p.add_argument("--out", required=True, help="directory for model.bin and report.json")
    p.add_argument("--config", help="YAML with TrainQualityConfig fields (epochs, dim, ...)")
    p.add_argument("overrides", nargs="*", help="e.g. epochs=20 dim=64")
    p.set_defaults(func=cmd_train_quality)

    p = sub.add_parser(
        "make-pii-set", help="text with PII written by Faker in several locales, planted truth"
    )
    p.add_argument("--out", required=True, help="JSONL file to write")
    p.add_argument("--locales", default=",".join(DEFAULT_PII_LOCALES), help="comma-separated Faker locales")
    p.add_argument("--per-type", type=int, default=200, help="planted values per type and locale")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_pii_set)

    p = sub.add_parser(
        "score-pii", help="PII recall per type and look-alikes kept, on a JSONL with planted truth"
    )
    p.add_argument(
        "--input", required=True, help="JSONL: text, language, planted [{type, value}], lookalikes"
    )
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.set_defaults(func=cmd_score_pii)

    for cmd, stage in STAGE_COMMANDS.items():
        p = sub.add_parser(cmd, help=f"run only the {stage} stage (input: raw files or a stage directory)")
        p.add_argument("--input", required=True, nargs="+", help="files, folders, globs or a stage directory")
        p.add_argument("--output", required=True, help="output stage directory")
        add_config_args(p, config_help="YAML config for the stage's settings")
        _add_keep_work(p)
        p.set_defaults(func=cmd_run, only_stage=stage)


def _add_keep_work(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--keep-work", action="store_true", help="keep _work/ after the run finishes (config: keep_work=true)"
    )


def _keep_work(args: argparse.Namespace) -> list[str]:
    return ["keep_work=true"] if args.keep_work else []


def cmd_run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except InputError as e:  # a missing or unreadable input path: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides) + _keep_work(args)
    only = getattr(args, "only_stage", None)
    if only:
        overrides += [f"input.paths={json.dumps(args.input)}", f"output_dir={args.output}"]
        overrides += [f"{s}.enabled={'true' if s == only else 'false'}" for s in ALL_STAGES]
        if only in STAGE_ORDER:  # a profile may not switch other stages back on
            overrides.append(f"only_stages=[{only}]")
    cfg = load_pipeline_config(args.config, overrides)
    if args.dry_run:
        print(dump_yaml(cfg), end="")
        units = discover_inputs(cfg.input)
        dedup = " -> exact_dedup" if cfg.exact_dedup.enabled else ""
        print(f"# {len(units)} input units")
        for profile in cfg.used_profiles():
            stages = [name for name, _ in cfg.stage_configs(profile)]
            print(f"# stages ({profile}): {' -> '.join(['read', *stages])}{dedup}")
        return 0
    if args.restart:
        restart(cfg.output_dir)
    try:
        stats = run_pipeline(cfg)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"{stats['num_in']} in = {stats['num_kept']} kept + {stats['num_rejected']} rejected; "
        f"output: {cfg.output_dir}"
    )
    return 0


def cmd_minhash(args: argparse.Namespace) -> int:
    overrides = [f"input.paths={json.dumps(args.input)}", "input_dir=null", f"output_dir={args.output}"]
    cfg = load_minhash_config(args.config, [*overrides, *args.overrides, *_keep_work(args)])
    if args.dry_run:
        print(dump_yaml(cfg), end="")
        bands, rows = cfg.minhash.bands_rows()
        mh = cfg.minhash
        print(format_s_curve(bands, rows, mh.num_perm, mh.verify_threshold if mh.verify else None))
        return 0
    if args.restart:
        restart(cfg.output_dir)
    try:
        stats = run_minhash_dedup(cfg)
    except (PipelineError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    m = stats["minhash"]
    near = stats["stages"]["minhash_dedup"]["rejected"]
    read = stats["stages"].get("read")  # raw inputs: records rejected while reading them
    print(
        f"{stats['num_in']} in = {stats['num_kept']} kept + {near} near duplicates"
        + (f" + {read['rejected']} rejected reading the input" if read else "")
        + "; "
        f"{m['num_clusters']} clusters, {m['num_candidates']} candidate pairs, {m['num_verified_edges']} verified; "
        f"output: {cfg.output_dir}"
    )
    return 0


def cmd_corpus(args: argparse.Namespace) -> int:
    info = generate_corpus(args.out, seed=args.seed, num_base_docs=args.num_base_docs)
    print(json.dumps(info, indent=2, default=str))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    score = score_run(args.corpus, args.run)
    if args.json:
        print(json.dumps(score, indent=2))
    else:
        print_score(score)
    return 0 if score["num_met"] == score["num_docs"] else 1


def cmd_train_quality(args: argparse.Namespace) -> int:
    cfg = load_config(TrainQualityConfig, args.config, list(args.overrides))
    report = train_quality_model(args.positive, args.negative, args.out, cfg)
    print(
        f"model: {args.out}/model.bin; held-out precision {report['precision']:.3f}, "
        f"recall {report['recall']:.3f} ({report['num_heldout']} documents)"
    )
    return 0


def cmd_make_pii_set(args: argparse.Namespace) -> int:
    rows = make_pii_set([x for x in args.locales.split(",") if x], args.per_type, args.seed)
    write_jsonl(args.out, rows)
    print(f"wrote {len(rows)} rows to {args.out}")
    return 0


def cmd_score_pii(args: argparse.Namespace) -> int:
    table = score_pii(read_jsonl(args.input))
    print(json.dumps(table, indent=2) if args.json else format_table(table))
    return 0


def main(argv: list[str] | None = None, prog: str = "python -m data_pipeline") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    add_subcommands(parser.add_subparsers(dest="cmd", required=True))
    return dispatch(parser, argv)
