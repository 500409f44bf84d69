"""`pretrain eval run|watch|export|report|make-tasks` (also `python -m eval ...`).

    pretrain eval run --checkpoint runs/x/checkpoints/step_000400 --heldout runs/data/heldout
    pretrain eval watch --run-dir runs/x --heldout runs/data/heldout --interval 60 --until-step 2000
    pretrain eval export --checkpoint runs/x/checkpoints/step_000400 --out runs/x/hf
    pretrain eval report --run-dir runs/x
    pretrain eval make-tasks --heldout runs/data/heldout --out runs/tasks
    pretrain eval lm-eval --model pretrain --model_args checkpoint=DIR --include_path T --tasks t

run/watch take an EvalConfig (--config YAML and dotted overrides, e.g. batch_size=8); --heldout,
--tasks and --tokenizer are shortcuts for its fields; --dry-run prints the resolved EvalConfig and
scores nothing. Results go to RUN_DIR/eval/ (--out to change).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from eval.checkpoint import CheckpointError
from eval.config import EvalConfig
from eval.export import ExportError, export_checkpoint
from eval.heldout import read_heldout
from eval.report import write_report
from eval.results import RESULTS
from eval.score import harness, score_checkpoint
from eval.tasks import TaskConfigError, make_tasks
from eval.watch import watch
from pretrain.core.cli import add_config_args, dispatch
from pretrain.core.config import dump_yaml, load_config

# A bad checkpoint, path or export request: one line on stderr and exit 1, not a traceback.
USER_ERRORS = (CheckpointError, ExportError, TaskConfigError, FileNotFoundError, FileExistsError)


def _eval_args(p: argparse.ArgumentParser) -> None:
    add_config_args(
        p,
        config_help="YAML file with an EvalConfig (configs/eval_tiny.yaml)",
        overrides_help="dotted EvalConfig overrides, e.g. batch_size=8 device=cpu",
        dry_run_help="print the resolved EvalConfig, score nothing",
        restart_help=None,
    )
    p.add_argument("--heldout", help="held-out documents: document-shard dir, .parquet or .jsonl")
    p.add_argument("--tasks", help='multiple-choice task directory, "auto" (default) or "none"')
    p.add_argument("--tokenizer", help="tokenizer directory (default: the checkpoint config's)")
    p.add_argument("--out", help="output directory (default: RUN_DIR/eval)")
    p.add_argument("--force", action="store_true", help="rescore checkpoints already in results.jsonl")


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="score one checkpoint")
    p.add_argument("--checkpoint", required=True, help="a step_NNNNNN checkpoint directory")
    _eval_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("watch", help="score each new checkpoint of a run once (beside training)")
    p.add_argument("--run-dir", required=True, help="training run directory (holds checkpoints/)")
    p.add_argument("--interval", type=float, default=60.0, help="seconds between polls (default 60)")
    p.add_argument("--until-step", type=int, help="stop once a checkpoint at or past this step is scored")
    p.add_argument("--once", action="store_true", help="one pass over the checkpoints present, then exit")
    p.add_argument("--timeout", type=float, help="stop after this many seconds")
    _eval_args(p)
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("export", help="write a Hugging Face LlamaForCausalLM directory")
    p.add_argument("--checkpoint", required=True, help="a step_NNNNNN checkpoint directory")
    p.add_argument("--out", required=True, help="output directory (written atomically)")
    p.add_argument("--tokenizer", help="tokenizer directory (default: the checkpoint config's)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="Markdown/HTML report with plots from results.jsonl")
    p.add_argument("--run-dir", help="run directory (reads RUN_DIR/eval/results.jsonl)")
    p.add_argument("--results", help="a results.jsonl (instead of --run-dir)")
    p.add_argument("--out", help="output directory (default: beside results.jsonl)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "lm-eval",
        help="lm-evaluation-harness's command line with our checkpoints as --model pretrain",
        add_help=False,  # --help goes to lm-eval
        prefix_chars="+",  # so `--model ...` reaches lm-eval as arguments, not as options of ours
    )
    p.add_argument("args", nargs=argparse.REMAINDER, help="lm_eval's arguments")
    p.set_defaults(func=cmd_lm_eval)

    p = sub.add_parser("make-tasks", help="the default task set from held-out documents")
    p.add_argument(
        "--heldout", required=True, help="held-out documents: document-shard dir, .parquet or .jsonl"
    )
    p.add_argument("--out", required=True, help="task directory to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-fewshot", type=int, default=1)
    p.add_argument("--max-docs-per-source", type=int, default=200)
    p.set_defaults(func=cmd_make_tasks)


def _config(args: argparse.Namespace) -> EvalConfig:
    overrides = list(args.overrides)
    if args.heldout:
        overrides.append(f"heldout={args.heldout}")
    if args.tasks:
        overrides.append("tasks=null" if args.tasks == "none" else f"tasks={args.tasks}")
    if args.tokenizer:
        overrides.append(f"tokenizer_dir={args.tokenizer}")
    return load_config(EvalConfig, args.config, overrides)


def _guarded(fn, args: argparse.Namespace) -> int:
    """A bad checkpoint, path or export request is one line on stderr and exit 1, not a traceback."""
    logging.getLogger().setLevel(logging.INFO)
    try:
        return fn(args)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def cmd_run(args: argparse.Namespace) -> int:
    def run(args):
        cfg = _config(args)
        if args.dry_run:
            print(dump_yaml(cfg), end="")
            return 0
        rows = score_checkpoint(args.checkpoint, out_dir=args.out, cfg=cfg, force=args.force)
        for r in rows:
            print(f"{r['task']:32s} {r['metric']:16s} {r['value']:.6g}")
        return 0

    return _guarded(run, args)


def cmd_watch(args: argparse.Namespace) -> int:
    def run(args):
        cfg = _config(args)
        if args.dry_run:
            print(dump_yaml(cfg), end="")
            return 0
        steps = watch(
            args.run_dir,
            cfg,
            args.interval,
            args.until_step,
            args.once,
            args.timeout,
            args.out,
            args.force,
        )
        print(f"scored steps: {steps}")
        return 0

    return _guarded(run, args)


def cmd_export(args: argparse.Namespace) -> int:
    def run(args):
        out = export_checkpoint(args.checkpoint, args.out, args.tokenizer, args.dtype, args.overwrite)
        print(f"exported {args.checkpoint} -> {out}")
        return 0

    return _guarded(run, args)


def cmd_report(args: argparse.Namespace) -> int:
    def run(args):
        if not (args.run_dir or args.results):
            raise FileNotFoundError("pass --run-dir DIR or --results FILE")
        results = Path(args.results) if args.results else Path(args.run_dir) / "eval" / RESULTS
        if not results.exists():
            raise FileNotFoundError(f"{results} not found: score a checkpoint first (pretrain eval run)")
        paths = write_report(results, args.out or results.parent)
        print(f"wrote {paths['markdown']}, {paths['html']} and {len(paths['plots'])} plots")
        return 0

    return _guarded(run, args)


def cmd_make_tasks(args: argparse.Namespace) -> int:
    def run(args):
        docs = read_heldout(args.heldout, args.max_docs_per_source)
        made = make_tasks(docs, args.out, seed=args.seed, num_fewshot=args.num_fewshot)
        for name, path in made.items():
            print(f"{name}: {path}")
        return 0

    return _guarded(run, args)


def cmd_lm_eval(args: argparse.Namespace) -> int:
    if harness is None:
        print("error: lm-eval is not installed: pip install -e '.[eval]'", file=sys.stderr)
        return 1
    harness.main(args.args)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval", description="score checkpoints, export to HF")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    return dispatch(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
