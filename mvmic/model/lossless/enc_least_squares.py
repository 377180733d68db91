"""Encoder only: the least-squares predictors of a plane, one per gradient class, as integers.

    plane --ls_statistics (per class: moments of the 18 causal taps and the sample, relative to W)
          --ridge-regularised normal equations, solved in float64 (numpy)
          --rounded to multiples of 2**-LS_SHIFT--> (classes, LS_TAPS) int64 coefficients

Only the rounded integers travel in the layer, so the float solve never reaches the decoder. A
class with fewer than MIN_CLASS_SAMPLES samples is not sent (the layer then uses the class below's
predictor, mvmic.model.lossless.layer), so small images do not pay for predictors they barely use.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from mvmic.model.lossless.plane_coder import LS_CLASSES, LS_SHIFT, LS_TAPS, MAX_COEFFICIENT, ls_class, ls_taps

MIN_CLASS_SAMPLES = 1500
RIDGE = 1e-5  # relative to the mean diagonal of the normal equations


def fit_predictors(plane: np.ndarray, classes: int = LS_CLASSES) -> list[np.ndarray | None]:
    """Per class, the LS_TAPS int64 coefficients fitted to ``plane`` (H, W) int32, or None for a class
    with too few samples to be worth sending (the layer's format says what it then uses)."""
    moments, counts = ls_statistics(plane, classes)
    fitted: list[np.ndarray | None] = []
    for c in range(classes):
        if counts[c] < MIN_CLASS_SAMPLES:
            fitted.append(None)
            continue
        full = np.triu(moments[c]) + np.triu(moments[c], 1).T
        gram, target = full[:LS_TAPS, :LS_TAPS], full[:LS_TAPS, LS_TAPS]
        ridge = RIDGE * np.trace(gram) / LS_TAPS + 1e-6
        solution = np.linalg.solve(gram + ridge * np.eye(LS_TAPS), target)
        fitted.append(np.clip(np.round(solution * (1 << LS_SHIFT)), -MAX_COEFFICIENT, MAX_COEFFICIENT)
                      .astype(np.int64))
    return fitted


@njit(nogil=True, cache=True)
def ls_statistics(plane, classes):
    """Per class, the (LS_TAPS + 1)^2 moments of (taps, sample) relative to W over the interior (upper
    triangle, float64) and the count of samples: what the encoder solves for each class's
    least-squares predictor (encoder only: the decoder gets the rounded coefficients)."""
    height, width = plane.shape
    moments = np.zeros((classes, LS_TAPS + 1, LS_TAPS + 1))
    counts = np.zeros(classes, dtype=np.int64)
    taps = np.zeros(LS_TAPS + 1, dtype=np.int64)
    for y in range(3, height):
        for x in range(3, width - 3):
            c = ls_class(plane, y, x, classes)
            counts[c] += 1
            ls_taps(plane, y, x, taps)
            taps[LS_TAPS] = plane[y, x]
            base = taps[0]
            for i in range(LS_TAPS + 1):
                a = float(taps[i] - base)
                for j in range(i, LS_TAPS + 1):
                    moments[c, i, j] += a * float(taps[j] - base)
    return moments, counts
