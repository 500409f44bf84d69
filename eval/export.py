"""Export a training checkpoint to Hugging Face `LlamaForCausalLM` format (CPU only, atomic).

    out = export_checkpoint("runs/x/checkpoints/step_000400", "runs/x/hf")
    # AutoModelForCausalLM.from_pretrained("runs/x/hf"); lm_eval --model hf --model_args pretrained=runs/x/hf

Writes config.json, model.safetensors, generation_config.json, the tokenizer files (tokenizer.json,
tokenizer_config.json with model_max_length set to the model's context, special_tokens_map.json)
and a short README.md. Weights are read from the DCP checkpoint onto CPU (eval/checkpoint.py), so
an FSDP-sharded checkpoint needs no GPU. Parameter names are already HF's (trainer/model.py), RoPE
is HF's rotate-half layout: export renames keys and permutes nothing. Everything is written to a
temporary sibling directory, renamed into place at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from eval.checkpoint import (
    document_prefix_id,
    load_checkpoint_model,
    load_tokenizer_for,
    model_config_of,
    read_checkpoint_meta,
)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
DTYPES = ("float32", "bfloat16", "float16")
QK_NORM_MESSAGE = (
    "qk_norm=true has no LlamaForCausalLM equivalent (its q_norm/k_norm weights would be dropped and the "
    "logits would differ); export supports qk_norm=false models only"
)


class ExportError(ValueError):
    """The checkpoint cannot be expressed as the target format; the message says why."""


def hf_config(model, tok, dtype: str) -> dict[str, Any]:
    """config.json: the model's Llama fields plus token ids and dtype, readable by transformers 4.x and 5.x."""
    cfg = model.cfg
    if cfg.qk_norm:
        raise ExportError(QK_NORM_MESSAGE)
    out = model.hf_config()
    out.update(
        {
            "bos_token_id": tok.bos_id,
            "eos_token_id": tok.eos_id,
            "pad_token_id": tok.pad_id,
            "rope_scaling": None,
            # transformers >= 5 reads rope_parameters; 4.x reads rope_theta (kept above).
            "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
            "torch_dtype": dtype,
            "dtype": dtype,
            "use_cache": True,
        }
    )
    return out


def hf_state_dict(model, dtype: str) -> dict[str, Any]:
    sd = model.state_dict()
    torch_dtype = getattr(torch, dtype)
    return {
        hf: sd[ours].detach().to(torch_dtype).contiguous() for ours, hf in model.hf_state_dict_names().items()
    }


def _readme(name: str, meta: dict[str, Any], tok, prefix_id: int) -> str:
    return (
        f"# {name}\n\nExported by `pretrain eval export` from checkpoint step {meta.get('step')} "
        f"({meta.get('tokens_seen')} tokens seen).\n\n"
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "model = AutoModelForCausalLM.from_pretrained(PATH)\ntok = AutoTokenizer.from_pretrained(PATH)\n```\n\n"
        f"In training each document followed token {prefix_id} ({tok.decode([prefix_id])}); the tokenizer adds "
        "no BOS by itself. For lm-eval numbers equal to `pretrain eval`, condition documents on it: "
        f"`lm_eval --model hf --model_args pretrained=PATH,prefix_token_id={prefix_id} ...`\n"
    )


def export_checkpoint(
    ckpt_dir: str | Path,
    out_dir: str | Path,
    tokenizer_dir: str | Path | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
) -> Path:
    """Write the HF directory `out_dir` for checkpoint `ckpt_dir`; returns out_dir."""
    from safetensors.torch import save_file  # optional (eval extra): only export writes safetensors

    if dtype not in DTYPES:
        raise ExportError(f"dtype={dtype!r} is invalid: expected one of {list(DTYPES)}")
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    meta = read_checkpoint_meta(ckpt_dir)
    if model_config_of(meta).qk_norm:  # before reading any weights
        raise ExportError(f"checkpoint {ckpt_dir}: {QK_NORM_MESSAGE}")
    ckpt = load_checkpoint_model(ckpt_dir)
    tok = load_tokenizer_for(ckpt, str(tokenizer_dir) if tokenizer_dir else None)
    if tok.vocab_size > ckpt.model.cfg.vocab_size:
        raise ExportError(
            f"tokenizer has {tok.vocab_size} ids but the model only {ckpt.model.cfg.vocab_size} embedding rows"
        )
    config = hf_config(ckpt.model, tok, dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        save_file(hf_state_dict(ckpt.model, dtype), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        gen = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        for name in TOKENIZER_FILES:
            src = Path(tok.path) / name
            if not src.exists():
                raise ExportError(f"tokenizer file {src} is missing (pretrain tokenizer train writes it)")
            shutil.copyfile(src, tmp / name)
        tk_cfg = json.loads((tmp / "tokenizer_config.json").read_text())
        tk_cfg["model_max_length"] = ckpt.model.cfg.max_seq_len  # the tokenizer's own default is unbounded
        (tmp / "tokenizer_config.json").write_text(json.dumps(tk_cfg, indent=2) + "\n")
        (tmp / "README.md").write_text(_readme(out.name, ckpt.meta, tok, document_prefix_id(ckpt, tok)))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
