"""The encoder's half of the restoration filter (mvmic.model.restoration): fit the taps of one plane, keep them
only where they pay for themselves.

    decoded plane, original plane --normal equations over about FIT_SAMPLES samples, every parity of row
      and column (compiled)-->
      --least squares of the 3 x 3 and of the 5 x 5 filter (Gaussian elimination in Python floats: the same
        taps on every machine), rounded to 2**-SHIFT, clipped to +-MAX_TAP-->
      --the one with the smaller predicted SSE + lambda * bits(taps) --filter, exact squared error-->
      keep if  SSE(filtered) + lambda * bits(taps) < SSE(decoded)

lambda is the squared error one more bit buys at the plane's rate R (the bits of its base layer payload): with
PSNR rising PSNR_PER_DOUBLING dB each time the rate doubles, -dD/dR = D ln(10)/10 * PSNR_PER_DOUBLING / (R ln 2).
So a plane coded in few bits keeps the filter only for a large gain: its taps are a large share of its bytes.
"""

from __future__ import annotations

import math

import numpy as np

from mvmic.model import _table_coder
from mvmic.model.bitstream import pack_integers
from mvmic.model.restoration import MAX_TAP, SHIFT, SMALL_POSITIONS, TAPS, sent_taps

FIT_SAMPLES = 1 << 15  # the fit sums about this many samples: every 1st, 2nd, 4th or 8th of a row (every parity)
RIDGE = 1e-9  # relative to the mean diagonal: keeps a flat plane's singular system solvable
PSNR_PER_DOUBLING = 5.0  # dB: the base layer's R-D slope, about 4 at 0.05 and 6 at 1 bit per pixel (test split)
LAYER_BYTES = 4  # a RESTORATION layer's framing beyond its taps: kind, frame, length, part count and length


def fit(decoded: np.ndarray, original: np.ndarray, plane_bits: int, value_range: tuple[int, int]) -> list[int] | None:
    """The taps for one plane, or None where filtering does not pay: ``decoded`` and ``original`` are
    (rows, columns) integer planes (the base layer's decoded plane, the plane it codes), int64; ``plane_bits``
    the size of the plane's base layer payload in bits; ``value_range`` (low, high) the values the decoder clips
    the plane to (the stored range for grey; colour planes are clipped only after the inverse RCT, so the
    caller judges those again on the whole frame, with :func:`pays`)."""
    decoded = np.ascontiguousarray(decoded, dtype=np.int64)
    original = np.ascontiguousarray(original, dtype=np.int64)
    rows, columns = decoded.shape
    stride = next((s for s in (1, 2, 4) if decoded.size <= s * FIT_SAMPLES), 8)
    gram, cross = np.empty(TAPS * TAPS), np.empty(TAPS)
    sampled = _table_coder.restoration_statistics(decoded, original, rows, columns, stride, gram, cross)
    if not np.any(cross):
        return None
    slope = slope_of(stride * sampled, plane_bits)
    # The 3 x 3 and the 5 x 5 filter, judged by the error the normal equations predict (the fit's own samples,
    # one in stride) plus the bits of their taps; the better one is then judged by its exact error against no filter.
    candidates = [taps for taps in (_fitted(gram, cross, positions) for positions in (SMALL_POSITIONS, range(TAPS)))
                  if taps is not None]
    if not candidates:
        return None
    taps = min(candidates, key=lambda t: stride * _predicted_change(gram, cross, t) + slope * taps_bits(t))
    unfiltered, filtered = _table_coder.restoration_errors(decoded, original, rows, columns, np.array(taps, np.int64),
                                                           *value_range)
    return taps if pays(unfiltered, filtered, slope, taps_bits(taps)) else None


def pays(unfiltered: float, filtered: float, slope: float, bits: int) -> bool:
    """Whether the squared error a filter removes is worth its ``bits`` at ``slope`` (squared error per bit)."""
    return filtered + slope * bits < unfiltered


def slope_of(squared_error: float, bits: int) -> float:
    """lambda: the squared error one more bit buys, for data of this ``squared_error`` coded in ``bits``."""
    return squared_error * math.log(10) / 10 * PSNR_PER_DOUBLING / (max(bits, 1) * math.log(2))


def taps_bits(taps: list[int] | None) -> int:
    """The bits a plane's taps cost in a RESTORATION layer (0 for None)."""
    return 0 if taps is None else 8 * (len(pack_integers(sent_taps(taps))) + LAYER_BYTES)


def _fitted(gram: np.ndarray, cross: np.ndarray, positions) -> list[int] | None:
    """The 12 taps (zero outside ``positions``) of the least-squares fit over ``positions``, rounded to 2**-SHIFT
    and clipped; None if the system is singular or every tap rounds to 0."""
    positions = list(positions)
    matrix = gram.reshape(TAPS, TAPS)[np.ix_(positions, positions)].tolist()
    solution = _solve(matrix, cross[positions].tolist())
    if solution is None:
        return None
    taps = [0] * TAPS
    for position, value in zip(positions, solution, strict=True):
        taps[position] = max(-MAX_TAP, min(MAX_TAP, round(value * (1 << SHIFT))))
    return taps if any(taps) else None


def _predicted_change(gram: np.ndarray, cross: np.ndarray, taps: list[int]) -> float:
    """The change of squared error over the fit's samples that the normal equations predict for ``taps``:
    c' G c - 2 c' b, with c the taps in units of 1 (in Python floats, in a fixed order: the same choice everywhere)."""
    c = [t / (1 << SHIFT) for t in taps]
    g = gram.tolist()
    return sum(c[i] * (sum(g[i * TAPS + j] * c[j] for j in range(TAPS)) - 2 * cross[i]) for i in range(TAPS))


def _solve(matrix: list[list[float]], vector: list[float]) -> list[float] | None:
    """x with (matrix + ridge) x = vector by Gaussian elimination with partial pivoting, in Python floats
    (IEEE double, no fused multiply-add: the same result everywhere); None for a singular system."""
    n = len(vector)
    ridge = RIDGE * sum(matrix[i][i] for i in range(n)) / n
    a = [[*row[:i], row[i] + ridge, *row[i + 1:], vector[i]] for i, row in enumerate(matrix)]
    for column in range(n):
        pivot = max(range(column, n), key=lambda r: abs(a[r][column]))
        if a[pivot][column] == 0:
            return None
        a[column], a[pivot] = a[pivot], a[column]
        for r in range(column + 1, n):
            factor = a[r][column] / a[column][column]
            a[r] = [x - factor * y for x, y in zip(a[r], a[column], strict=True)]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        x[r] = (a[r][n] - sum(a[r][k] * x[k] for k in range(r + 1, n))) / a[r][r]
    return x
