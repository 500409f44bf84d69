"""Load a training checkpoint's model weights for scoring or export: CPU, no optimizer, no GPU.

    ckpt = load_checkpoint_model("runs/x/checkpoints/step_000400")   # LoadedCheckpoint
    ckpt.model, ckpt.meta["step"], ckpt.tokens_seen, ckpt.tokenizer_dir
    tok = load_tokenizer_for(ckpt, override=None)   # refuses a tokenizer the run was not trained with
    prefix = document_prefix_id(ckpt, tok)           # EOS, or BOS for shards encoded with add_bos

Only the `model.*` entries of the DCP checkpoint are read, into a plain single-device model, so a
checkpoint written by FSDP2 on many GPUs (one shard file per rank) loads on a laptop: DCP
reassembles each full tensor from the shards. A directory without meta.json (a save still in
progress, `step_N.tmp`, or a crash) is an incomplete checkpoint; unreadable DCP files are a corrupt
one; both raise CheckpointError naming the directory.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

from pretrain.core.tokenizer_file import BPETokenizer, load_tokenizer
from trainer.model import Transformer
from trainer.model_config import ModelConfig, preset

META = "meta.json"  # trainer/checkpoint.py writes it last: its presence marks a complete checkpoint


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupt or inconsistent; the message names it."""


@dataclass
class LoadedCheckpoint:
    path: Path
    meta: dict[str, Any]
    model: Transformer  # fp32, on CPU unless moved

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    @property
    def tokens_seen(self) -> int | None:
        return self.meta.get("tokens_seen")

    @property
    def config(self) -> dict[str, Any]:
        return self.meta.get("config") or {}

    @property
    def tokenizer_dir(self) -> str | None:
        return (self.config.get("data") or {}).get("tokenizer_dir")

    @property
    def tokenizer_hash(self) -> str | None:
        return (self.config.get("data") or {}).get("tokenizer_hash")


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """meta.json of a complete checkpoint, or CheckpointError saying why it is not one."""
    path = Path(path)
    if path.name.endswith(".tmp"):
        raise CheckpointError(
            f"incomplete checkpoint {path}: a `.tmp` directory is a save still being written"
        )
    if not path.is_dir():
        tmp = path.with_name(path.name + ".tmp")
        hint = f" (only {tmp.name} exists: a save still being written)" if tmp.is_dir() else ""
        raise CheckpointError(f"checkpoint {path} does not exist{hint}")
    meta_path = path / META
    if not meta_path.is_file():
        raise CheckpointError(
            f"incomplete checkpoint {path}: no {META} (the trainer writes it last; the save did not finish)"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"corrupt checkpoint {path}: cannot read {META}: {e}") from None
    for key in ("step", "config"):
        if key not in meta:
            raise CheckpointError(f"corrupt checkpoint {path}: {META} has no {key!r} (keys: {sorted(meta)})")
    return meta


def model_config_of(meta: dict[str, Any]) -> ModelConfig:
    """The ModelConfig the checkpoint was trained with (preset name + overrides from its config)."""
    cfg = meta["config"]
    return preset(cfg.get("model", "tiny"), **(cfg.get("model_overrides") or {}))


def load_checkpoint_model(path: str | Path) -> LoadedCheckpoint:
    """Read meta.json, build the model on CPU and load only its DCP weights (fp32)."""
    path = Path(path)
    meta = read_checkpoint_meta(path)
    mcfg = model_config_of(meta)
    with torch.device("meta"):
        model = Transformer(mcfg)
    model.to_empty(device="cpu")
    model.init_weights()  # RoPE tables and the lm_head tie; the weights are overwritten below
    state = dict(model.state_dict())  # views of the parameters: DCP loads into them in place
    try:
        stored = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    except (Exception, CheckpointException) as e:
        raise CheckpointError(f"corrupt checkpoint {path}: cannot read the DCP metadata: {e}") from None
    if mcfg.tie_embeddings and "model.lm_head.weight" not in stored:
        state.pop("lm_head.weight")  # a tied head may be stored once, under the embedding's name
    missing = sorted(k for k in state if f"model.{k}" not in stored)
    if missing:
        raise CheckpointError(
            f"checkpoint {path} does not match its config's model "
            f"({meta['config'].get('model')} + {meta['config'].get('model_overrides')}): missing {missing[:5]}"
        )
    for k, v in state.items():
        shape = tuple(getattr(stored[f"model.{k}"], "size", ()))
        if shape != tuple(v.shape):
            raise CheckpointError(
                f"checkpoint {path}: {k} has shape {shape}, the config gives {tuple(v.shape)}"
            )
    try:
        with warnings.catch_warnings():  # DCP warns that it runs without a process group
            warnings.filterwarnings("ignore", message=".*assuming the intent is to.*single process")
            dcp.load({"model": state}, checkpoint_id=str(path))
    except (Exception, CheckpointException) as e:
        raise CheckpointError(f"corrupt checkpoint {path}: cannot load the model weights: {e}") from None
    if mcfg.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model.eval()
    return LoadedCheckpoint(path=path, meta=meta, model=model)


def load_tokenizer_for(ckpt: LoadedCheckpoint, override: str | None) -> BPETokenizer:
    """The checkpoint's tokenizer (or `override`), refusing one whose hash differs from training's."""
    tok_dir = override or ckpt.tokenizer_dir
    if tok_dir is None:
        raise CheckpointError(
            f"checkpoint {ckpt.path}: its config has no data.tokenizer_dir; pass the tokenizer (--tokenizer DIR)"
        )
    tok = load_tokenizer(tok_dir)
    if ckpt.tokenizer_hash and tok.hash != ckpt.tokenizer_hash:
        raise CheckpointError(
            f"tokenizer {tok_dir} (hash {tok.hash[:12]}) is not the one checkpoint {ckpt.path} was trained "
            f"with (hash {ckpt.tokenizer_hash[:12]})"
        )
    return tok


def document_prefix_id(ckpt, tok, choice: str = "auto") -> int:
    """The token a document's first window is conditioned on: what preceded a document's first token
    in training. Documents are packed as `[bos if add_bos] + ids + [eos]`, so it is BOS when the
    token shards were encoded with add_bos (their manifest records a bos_id), else EOS."""
    if choice != "auto":
        return tok.eos_id if choice == "eos" else tok.bos_id
    for src in sorted(set(((ckpt.config.get("data") or {}).get("sources") or {}).values())):
        manifest = Path(src) / "manifest.json"
        try:
            if json.loads(manifest.read_text()).get("bos_id") is not None:
                return tok.bos_id
        except (OSError, ValueError):
            continue  # shards moved or gone: EOS, the add_bos=false default
    return tok.eos_id
