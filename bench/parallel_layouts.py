"""Every device-mesh layout of issue 14 against one process, and the meta-init memory, in one run.

    .venv/bin/python bench/parallel_layouts.py            # CPU, gloo, 2-4 local ranks (about 4 min on 2 cores)

Each layout in tests/train_helpers.py LAYOUTS (DDP 2, FSDP2 2, HSDP 2x2, FSDP2 x TP 2x2, PP 2 with
GPipe and 1F1B, PP 2 interleaved 1F1B x FSDP2 2, FSDP2 with per-micro-batch reduce-scatter, ZeRO-2
and every-2nd-block activation checkpointing) trains the same 20 steps (tiny model, 4 layers, a
phase boundary at step 10, accumulation 1-4 depending on the dp degree) as one process; the
reference is that one-process run. Per layout: the largest relative difference of the loss and of
the gradient norm over the 20 steps, and the wall time beside the one-process wall time. Then
`python -m trainer build` builds the 1B preset under FSDP2 on 2 ranks (meta device, sharded,
initialised per shard) and reports the largest rank's peak RSS over the full fp32 model's bytes.

Last line: JSON with "layouts_run", "max_rel_diff_loss", "max_rel_diff_grad_norm" (over every
layout and step), "meta_init_rss_ratio" and "targets" (7+, 1e-5, 1e-5, 0.75), plus per-layout figures.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pretrain.core.config import from_dict  # noqa: E402
from tests.train_helpers import LAYOUTS, build_report, layout_config, layout_rows, write_arith_shards  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.train import train  # noqa: E402

TARGETS = {
    "layouts_run": 7,
    "max_rel_diff_loss": 1e-5,
    "max_rel_diff_grad_norm": 1e-5,
    "meta_init_rss_ratio": 0.75,
}


def rel_diff(ours: list[dict], ref: list[dict], key: str) -> float:
    assert [r["step"] for r in ours] == [r["step"] for r in ref], "steps differ"
    return max(abs(a[key] - b[key]) / abs(b[key]) for a, b in zip(ours, ref))


def timed_run(shards: Path, run: Path, nproc: int = 1, parallel="none", **top) -> float:
    t0 = time.perf_counter()
    train(from_dict(TrainConfig, layout_config(shards, run, nproc, parallel, **top)))
    return time.perf_counter() - t0


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shards = write_arith_shards(root / "tok")
        one_s = timed_run(shards, root / "one_process")
        ref = layout_rows(root / "one_process")
        print(
            f"{'layout':<28} {'ranks':>5} {'loss rel diff':>14} {'grad-norm rel diff':>19} {'wall s':>7} {'vs 1 proc':>9}"
        )
        print(f"{'one process':<28} {1:>5} {'-':>14} {'-':>19} {one_s:>7.1f} {1.0:>9.2f}")
        per_layout = {}
        for name, (nproc, parallel, *top) in LAYOUTS.items():
            wall = timed_run(shards, root / name, nproc, parallel, **(top[0] if top else {}))
            ours = layout_rows(root / name)
            d_loss, d_norm = rel_diff(ours, ref, "loss"), rel_diff(ours, ref, "grad_norm")
            per_layout[name] = {"ranks": nproc, "rel_diff_loss": d_loss, "rel_diff_grad_norm": d_norm,
                                "wall_s": round(wall, 1), "wall_vs_one_process": round(wall / one_s, 2)}  # fmt: skip
            print(f"{name:<28} {nproc:>5} {d_loss:>14.2e} {d_norm:>19.2e} {wall:>7.1f} {wall / one_s:>9.2f}")
        build = build_report(root)
    gib = 2**30
    print(
        f"meta init, 1B under {build['layout']}: full fp32 model {build['full_fp32_bytes'] / gib:.2f} GiB; per rank "
        + ", ".join(
            f"params {r['param_bytes'] / gib:.2f} GiB, peak RSS {r['peak_bytes'] / gib:.2f} GiB"
            for r in build["ranks"]
        )
        + f"; ratio {build['max_peak_ratio']:.3f}"
    )
    out = {
        "layouts_run": len(per_layout),
        "max_rel_diff_loss": max(v["rel_diff_loss"] for v in per_layout.values()),
        "max_rel_diff_grad_norm": max(v["rel_diff_grad_norm"] for v in per_layout.values()),
        "meta_init_rss_ratio": build["max_peak_ratio"],
        "one_process_wall_s": round(one_s, 1),
        "layouts": per_layout,
        "meta_init": build,
        "targets": TARGETS,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
