"""Choosing the quality code: a named quality, a target rate or a target PSNR.

    --quality Q      Q in 1..8 -> QUALITY_CODES[Q]
    --target-bpp B   largest code whose bitstream has at most B bits per pixel
    --target-psnr P  smallest code whose reconstruction reaches P dB (native peak)
    --max-error T    (near-lossless, lossless) no code: the exact layer codes the pixels
                     themselves (mvmic.model.lossless.stream)

Rate and PSNR grow with the code, so both targets are found by bisection over the
integer codes, encoding (and for PSNR decoding) once per probe.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from mvmic.model.bitstream import Bitstream, Layer
from mvmic.model.lossless import stream as exact_stream
from mvmic.model.pixel_format import PixelFormat
from mvmic.model.quality import MAX_CODE, MIN_CODE, QUALITY_CODES
from mvmic.model.rate_distortion import psnr

if TYPE_CHECKING:  # the codec (and torch) load only where a lossy stream is made
    from mvmic.model.codec import MvmicCodec


class RateTargetError(ValueError):
    """The operating point asked for is not one: conflicting or out-of-range quality, rate or PSNR targets
    (HTTP 422, as FastAPI's own parameter checks)."""


def compress_at(codec: MvmicCodec | None, pixels: np.ndarray, fmt: PixelFormat, quality: int | None = None,
                target_bpp: float | None = None, target_psnr: float | None = None,
                extra_layers: tuple[Layer, ...] = (), max_error: int | None = None, verify: bool = True) -> Bitstream:
    """At most one of ``quality``, ``target_bpp``, ``target_psnr`` (default: quality 4). With
    ``max_error`` (0 lossless, 1..16 near-lossless) and none of them, an exact stream bounds the error
    (mvmic.model.lossless.stream: ``codec`` is not used and may be None) and ``verify`` decodes the result to
    check the bound.

    ``extra_layers`` (e.g. the DICOM header) are appended, and count against a rate target.
    """
    chosen = [name for name, value in (("quality", quality), ("target_bpp", target_bpp),
                                       ("target_psnr", target_psnr)) if value is not None]
    if len(chosen) > 1:
        raise RateTargetError(f"give one of quality, target bpp or target PSNR, not {' and '.join(chosen)}")
    for name, target in (("target bits per pixel", target_bpp), ("target PSNR", target_psnr)):
        if target is not None and not (math.isfinite(target) and target > 0):
            raise RateTargetError(f"{name} {target}: a positive finite number is needed")
    if max_error is not None:
        if chosen:
            raise RateTargetError(f"a {chosen[0].replace('_', ' ')} does not apply with a maximum error: lossless and "
                             f"near-lossless streams have no base layer (the exact layer codes the pixels themselves)")
        stream = exact_stream.compress(pixels, fmt, max_error, verify)
        return replace(stream, layers=(*stream.layers, *extra_layers))

    def encode(code: int) -> Bitstream:
        stream = codec.compress_pixels(pixels, fmt, code)
        return replace(stream, layers=(*stream.layers, *extra_layers))

    if target_bpp is not None:
        return _bisect(encode, lambda s: _bpp(s, pixels) <= target_bpp, want_largest=True)
    if target_psnr is not None:
        return _bisect(encode, lambda s: psnr(pixels, codec.decompress(s), fmt.peak) >= target_psnr,
                       want_largest=False)
    return encode(_quality_code(4 if quality is None else quality))


def _quality_code(quality: int) -> int:
    if quality not in QUALITY_CODES:
        raise RateTargetError(f"quality {quality} out of range {min(QUALITY_CODES)}..{max(QUALITY_CODES)}")
    return QUALITY_CODES[quality]


def _bpp(stream: Bitstream, pixels: np.ndarray) -> float:
    return 8 * len(stream.to_bytes()) / (pixels.shape[0] * pixels.shape[1] * pixels.shape[2])


def _bisect(encode: Callable[[int], Bitstream], good: Callable[[Bitstream], bool], want_largest: bool) -> Bitstream:
    """Largest code still ``good`` (rate budgets) or smallest code already ``good`` (quality floors).

    When no code qualifies, the nearest end of the range is returned: the smallest
    bitstream for a budget that cannot be met, the best quality for an unreachable PSNR.
    """
    low, high = MIN_CODE, MAX_CODE
    best: Bitstream | None = None
    while low <= high:
        middle = (low + high) // 2
        stream = encode(middle)
        if good(stream):
            best = stream
            low, high = (middle + 1, high) if want_largest else (low, middle - 1)
        else:
            low, high = (low, middle - 1) if want_largest else (middle + 1, high)
    return best or encode(MIN_CODE if want_largest else MAX_CODE)
