"""CLI: `python -m trainer train --config X [key=value ...] [--dry-run]`.

Multi-process: `torchrun --standalone --nproc_per_node 2 -m trainer train --config X parallel=ddp`.
--dry-run validates the config, prints it resolved and the curriculum timeline, and exits.
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train or resume a model")
    p.add_argument("--config", help="YAML file with a TrainConfig")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and timeline, then exit")
    p.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. parallel=ddp curriculum.phases.1.seq_len=64"
    )
    args = parser.parse_args(argv)

    from pretrain.config import ConfigError, dump_yaml, load_config
    from trainer.schedule import Timeline
    from trainer.train import TrainConfig, train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(TrainConfig, args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        import os

        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        timeline = Timeline.build(cfg.curriculum.phases, cfg.curriculum.schedule, world_size)
        print(dump_yaml(cfg))
        print(timeline.describe())
        return 0
    summary = train(cfg)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
