"""The one console entry point: `pretrain <area> [command] ...`.

    pretrain run configs/run_tiny.yaml             # the whole chain (issue 6)
    pretrain data run --config configs/data_tiny.yaml
    pretrain tokenizer train|encode|inspect ...
    pretrain train --config configs/train_tiny.yaml
    pretrain eval run|watch|export ...
    pretrain plan --params 124M

An area's module is imported only when that area is invoked (so `pretrain plan` never imports Ray
or torch). A module either exposes `add_subcommands(subparsers)` (areas with commands) or
`configure(parser)` (single-command areas); both set `func` on the parsers they build.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pretrain.core.cli import dispatch

AREAS: dict[str, tuple[str, str]] = {
    "run": ("pretrain.run", "raw documents -> scored checkpoint, resumable, one command"),
    "data": ("data_pipeline.cli", "data pipeline stages (Ray)"),
    "tokenizer": ("tokenizer.cli", "train a byte-level BPE, encode shards to token shards, inspect"),
    "train": ("trainer.cli", "train or resume a model (torchrun for several processes)"),
    "eval": ("eval.cli", "score checkpoints, watch a run, export to Hugging Face format"),
    "plan": ("pretrain.plan", "compute planner: tokens, FLOPs, memory per GPU, wall time"),
}


def build_area(parser: argparse.ArgumentParser, module_name: str, dest: str = "cmd") -> None:
    """Let one area's module add its arguments or subcommands to `parser`."""
    module = importlib.import_module(module_name)
    if hasattr(module, "configure"):
        module.configure(parser)
    else:
        module.add_subcommands(parser.add_subparsers(dest=dest, required=True))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="pretrain", description="raw documents in, a scored checkpoint out")
    areas = parser.add_subparsers(dest="area", required=True)
    chosen = argv[0] if argv and argv[0] in AREAS else None
    for name, (module_name, help_text) in AREAS.items():
        p = areas.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            build_area(p, module_name)
    return dispatch(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
