"""MinHash signatures and LSH parameters: shingles match the corpus truth's definition, batched
signatures equal datasketch's per-document MinHash bit for bit, the estimate tracks exact Jaccard,
and the default bands x rows plus verification meet the recall / false-merge targets."""

from __future__ import annotations

import random

import numpy as np
import pytest
from datasketch import MinHash
from datasketch.lsh import _optimal_param

from data_pipeline import corpus
from data_pipeline.minhash import lsh, shingles
from data_pipeline.minhash import signatures as sg
from data_pipeline.minhash.lsh import band_keys, choose_bands_rows, edge_probability, s_curve
from data_pipeline.minhash.shingles import (
    char_shingles,
    jaccard,
    normalize_for_shingles,
    word_shingles,
    words_utf8,
)
from data_pipeline.minhash.signatures import MinHasher, estimate_jaccard, shingle_hash32
from pretrain.core.config import ConfigError

TRICKY = [
    "",
    "!!! ... ???",
    "Hi!",
    "one two three four",
    "one two three four five",
    "Ünïcödé ΣΑΣ ÖL — déjà vu, naïve café; don't stop_here 3.14",
    "tabs\tand\x1cfile\x1fseparators\xa0nbsp\u2003em-space\nnew lines\r\n",
    "".join(chr(i) for i in range(128)),
    "x",
]


def _prose(rng: random.Random, num_words: int) -> str:
    vocab = [f"w{i}" for i in range(3000)]
    words = [rng.choice(vocab) for _ in range(num_words)]
    return " ".join(w + ("." if rng.random() < 0.1 else "") for w in words)


def _edit(text: str, rng: random.Random, fraction: float) -> str:
    words = text.split()
    for i in rng.sample(range(len(words)), int(fraction * len(words))):
        words[i] = f"edit{rng.randrange(10**6)}"
    return " ".join(words)


def _datasketch(text: str, num_perm: int, seed: int, ngram: int, mode: str) -> np.ndarray:
    m = MinHash(num_perm=num_perm, seed=seed, scheme="affine32", hashfunc=lambda s: shingle_hash32(s, mode))
    for shingle in shingles.shingles(text, ngram, mode):
        m.update(shingle)
    return m.hashvalues


# -------------------------------------------------------------------------------------------------
# Shingles.


def test_corpus_uses_and_reexports_the_shared_shingles() -> None:
    assert corpus.word_shingles is word_shingles and corpus.jaccard is jaccard


def test_words_utf8_is_the_normalised_split() -> None:
    for text in TRICKY:
        expected = [w.encode() for w in normalize_for_shingles(text).split()]
        assert words_utf8(text) == expected, text
    assert normalize_for_shingles("  Don't STOP,\tme\x1cnow!  ") == "dont stop me now"
    assert words_utf8("".join(chr(i) for i in range(128))) == [
        b"0123456789abcdefghijklmnopqrstuvwxyz_abcdefghijklmnopqrstuvwxyz"
    ]


def test_word_and_char_shingles() -> None:
    assert word_shingles("A b, c d e f!") == {"a b c d e", "b c d e f"}
    assert word_shingles("Too short.") == {"too short"}
    assert word_shingles("?!") == set()
    assert char_shingles("Ab, c!", 2) == {"ab", "b ", " c"}
    assert char_shingles("Ab, c!", 5) == {"ab c"}  # shorter than n: the whole text
    assert char_shingles(" ,; ", 3) == set()
    assert shingles.shingles("a b c", 2, "char") == {"a ", " b", "b ", " c"}
    with pytest.raises(ValueError, match="mode='byte'"):
        shingles.shingles("a", 2, "byte")


# -------------------------------------------------------------------------------------------------
# Signatures.


@pytest.mark.parametrize(
    ("num_perm", "seed", "ngram", "mode"),
    [(128, 1, 5, "word"), (64, 7, 3, "word"), (128, 1, 5, "char"), (32, 3, 1, "char")],
)
def test_batched_signatures_equal_datasketch_per_document(
    num_perm: int, seed: int, ngram: int, mode: str
) -> None:
    rng = random.Random(seed)
    texts = TRICKY + [_prose(rng, rng.randrange(1, 400)) for _ in range(12)]
    sigs = MinHasher(num_perm=num_perm, seed=seed, ngram=ngram, mode=mode).signatures(texts)
    assert sigs.shape == (len(texts), num_perm) and sigs.dtype == np.uint32
    for text, sig in zip(texts, sigs):
        np.testing.assert_array_equal(sig, _datasketch(text, num_perm, seed, ngram, mode), err_msg=text[:60])


