"""The one console entry point: `pretrain <area> <command>`.

pretrain data run --config configs/data_tiny.yaml
pretrain data generate-corpus --out runs/corpus
"""

from __future__ import annotations

import argparse
import logging
import sys

from pretrain.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="pretrain", description="raw documents in, a scored checkpoint out")
    areas = parser.add_subparsers(dest="area", required=True)
    data = areas.add_parser("data", help="data pipeline stages (Ray)")
    from data_pipeline.cli import add_subcommands

    add_subcommands(data.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
