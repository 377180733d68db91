"""Quantisation of wavelet subbands, weighted so that every band costs the same MSE.

    coefficient c in band b --/ (step / gain_b)--> deadzone rounding --> integer q
    integer q --> sign(q) (|q| + RECONSTRUCTION) * step / gain_b --> coefficient

gain_b is the L2 norm of the band's synthesis basis function: a quantisation error
e in band b adds e * gain_b to the pixels, so dividing the step by gain_b gives
every band the same pixel-domain error per unit step (as JPEG 2000 does).
"""

from __future__ import annotations

from functools import cache

import torch
from torch import Tensor

from model.lifting import Subbands, forward_1d, inverse_1d

DEADZONE = 0.3  # round |c|/step down by this much: small coefficients go to 0
RECONSTRUCTION = 0.3  # decoded |q| sits this far above the integer, nearer the mass of a Laplacian


@cache
def _gains_1d(level: int) -> tuple[float, float]:
    """Synthesis norms (low, high) of a 1-D coefficient at decomposition depth ``level`` (1 = finest)."""
    length = 2 ** (level + 6)
    signal = torch.zeros(1, length, dtype=torch.float64)
    highs = []
    for _ in range(level):
        signal, high = forward_1d(signal, dim=-1)
        highs.append(high)
    norms = []
    for band in ("low", "high"):
        low = torch.zeros_like(signal)
        details = [torch.zeros_like(h) for h in highs]
        target = low if band == "low" else details[-1]
        target[0, target.shape[-1] // 2] = 1.0
        for high in reversed(details):
            low = inverse_1d(low, high, dim=-1)
        norms.append(float(low.norm()))
    return norms[0], norms[1]


def band_gains(levels: int) -> tuple[float, list[tuple[float, float, float]]]:
    """Gains of the low band and of (LH, HL, HH) per level, coarsest first, as in Subbands."""
    low_gain = _gains_1d(levels)[0] ** 2
    details = []
    for level in range(levels, 0, -1):
        low, high = _gains_1d(level)
        details.append((high * low, low * high, high * high))
    return low_gain, details


def quantize(bands: Subbands, step: float) -> Subbands:
    low_gain, gains = band_gains(len(bands.details))
    return Subbands(
        low=torch.round(bands.low / (step / low_gain)),  # no deadzone: the low band is rarely near 0
        details=[tuple(_quantize(b, step / g) for b, g in zip(level, level_gains, strict=True))
                 for level, level_gains in zip(bands.details, gains, strict=True)],
    )


def dequantize(indices: Subbands, step: float) -> Subbands:
    low_gain, gains = band_gains(len(indices.details))
    return Subbands(
        low=indices.low * (step / low_gain),
        details=[tuple(_dequantize(b, step / g) for b, g in zip(level, level_gains, strict=True))
                 for level, level_gains in zip(indices.details, gains, strict=True)],
    )


def _quantize(coefficients: Tensor, step: float) -> Tensor:
    return torch.sign(coefficients) * torch.floor(torch.clamp(coefficients.abs() / step + 0.5 - DEADZONE, min=0))


def _dequantize(q: Tensor, step: float) -> Tensor:
    return torch.sign(q) * (q.abs() + RECONSTRUCTION) * step