def test_empty_and_short_documents() -> None:
    hasher = MinHasher()
    empty, punct, short, alone = hasher.signatures(["", "?! ...", "Two words", "two   WORDS!"])
    assert (empty == 0xFFFFFFFF).all() and (punct == empty).all()  # datasketch's empty MinHash
    np.testing.assert_array_equal(empty, MinHash(num_perm=128, scheme="affine32").hashvalues)
    # fewer than n words: one shingle, the whole (normalised) text
    np.testing.assert_array_equal(short, _datasketch("two words", 128, 1, 5, "word"))
    np.testing.assert_array_equal(short, alone)
    assert (short != 0xFFFFFFFF).all()


def test_signatures_do_not_depend_on_batching(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(5)
    texts = [_prose(rng, rng.randrange(0, 60)) for _ in range(40)] + TRICKY
    reference = MinHasher().signatures(texts)
    # tiny chunks split documents across column blocks and batches
    monkeypatch.setattr(sg, "_CHUNK_SHINGLES", 7)
    monkeypatch.setattr(sg, "_BATCH_DOCS", 3)
    hasher = MinHasher()
    np.testing.assert_array_equal(hasher.signatures(texts), reference)
    np.testing.assert_array_equal(hasher.signatures(texts[::-1]), reference[::-1])
    np.testing.assert_array_equal(hasher.signatures([texts[10]])[0], reference[10])


def test_golden_values_pin_the_scheme() -> None:
    """If this fails the signature scheme changed: bump HASH_NAME (scheme_id) with it."""
    sigs = MinHasher().signatures(["The quick brown fox jumps over the lazy dog.", "Hi"])
    assert sigs[:, :4].tolist() == [
        [241440905, 413589234, 233347496, 2104441260],
        [90072801, 216246698, 866162288, 1044575057],
    ]
    assert MinHasher(mode="char", ngram=3).signatures(["The quick brown fox"])[0, :4].tolist() == [
        171846957,
        172000476,
        41476202,
        35066742,
    ]
    assert band_keys(sigs, 17, 7)[:, :2].tolist() == [
        [14605509658268005186, 9631948396429426711],
        [3159824480825840001, 14738446549691710811],
    ]


def test_scheme_id_names_everything_that_changes_signatures() -> None:
    base = MinHasher()
    assert base.scheme_id == "datasketch-2.0.0/affine32/seed1/perm128/word5/" + sg.HASH_NAME
    others = [MinHasher(seed=2), MinHasher(num_perm=64), MinHasher(ngram=3), MinHasher(mode="char")]
    assert len({base.scheme_id} | {h.scheme_id for h in others}) == 5


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"mode": "byte"}, "mode"),
        ({"ngram": 0}, "ngram"),
        ({"num_perm": 0}, "num_perm"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=f"^{field}="):
        MinHasher(**kwargs)


def test_estimated_jaccard_tracks_exact_jaccard() -> None:
    rng = random.Random(11)
    pairs = []
    for fraction in (0.02, 0.05, 0.1, 0.15, 0.2, 0.3):
        for _ in range(4):
            a = _prose(rng, 300)
            pairs.append((a, _edit(a, rng, fraction)))
    flat = [t for pair in pairs for t in pair]
    sigs = MinHasher().signatures(flat)
    estimates = estimate_jaccard(sigs[0::2], sigs[1::2])
    errors = []
    for k, (a, b) in enumerate(pairs):
        exact = jaccard(word_shingles(a), word_shingles(b))
        m_a, m_b = (MinHash(scheme="affine32", hashvalues=sigs[i]) for i in (2 * k, 2 * k + 1))
        assert estimates[k] == m_a.jaccard(m_b)
        errors.append(abs(estimates[k] - exact))
    assert max(errors) <= 0.1, errors
    assert np.mean(errors) <= 0.04, errors


