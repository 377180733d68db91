"""The encoder's half of the restoration filter (mvmic.model.restoration): fit the taps of one plane, keep them
only where they pay for themselves.

    decoded plane, original plane --normal equations over every sample, or a quincunx half of them
      above FIT_SAMPLES (compiled)-->
      --least squares (Gaussian elimination in Python floats: the same taps on every machine)-->
      --round to 2**-SHIFT, clip to +-MAX_TAP--> taps --filter, exact squared error-->
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
from mvmic.model.restoration import MAX_TAP, SHIFT, TAPS, restore

FIT_SAMPLES = 1 << 17  # planes above this many samples are fitted on the quincunx half of them (2x faster)
RIDGE = 1e-9  # relative to the mean diagonal: keeps a flat plane's singular system solvable
PSNR_PER_DOUBLING = 3.5  # dB: the base layer's R-D slope, about 4 at 0.05 and 6 at 1 bit per pixel (test split)
LAYER_BYTES = 4  # a RESTORATION layer's framing beyond its taps: kind, frame, length, part count and length


def fit(decoded: np.ndarray, original: np.ndarray, plane_bits: int) -> list[int] | None:
    """The taps for one plane, or None where filtering does not pay: ``decoded`` and ``original`` are
    (rows, columns) integer planes (the base layer's decoded plane, the plane it codes), int64; ``plane_bits``
    the size of the plane's base layer payload in bits."""
    decoded = np.ascontiguousarray(decoded, dtype=np.int64)
    original = np.ascontiguousarray(original, dtype=np.int64)
    rows, columns = decoded.shape
    error = original - decoded
    unfiltered = float(np.dot(error.ravel(), error.ravel()))
    if unfiltered == 0:
        return None
    gram, cross = np.empty(TAPS * TAPS), np.empty(TAPS)
    _table_coder.restoration_statistics(decoded, original, rows, columns, 2 if decoded.size > FIT_SAMPLES else 1,
                                        gram, cross)
    solution = _solve(gram.reshape(TAPS, TAPS).tolist(), cross.tolist())
    if solution is None:
        return None
    taps = [max(-MAX_TAP, min(MAX_TAP, round(c * (1 << SHIFT)))) for c in solution]
    if not any(taps):
        return None
    residual = original - restore(decoded, taps)
    filtered = float(np.dot(residual.ravel(), residual.ravel()))
    bits = 8 * (len(pack_integers(taps)) + LAYER_BYTES)
    slope = unfiltered * math.log(10) / 10 * PSNR_PER_DOUBLING / (max(plane_bits, 1) * math.log(2))
    return taps if filtered + slope * bits < unfiltered else None


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
