"""Decontamination: drop (or tag) documents that contain an item of an evaluation set the run scores.

Eval sets are read straight from their files (this package imports neither `eval` nor lm_eval):
- a task directory as `pretrain eval` writes it (NAME.yaml + test.jsonl rows {context, choices,
  gold}; a bare directory with test.jsonl is read with those field names), or a folder of them;
- an lm-eval task YAML with local data (`dataset_path: json`, `dataset_kwargs.data_files`; the
  scored split: test_split, else validation_split). `doc_to_text` / `doc_to_choice` /
  `doc_to_target` naming fields give one item per row, prompt + target_delimiter + gold answer;
  a Jinja template or `!function` instead gives every string field of the row as its own item
  (a superset of what the prompt shows);
- plain JSONL with a `text` field (one item per row).

Text on both sides is normalised as datatrove's `simplify_text` does: lowercase, diacritics
stripped, every number -> "0", punctuation and whitespace -> word breaks. A document is
contaminated by an item when either rule fires:
- n-gram overlap (GPT-3, datatrove): at least `min_ngram_overlap` of the item's distinct 13-grams
  occur in the document (catches a document quoting a large part of a long item);
- near copy: the whole item occurs with at most `max_changed_fraction` of its words substituted
  (Hamming distance over words). Items shorter than `ngram_size` words have no n-gram, so this is
  their only rule: a whole-item match. It finds every such copy (pigeonhole): the item is cut into
  k + 1 parts, k = floor(max_changed_fraction * words), so at least one part is unchanged; exact
  parts are the seeds, each seed's alignment is then counted word by word.
Why two rules: 13-grams alone cannot promise to find an item with 10% of its words changed. A
20-word item with words 8 and 9 changed keeps none of its eight 13-grams; changes every 10th word
leave none in any item. `tests/test_decontaminate.py` measures both rules.

Index (built once per worker process, as every stage is): n-grams and parts hashed to 64 bits
(a polynomial hash over blake2b word hashes), one sorted numpy array per length plus the items'
word hashes for the check: about 26 bytes per eval word (MMLU's 1.5M words: ~40 MB).

    stage = DecontaminateConfig(enabled=True, paths=["runs/x/eval/tasks"]).build()
    stage.process(doc)  # Reject("contaminated", "heldout_cloze item test.jsonl:7: near copy, 1/24 words changed")

`action: tag` keeps the document and sets metadata["contaminated"] = [task names].
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from data_pipeline.document import Doc, Reject, Stage
from pretrain.core.config import check
from pretrain.core.hashing import file_fingerprint
from pretrain.core.jsonl import iter_jsonl

log = logging.getLogger(__name__)

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")  # "3.14", "1,000" -> one "0", as datatrove
_WORD = re.compile(r"[^\W_]+")
_MARKS = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")
_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the polynomial n-gram hash
_WORD_CACHE_MAX = 1 << 20  # word -> hash entries kept before the cache is cleared


@dataclass
class DecontaminateConfig:
    enabled: bool = False
    """Run this stage (needs `paths`)."""
    paths: list[str] = field(default_factory=list)
    """Eval sets: task directories (or folders of them), lm-eval task YAMLs with local data files,
    JSONL files with a `text` field. Relative data_files in a YAML are looked up next to it first."""
    action: Literal["drop", "tag"] = "drop"
    """`drop` rejects with reason `contaminated` (detail: task, item and match); `tag` keeps every
    document and sets metadata["contaminated"] to the task names it matches."""
    ngram_size: int = 13
    """Words per n-gram of the overlap rule (13: GPT-3, datatrove)."""
    min_ngram_overlap: float = 0.2
    """Fraction of an item's distinct n-grams a document must contain: a copy of 20% of a long
    passage is caught, and none of the standard library's 655 prose documents reaches it against
    the tests' 120 Faker-written items (tests/test_decontaminate.py)."""
    max_changed_fraction: float = 0.1
    """Near copy: the whole item with at most this fraction of its words substituted (rounded
    down, so items under 10 words must match exactly at 0.1)."""
    min_item_words: int = 8
    """Items with fewer normalised words are skipped (a 5-word answer occurs in unrelated text)."""

    def __post_init__(self) -> None:
        check(
            not self.enabled or bool(self.paths),
            "decontaminate.paths",
            self.paths,
            "at least one eval task directory, lm-eval task YAML or JSONL file when decontaminate.enabled=true",
        )
        check(2 <= self.ngram_size <= 64, "decontaminate.ngram_size", self.ngram_size, "2..64 words")
        check(
            0.0 < self.min_ngram_overlap <= 1.0,
            "decontaminate.min_ngram_overlap",
            self.min_ngram_overlap,
            "a fraction in (0, 1]",
        )
        check(
            0.0 <= self.max_changed_fraction <= 0.3,
            "decontaminate.max_changed_fraction",
            self.max_changed_fraction,
            "a fraction in [0, 0.3] (larger ones make seeds of two words)",
        )
        check(self.min_item_words >= 1, "decontaminate.min_item_words", self.min_item_words, ">= 1")

    def fingerprint(self) -> list | None:
        """Size and mtime of every file the index reads (part of the chain's identity, so editing an
        eval set redoes the shards); None when disabled."""
        if not self.enabled:
            return None
        return [
            [str(f), *file_fingerprint(f).values()]
            for s in eval_sources(self.paths)
            for f in dict.fromkeys([s.origin, *s.files])
        ]

    def build(self) -> DecontaminateFilter:
        return DecontaminateFilter(self)


