"""Byte-level BPE: how the vocabulary is built and saved (HF `tokenizers`, no Ray, no torch).
Loading the saved file is the core's job (`pretrain.core.tokenizer_file.load_tokenizer`).

    tok = train_bpe(texts, vocab_size=4096)             # an iterator of str, any length
    save_tokenizer(tok, "runs/tok")                     # tokenizer.json + the transformers files

Pre-tokenisation is GPT-4's split regex (contractions, letter runs, digits in groups of at most 3,
punctuation runs, newlines, spaces) followed by ByteLevel *without* its own regex, so every byte
sequence maps to tokens and `decode(encode(x)) == x` for any string. No normalizer (NFC would
change the text) and no post-processor: BOS/EOS are placed by the encoder, so HF's `encode` and
ours give the same ids. Special tokens take the first ids: <|bos|>=0, <|eos|>=1, <|pad|>=2, then
reserved slots. Special-token strings inside a text are encoded as plain bytes
(`split_special_tokens`), so a document cannot smuggle in a control token.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from pretrain.core.files import atomic_path
from pretrain.core.tokenizer_file import BOS, EOS, PAD, import_tokenizers, tokenizer_hash

# GPT-4 (cl100k) split pattern; \p{N}{1,3} keeps digit groups at most 3 long.
SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
DEFAULT_NUM_RESERVED = 13  # 3 + 13 = 16 special ids, room for chat/FIM tokens later without a retrain


def special_tokens(num_reserved: int = DEFAULT_NUM_RESERVED) -> list[str]:
    return [BOS, EOS, PAD] + [f"<|reserved_{i}|>" for i in range(num_reserved)]


def new_tokenizer():
    """An untrained byte-level BPE tokenizer with the GPT-4 split."""
    tk = import_tokenizers()
    tok = tk.Tokenizer(tk.models.BPE(byte_fallback=False))
    tok.pre_tokenizer = tk.pre_tokenizers.Sequence(
        [
            tk.pre_tokenizers.Split(tk.Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
            tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = tk.decoders.ByteLevel()
    return tok


def train_bpe(texts: Iterable[str], vocab_size: int, num_reserved: int = DEFAULT_NUM_RESERVED):
    """Train on `texts` (streamed; HF counts words as they come) and return a `tokenizers.Tokenizer`."""
    tk = import_tokenizers()
    specials = special_tokens(num_reserved)
    min_size = len(specials) + 256
    if vocab_size < min_size:
        raise ValueError(
            f"vocab_size={vocab_size} must be >= {min_size} (256 bytes + {len(specials)} specials)"
        )
    tok = new_tokenizer()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        special_tokens=specials,
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def save_tokenizer(tok, out_dir: str | Path, model_max_length: int = 1 << 20) -> str:
    """Write tokenizer.json plus tokenizer_config.json / special_tokens_map.json so that
    `transformers.PreTrainedTokenizerFast.from_pretrained(out_dir)` loads it offline. Returns the hash."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "tokenizer.json") as tmp:
        tok.save(str(tmp), pretty=True)
    specials = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": None}
    added = [t for t in tok.get_added_tokens_decoder().values()]
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": True,
        "model_max_length": model_max_length,
        "additional_special_tokens": [t.content for t in added if t.content not in (BOS, EOS, PAD)],
    }
    for name, obj in (("tokenizer_config.json", config), ("special_tokens_map.json", specials)):
        with atomic_path(out / name) as tmp:
            tmp.write_text(json.dumps(obj, indent=2) + "\n")
    return tokenizer_hash(out)
