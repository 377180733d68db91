"""The codecs PACS use today, at the image's real bits stored.

    JPEG 2000  OpenJPEG (pylibjpeg-openjpeg): reversible 5/3 lossless; 9/7 at target rates
    HTJ2K      OpenJPH (imagecodecs): reversible lossless; irreversible at quantisation steps
    JPEG-LS    CharLS (pyjpegls): lossless and NEAR = 1, 2, 4
    JPEG XL    libjxl (imagecodecs): lossless (effort 7, 9 and 10, the highest) and lossy at butteraugli
               distances (effort 7)
    AVIF       libavif with libaom (imagecodecs): AV1 intra, lossy at quality levels, speed 6 (avifenc's
               default), at 8, 10 or 12 bits

JPEG 2000 and HTJ2K code signed samples natively. JPEG-LS, JPEG XL and AVIF have no signed
mode, so signed images are level-shifted by 2**(BitsStored-1) into the unsigned range
of the same width and shifted back after decoding: lossless, and what a DICOM
implementation would do. AV1 codes 8, 10 or 12 bits: AVIF takes the smallest that holds
BitsStored, and images of more than 12 bits lose their low bits before coding (decoding
puts the middle of the lost range back), as a DICOM gateway storing them in AVIF would.
"""

from __future__ import annotations

import imagecodecs
import jpeg_ls
import numpy as np
import openjpeg

from mvmic.bench.codecs import Codec, OperatingPoint, register
from mvmic.pixels import PixelFormat

TARGET_BPP = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


def _to_unsigned(frame: np.ndarray, fmt: PixelFormat) -> np.ndarray:
    if not fmt.signed:
        return frame
    unsigned = np.dtype(f"<u{fmt.dtype.itemsize}")
    return (frame.astype(np.int32) - fmt.min_value).astype(unsigned)


def _from_unsigned(frame: np.ndarray, fmt: PixelFormat) -> np.ndarray:
    if not fmt.signed:
        return frame.astype(fmt.dtype, copy=False)
    return (frame.astype(np.int32) + fmt.min_value).astype(fmt.dtype)


def _samples(frame: np.ndarray) -> int:
    return 1 if frame.ndim == 2 else frame.shape[2]


@register
class Jpeg2000(Codec):
    name = "JPEG 2000"
    points = (OperatingPoint("5/3 lossless", lossless=True),
              *(OperatingPoint(f"9/7 {bpp:g} bpp", param=bpp) for bpp in TARGET_BPP))

    def encode(self, frame: np.ndarray, fmt: PixelFormat, point: OperatingPoint) -> bytes:
        colour = 1 if fmt.samples_per_pixel == 3 else 0  # 1: sRGB, so the RCT/ICT is applied
        if point.lossless:
            return openjpeg.encode(frame, bits_stored=fmt.bits_stored, photometric_interpretation=colour)
        # OpenJPEG's ratio is against the raw size at the stored precision.
        ratio = fmt.bits_stored * _samples(frame) / point.param
        return openjpeg.encode(frame, bits_stored=fmt.bits_stored, photometric_interpretation=colour,
                               compression_ratios=[ratio])

    def decode(self, data: bytes, fmt: PixelFormat, point: OperatingPoint) -> np.ndarray:
        return openjpeg.decode(data).astype(fmt.dtype, copy=False)


@register
class Htj2k(Codec):
    name = "HTJ2K"
    # Quantisation step as a fraction of the native range, 2**-12 .. 2**-4.
    points = (OperatingPoint("lossless", lossless=True),
              *(OperatingPoint(f"step 2^-{k}", param=2.0 ** -k) for k in range(12, 3, -1)))

    def encode(self, frame: np.ndarray, fmt: PixelFormat, point: OperatingPoint) -> bytes:
        rgb = fmt.samples_per_pixel == 3
        if point.lossless:
            return imagecodecs.htj2k_encode(frame, reversible=True, rgb=rgb)
        # Lossy 8-bit output wraps around (255 + 1 -> 0) in an 8-bit container; a
        # 16-bit one keeps the overshoot, which decode() clips.
        wide = frame.astype(np.int16 if fmt.signed else np.uint16)
        # OpenJPH normalises samples by the container width, not by BitsStored.
        step = point.param * 2.0 ** (fmt.bits_stored - 16)
        return imagecodecs.htj2k_encode(wide, level=step, reversible=False, rgb=rgb)

    def decode(self, data: bytes, fmt: PixelFormat, point: OperatingPoint) -> np.ndarray:
        return np.clip(imagecodecs.htj2k_decode(data), fmt.min_value, fmt.max_value).astype(fmt.dtype)


