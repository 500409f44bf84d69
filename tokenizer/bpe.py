"""Byte-level BPE: how the vocabulary is built, saved and loaded (HF `tokenizers`, no Ray, no torch).

    tok = train_bpe(texts, vocab_size=4096)             # an iterator of str, any length
    save_tokenizer(tok, "runs/tok")                     # tokenizer.json + the transformers files
    bpe = load_tokenizer("runs/tok")                    # bpe.encode(text), bpe.eos_id, bpe.hash

Pre-tokenisation is GPT-4's split regex (contractions, letter runs, digits in groups of at most 3,
punctuation runs, newlines, spaces) followed by ByteLevel *without* its own regex, so every byte
sequence maps to tokens and `decode(encode(x)) == x` for any string. No normalizer (NFC would
change the text) and no post-processor: BOS/EOS are placed by the encoder, so HF's `encode` and
ours give the same ids. Special tokens take the first ids: <|bos|>=0, <|eos|>=1, <|pad|>=2, then
reserved slots. Special-token strings inside a text are encoded as plain bytes
(`split_special_tokens`), so a document cannot smuggle in a control token.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pretrain.shards import atomic_path

# GPT-4 (cl100k) split pattern; \p{N}{1,3} keeps digit groups at most 3 long.
SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
DEFAULT_NUM_RESERVED = 13  # 3 + 13 = 16 special ids, room for chat/FIM tokens later without a retrain


def _byte_decoder() -> dict[str, int]:
    """ByteLevel's printable stand-in character -> the byte it stands for (GPT-2's table)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    )
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTE_DECODER = _byte_decoder()


def special_tokens(num_reserved: int = DEFAULT_NUM_RESERVED) -> list[str]:
    return [BOS, EOS, PAD] + [f"<|reserved_{i}|>" for i in range(num_reserved)]


def _import_tokenizers():
    try:
        import tokenizers
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("the tokenizer needs HF tokenizers: pip install -e '.[tokenizer]'") from e
    return tokenizers


def new_tokenizer():
    """An untrained byte-level BPE tokenizer with the GPT-4 split."""
    tk = _import_tokenizers()
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
    tk = _import_tokenizers()
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


def tokenizer_hash(tok_dir: str | Path) -> str:
    """sha256 of tokenizer.json's bytes: what token manifests and checkpoints record."""
    return hashlib.sha256((Path(tok_dir) / "tokenizer.json").read_bytes()).hexdigest()


@dataclass
class BPETokenizer:
    """A loaded tokenizer: plain-id encode/decode plus the ids the encoder and trainer need."""

    tok: object  # tokenizers.Tokenizer
    path: Path
    hash: str

    def __post_init__(self) -> None:
        # Text that happens to contain "<|eos|>" is encoded as ordinary bytes: control tokens are
        # placed only by the encoder. tokenizer_config.json says the same to transformers.
        self.tok.encode_special_tokens = True

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int:
        i = self.tok.token_to_id(token)
        if i is None:
            raise KeyError(f"{token!r} is not in the vocabulary of {self.path}")
        return i

    @property
    def bos_id(self) -> int:
        return self.token_id(BOS)

    @property
    def eos_id(self) -> int:
        return self.token_id(EOS)

    @property
    def pad_id(self) -> int:
        return self.token_id(PAD)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # encode_batch_fast (tokenizers >= 0.20) skips the char offsets: same ids, ~20% less CPU.
        encode = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)
        return [e.ids for e in encode(texts, add_special_tokens=False)]

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes one token stands for (a special token: its UTF-8 text)."""
        token = self.tok.id_to_token(token_id)
        if token is None:
            raise KeyError(f"id {token_id} is not in the vocabulary of {self.path} (size {self.vocab_size})")
        if token_id in self.tok.get_added_tokens_decoder():
            return token.encode("utf-8")
        return bytes(_BYTE_DECODER[c] for c in token)

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def split(self, text: str) -> Iterator[tuple[int, str, tuple[int, int]]]:
        """(id, token text, char offsets) for each token, for `tokenizer inspect`."""
        enc = self.tok.encode(text, add_special_tokens=False)
        for i, off in zip(enc.ids, enc.offsets):
            yield i, text[off[0] : off[1]], off


def load_tokenizer(tok_dir: str | Path) -> BPETokenizer:
    """Load DIR/tokenizer.json; a missing or unreadable file is an error naming it."""
    tk = _import_tokenizers()
    path = Path(tok_dir) / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: is {tok_dir} a tokenizer directory (pretrain tokenizer train)?"
        )
    try:
        tok = tk.Tokenizer.from_file(str(path))
    except Exception as e:
        raise ValueError(f"cannot load tokenizer {path}: {e}") from None
    return BPETokenizer(tok=tok, path=Path(tok_dir), hash=tokenizer_hash(tok_dir))
