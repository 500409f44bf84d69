"""CLI plumbing every folder's `python -m <folder>` shares: one dispatch that turns a config error
into a one-line message (exit 2), and the argument blocks the commands repeat.

    parser = argparse.ArgumentParser(prog="python -m tokenizer")
    p = sub.add_parser("encode"); add_config_args(p, overrides_help="e.g. batch_rows=4096")
    return dispatch(parser, argv)
"""

from __future__ import annotations

import argparse
import logging
import sys

from pretrain.core.config import ConfigError


def dispatch(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse, run the chosen command, and turn a config error into a one-line message (exit 2)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2


def add_config_args(
    p: argparse.ArgumentParser,
    config_help: str = "YAML config (defaults apply to missing fields)",
    overrides_help: str = "dotted overrides, e.g. section.field=value",
    dry_run_help: str = "print the resolved config, run nothing",
    restart_help: str | None = "delete the output directory first instead of resuming",
) -> None:
    """--config FILE, positional key=value overrides, --dry-run and (unless None) --restart."""
    p.add_argument("--config", help=config_help)
    p.add_argument("overrides", nargs="*", help=overrides_help)
    p.add_argument("--dry-run", action="store_true", help=dry_run_help)
    if restart_help is not None:
        p.add_argument("--restart", action="store_true", help=restart_help)