# -- text -> words -> hashes ----------------------------------------------------------------------
def normalize_words(text: str) -> list[str]:
    """Lowercase words without diacritics; numbers become "0"; punctuation separates words."""
    text = _NUMBER.sub(" 0 ", text.lower())
    if not text.isascii():
        text = _MARKS.sub("", unicodedata.normalize("NFKD", text))
    return _WORD.findall(text)


class _WordHasher:
    """Stable 64-bit word hashes (blake2b), cached: a word is hashed once per process."""

    def __init__(self) -> None:
        self.cache: dict[str, int] = {}

    def _hash(self, word: str) -> int:
        if len(self.cache) >= _WORD_CACHE_MAX:
            self.cache.clear()
        h = self.cache[word] = int.from_bytes(
            hashlib.blake2b(word.encode(), digest_size=8).digest(), "little"
        )
        return h

    def __call__(self, words: list[str]) -> np.ndarray:
        cache = self.cache
        return np.fromiter((cache.get(w) or self._hash(w) for w in words), dtype=np.uint64, count=len(words))


def _rolling(tokens: np.ndarray, lengths: list[int]) -> dict[int, np.ndarray]:
    """Hash of every window of each length: h[s] = sum_i tokens[s + i] * BASE^(length - 1 - i) mod 2^64."""
    out: dict[int, np.ndarray] = {}
    h = tokens.copy()
    for length in range(1, max(lengths, default=0) + 1):
        if length > 1:
            h = h[:-1] * _BASE + tokens[length - 1 :]
        if length in lengths:
            out[length] = h
        if h.size <= 1:
            break
    return out


# -- eval sets -> items ---------------------------------------------------------------------------
@dataclass
class EvalItem:
    task: str
    where: str
    """file:line of the row."""
    text: str


@dataclass
class _Source:
    """One eval set as found on disk: the task, the files holding its rows and how to read a row."""

    task: str
    origin: Path
    """The YAML or JSONL that named it (errors name it)."""
    files: list[Path]
    fields: dict[str, Any] | None
    """doc_to_text / doc_to_choice / doc_to_target / target_delimiter; None: plain JSONL."""


class _TagLoader(yaml.SafeLoader):
    """Reads lm-eval YAMLs: `!function utils.x` becomes the string "!function utils.x"."""


