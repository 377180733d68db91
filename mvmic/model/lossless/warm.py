"""Compile the exact layer's kernels once into numba's on-disk cache (``python -m mvmic.model.lossless.warm``,
run by ``make``), so that no `mvmic compress` pays for compilation."""

from __future__ import annotations

import numpy as np

from mvmic.model.lossless.layer import decode_frame, encode_frame
from mvmic.model.pixel_format import PixelFormat


def warm() -> None:
    fmt = PixelFormat(12, False)
    frame = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64, 1) * 7) % 4096
    decode_frame(encode_frame(frame, fmt, 0), 64, 64, fmt)


if __name__ == "__main__":
    warm()
