"""MinHash signatures for a batch of documents, bit-identical to datasketch's own MinHash.

    hasher = MinHasher(num_perm=128, seed=1, ngram=5, mode="word")
    sigs = hasher.signatures(texts)  # (N, num_perm) uint32

Permutations are datasketch 2.0's "affine32" scheme, pinned explicitly (its default changed in
2.0): the 32-bit shingle hash is pre-mixed with the MurmurHash3 finalizer, then permuted by
`a_k * h + b_k mod 2^32` with (a_k, b_k) taken from `datasketch.MinHash(num_perm, seed).permutations`.
For every document `sigs[i]` equals the `hashvalues` of
`MinHash(num_perm, seed, scheme="affine32", hashfunc=shingle_hash32)` updated with each shingle of
`data_pipeline.minhash.shingles.shingles(text, ngram, mode)` (the tests check this bit for bit).

The shingle hash (`shingle_hash32`, part of `scheme_id`) is built so numpy can compute it without
forming shingle strings: each token gets a 64-bit hash (a word: xxh3_64 of its UTF-8 bytes; a
character: the 64-bit MurmurHash3 finalizer of its code point), the tokens of a shingle are combined
by Horner's rule with an odd constant mod 2^64, and the high 32 bits of the finalised sum are the
shingle hash. Only the per-word xxh3 call runs in Python (through `map`); windowing, combining,
permuting and the per-document minimum are numpy over the whole batch.

A document without shingles (no word characters) gets datasketch's empty signature: every value
2^32 - 1, so two such documents estimate Jaccard 1.0, like `jaccard(set(), set())`.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import version
from itertools import chain

import numpy as np

from data_pipeline.minhash.shingles import normalize_for_shingles, words_utf8
from pretrain.core.config import check

SCHEME = "affine32"
HASH_NAME = "tok64-horner-fmix64hi32-v1"  # word tokens: xxh3_64 (xxhash, seed 0); chars: fmix64
EMPTY_VALUE = np.uint32(0xFFFFFFFF)
MODES = ("word", "char")

_M64 = (1 << 64) - 1
_HORNER = 0x9E3779B97F4A7C15  # odd (golden ratio): a bijection on the running sum
_BATCH_DOCS = 2048  # bounds the temporaries of one pass (about 60 bytes per token)
_CHUNK_SHINGLES = 8192  # a (num_perm, chunk) uint32 block of permuted hashes stays in cache


def _fmix64(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def _fmix32(h: np.ndarray) -> np.ndarray:
    # datasketch.minhash._fmix(h, 32), inlined so the hot path keeps uint32 without lookups.
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def _fmix64_int(h: int) -> int:
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _M64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _M64
    return h ^ (h >> 33)


def shingle_hash32(shingle: str | bytes, mode: str = "word") -> int:
    """The 32-bit hash of one shingle, in plain Python: the reference the numpy path must match,
    and a `hashfunc` for datasketch's MinHash (word shingles are their words joined by spaces)."""
    import xxhash  # [data] extra; the config and CLI import this module without it

    if isinstance(shingle, bytes):
        shingle = shingle.decode("utf-8", "surrogatepass")
    if mode == "word":
        tokens = [xxhash.xxh3_64_intdigest(w.encode("utf-8", "surrogatepass")) for w in shingle.split(" ")]
    else:
        tokens = [_fmix64_int(ord(c)) for c in shingle]
    acc = 0
    for t in tokens:
        acc = (acc * _HORNER + t) & _M64
    return _fmix64_int(acc) >> 32