_TagLoader.add_multi_constructor(
    "!", lambda loader, suffix, node: f"!{suffix} {loader.construct_scalar(node)}"
)


def _read_task_yaml(path: Path) -> dict[str, Any]:
    conf = yaml.load(path.read_text(encoding="utf-8"), Loader=_TagLoader) or {}
    if not isinstance(conf, dict):
        raise ValueError(f"{path}: an lm-eval task YAML holds a mapping, got {type(conf).__name__}")
    if isinstance(conf.get("include"), str):  # lm-eval: the included YAML is the base
        base = _read_task_yaml((path.parent / conf["include"]).resolve())
        conf = {**base, **{k: v for k, v in conf.items() if k != "include"}}
    return conf


_MC_FIELDS = {"doc_to_text": "context", "doc_to_choice": "choices", "doc_to_target": "gold"}


def _yaml_source(path: Path) -> _Source:
    conf = _read_task_yaml(path)
    dataset = conf.get("dataset_path")
    if dataset != "json":
        raise ValueError(
            f"{path}: dataset_path={dataset!r}: decontamination reads local data only "
            "(dataset_path: json with dataset_kwargs.data_files)"
        )
    data_files = (conf.get("dataset_kwargs") or {}).get("data_files")
    if isinstance(data_files, (str, list)):
        data_files = {"train": data_files}  # datasets' name for a split-less data_files
    if not isinstance(data_files, dict) or not data_files:
        raise ValueError(
            f"{path}: dataset_kwargs.data_files={data_files!r}: expected a file or split -> files"
        )
    split = conf.get("test_split") or conf.get("validation_split")
    if split not in data_files:
        if len(data_files) != 1:
            raise ValueError(
                f"{path}: test_split={split!r} is not one of data_files' splits {sorted(data_files)}"
            )
        split = next(iter(data_files))
    files = data_files[split]
    files = [files] if isinstance(files, str) else list(files)
    resolved = []
    for f in files:
        p = Path(f)
        p = p if p.is_absolute() or not (path.parent / p).exists() else path.parent / p
        if not p.is_file():
            raise FileNotFoundError(f"{path}: dataset_kwargs.data_files.{split}: {f!r} does not exist")
        resolved.append(p)
    task = conf.get("task") if isinstance(conf.get("task"), str) else path.stem
    fields = {k: conf.get(k) for k in _MC_FIELDS} | {"target_delimiter": conf.get("target_delimiter", " ")}
    return _Source(task, path, resolved, fields)


def _task_name(path: Path) -> str:
    return path.parent.name if path.stem in ("test", "validation", "train") else path.stem


def _sources(path: Path, explicit: bool) -> list[_Source]:
    if path.is_file():
        if path.suffix in (".yaml", ".yml"):
            return [_yaml_source(path)]
        if path.suffix in (".jsonl", ".json"):
            return [_Source(_task_name(path), path, [path], None)]
        raise ValueError(f"decontaminate.paths: {path} is not a task YAML (.yaml) or JSONL file")
    yamls = sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
    if yamls:
        out = []
        for y in yamls:
            try:
                out.append(_yaml_source(y))
            except ValueError as e:  # e.g. an lm-eval group YAML next to the task YAMLs
                log.warning("decontaminate: skipping %s (%s)", y, e)
        if out:
            return out
    if (path / "test.jsonl").is_file():  # a bare task directory: eval/tasks.py's defaults
        return [
            _Source(
                path.name, path / "test.jsonl", [path / "test.jsonl"], dict(_MC_FIELDS, target_delimiter=" ")
            )
        ]
    out = [s for d in sorted(p for p in path.iterdir() if p.is_dir()) for s in _sources(d, False)]
    if not out and explicit:
        raise ValueError(f"decontaminate.paths: {path} holds no task YAML, test.jsonl or task directories")
    return out


