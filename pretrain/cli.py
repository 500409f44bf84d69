"""The one console entry point: `pretrain <area> <command>`.

    pretrain data run --config configs/data_tiny.yaml
    pretrain data generate-corpus --out runs/corpus

Each area registers its subcommands with `add_subcommands(subparsers)`; `dispatch` runs one.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pretrain.config import ConfigError


def dispatch(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse, run the chosen command, and turn a config error into a one-line message (exit 2)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pretrain", description="raw documents in, a scored checkpoint out")
    areas = parser.add_subparsers(dest="area", required=True)
    from data_pipeline.cli import add_subcommands

    data = areas.add_parser("data", help="data pipeline stages (Ray)")
    add_subcommands(data.add_subparsers(dest="cmd", required=True))
    return dispatch(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
