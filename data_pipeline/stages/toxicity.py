"""Toxicity filter: drop (or tag) documents full of profanity, slurs, explicit sex or threats.

Offline and CPU-only. Two scores in [0, 1], combined as a weighted mean:
- word list: the fraction of words that are list hits, scaled so `wordlist_saturation` gives 1.0
  (a 2 KB article with one swear word scores ~0.06, a three-line rant 1.0);
- classifier: `alt-profanity-check` (its scikit-learn model ships in the wheel) or your own pickled
  scikit-learn pipeline with `predict_proba` over raw strings; long documents are cut into chunks of
  `chunk_words` words and the chunk probabilities averaged, weighted by length.
Both scores measure how much of a document is toxic, so a long article with one rude sentence is
kept, while a short abusive one is dropped. The shipped classifier also fires on technical text
(the subprocess docs' paragraph on Popen.kill() scores 0.77), so with the default weights it confirms
the word list but reaches the threshold alone only when all but certain (p >= 0.9999).

    stage = ToxicityConfig(action="tag").build()
    docs = stage.process_batch(docs)  # far faster than process() per document with a classifier

Every document scored gets metadata["toxicity"] = {"score": combined, "wordlist": word-list score,
"classifier": classifier score (None when classifier=none), "hits": number of list matches}.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from data_pipeline.document import Doc, Reject, Stage
from pretrain.core.config import check

# Letters and digits, so "f*ck" in a list and "f*ck" in a text tokenize alike: ("f", "ck").
_TOKEN = re.compile(r"[^\W_]+")
_REPEATS = re.compile(r"([a-z])\1{2,}")  # "fuuuuck", "assss": three or more of the same letter
_STRETCHED = re.compile(r"\b[^\W_]*([a-z])\1\1[^\W_]*")  # a whole token holding such a run


@dataclass
class ToxicityConfig:
    enabled: bool = True
    """Run this stage."""
    wordlist_path: str | None = None
    """Local word list, one lowercase word or phrase per line, `#` comments; None = the shipped list
    (data_pipeline/assets/toxic_words.txt)."""
    classifier: Literal["profanity_check", "sklearn", "none"] = "profanity_check"
    """`profanity_check` (bundled model), `sklearn` (your model at `classifier_path`), or `none`
    (word list only)."""
    classifier_path: str | None = None
    """joblib/pickle file of a scikit-learn estimator whose `predict_proba` takes raw strings; the last
    column of `classes_` is the toxic class. Loading a pickle runs code: only use files you trust."""
    threshold: float = 0.5
    """Documents whose combined score is >= this are toxic."""
    action: Literal["drop", "tag"] = "drop"
    """`drop` rejects toxic documents with reason `toxic`; `tag` keeps every document."""
    wordlist_weight: float = 0.5
    """Weight of the word-list score in the combined score; the classifier gets the rest (the word
    list gets all of it when classifier is `none`)."""
    wordlist_saturation: float = 0.05
    """Fraction of a document's words that are list hits at which the word-list score reaches 1.0."""
    chunk_words: int = 64
    """The classifier scores chunks of this many words; its document score is their length-weighted mean."""

    def __post_init__(self) -> None:
        check(0.0 < self.threshold <= 1.0, "toxicity.threshold", self.threshold, "a score in (0, 1]")
        check(
            0.0 <= self.wordlist_weight <= 1.0,
            "toxicity.wordlist_weight",
            self.wordlist_weight,
            "a weight in [0, 1]",
        )
        check(
            0.0 < self.wordlist_saturation <= 1.0,
            "toxicity.wordlist_saturation",
            self.wordlist_saturation,
            "a fraction of words in (0, 1]",
        )
        check(self.chunk_words > 0, "toxicity.chunk_words", self.chunk_words, "a positive integer")
        if self.classifier == "sklearn":
            check(
                self.classifier_path is not None,
                "toxicity.classifier_path",
                self.classifier_path,
                "a local model file when classifier=sklearn",
            )
        else:
            check(
                self.classifier_path is None,
                "toxicity.classifier_path",
                self.classifier_path,
                "null unless classifier=sklearn",
            )

    def build(self) -> ToxicityFilter:
        return ToxicityFilter(self)


