"""What the codecs refuse, and the bound check they share (no torch: the exact layer uses it too).

    CodecInputError       the image cannot be coded (photometric interpretation, size): HTTP 415
    TooSmallToAnalyseError  coded, but too small for the task heads (partial decoding): HTTP 422
    BoundViolationError   an encoder's own decoding broke its promised maximum error: a bug, reported
                          instead of returning a bitstream that does not keep its promise
"""

from __future__ import annotations

import numpy as np

from mvmic.model.bitstream import InvalidFieldError
from mvmic.model.pixel_format import PixelFormat

CODEABLE_PHOTOMETRICS = {"MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL"}
# A forged header must not make a decoder allocate without bound, and the encoders make nothing the decoders
# refuse: a frame up to 8192 x 8192 samples, and a stream up to 512 MiB of 16-bit samples, which decoding copies
# a few times within the service's 4 GB (a frame's layer can be a few bytes: a 2 KB stream could declare
# hundreds of full-size frames).
MAX_SAMPLES_PER_FRAME = 1 << 26
MAX_SAMPLES_PER_STREAM = 1 << 28


class CodecInputError(ValueError):
    """The image cannot be coded by MVMICNet; the message says why."""


class TooSmallToAnalyseError(CodecInputError):
    """The image has fewer wavelet levels than partial decoding skips: the task heads cannot see it."""


class BoundViolationError(RuntimeError):
    """The encoder's own decoding of a bitstream broke the promised maximum error."""


def check_codeable(pixels: np.ndarray, fmt: PixelFormat, minimum: int = 2, lossless: bool = False) -> None:
    """Raise CodecInputError unless ``pixels`` (frames, rows, columns, samples) of ``fmt`` can be coded:
    a supported photometric interpretation, at least ``minimum`` rows and columns, and no more samples than the
    decoders take (check_decoded_size). PALETTE COLOR values
    are indices into colour tables: coded ``lossless`` only, since an index off by one is another colour."""
    if fmt.photometric == "PALETTE COLOR" and not lossless:
        raise CodecInputError("PhotometricInterpretation PALETTE COLOR holds indices into colour tables: it is coded "
                              "lossless only (an index off by one is another colour)")
    if fmt.photometric not in CODEABLE_PHOTOMETRICS | {"PALETTE COLOR"}:
        raise CodecInputError(f"PhotometricInterpretation {fmt.photometric} is not supported "
                              f"({', '.join(sorted(CODEABLE_PHOTOMETRICS))}, and PALETTE COLOR lossless)")
    frames, rows, columns, samples = pixels.shape
    if min(rows, columns) < minimum:
        raise CodecInputError(f"image of {rows} x {columns} pixels is too small (at least {minimum} x {minimum})")
    try:
        check_decoded_size(frames, rows, columns, samples)
    except ValueError as exc:
        raise CodecInputError(f"image too large: {exc}") from None


def check_bound(pixels: np.ndarray, decoded: np.ndarray, max_error: int) -> None:
    """Raise BoundViolationError unless every decoded sample is within ``max_error`` of ``pixels``."""
    worst = int(np.abs(decoded.astype(np.int64) - pixels.astype(np.int64)).max())
    if worst > max_error:
        raise BoundViolationError(f"the bitstream decodes with a maximum error of {worst}, "
                                  f"above the promised {max_error}: bitstream withheld")


def check_decoded_size(frames: int, rows: int, columns: int, samples: int) -> None:
    """Raise InvalidFieldError (a bitstream's header declares them) for frames, or a stream of frames, larger than
    any decoder here allocates (MAX_SAMPLES_PER_FRAME, MAX_SAMPLES_PER_STREAM)."""
    if rows * columns * samples > MAX_SAMPLES_PER_FRAME:
        raise InvalidFieldError(f"frames of {rows} x {columns} x {samples} exceed this decoder's limit of "
                         f"{MAX_SAMPLES_PER_FRAME} samples")
    if frames * rows * columns * samples > MAX_SAMPLES_PER_STREAM:
        raise InvalidFieldError(f"{frames} frames of {rows} x {columns} x {samples} exceed this decoder's limit of "
                         f"{MAX_SAMPLES_PER_STREAM} samples a stream")