# -------------------------------------------------------------------------------------------------
# LSH parameters and bucket keys.


@pytest.mark.parametrize(("threshold", "num_perm", "fp"), [(0.8, 128, 0.5), (0.5, 64, 0.5), (0.9, 128, 0.3)])
def test_choose_bands_rows_matches_datasketch(threshold: float, num_perm: int, fp: float) -> None:
    assert choose_bands_rows(threshold, num_perm, fp, 1 - fp) == _optimal_param(
        threshold, num_perm, fp, 1 - fp
    )


def test_defaults_meet_the_recall_and_false_merge_targets() -> None:
    bands, rows = choose_bands_rows()
    assert (bands, rows) == (17, 7)
    assert s_curve(bands, rows, 0.85) >= 0.995
    kept = edge_probability(
        bands, rows, lsh.DEFAULT_NUM_PERM, lsh.DEFAULT_VERIFY_THRESHOLD, np.array([0.5, 0.85])
    )
    assert kept[0] <= 1e-6 and kept[1] >= 0.995, kept
    table = lsh.format_s_curve(bands, rows, lsh.DEFAULT_NUM_PERM, lsh.DEFAULT_VERIFY_THRESHOLD)
    assert table.splitlines()[0] == "bands=17 rows=7 num_perm=128 verify_threshold=0.75"
    assert [line.split()[0] for line in table.splitlines()[2:]] == [f"{j:.2f}" for j in lsh.TABLE_JACCARDS]


def test_edge_probability_is_exact() -> None:
    j = np.array([0.3, 0.6, 0.9])
    np.testing.assert_allclose(edge_probability(4, 3, 14, 0.0, j), s_curve(4, 3, j), atol=1e-12)
    # Monte Carlo: independent agreements per permutation, 4 bands of 3 rows, 2 unused permutations
    rng = np.random.default_rng(0)
    for x, p in zip(j, edge_probability(4, 3, 14, 0.5, j)):
        agree = rng.random((200_000, 14)) < x
        candidate = agree[:, :12].reshape(-1, 4, 3).all(axis=2).any(axis=1)
        assert abs(np.mean(candidate & (agree.sum(axis=1) >= 7)) - p) < 0.005, (x, p)
    assert lsh.verify_probability(128, 0.75, 0.85) == pytest.approx(1 - 0.00105, abs=1e-4)


def test_band_keys() -> None:
    rng = np.random.default_rng(3)
    sigs = rng.integers(0, 2**32, size=(5, 20), dtype=np.uint64).astype(np.uint32)
    sigs[1] = sigs[0]
    sigs[2] = sigs[0]
    sigs[2, 7] ^= 1  # band 1 of (4 bands x 5 rows)
    keys = band_keys(sigs, 4, 5)
    assert keys.shape == (5, 4) and keys.dtype == np.uint64
    assert (keys[0] == keys[1]).all()
    assert (keys[0] == keys[2]).tolist() == [True, False, True, True]
    same_rows = np.tile(sigs[:1, :5], (1, 4))  # identical values in every band: keys still differ
    assert len(set(band_keys(same_rows, 4, 5)[0].tolist())) == 4
    with pytest.raises(ValueError, match="exceeds"):
        band_keys(sigs, 5, 5)


def test_near_duplicates_share_a_bucket_and_verify() -> None:
    rng = random.Random(2)
    bands, rows = choose_bands_rows()
    texts = []
    for _ in range(10):
        a = _prose(rng, 400)
        texts += [a, _edit(a, rng, 0.01)]  # about J = 0.9
    sigs = MinHasher().signatures(texts)
    keys = band_keys(sigs, bands, rows)
    for k in range(0, len(texts), 2):
        exact = jaccard(word_shingles(texts[k]), word_shingles(texts[k + 1]))
        assert exact >= 0.85
        assert (keys[k] == keys[k + 1]).any()
        assert estimate_jaccard(sigs[k], sigs[k + 1]) >= lsh.DEFAULT_VERIFY_THRESHOLD
        assert not (keys[k] == keys[(k + 2) % len(texts)]).any()  # unrelated texts
