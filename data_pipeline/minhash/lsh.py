"""LSH banding for MinHash signatures: choosing bands x rows, the S-curve, and bucket keys.

A pair with Jaccard J becomes a candidate when all `rows` values of at least one of `bands` bands
agree: P = 1 - (1 - J^rows)^bands (the S-curve). Verification then keeps a candidate edge only when
the signatures' estimate (the fraction of all num_perm values that agree) reaches
`verify_threshold`. `edge_probability` gives the chance that both happen, exactly, under the usual
model that each permutation agrees independently with probability J.

Defaults: num_perm 128, threshold 0.8 with weights 0.02 / 0.98 give 17 bands x 7 rows, whose
S-curve is 0.9986 at J = 0.85 (0.125 at J = 0.5); verification at 0.75 then keeps 0.998 of the
J = 0.85 pairs and ~6e-9 of the J = 0.5 pairs. Print it with
`format_s_curve(*choose_bands_rows(), DEFAULT_NUM_PERM, DEFAULT_VERIFY_THRESHOLD)`.

Why verification is not at 0.8: at 128 permutations the estimate's standard deviation at J = 0.85
is 0.032, so a 0.8 cut drops 6.4% of J = 0.85 pairs (1.3% at 256 permutations, 0.1% at 512).
0.75 sits 3.2 standard deviations below 0.85 and 5.7 above 0.5.
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_NUM_PERM = 128
DEFAULT_THRESHOLD = 0.8
DEFAULT_VERIFY_THRESHOLD = 0.75
# Recall weighted over precision: missed pairs are lost for good, extra candidates only cost a
# verification (which removes them).
DEFAULT_FALSE_POSITIVE_WEIGHT = 0.02
DEFAULT_FALSE_NEGATIVE_WEIGHT = 0.98
TABLE_JACCARDS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)

_BAND_MULT = np.uint64(0x9E3779B97F4A7C15)
_GRID = np.linspace(0.0, 1.0, 4001)  # integration grid for choose_bands_rows


def s_curve(bands: int, rows: int, jaccards: np.ndarray | float) -> np.ndarray:
    """P(a pair with Jaccard J shares at least one band) = 1 - (1 - J^rows)^bands."""
    j = np.asarray(jaccards, dtype=np.float64)
    return 1.0 - (1.0 - j**rows) ** bands


def choose_bands_rows(
    threshold: float = DEFAULT_THRESHOLD,
    num_perm: int = DEFAULT_NUM_PERM,
    false_positive_weight: float = DEFAULT_FALSE_POSITIVE_WEIGHT,
    false_negative_weight: float = DEFAULT_FALSE_NEGATIVE_WEIGHT,
) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm minimising the weighted area under the S-curve
    below `threshold` (false positives) plus the area above it missed (false negatives); the
    same objective as datasketch's `_optimal_param`, integrated on a fixed grid (deterministic)."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold={threshold!r}: expected a value in (0, 1)")
    if num_perm < 1:
        raise ValueError(f"num_perm={num_perm!r}: expected a positive integer")
    if false_positive_weight < 0 or false_negative_weight < 0:
        raise ValueError(
            f"weights ({false_positive_weight!r}, {false_negative_weight!r}): expected non-negative values"
        )
    below, above = _GRID[_GRID <= threshold], _GRID[_GRID >= threshold]
    best, best_error = (1, 1), math.inf
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            fp = np.trapezoid(s_curve(bands, rows, below), below)
            fn = np.trapezoid(1.0 - s_curve(bands, rows, above), above)
            error = false_positive_weight * fp + false_negative_weight * fn
            if error < best_error - 1e-15:
                best, best_error = (bands, rows), error
    return best


def verify_probability(num_perm: int, verify_threshold: float, jaccards: np.ndarray | float) -> np.ndarray:
    """P(estimated Jaccard >= verify_threshold): P(Binomial(num_perm, J) >= ceil(t * num_perm))."""
    j = np.atleast_1d(np.asarray(jaccards, dtype=np.float64))
    min_agree = math.ceil(verify_threshold * num_perm - 1e-9)
    out = np.array([_binomial(num_perm, x)[min_agree:].sum() for x in j])
    return out if np.ndim(jaccards) else out[0]


def edge_probability(
    bands: int, rows: int, num_perm: int, verify_threshold: float, jaccards: np.ndarray | float
) -> np.ndarray:
    """P(a pair is a candidate AND its estimate reaches verify_threshold), exactly: the agreement
    count of the bands that miss, of the unused permutations and of the whole signature."""
    if bands * rows > num_perm:
        raise ValueError(f"bands * rows = {bands * rows} exceeds num_perm={num_perm}")
    min_agree = math.ceil(verify_threshold * num_perm - 1e-9)
    out = []
    for x in np.atleast_1d(np.asarray(jaccards, dtype=np.float64)):
        per_band = _binomial(rows, x)[:rows]  # a band that misses: fewer than `rows` agree
        no_hit = np.ones(1)
        for _ in range(bands):
            no_hit = np.convolve(no_hit, per_band)
        no_hit = np.convolve(no_hit, _binomial(num_perm - bands * rows, x))
        out.append(_binomial(num_perm, x)[min_agree:].sum() - no_hit[min_agree:].sum())
    out = np.clip(np.array(out), 0.0, 1.0)
    return out if np.ndim(jaccards) else out[0]


def _binomial(n: int, p: float) -> np.ndarray:
    k = np.arange(n + 1)
    log_comb = np.array([math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in k])
    if p <= 0.0 or p >= 1.0:
        return (k == (n if p >= 1.0 else 0)).astype(np.float64)
    return np.exp(log_comb + k * math.log(p) + (n - k) * math.log1p(-p))


def format_s_curve(
    bands: int,
    rows: int,
    num_perm: int | None = None,
    verify_threshold: float | None = None,
    jaccards: tuple[float, ...] = TABLE_JACCARDS,
) -> str:
    """A small table of P(candidate) per Jaccard, plus P(edge kept) when verification is given."""
    verify = num_perm is not None and verify_threshold is not None
    head = f"bands={bands} rows={rows}"
    if verify:
        head += f" num_perm={num_perm} verify_threshold={verify_threshold}"
    lines = [head, "   J    P(candidate)" + ("  P(kept after verify)" if verify else "")]
    cand = s_curve(bands, rows, np.array(jaccards))
    kept = edge_probability(bands, rows, num_perm, verify_threshold, np.array(jaccards)) if verify else None
    for i, j in enumerate(jaccards):
        line = f"  {j:4.2f}  {cand[i]:12.6f}"
        if kept is not None:
            line += f"  {kept[i]:20.6g}"
        lines.append(line)
    return "\n".join(lines)


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(N, bands) uint64 bucket keys: band k of a row hashes signatures[:, k*rows:(k+1)*rows]
    (Horner mod 2^64 seeded with k, then the MurmurHash3 64-bit finalizer). Pure integer numpy,
    so keys are the same in every process and on every machine; the band index is mixed in, so a
    key also identifies its band."""
    num_docs, num_perm = signatures.shape
    if bands * rows > num_perm:
        raise ValueError(f"bands * rows = {bands * rows} exceeds the signature width {num_perm}")
    values = signatures[:, : bands * rows].astype(np.uint64).reshape(num_docs, bands, rows)
    acc = np.broadcast_to(np.arange(1, bands + 1, dtype=np.uint64), (num_docs, bands)).copy()
    for r in range(rows):
        acc *= _BAND_MULT
        acc += values[:, :, r]
    acc ^= acc >> np.uint64(33)
    acc *= np.uint64(0xFF51AFD7ED558CCD)
    acc ^= acc >> np.uint64(33)
    acc *= np.uint64(0xC4CEB9FE1A85EC53)
    acc ^= acc >> np.uint64(33)
    return acc