def eval_sources(paths: list[str]) -> list[_Source]:
    out = []
    for p in paths:
        if not Path(p).exists():
            raise FileNotFoundError(f"decontaminate.paths: {p!r} does not exist")
        out += _sources(Path(p), explicit=True)
    return out


def _is_template(spec: Any) -> bool:
    return isinstance(spec, str) and ("{{" in spec or "{%" in spec or spec.startswith("!"))


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return []


def _row_texts(row: dict[str, Any], fields: dict[str, Any]) -> list[str]:
    """What of a row the model is shown: prompt + delimiter + gold answer, or, when the YAML renders
    a template or calls a function, every string field on its own."""
    specs = [fields[k] for k in _MC_FIELDS]
    if any(_is_template(s) for s in specs):
        return _strings(row)

    def value(spec: Any) -> Any:
        return row.get(spec, spec) if isinstance(spec, str) else spec  # not a field: a constant

    text, choices, target = (value(s) for s in specs)
    if isinstance(target, int) and not isinstance(target, bool) and isinstance(choices, list):
        target = choices[target] if 0 <= target < len(choices) else None
    parts = [t for t in (text, target) if isinstance(t, str) and t.strip()]
    return [fields["target_delimiter"].join(parts)] if parts else []


def load_eval_items(paths: list[str]) -> list[EvalItem]:
    items = []
    for src in eval_sources(paths):
        for f in src.files:
            rows = _read_rows(f)
            for n, row in rows:
                where = f"{f.name}:{n}"
                if not isinstance(row, dict):
                    raise ValueError(f"{f}:{n}: expected a JSON object, got {type(row).__name__}")
                if src.fields is not None:
                    texts = _row_texts(row, src.fields)
                elif isinstance(row.get("text"), str):
                    texts = [row["text"]]
                elif {"context", "choices", "gold"} <= set(row):
                    texts = _row_texts(row, dict(_MC_FIELDS, target_delimiter=" "))
                else:
                    raise ValueError(
                        f"{f}:{n}: expected a 'text' field (or context/choices/gold), got keys {sorted(row)}"
                    )
                items += [EvalItem(src.task, where, t) for t in texts]
    return items


def _read_rows(path: Path) -> list[tuple[int, Any]]:
    if path.suffix == ".json":  # datasets' json loader also takes one JSON array
        text = path.read_text(encoding="utf-8")
        if text.lstrip().startswith("["):
            return list(enumerate(json.loads(text), 1))
    return list(iter_jsonl(path))


# -- the index ------------------------------------------------------------------------------------
@dataclass
class _Table:
    """Hashes of one length, sorted, with the item and the offset in the item (-1: an n-gram)."""

    keys: np.ndarray
    items: np.ndarray
    offsets: np.ndarray


@dataclass
class Match:
    item: EvalItem
    detail: str


