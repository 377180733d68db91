"""The base layer in integers: what a residual layer is coded against, identical on every machine.

    integer subbands q (entropy decoded: exact)
      --x per-band steps, fixed point (written by the encoder, see BandStepsFixed)--> int64 coefficients
      --exact_synthesis (mvmic.model.lifting: int64 lifting, rounded products)--> fixed-point plane
      --x 2**BitsStored, round, + offset--> int64 base plane
      --inverse RCT for colour, clip to the stored range--> base samples

The lossy decoder's float path (pow for the step, band gains, learned band scales, float
lifting) is fine for a preview but may differ in the last bit between machines, thread
counts or devices; one differing base value would break a lossless residual. Here the
only floats are the encoder's, once, when it writes the steps down as integers.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
from torch import Tensor

from mvmic.model.lifting import FIXED_POINT_BITS, Subbands, exact_synthesis
from mvmic.model.subbands import RECONSTRUCTION, band_steps

STEP_FRACTION_BITS = 32  # a step of 2**-20 (code 120 at depth 5) still has 12 significant bits
# RECONSTRUCTION as a fraction of integers, so dequantisation needs no float either.
_RECONSTRUCTION = Fraction(RECONSTRUCTION).limit_denominator(1000)
RECONSTRUCTION_NUMERATOR, RECONSTRUCTION_DENOMINATOR = _RECONSTRUCTION.numerator, _RECONSTRUCTION.denominator
MAX_STEP = 1 << 40  # larger steps would overflow int64 products; the codec's are below 2**33


@dataclass(frozen=True)
class BandStepsFixed:
    """Quantiser steps of every band in fixed point (STEP_FRACTION_BITS), in Subbands order:
    the low band, then (LH, HL, HH) per level, coarsest first."""

    steps: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.steps or (len(self.steps) - 1) % 3:
            raise ValueError(f"{len(self.steps)} band steps: expected 1 + 3 per level")
        if any(not 0 < s <= MAX_STEP for s in self.steps):
            raise ValueError(f"band steps must be in 1..{MAX_STEP} (fixed point)")

    @classmethod
    def of(cls, levels: int, step: float, scales: Tensor | None = None) -> BandStepsFixed:
        """The encoder's float steps (mvmic.model.subbands.band_steps), rounded once to fixed point."""
        low, details = band_steps(levels, step, scales)
        floats = [float(low)] + [float(s) for level in details for s in level]
        return cls(tuple(max(1, round(s * 2**STEP_FRACTION_BITS)) for s in floats))

    @property
    def levels(self) -> int:
        return (len(self.steps) - 1) // 3


def dequantize_exact(q: Subbands, steps: BandStepsFixed) -> Subbands:
    """Integer subbands -> int64 coefficients with FIXED_POINT_BITS fraction bits (mvmic.model.subbands.dequantize
    in integers: details sit RECONSTRUCTION above their integer, away from zero)."""
    if len(q.details) != steps.levels:
        raise ValueError(f"{len(q.details)} levels of subbands, {steps.levels} levels of steps")
    shift = STEP_FRACTION_BITS - FIXED_POINT_BITS
    low = _round_shift(q.low.to(torch.int64) * steps.steps[0], shift)
    details = []
    for level, level_steps in enumerate(_per_level(steps.steps[1:])):
        bands = []
        for band, step in zip(q.details[level], level_steps, strict=True):
            integers = band.to(torch.int64)
            magnitude = (integers.abs() * RECONSTRUCTION_DENOMINATOR + RECONSTRUCTION_NUMERATOR) * step
            divisor = RECONSTRUCTION_DENOMINATOR << shift
            bands.append(torch.sign(integers) * torch.div(magnitude + divisor // 2, divisor, rounding_mode="floor"))
        details.append(tuple(bands))
    return Subbands(low=low, details=details)


def exact_plane(q: Subbands, steps: BandStepsFixed, bits_stored: int, offset: int) -> np.ndarray:
    """One base plane in stored units, int64 (rows, columns), not yet clipped."""
    fixed = exact_synthesis(dequantize_exact(q, steps))[0, 0]
    return _round_shift(fixed << bits_stored, FIXED_POINT_BITS).numpy() + offset


def _round_shift(values: Tensor, shift: int) -> Tensor:
    """values / 2**shift rounded half up, in integers."""
    return (values + (1 << (shift - 1))) >> shift if shift > 0 else values


def _per_level(steps: tuple[int, ...]) -> list[tuple[int, int, int]]:
    return [tuple(steps[i : i + 3]) for i in range(0, len(steps), 3)]

