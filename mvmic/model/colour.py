"""Colour planes and the mapping to the wavelet's range, shared by every lossy base layer.

    RGB (rows, columns, 3) --to_planes--> luma, blue - green, red - green --from_planes--> RGB
    planes --normalised_planes: (v - plane_offset) / 2**BitsStored--> what the wavelet sees (float64)

The colour transform is JPEG 2000's reversible colour transform (RCT, ITU-T T.800 Annex G.2): integer
and exactly invertible; grey images pass through as one plane. The normalisation's two integers are
the ``offset`` (offset_of) and ``scale_log2`` (BitsStored) fields of a lossy stream's header
(mvmic.model.bitstream): the decoder checks them (check_mapping) rather than trusting them.
"""

from __future__ import annotations

import numpy as np

from mvmic.model.bitstream import Bitstream, InvalidFieldError
from mvmic.model.pixel_format import PixelFormat


def to_planes(frame: np.ndarray, fmt: PixelFormat) -> list[np.ndarray]:
    """Integer planes of a frame (rows, columns[, samples]), int64: the frame itself, or the RCT of RGB."""
    values = frame.astype(np.int64)
    if fmt.samples_per_pixel == 1:
        return [values.reshape(values.shape[:2])]  # (rows, columns) or (rows, columns, 1)
    red, green, blue = values[..., 0], values[..., 1], values[..., 2]
    luma = (red + 2 * green + blue) >> 2
    return [luma, blue - green, red - green]


def from_planes(planes: list[np.ndarray], fmt: PixelFormat) -> np.ndarray:
    """Stored values (rows, columns, samples) in ``fmt.dtype``, clipped to the stored range."""
    values = [p.astype(np.int64, copy=False) for p in planes]
    if fmt.samples_per_pixel == 3:
        luma, blue_diff, red_diff = values
        green = luma - ((blue_diff + red_diff) >> 2)
        values = [red_diff + green, green, blue_diff + green]
    # np.clip into a new array, then one conversion: the fewest whole-frame temporaries (each is megabytes)
    stacked = np.stack(values, axis=-1) if len(values) > 1 else values[0][..., None]
    return np.clip(stacked, fmt.min_value, fmt.max_value).astype(fmt.dtype)


def offset_of(fmt: PixelFormat) -> int:
    """Unsigned values are centred on mid-range before the transform; signed ones already are."""
    return 0 if fmt.signed else 1 << (fmt.bits_stored - 1)


def plane_offset(fmt: PixelFormat, plane: int) -> int:
    return offset_of(fmt) if plane == 0 else 0  # the colour differences of the RCT are centred


def normalised_planes(frame: np.ndarray, fmt: PixelFormat) -> list[np.ndarray]:
    """The planes the wavelet sees: (value - offset) / 2**BitsStored, float64."""
    return normalised(to_planes(frame, fmt), fmt)


def normalised(planes: list[np.ndarray], fmt: PixelFormat) -> list[np.ndarray]:
    """:func:`normalised_planes` of a frame's integer planes (to_planes)."""
    return [(plane - plane_offset(fmt, index)) / 2.0**fmt.bits_stored for index, plane in enumerate(planes)]


def check_mapping(stream: Bitstream) -> None:
    """Raise InvalidFieldError unless the header's ``offset`` and ``scale_log2`` are the ones a lossy encoder writes
    for the stream's pixel format (offset_of, BitsStored): the decoder computes the mapping from the format, so a
    header that disagrees is damaged or forged, not another mapping."""
    fmt = stream.pixel_format
    if stream.scale_log2 != fmt.bits_stored:
        raise InvalidFieldError(f"scale_log2 {stream.scale_log2}: a {fmt.bits_stored}-bit stream has scale_log2 "
                                f"{fmt.bits_stored} (values are normalised by 2**BitsStored)")
    if stream.offset != offset_of(fmt):
        raise InvalidFieldError(f"offset {stream.offset}: a {'signed' if fmt.signed else 'unsigned'} "
                                f"{fmt.bits_stored}-bit stream has offset {offset_of(fmt)}")
