"""`pretrain train --config X [key=value ...] [--dry-run]` (also `python -m trainer train ...`).

Multi-process on this machine: `pretrain train --config X nproc=2 parallel=ddp` (trainer/launch.py);
across nodes: torchrun (infra/slurm, infra/k8s).
--dry-run validates the config, prints it resolved and the curriculum timeline, and exits.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import torch.distributed as dist

from pretrain.core.cli import dispatch
from pretrain.core.config import dump_yaml, load_config
from trainer.config import TrainConfig
from trainer.launch import INIT_ENV, LaunchError, launch_local, write_summary
from trainer.schedule import Timeline
from trainer.train import RunDirBusy, build_report, train


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file with a TrainConfig")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and timeline, then exit")
    p.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. parallel=ddp curriculum.phases.1.seq_len=64"
    )
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    logging.getLogger().setLevel(logging.INFO)
    cfg = load_config(TrainConfig, args.config, args.overrides)  # ConfigError -> exit 2 in dispatch
    if args.dry_run:
        world_size = int(os.environ.get("WORLD_SIZE", cfg.nproc))  # torchrun's world, else nproc
        cfg.parallel.check_model(cfg.model_config(), world_size)
        d = cfg.parallel.degrees(world_size)
        timeline = Timeline.build(
            cfg.curriculum.phases, cfg.curriculum.schedule, d["dp_replicate"] * d["dp_shard"]
        )
        print(dump_yaml(cfg))
        print(f"layout: {cfg.parallel.describe(world_size)}")
        print(timeline.describe())
        return 0
    try:
        summary = train(cfg)
    except (LaunchError, RunDirBusy) as e:  # a local rank died (which, and its log); a busy run dir
        print(f"train: {e}", file=sys.stderr)
        return 1

    if dist.is_initialized():
        dist.destroy_process_group()
    if not os.environ.get(INIT_ENV):  # a rank of a local launch: the launcher prints it once
        print(summary)
    return 0


def configure_build(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file with a TrainConfig")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model=1b nproc=2 parallel=fsdp2")
    p.set_defaults(func=cmd_build)


def cmd_build(args: argparse.Namespace) -> int:
    """Build the model under the config's layout (meta device, sharded, initialised per shard) in
    nproc local ranks or under torchrun, and print each rank's parameter bytes and peak memory as
    JSON: whether a model builds, and what it costs, before any data or training."""
    cfg = load_config(TrainConfig, args.config, args.overrides)
    try:
        if cfg.nproc > 1 and "WORLD_SIZE" not in os.environ:
            print(json.dumps(launch_local(cfg, command="build")))
            return 0
        report = build_report(cfg)
    except LaunchError as e:
        print(f"build: {e}", file=sys.stderr)
        return 1
    if dist.is_initialized():
        dist.destroy_process_group()
    if os.environ.get(INIT_ENV):  # a rank of a local launch: rank 0 hands the report to the launcher
        if report is not None:
            write_summary(cfg.run_dir, report)
    else:
        print(json.dumps(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer")
    sub = parser.add_subparsers(dest="command", required=True)
    configure(sub.add_parser("train", help="train or resume a model"))
    configure_build(sub.add_parser("build", help="build the model under its layout; report memory per rank"))
    return dispatch(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
