"""CDF 9/7 analysis and synthesis of one 2-D plane, compiled (mvmic/model/table_coder.c), float64.

The same transform as mvmic.model.lifting (JPEG 2000's irreversible wavelet by lifting, whole-sample
symmetric extension, rows then columns, recursion on the low band), computed in C with the same
float64 expressions in the same order and no fused multiply-add: results equal mvmic.model.lifting's bit
for bit (tests/test_lossy_coder.py checks it), in a few milliseconds for a 512 x 512 plane, without
torch, and with the GIL released.

    plane (H, W) --analysis(levels)--> low, [(LH, HL, HH) per level, coarsest first]
    low, details --synthesis--> plane
"""

from __future__ import annotations

import numpy as np

from mvmic.model import _table_coder

Details = list[tuple[np.ndarray, np.ndarray, np.ndarray]]


def analysis(plane: np.ndarray, levels: int) -> tuple[np.ndarray, Details]:
    """Forward transform of a plane (H, W) (H, W >= 2 at every level; ValueError otherwise):
    mvmic.model.lifting.analysis. Returns (low, details coarsest first), float64."""
    details = []
    low = np.ascontiguousarray(plane, dtype=np.float64)
    for _ in range(levels):
        rows, columns = low.shape
        even_rows, odd_rows, even_columns, odd_columns = (rows + 1) // 2, rows // 2, (columns + 1) // 2, columns // 2
        bands = (np.empty((even_rows, even_columns)), np.empty((odd_rows, even_columns)),
                 np.empty((even_rows, odd_columns)), np.empty((odd_rows, odd_columns)))
        _table_coder.analysis_level(low, rows, columns, *bands)
        low = bands[0]
        details.append(bands[1:])
    return low, details[::-1]


def synthesis(low: np.ndarray, details: Details) -> np.ndarray:
    """Inverse of :func:`analysis` over the given levels (fewer than analysed: a coarser plane), float64."""
    low = np.ascontiguousarray(low, dtype=np.float64)
    for lh, hl, hh in details:
        out = np.empty((low.shape[0] + lh.shape[0], low.shape[1] + hl.shape[1]))
        _table_coder.synthesis_level(low, *(np.ascontiguousarray(b, dtype=np.float64) for b in (lh, hl, hh)),
                                     *out.shape, out)
        low = out
    return low
