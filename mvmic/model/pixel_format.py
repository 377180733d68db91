"""How stored pixel values are represented: what every codec stage must preserve, with no DICOM in sight.

The codec core (mvmic/model/) reads and writes PixelFormat; mvmic.pixels maps DICOM's pixel module onto it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

MAX_BITS_STORED = 16
SUPPORTED_SAMPLES = (1, 3)


@dataclass(frozen=True)
class PixelFormat:
    """How stored values are represented: what a codec must preserve."""

    bits_stored: int
    signed: bool
    samples_per_pixel: int = 1
    photometric: str = "MONOCHROME2"

    @property
    def peak(self) -> int:
        """Width of the native range, the PSNR peak: 2**BitsStored - 1."""
        return (1 << self.bits_stored) - 1

    @property
    def min_value(self) -> int:
        return -(1 << (self.bits_stored - 1)) if self.signed else 0

    @property
    def max_value(self) -> int:
        return (1 << (self.bits_stored - 1)) - 1 if self.signed else self.peak

    @property
    def dtype(self) -> np.dtype:
        """Smallest little-endian integer dtype that holds the stored values."""
        size = 1 if self.bits_stored <= 8 else 2
        return np.dtype(f"<{'i' if self.signed else 'u'}{size}")


class StoredImage(Protocol):
    """What the codec needs of an image: its stored values and their format (mvmic.pixels.NativeImage is one)."""

    pixels: np.ndarray  # (frames, rows, columns, samples), the stored integers
    format: PixelFormat
