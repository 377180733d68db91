"""CDF 9/7 wavelet by lifting: the analysis/synthesis transform MVMICNet starts from.

JPEG 2000's irreversible wavelet, written as four lifting steps and a scaling per
axis, so that learned corrections can later be added to each step without losing
perfect reconstruction (cf. iWave++):

    x --split--> s (even), d (odd)
        d += A (s[i] + s[i+1])      predict
        s += B (d[i-1] + d[i])      update
        d += G (s[i] + s[i+1])      predict
        s += D (d[i-1] + d[i])      update
        s /= K,  d *= K / 2         JPEG 2000 normalisation (DC gain 1)
    --> low = s, high = d

Borders use whole-sample symmetric extension, so any length >= 2 works, odd
included. The 2-D transform applies the 1-D one to columns, then rows, and
recurses on the low-low band:

    image --level 1--> LL1, (LH1, HL1, HH1) --level 2--> LL2, (LH2, HL2, HH2) ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from mvmic.model.cdf97 import ALPHA, BETA, DELTA, GAMMA, KAPPA, band_shapes

FIXED_POINT_BITS = 24  # fraction bits of exact_synthesis's values and constants: products stay below 2**55

Multiply = Callable[[float, Tensor], Tensor]


@dataclass
class Subbands:
    """Wavelet coefficients: the coarsest low band and, coarse to fine, the detail bands."""

    low: Tensor
    details: list[tuple[Tensor, Tensor, Tensor]]  # (LH, HL, HH) per level, coarsest first


def zero_subbands(height: int, width: int, levels: int, dtype: torch.dtype = torch.float64) -> Subbands:
    """Subbands of zeros with the shapes :func:`analysis` gives a (1, 1, height, width) image."""
    low, details = band_shapes(height, width, levels)
    return Subbands(low=torch.zeros(1, 1, *low, dtype=dtype),
                    details=[tuple(torch.zeros(1, 1, *shape, dtype=dtype) for shape in level) for level in details])


def analysis(image: Tensor, levels: int) -> Subbands:
    """Forward 2-D transform of (N, C, H, W) images."""
    details = []
    low = image
    for _ in range(levels):
        low_columns, high_columns = forward_1d(low, dim=-1)
        low, lh = forward_1d(low_columns, dim=-2)
        hl, hh = forward_1d(high_columns, dim=-2)
        details.append((lh, hl, hh))
    return Subbands(low=low, details=details[::-1])


def synthesis(bands: Subbands, multiply: Multiply | None = None) -> Tensor:
    """Inverse of :func:`analysis`; ``multiply`` (constant, values) as in :func:`inverse_1d`."""
    low = bands.low
    for lh, hl, hh in bands.details:
        low_columns = inverse_1d(low, lh, dim=-2, multiply=multiply)
        high_columns = inverse_1d(hl, hh, dim=-2, multiply=multiply)
        low = inverse_1d(low_columns, high_columns, dim=-1, multiply=multiply)
    return low


def fixed_point_multiply(constant: float, values: Tensor) -> Tensor:
    """constant * values on int64 fixed-point values, rounded: integers only, so every machine,
    thread count and device gives the same result (the exact decoder of a residual layer needs it)."""
    scaled = round(constant * 2**FIXED_POINT_BITS)  # exact: a product with a power of two, then round
    return (scaled * values + 2 ** (FIXED_POINT_BITS - 1)) >> FIXED_POINT_BITS


def exact_synthesis(bands: Subbands) -> Tensor:
    """:func:`synthesis` of int64 bands in fixed point (FIXED_POINT_BITS fraction bits), in integers."""
    return synthesis(bands, multiply=fixed_point_multiply)


def _next_even(s: Tensor, n_odd: int, dim: int) -> Tensor:
    """s[i + 1] for each odd sample i, mirrored at the end."""
    return torch.cat([s.narrow(dim, 1, s.shape[dim] - 1), s.narrow(dim, s.shape[dim] - 1, 1)], dim).narrow(dim, 0, n_odd)


def _neighbour_odds(d: Tensor, n_even: int, dim: int) -> Tensor:
    """d[i - 1] + d[i] for each even sample i, mirrored at both ends."""
    previous = torch.cat([d.narrow(dim, 0, 1), d], dim).narrow(dim, 0, n_even)
    current = torch.cat([d, d.narrow(dim, d.shape[dim] - 1, 1)], dim).narrow(dim, 0, n_even)
    return previous + current


def _split(x: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    n = x.shape[dim]
    if n < 2:
        raise ValueError(f"cannot transform a dimension of length {n}: at least 2 samples are needed")
    index = torch.arange(n, device=x.device)
    return x.index_select(dim, index[0::2]), x.index_select(dim, index[1::2])


def forward_1d(x: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    s, d = _split(x, dim)
    n_even, n_odd = s.shape[dim], d.shape[dim]
    d = d + ALPHA * (s.narrow(dim, 0, n_odd) + _next_even(s, n_odd, dim))
    s = s + BETA * _neighbour_odds(d, n_even, dim)
    d = d + GAMMA * (s.narrow(dim, 0, n_odd) + _next_even(s, n_odd, dim))
    s = s + DELTA * _neighbour_odds(d, n_even, dim)
    return s / KAPPA, d * (KAPPA / 2)


def inverse_1d(s: Tensor, d: Tensor, dim: int, multiply: Multiply | None = None) -> Tensor:
    """Undo :func:`forward_1d`; ``multiply`` scales values by a lifting constant (default: float)."""
    times = multiply or _float_multiply
    s, d = times(KAPPA, s), times(2 / KAPPA, d)
    n_even, n_odd = s.shape[dim], d.shape[dim]
    s = s - times(DELTA, _neighbour_odds(d, n_even, dim))
    d = d - times(GAMMA, s.narrow(dim, 0, n_odd) + _next_even(s, n_odd, dim))
    s = s - times(BETA, _neighbour_odds(d, n_even, dim))
    d = d - times(ALPHA, s.narrow(dim, 0, n_odd) + _next_even(s, n_odd, dim))
    return _interleave(s, d, dim)


def _float_multiply(constant: float, values: Tensor) -> Tensor:
    return values * constant


def _interleave(s: Tensor, d: Tensor, dim: int) -> Tensor:
    n_even, n_odd = s.shape[dim], d.shape[dim]
    shape = list(s.shape)
    shape[dim] = n_even + n_odd
    out = s.new_empty(shape)
    index = torch.arange(n_even + n_odd, device=s.device)
    out.index_copy_(dim, index[0::2], s)
    out.index_copy_(dim, index[1::2], d)
    return out
