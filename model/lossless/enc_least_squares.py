"""Encoder only: the least-squares predictors of a plane, one per gradient class, as integers.

    plane --ls_statistics (per class: moments of the 18 causal taps and the sample, relative to W)
          --ridge-regularised normal equations, solved in float64 (numpy)
          --rounded to multiples of 2**-LS_SHIFT--> (classes, LS_TAPS) int64 coefficients

Only the rounded integers travel in the layer, so the float solve never reaches the decoder. A
class with fewer than MIN_CLASS_SAMPLES samples takes the coefficients of the class below it (its
side information is one flag), so small images do not pay for predictors they barely use.
"""

from __future__ import annotations

import numpy as np

from model.lossless.plane_coder import LS_SHIFT, LS_TAPS, ls_statistics

LS_CLASSES = 24  # two an octave of local gradient
MIN_CLASS_SAMPLES = 1500
MAX_COEFFICIENT = 1 << 16
RIDGE = 1e-5  # relative to the mean diagonal of the normal equations


def fit_predictors(plane: np.ndarray, classes: int = LS_CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """(coefficients (classes, LS_TAPS) int64, explicit (classes,) bool) for ``plane`` (H, W) int32."""
    moments, counts = ls_statistics(plane, classes)
    coefficients = np.zeros((classes, LS_TAPS), dtype=np.int64)
    explicit = np.zeros(classes, dtype=bool)
    for c in range(classes):
        if counts[c] < MIN_CLASS_SAMPLES:
            if c:
                coefficients[c] = coefficients[c - 1]
            continue
        full = np.triu(moments[c]) + np.triu(moments[c], 1).T
        gram, target = full[:LS_TAPS, :LS_TAPS], full[:LS_TAPS, LS_TAPS]
        ridge = RIDGE * np.trace(gram) / LS_TAPS + 1e-6
        solution = np.linalg.solve(gram + ridge * np.eye(LS_TAPS), target)
        coefficients[c] = np.clip(np.round(solution * (1 << LS_SHIFT)), -MAX_COEFFICIENT, MAX_COEFFICIENT)
        explicit[c] = True
    return coefficients, explicit
