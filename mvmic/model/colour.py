"""Colour planes: JPEG 2000's reversible colour transform (RCT) of the lossy base layer.

    RGB (rows, columns, 3) --to_planes--> luma, blue - green, red - green --from_planes--> RGB

Integer and exactly invertible; grey images pass through as one plane.
"""

from __future__ import annotations

import numpy as np

from mvmic.model.pixel_format import PixelFormat


def to_planes(frame: np.ndarray, fmt: PixelFormat) -> list[np.ndarray]:
    """Integer planes of a frame (rows, columns[, samples]), float64: the frame itself, or the RCT of RGB."""
    values = frame.astype(np.int64)
    if fmt.samples_per_pixel == 1:
        return [values.reshape(values.shape[:2]).astype(np.float64)]  # (rows, columns) or (rows, columns, 1)
    red, green, blue = values[..., 0], values[..., 1], values[..., 2]
    luma = (red + 2 * green + blue) >> 2
    return [p.astype(np.float64) for p in (luma, blue - green, red - green)]


def from_planes(planes: list[np.ndarray], fmt: PixelFormat) -> np.ndarray:
    """Stored values (rows, columns, samples) in ``fmt.dtype``, clipped to the stored range."""
    values = [p.astype(np.int64) for p in planes]
    if fmt.samples_per_pixel == 3:
        luma, blue_diff, red_diff = values
        green = luma - ((blue_diff + red_diff) >> 2)
        values = [red_diff + green, green, blue_diff + green]
    stacked = np.stack(values, axis=-1)
    return np.clip(stacked, fmt.min_value, fmt.max_value).astype(fmt.dtype)
