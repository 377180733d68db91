"""Quantisation of wavelet subbands, weighted so that every band costs the same MSE.

    coefficient c in band b --/ (step / gain_b)--> deadzone rounding --> integer q
    integer q --> sign(q) (|q| + RECONSTRUCTION) * step / gain_b --> coefficient

gain_b is the L2 norm of the band's synthesis basis function: a quantisation error
e in band b adds e * gain_b to the pixels, so dividing the step by gain_b gives
every band the same pixel-domain error per unit step (as JPEG 2000 does).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from functools import cache

import torch
from torch import Tensor, nn

from mvmic.model.lifting import Subbands, forward_1d, inverse_1d
from mvmic.model.quality import DEADZONE, RECONSTRUCTION

SCALED_DEPTHS = 6  # BandStepScales covers decompositions up to this deep (the codec uses 5)


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
    """Gains of the low band and of (LH, HL, HH) per level, coarsest first, as in Subbands. With no level (an
    image under 16 pixels a side) the low band is the image: gain 1, as version 3's table has it."""
    low_gain = _gains_1d(levels)[0] ** 2 if levels else 1.0
    details = []
    for level in range(levels, 0, -1):
        low, high = _gains_1d(level)
        details.append((high * low, low * high, high * high))
    return low_gain, details


def band_steps(levels: int, step: float, scales: Tensor | None = None) -> tuple[Tensor | float, list[tuple]]:
    """Quantiser step of the low band and of (LH, HL, HH) per level, coarsest first: step / gain_b,
    times the band's learned scale when ``scales`` (BandStepScales) is given."""
    low_gain, gains = band_gains(levels)
    if scales is None:
        return step / low_gain, [tuple(step / g for g in level) for level in gains]
    details = [tuple(step / g * scales[scale_index(levels - i, orientation)] for orientation, g in enumerate(level))
               for i, level in enumerate(gains)]
    return step / low_gain * scales[0], details


def scale_index(depth: int, orientation: int) -> int:
    """Position in BandStepScales of a detail band at ``depth`` (1 = finest); 0 is the low band."""
    return 1 + 3 * (depth - 1) + orientation


class BandStepScales(nn.Module):
    """Learned multipliers of the band steps (stage 3); all 1, the MSE-optimal choice, until trained."""

    def __init__(self) -> None:
        super().__init__()
        self.log_scales = nn.Parameter(torch.zeros(scale_index(SCALED_DEPTHS, 2) + 1, dtype=torch.float64))

    def forward(self) -> Tensor:
        return torch.exp(self.log_scales)


def in_steps(bands: Subbands, step: float, scales: Tensor | None = None) -> Subbands:
    """Every band divided by its own quantiser step: what quantisation rounds."""
    return _each_band_with_its_step(bands, step, scales, operator.truediv)


def quantize(bands: Subbands, step: float, scales: Tensor | None = None) -> Subbands:
    """Integer indices of wavelet coefficients: dead-zone scalar quantisation as JPEG 2000 Part 1 does it
    (ITU-T T.800 Annex E.1), each band with its own step ``step`` / gain_b (band_steps), times its learned scale.

    ``bands``: Subbands of float tensors (N, C, H, W), the low band and (LH, HL, HH) per level, coarsest first,
    in normalised units (stored values less the offset, over 2**BitsStored: mvmic.model.colour.normalised_planes).
    ``step``: the quantiser step in those units (mvmic.model.quality.step_of of a quality code). ``scales``:
    BandStepScales() (float64, one per scale_index) or None (all 1). Returns Subbands of the same shapes and
    dtype holding integers: the low band rounded, the detail bands rounded toward 0 by DEADZONE more (a dead
    zone of 2 (0.5 + DEADZONE) steps). Raises IndexError if ``scales`` covers fewer levels than ``bands`` has."""
    scaled = in_steps(bands, step, scales)
    return Subbands(
        low=torch.round(scaled.low),  # no deadzone: the low band is rarely near 0
        details=[tuple(_deadzone_round(b) for b in level) for level in scaled.details],
    )


def quantize_straight_through(bands: Subbands, step: float, scales: Tensor) -> Subbands:
    """quantize() whose gradient passes as if rounding were the identity (training the scales)."""
    scaled = in_steps(bands, step, scales)
    through = lambda x, rounded: x + (rounded - x).detach()
    return Subbands(low=through(scaled.low, torch.round(scaled.low)),
                    details=[tuple(through(b, _deadzone_round(b)) for b in level) for level in scaled.details])


def with_uniform_noise(bands: Subbands, step: float, scales: Tensor) -> Subbands:
    """Bands in step units plus uniform noise in [-0.5, 0.5): the differentiable stand-in for
    rounding when the steps themselves are learned (stage 3). Straight-through rounding
    gives a step no distortion cost where a coefficient rounds to 0, and the deadzone makes
    that most of them, so learned steps only grow; with noise, distortion grows as step**2/12
    and rate falls as the density of the coefficients in step units narrows, as for a real
    quantiser at high rate (Balle et al., 2017)."""
    scaled = in_steps(bands, step, scales)
    noisy = lambda x: x + torch.rand_like(x) - 0.5
    return Subbands(low=noisy(scaled.low), details=[tuple(noisy(b) for b in level) for level in scaled.details])


def from_steps(values: Subbands, step: float, scales: Tensor) -> Subbands:
    """Inverse of in_steps: values in step units back to coefficients."""
    return _each_band_with_its_step(values, step, scales, operator.mul)


def _each_band_with_its_step(bands: Subbands, step: float, scales: Tensor | None,
                             apply: Callable[[Tensor, Tensor | float], Tensor]) -> Subbands:
    low_step, steps = band_steps(len(bands.details), step, scales)
    return Subbands(low=apply(bands.low, low_step),
                    details=[tuple(apply(b, s) for b, s in zip(level, level_steps, strict=True))
                             for level, level_steps in zip(bands.details, steps, strict=True)])


def dequantize(indices: Subbands, step: float, scales: Tensor | None = None) -> Subbands:
    """Coefficients from the integer ``indices`` of :func:`quantize` (the same shapes, step and scales): the low
    band times its step, every non-zero detail index reconstructed RECONSTRUCTION of a step beyond its integer,
    sign(q) (|q| + RECONSTRUCTION) step_b, as JPEG 2000's decoders do with their reconstruction parameter r
    (ITU-T T.800 Annex E.1.1.2). Returns Subbands of float tensors (N, C, H, W) in normalised units. Raises
    IndexError if ``scales`` covers fewer levels than ``indices`` has."""
    low_step, steps = band_steps(len(indices.details), step, scales)
    return Subbands(
        low=indices.low * low_step,
        details=[tuple(torch.sign(q.detach()) * (q.abs() + RECONSTRUCTION) * s for q, s in zip(level, level_steps, strict=True))
                 for level, level_steps in zip(indices.details, steps, strict=True)],
    )


def _deadzone_round(scaled: Tensor) -> Tensor:
    return torch.sign(scaled) * torch.floor(torch.clamp(scaled.abs() + 0.5 - DEADZONE, min=0))