@register
class JpegLs(Codec):
    name = "JPEG-LS"
    points = (OperatingPoint("lossless", param=0, lossless=True),
              *(OperatingPoint(f"NEAR={near}", param=near, max_error=near) for near in (1, 2, 4)))

    def encode(self, frame: np.ndarray, fmt: PixelFormat, point: OperatingPoint) -> bytes:
        unsigned = np.ascontiguousarray(_to_unsigned(frame, fmt))
        rows, columns = frame.shape[:2]
        interleave = 2 if _samples(frame) > 1 else None  # colour-by-pixel, as stored
        return bytes(jpeg_ls.encode_buffer(unsigned.tobytes(), rows, columns, _samples(frame), fmt.bits_stored,
                                           lossy_error=point.param, interleave_mode=interleave))

    def decode(self, data: bytes, fmt: PixelFormat, point: OperatingPoint) -> np.ndarray:
        return _from_unsigned(jpeg_ls.decode(np.frombuffer(data, np.uint8)), fmt)


@register
class JpegXl(Codec):
    name = "JPEG XL"
    points = (OperatingPoint("lossless e7", param=7, lossless=True), OperatingPoint("lossless e9", param=9, lossless=True),
              OperatingPoint("lossless e10", param=10, lossless=True),  # the highest effort libjxl 0.11 has
              *(OperatingPoint(f"d={distance:g}", param=distance) for distance in (0.05, 0.15, 0.4, 1, 2.5, 6, 15)))

    def encode(self, frame: np.ndarray, fmt: PixelFormat, point: OperatingPoint) -> bytes:
        unsigned = _to_unsigned(frame, fmt)
        options = {"lossless": True, "effort": point.param} if point.lossless else {"distance": point.param, "effort": 7}
        return imagecodecs.jpegxl_encode(unsigned, bitspersample=fmt.bits_stored, numthreads=1, **options)

    def decode(self, data: bytes, fmt: PixelFormat, point: OperatingPoint) -> np.ndarray:
        return _from_unsigned(imagecodecs.jpegxl_decode(data, numthreads=1), fmt)


@register
class Avif(Codec):
    name = "AVIF"
    # libavif quality 0..100 (100 is lossless): about 0.03 to 2.5 bits per pixel on 12-bit CT and MR.
    points = tuple(OperatingPoint(f"quality {quality}", param=quality) for quality in (25, 40, 55, 68, 78, 86, 92, 96))

    def encode(self, frame: np.ndarray, fmt: PixelFormat, point: OperatingPoint) -> bytes:
        depth, shift = _av1_depth(fmt.bits_stored)
        unsigned = _to_unsigned(frame, fmt) >> shift
        samples = unsigned.astype(np.uint8 if depth == 8 else np.uint16)
        if _samples(frame) == 1:  # imagecodecs codes one sample losslessly only: grey goes in as R = G = B, coded as Y
            samples = np.stack([samples.reshape(samples.shape[:2])] * 3, axis=-1)
            layout = "yuv400"
        else:
            layout = "yuv444"
        return imagecodecs.avif_encode(np.ascontiguousarray(samples), level=point.param, speed=6, bitspersample=depth,
                                       pixelformat=layout, numthreads=1)

    def decode(self, data: bytes, fmt: PixelFormat, point: OperatingPoint) -> np.ndarray:
        _, shift = _av1_depth(fmt.bits_stored)
        decoded = imagecodecs.avif_decode(data, numthreads=1).astype(np.int64)
        if shift:
            decoded = (decoded << shift) + (1 << (shift - 1))
        return _from_unsigned(np.clip(decoded, 0, (1 << fmt.bits_stored) - 1), fmt)


def _av1_depth(bits_stored: int) -> tuple[int, int]:
    """(AV1 bit depth, bits dropped before coding) for BitsStored."""
    depth = next((d for d in (8, 10, 12) if bits_stored <= d), 12)
    return depth, max(0, bits_stored - depth)