class WordList:
    """Whole-word, case-insensitive matching of single words (a set) and phrases (by first word)."""

    def __init__(self, entries: Sequence[str]):
        self.words: set[str] = set()
        self.phrases: dict[str, list[tuple[str, ...]]] = {}
        for entry in entries:
            tokens = tuple(_TOKEN.findall(entry.lower()))
            if len(tokens) == 1:
                self.words.add(tokens[0])
            elif tokens:
                self.phrases.setdefault(tokens[0], []).append(tokens)
        for options in self.phrases.values():
            options.sort(key=len, reverse=True)  # longest phrase wins
        self.starts = self.words | set(self.phrases)
        self.vocab = self.words | {t for options in self.phrases.values() for p in options for t in p}

    @classmethod
    def load(cls, path: str | None) -> WordList:
        if path is None:
            text = resources.files("data_pipeline").joinpath("assets/toxic_words.txt").read_text("utf-8")
        else:
            if not Path(path).is_file():
                raise FileNotFoundError(f"toxicity.wordlist_path={path!r} does not exist")
            text = Path(path).read_text("utf-8")
        lines = [line.strip() for line in text.splitlines()]
        wordlist = cls([line for line in lines if line and not line.startswith("#")])
        if not wordlist.vocab:
            raise ValueError(f"toxicity.wordlist_path={path!r} holds no words")
        return wordlist

    def tokenize(self, text: str) -> list[str]:
        text = text.lower()
        tokens = _TOKEN.findall(text)
        if _REPEATS.search(text):  # in ~6% of clean documents ("www", "xxx"): the rest skip this
            stretched = {m.group(0) for m in _STRETCHED.finditer(text)} - self.vocab
            fixes = {t: self._unstretch(t) for t in stretched}
            tokens = [fixes.get(t, t) for t in tokens]
        return tokens

    def _unstretch(self, token: str) -> str:
        for repl in (r"\1", r"\1\1"):  # "fuuuck" -> "fuck", "assss" -> "ass"
            if (squeezed := _REPEATS.sub(repl, token)) in self.vocab:
                return squeezed
        return token

    def find(self, tokens: list[str]) -> list[str]:
        """Hits in order; a phrase counts once and its words are not counted again."""
        if self.starts.isdisjoint(tokens):  # most documents
            return []
        hits, next_free = [], 0
        for i in [i for i, t in enumerate(tokens) if t in self.starts]:
            if i < next_free:  # inside a phrase already counted
                continue
            for phrase in self.phrases.get(tokens[i], ()):
                if tuple(tokens[i : i + len(phrase)]) == phrase:
                    hits.append(" ".join(phrase))
                    next_free = i + len(phrase)
                    break
            else:
                if tokens[i] in self.words:
                    hits.append(tokens[i])
        return hits


def _load_classifier(cfg: ToxicityConfig) -> Callable[[list[str]], Sequence[float]] | None:
    if cfg.classifier == "none":
        return None
    if cfg.classifier == "profanity_check":
        try:
            from profanity_check import predict_prob  # heavy (scikit-learn); only this classifier
        except ImportError as e:
            raise ImportError("toxicity.classifier=profanity_check needs `pip install -e '.[data]'`") from e
        return predict_prob
    path = Path(cfg.classifier_path)
    if not path.is_file():
        raise FileNotFoundError(f"toxicity.classifier_path={cfg.classifier_path!r} does not exist")
    import joblib  # scikit-learn's loader; only for a classifier_path model

    model = joblib.load(path)
    if not hasattr(model, "predict_proba"):
        raise TypeError(
            f"toxicity.classifier_path={cfg.classifier_path!r}: {type(model).__name__} has no predict_proba"
        )
    return lambda texts: model.predict_proba(texts)[:, -1]


def _chunks(text: str, num_words: int) -> list[tuple[str, int]]:
    """(chunk, word count) pieces of `num_words` words; a short tail joins the previous chunk."""
    words = text.split()
    pieces = [words[i : i + num_words] for i in range(0, len(words), num_words)]
    if len(pieces) > 1 and len(pieces[-1]) < num_words // 2:
        tail = pieces.pop()
        pieces[-1] = pieces[-1] + tail
    return [(" ".join(p), len(p)) for p in pieces]


class ToxicityFilter(Stage):
    name = "toxicity"

    def __init__(self, cfg: ToxicityConfig):
        self.cfg = cfg
        self.wordlist = WordList.load(cfg.wordlist_path)
        self._predict = _load_classifier(cfg)
        self._list_weight = cfg.wordlist_weight if self._predict is not None else 1.0

    def process(self, doc: Doc) -> Doc | Reject:
        return self.process_batch([doc])[0]

    def process_batch(self, docs: list[Doc]) -> list[Doc | Reject]:
        clf_scores = self._classify(docs) if self._predict is not None else [None] * len(docs)
        return [self._decide(doc, clf) for doc, clf in zip(docs, clf_scores)]

    def _classify(self, docs: list[Doc]) -> list[float]:
        """Length-weighted mean chunk probability per document."""
        chunks = [_chunks(doc.text, self.cfg.chunk_words) for doc in docs]
        flat = [text for doc_chunks in chunks for text, _ in doc_chunks]
        # One call for the whole batch: per call overhead (~5 ms) dwarfs the cost of one document.
        probs = iter(self._predict(flat) if flat else ())
        scores = []
        for doc_chunks in chunks:
            num_words = sum(n for _, n in doc_chunks)
            weighted = sum(float(next(probs)) * n for _, n in doc_chunks)
            scores.append(weighted / num_words if num_words else 0.0)  # empty text scores 0
        return scores

    def _decide(self, doc: Doc, clf: float | None) -> Doc | Reject:
        tokens = self.wordlist.tokenize(doc.text)
        hits = self.wordlist.find(tokens)
        wordlist = min(1.0, len(hits) / max(len(tokens), 1) / self.cfg.wordlist_saturation)
        score = round(self._list_weight * wordlist + (1.0 - self._list_weight) * (clf or 0.0), 4)
        doc.metadata["toxicity"] = {
            "score": score,
            "wordlist": round(wordlist, 4),
            "classifier": None if clf is None else round(clf, 4),
            "hits": len(hits),
        }
        if self.cfg.action == "drop" and score >= self.cfg.threshold:
            top = ", ".join(f"{w} x{n}" for w, n in Counter(hits).most_common(3))
            return Reject("toxic", f"score {score:.2f} >= {self.cfg.threshold}; hits: {top or 'none'}")
        return doc