class DecontaminationIndex:
    """Every eval item's n-grams and near-copy seeds, hashed; `match(text)` lists the items in it."""

    def __init__(self, items: list[EvalItem], cfg: DecontaminateConfig):
        self.cfg = cfg
        self.hasher = _WordHasher()
        self.items: list[EvalItem] = []
        self.tokens: list[np.ndarray] = []
        self.num_ngrams: list[int] = []
        self.num_too_short = 0
        entries: dict[int, list[tuple[np.ndarray, int, np.ndarray]]] = defaultdict(list)
        seen: set[tuple[str, bytes]] = set()
        n = cfg.ngram_size
        for item in items:
            toks = self.hasher(normalize_words(item.text))
            if toks.size < cfg.min_item_words:
                self.num_too_short += 1
                continue
            if (item.task, toks.tobytes()) in seen:  # the same item twice in one task
                continue
            seen.add((item.task, toks.tobytes()))
            i, size = len(self.items), int(toks.size)
            grams = np.unique(_rolling(toks, [n])[n]) if size >= n else np.empty(0, np.uint64)
            if grams.size:
                entries[n].append((grams, i, np.full(grams.size, -1, np.int32)))
            cuts = [size * p // self._num_parts(size) for p in range(self._num_parts(size) + 1)]
            for a, b in zip(cuts, cuts[1:]):
                entries[b - a].append((_rolling(toks[a:b], [b - a])[b - a], i, np.array([a], np.int32)))
            self.items.append(item)
            self.tokens.append(toks)
            self.num_ngrams.append(int(grams.size))
        self.tables: dict[int, _Table] = {}
        for length, parts in entries.items():
            keys = np.concatenate([k for k, _, _ in parts])
            owners = np.concatenate([np.full(k.size, i, np.int32) for k, i, _ in parts])
            offsets = np.concatenate([o for _, _, o in parts])
            order = np.argsort(keys, kind="stable")
            self.tables[length] = _Table(keys[order], owners[order], offsets[order])
        self.lengths = sorted(self.tables)

    def _num_parts(self, num_words: int) -> int:
        return self._max_changed(num_words) + 1

    def _max_changed(self, num_words: int) -> int:
        return math.floor(self.cfg.max_changed_fraction * num_words + 1e-9)

    @property
    def num_entries(self) -> int:
        return sum(t.keys.size for t in self.tables.values())

    def match(self, text: str) -> list[Match]:
        toks = self.hasher(normalize_words(text))
        gram_hits: dict[int, set[int]] = defaultdict(set)
        seeds: set[tuple[int, int]] = set()
        for length, hashes in _rolling(toks, self.lengths).items():
            t = self.tables[length]
            lo = np.searchsorted(t.keys, hashes, "left")
            hi = np.searchsorted(t.keys, hashes, "right")
            for s in np.flatnonzero(hi > lo).tolist():  # empty for almost every document
                for e in range(lo[s], hi[s]):
                    item, offset = int(t.items[e]), int(t.offsets[e])
                    if offset < 0:
                        gram_hits[item].add(int(t.keys[e]))
                    else:
                        seeds.add((item, s - offset))
        found: dict[int, str] = {}
        for item, start in sorted(seeds):
            ref = self.tokens[item]
            if item in found or start < 0 or start + ref.size > toks.size:
                continue
            changed = int(np.count_nonzero(toks[start : start + ref.size] != ref))
            if changed <= self._max_changed(ref.size):
                found[item] = f"near copy, {changed}/{ref.size} words changed"
        for item, grams in gram_hits.items():
            if item not in found and len(grams) >= self.cfg.min_ngram_overlap * self.num_ngrams[item]:
                found[item] = f"{len(grams)}/{self.num_ngrams[item]} {self.cfg.ngram_size}-grams"
        return [Match(self.items[i], found[i]) for i in sorted(found)]


class DecontaminateFilter(Stage):
    name = "decontaminate"

    def __init__(self, cfg: DecontaminateConfig):
        self.cfg = cfg
        items = load_eval_items(cfg.paths)
        self.index = DecontaminationIndex(items, cfg)
        if not self.index.items:
            raise ValueError(
                f"decontaminate.paths={cfg.paths!r}: no eval item has >= {cfg.min_item_words} words "
                f"(decontaminate.min_item_words); {len(items)} items read"
            )
        log.info(
            "decontaminate: %d items of %d tasks (%d shorter than %d words skipped), %d hashes",
            len(self.index.items),
            len({i.task for i in self.index.items}),
            self.index.num_too_short,
            cfg.min_item_words,
            self.index.num_entries,
        )

    def process(self, doc: Doc) -> Doc | Reject:
        matches = self.index.match(doc.text)
        if not matches:
            return doc
        tasks = sorted({m.item.task for m in matches})
        if self.cfg.action == "tag":
            doc.metadata["contaminated"] = tasks
            return doc
        first = matches[0]
        more = f" (+{len(matches) - 1} more items)" if len(matches) > 1 else ""
        return Reject(
            "contaminated",
            f"{first.item.task} item {first.item.where}: {first.detail}{more}; tasks: {', '.join(tasks)}",
        )
