"""Rate and distortion on the native integer range (peak = 2**BitsStored - 1): the axes of R-D curves."""

from __future__ import annotations

import math

import numpy as np


def psnr(original: np.ndarray, decoded: np.ndarray, peak: int) -> float:
    """PSNR in dB against the native peak; inf when the frames are identical."""
    mse = float(np.mean((original.astype(np.float64) - decoded.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def max_abs_error(original: np.ndarray, decoded: np.ndarray) -> int:
    return int(np.max(np.abs(original.astype(np.int64) - decoded.astype(np.int64))))


def bits_per_pixel(encoded: bytes, frame: np.ndarray) -> float:
    """Everything the codec wrote, headers included, per pixel (all samples of a pixel)."""
    return 8 * len(encoded) / (frame.shape[0] * frame.shape[1])