class MinHasher:
    """Batched MinHash over word or character n-grams (see the module docstring)."""

    def __init__(self, num_perm: int = 128, seed: int = 1, ngram: int = 5, mode: str = "word"):
        check(1 <= num_perm <= 4096, "num_perm", num_perm, "an integer in [1, 4096]")
        check(0 <= seed < 2**32, "seed", seed, "an integer in [0, 2**32)")
        check(ngram >= 1, "ngram", ngram, "a positive integer")
        check(mode in MODES, "mode", mode, f"one of {MODES}")
        from datasketch import MinHash  # [data] extra (pulls scipy); only for the permutations

        self.num_perm, self.seed, self.ngram, self.mode = num_perm, seed, ngram, mode
        a, b = MinHash(num_perm=num_perm, seed=seed, scheme=SCHEME).permutations
        self._a = np.ascontiguousarray(a, dtype=np.uint32)[:, None]  # (P, 1)
        self._b = np.ascontiguousarray(b, dtype=np.uint32)[:, None]
        self.scheme_id = (
            f"datasketch-{version('datasketch')}/{SCHEME}/seed{seed}/perm{num_perm}/{mode}{ngram}/{HASH_NAME}"
        )

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), num_perm) uint32 MinHash signatures, one row per text."""
        out = np.empty((len(texts), self.num_perm), dtype=np.uint32)
        for i in range(0, len(texts), _BATCH_DOCS):
            batch = texts[i : i + _BATCH_DOCS]
            out[i : i + len(batch)] = self._min_hashes(*self.shingle_hashes(batch))
        return out

    def shingle_hashes(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """32-bit hashes of every shingle of every text (uint32, concatenated in text order; a
        shingle that occurs twice in a text is hashed twice) and the number per text (int64)."""
        tokens, counts = self._token_hashes(texts)
        n = self.ngram
        num_shingles = np.where(counts >= n, counts - n + 1, np.minimum(counts, 1))
        lengths = np.minimum(counts, n)
        doc_of = np.repeat(np.arange(len(texts)), num_shingles)  # (S,)
        first_shingle = np.cumsum(num_shingles) - num_shingles
        first_token = np.cumsum(counts) - counts
        start = np.arange(len(doc_of)) - first_shingle[doc_of] + first_token[doc_of]  # token index
        acc = _horner(tokens, n)[np.minimum(start, max(len(tokens) - n, 0))]
        short = np.flatnonzero(lengths[doc_of] < n)  # documents of fewer than n tokens
        if len(short):
            acc[short] = _horner_from(tokens, start[short], lengths[doc_of[short]])
        return (_fmix64(acc) >> np.uint64(32)).astype(np.uint32), num_shingles

    def _token_hashes(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        if self.mode == "word":
            import xxhash  # [data] extra, see shingle_hash32

            words = [words_utf8(t) for t in texts]
            counts = np.fromiter(map(len, words), np.int64, len(words))
            hashes = map(xxhash.xxh3_64_intdigest, chain.from_iterable(words))
            return np.fromiter(hashes, np.uint64, int(counts.sum())), counts
        norms = [normalize_for_shingles(t) for t in texts]
        counts = np.fromiter(map(len, norms), np.int64, len(norms))
        code_points = np.frombuffer("".join(norms).encode("utf-32-le", "surrogatepass"), dtype="<u4")
        return _fmix64(code_points.astype(np.uint64)), counts

    def _min_hashes(self, hashes: np.ndarray, counts: np.ndarray) -> np.ndarray:
        out = np.full((len(counts), self.num_perm), EMPTY_VALUE, dtype=np.uint32)
        nonempty = np.flatnonzero(counts)
        if len(nonempty):
            starts = (np.cumsum(counts) - counts)[nonempty]
            out[nonempty] = _segment_min(_fmix32(hashes), starts, self._a, self._b)
        return out


def estimate_jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard of signature rows a[i] and b[i]: the fraction of equal values (float64);
    rows of two empty documents estimate 1.0."""
    return np.mean(a == b, axis=-1)


def _horner(tokens: np.ndarray, n: int) -> np.ndarray:
    """Horner sum of every window of n consecutive tokens (windows that cross documents are
    computed too and never picked); a zero to index when there are fewer than n tokens."""
    num_windows = len(tokens) - n + 1
    if num_windows <= 0:
        return np.zeros(1, np.uint64)
    acc = tokens[:num_windows].copy()
    for j in range(1, n):
        acc *= np.uint64(_HORNER)
        acc += tokens[j : j + num_windows]
    return acc


def _horner_from(tokens: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Horner sum of tokens[start[k] : start[k] + length[k]] for each k (length >= 1)."""
    acc = tokens[start]
    for j in range(1, int(length.max())):
        more = j < length
        acc[more] = acc[more] * np.uint64(_HORNER) + tokens[start[more] + j]
    return acc


def _segment_min(hashes: np.ndarray, starts: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """min over each segment hashes[starts[k]:starts[k+1]] of a * h + b (uint32, wrapping), as a
    (len(starts), P) array; worked in column chunks so the (P, chunk) block stays in cache."""
    num_perm = a.shape[0]
    out = np.full((len(starts), num_perm), EMPTY_VALUE, dtype=np.uint32)
    block = np.empty((num_perm, min(_CHUNK_SHINGLES, len(hashes))), dtype=np.uint32)
    for c0 in range(0, len(hashes), _CHUNK_SHINGLES):
        c1 = min(c0 + _CHUNK_SHINGLES, len(hashes))
        view = block[:, : c1 - c0]
        np.multiply(a, hashes[None, c0:c1], out=view)
        np.add(view, b, out=view)
        lo = int(np.searchsorted(starts, c0, side="right")) - 1  # segment holding column c0
        hi = int(np.searchsorted(starts, c1, side="left"))
        offsets = np.maximum(starts[lo:hi] - c0, 0)
        mins = np.minimum.reduceat(view, offsets, axis=1).T  # (hi - lo, P)
        np.minimum(out[lo:hi], mins, out=out[lo:hi])
    return out
