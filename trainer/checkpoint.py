"""Atomic, retained training checkpoints: DCP for model + optimizer, JSON for the rest.

    save_checkpoint(ckpt_dir, step, model, optimizer, meta, keep_last=3, keep_every=1000)
    path = latest_checkpoint(ckpt_dir)            # newest complete step_NNNNNN/, or None
    meta = load_checkpoint(path, model, optimizer)

Layout of one checkpoint, `step_NNNNNN/`: the `torch.distributed.checkpoint` files (sharded
per rank under FSDP2), `meta.json` (step, scheduler, loader state, config, data fingerprint),
and `rng_rank{r}.pt`. Every rank writes into `step_NNNNNN.tmp/`; after a barrier rank 0 writes
meta.json last and renames the directory, so a crash at any point leaves only a `.tmp`
directory that loading ignores, and the previous checkpoint stays the newest complete one.
`get_state_dict`/`set_state_dict` make the same code serve a plain module, DDP and FSDP2;
without a process group DCP saves and loads in the single process.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from pretrain.core.files import read_json, write_json
from trainer.parallelize import barrier

_STEP_DIR = re.compile(r"^step_(\d+)$")
META = "meta.json"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def rng_state() -> dict[str, Any]:
    """RNG states as tensors and plain values only, so loading needs no pickle (weights_only=True)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def step_dir(ckpt_dir: str | Path, step: int) -> Path:
    return Path(ckpt_dir) / f"step_{step:06d}"


def complete_checkpoints(ckpt_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first; `.tmp` leftovers never match."""
    root = Path(ckpt_dir)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / META).is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The newest complete checkpoint (by scanning, so a stale `latest` pointer cannot mislead)."""
    found = complete_checkpoints(ckpt_dir)
    return found[-1][1] if found else None


def _dcp_quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():  # DCP warns that it runs single-process when no group exists
        warnings.filterwarnings("ignore", message=".*assuming the intent is to.*single process")
        return fn(*args, **kwargs)


def _begin(root: Path, step: int) -> tuple[Path, Path]:
    """Collective: rank 0 makes an empty `step_NNNNNN.tmp/`; returns (final, tmp)."""
    final = step_dir(root, step)
    tmp = final.with_name(final.name + ".tmp")
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    return final, tmp


def _finalize(root: Path, final: Path, tmp: Path, meta: dict[str, Any]) -> None:
    """Rank 0, after every rank's files are in `tmp`: meta.json last, then the atomic rename."""
    write_json(tmp / META, meta)  # last file: its presence marks completeness
    if final.exists():  # re-saving a step after a resume
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    write_json(root / "latest", {"step": meta["step"], "path": final.name})


def save_checkpoint(
    ckpt_dir: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    meta: dict[str, Any],
    keep_last: int = 3,
    keep_every: int = 0,
) -> Path:
    """Collective: every rank calls it. Returns the final directory."""
    root = Path(ckpt_dir)
    final, tmp = _begin(root, step)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    _dcp_quiet(dcp.save, {"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
    torch.save(rng_state(), tmp / f"rng_rank{_rank()}.pt")
    barrier()
    if _rank() == 0:
        _finalize(root, final, tmp, {**meta, "step": step})
        prune(root, keep_last, keep_every)
    barrier()
    return final


class AsyncCheckpointer:
    """Checkpoints written in the background, at most one in flight.

        saver = AsyncCheckpointer()
        saver.save(ckpt_dir, step, model, optimizer, meta, keep_last, keep_every)  # returns once staged
        ...                                        # training goes on while the files are written
        path = saver.finish()                      # collective: waits, then completes the checkpoint

    save() copies the state to host memory (dcp.async_save's staging) and returns; DCP writes the
    files from a thread, its collectives on a gloo group of their own (never the training group
    from two threads). finish() (called by the next save() and at the end) waits for the write,
    then rank 0 writes meta.json, renames the directory and prunes old checkpoints in a thread of
    its own, off the training path. Until then the directory is `.tmp`, which loading ignores, so a
    crash mid-write leaves the previous checkpoint the newest."""

    def __init__(self) -> None:
        self._pg = dist.new_group(backend="gloo") if dist.is_initialized() else None  # collective
        self._pending: tuple | None = None
        self._pruner: threading.Thread | None = None

    def save(self, ckpt_dir: str | Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
             meta: dict[str, Any], keep_last: int = 3, keep_every: int = 0) -> Path:  # fmt: skip
        """Collective: finish the previous checkpoint, then stage this one and start its write."""
        self.finish()
        root = Path(ckpt_dir)
        final, tmp = _begin(root, step)
        model_sd, optim_sd = get_state_dict(model, optimizer)
        future = _dcp_quiet(dcp.async_save, {"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp),
                            process_group=self._pg)  # fmt: skip
        torch.save(rng_state(), tmp / f"rng_rank{_rank()}.pt")
        self._pending = (future, root, final, tmp, {**meta, "step": step}, keep_last, keep_every)
        return final

    @property
    def in_flight(self) -> bool:
        return self._pending is not None

    def finish(self) -> Path | None:
        """Collective: wait for the write in flight and complete its checkpoint; its path, or None."""
        if self._pending is None:
            return None
        future, root, final, tmp, meta, keep_last, keep_every = self._pending
        self._pending = None
        future.result()
        barrier()
        if _rank() == 0:
            _finalize(root, final, tmp, meta)
            if self._pruner is not None:
                self._pruner.join()
            self._pruner = threading.Thread(target=prune, args=(root, keep_last, keep_every), daemon=True)
            self._pruner.start()
        barrier()
        return final

    def close(self) -> None:
        """finish(), then wait for the pruning thread."""
        self.finish()
        if self._pruner is not None:
            self._pruner.join()
            self._pruner = None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prune(ckpt_dir: str | Path, keep_last: int, keep_every: int) -> list[int]:
    """Delete complete checkpoints outside (the last `keep_last`) and (steps % keep_every == 0)."""
    found = complete_checkpoints(ckpt_dir)
    recent = {s for s, _ in found[-keep_last:]} if keep_last > 0 else set()
    removed = []
    for s, p in found:
        if s in recent or (keep_every > 0 and s % keep_every == 0):
            continue
        shutil.rmtree(p)
        removed.append(s)
    return removed


def read_meta(path: str | Path) -> dict[str, Any]:
    return read_json(Path(path) / META)


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Collective: restore model, optimizer and this rank's RNG in place; return meta.json."""
    path = Path(path)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    _dcp_quiet(dcp.load, state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    rng_file = path / f"rng_rank{_rank()}.pt"
    if not rng_file.exists():  # world size grew since the save: rank 0's state is the best guess
        rng_file = path / "rng_rank0.pt"
    set_rng_state(torch.load(rng_file, weights_only=True))
    return read_meta(path)
