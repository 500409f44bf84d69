"""`pretrain tokenizer ...` / `python -m tokenizer ...`: train, encode, inspect.

pretrain tokenizer train --input runs/data --out runs/tokenizer [--config configs/tokenizer_tiny.yaml] [k=v]
pretrain tokenizer encode --input runs/data --tokenizer runs/tokenizer --output runs/tokens [--workers N]
pretrain tokenizer encode --input raw/web.jsonl raw/books/ --tokenizer runs/tokenizer --output runs/tokens
pretrain tokenizer inspect --tokenizer runs/tokenizer "some text"
ray job submit --working-dir . -- python -m tokenizer encode --input ... --tokenizer ... --output ...
"""

from __future__ import annotations

import argparse
import shutil
import sys

from data_pipeline.readers import InputError
from pretrain.core.cli import add_config_args, dispatch
from pretrain.core.config import dump_yaml, load_config
from pretrain.core.runner import PipelineError
from pretrain.core.tokenizer_file import BPETokenizer, load_tokenizer
from tokenizer.config import TokenizerEncodeConfig, TokenizerTrainConfig
from tokenizer.encode import run_encode
from tokenizer.train import train_tokenizer


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a byte-level BPE on a sample of a stage directory's shards")
    p.add_argument("--input", required=True, help="stage directory with shards/ + manifest.json")
    p.add_argument("--out", required=True, help="tokenizer directory to write")
    add_config_args(
        p,
        config_help="YAML (TokenizerTrainConfig); defaults apply to missing fields",
        overrides_help="dotted overrides, e.g. vocab_size=8192",
        dry_run_help="print the resolved config, train nothing",
        restart_help=None,
    )
    p.add_argument("--force", action="store_true", help="retrain even when OUT is up to date")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("encode", help="encode document shards into token shards (one Ray task per shard)")
    p.add_argument(
        "--input",
        required=True,
        nargs="+",
        help="a stage directory (shards/ + manifest.json), files, folders or globs",
    )
    p.add_argument("--tokenizer", required=True, help="tokenizer directory (pretrain tokenizer train --out)")
    p.add_argument("--output", required=True, help="token-shard directory to write")
    p.add_argument("--workers", type=int, help="encode tasks at once (default: one per CPU)")
    add_config_args(
        p,
        config_help="YAML (TokenizerEncodeConfig)",
        overrides_help="dotted overrides, e.g. add_bos=true ray.address=auto",
        dry_run_help="print the resolved config, encode nothing",
    )
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("inspect", help="show how a text is split into tokens")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory")
    p.add_argument("text", nargs="?", help="text to split (default: read stdin)")
    p.set_defaults(func=cmd_inspect)


def cmd_train(args: argparse.Namespace) -> int:
    cfg = load_config(TokenizerTrainConfig, args.config, args.overrides)
    if args.dry_run:
        print(dump_yaml(cfg), end="")
        return 0
    try:
        report = train_tokenizer(args.input, args.out, cfg, force=args.force)
    except (FileNotFoundError, ValueError) as e:  # a wrong directory or unusable input: one line
        print(f"error: {e}", file=sys.stderr)
        return 1
    if report["up_to_date"]:
        print(f"up to date: {args.out} was trained from this input and config (--force to retrain)")
        return 0
    mib = 1 << 20
    print(
        f"vocab {report['vocab_size']}, trained on {report['sample_bytes'] / mib:.1f} MiB "
        f"({report['sample_docs']} docs) in {report['seconds']['total']:.1f} s, "
        f"peak RSS {report['peak_rss_bytes'] / mib:.0f} MiB; held-out bytes/token "
        f"{report['heldout_bytes_per_token']}; output: {args.out} (report.md)"
    )
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    overrides = list(args.overrides) + ([f"workers={args.workers}"] if args.workers is not None else [])
    cfg = load_config(TokenizerEncodeConfig, args.config, overrides)
    if args.dry_run:
        print(dump_yaml(cfg), end="")
        return 0
    if args.restart:
        shutil.rmtree(args.output, ignore_errors=True)
    try:
        stats = run_encode(args.input, args.tokenizer, args.output, cfg)
    except (PipelineError, InputError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    rate = f", {stats['mb_per_second']} MB/s" if stats["mb_per_second"] else ""
    print(
        f"{stats['num_docs']} docs -> {stats['num_tokens']} tokens ({stats['bytes_per_token']} bytes/token), "
        f"{stats['num_tasks_run']} shards encoded, {stats['num_tasks_skipped']} up to date{rate}; "
        f"output: {args.output}"
    )
    return 0


def format_tokens(bpe: BPETokenizer, text: str) -> str:
    """A table of the tokens of `text`: position, id, the token's text (repr) and its UTF-8 bytes."""
    rows = [("#", "id", "text", "bytes")]
    for i, (tid, _, _) in enumerate(bpe.split(text)):
        raw = bpe.token_bytes(tid)
        try:
            shown = repr(raw.decode("utf-8"))
        except UnicodeDecodeError:  # part of a multi-byte character
            shown = repr(raw)
        rows.append((str(i), str(tid), shown, str(len(raw))))
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    lines = [
        f"{r[0]:>{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:>{widths[3]}}" for r in rows
    ]
    n_bytes = len(text.encode("utf-8"))
    n_tok = len(rows) - 1
    ratio = f"{n_bytes / n_tok:.2f}" if n_tok else "-"
    lines.append(f"{n_tok} tokens, {n_bytes} bytes, {ratio} bytes/token")
    return "\n".join(line.rstrip() for line in lines)


def cmd_inspect(args: argparse.Namespace) -> int:
    text = args.text if args.text is not None else sys.stdin.read()
    try:
        bpe = load_tokenizer(args.tokenizer)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_tokens(bpe, text))
    return 0


def main(argv: list[str] | None = None, prog: str = "python -m tokenizer") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    add_subcommands(parser.add_subparsers(dest="cmd", required=True))
    return dispatch(parser, argv)
