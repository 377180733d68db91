"""Codec registry for the benchmarks: one registration makes a codec part of every run.

    @register
    class MyCodec(Codec):
        name = "My codec"
        points = (OperatingPoint("lossless", lossless=True), OperatingPoint("q=4", param=4))
        def encode(self, frame, fmt, point) -> bytes: ...
        def decode(self, data, fmt, point) -> np.ndarray: ...

A frame is one image plane at native bit depth: (rows, columns) for one sample,
(rows, columns, 3) for colour, with the stored integer dtype of ``fmt``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from mvmic.pixels import PixelFormat


@dataclass(frozen=True)
class OperatingPoint:
    label: str  # shown in tables, e.g. "0.25 bpp", "NEAR=2", "lossless"
    param: float | int | None = None  # the codec's own knob for this point
    lossless: bool = False
    max_error: int | None = None  # near-lossless: the largest error the codec promises (checked by the run)


class Codec(ABC):
    name: str
    points: tuple[OperatingPoint, ...]

    @abstractmethod
    def encode(self, frame: np.ndarray, fmt: PixelFormat, point: OperatingPoint) -> bytes: ...

    @abstractmethod
    def decode(self, data: bytes, fmt: PixelFormat, point: OperatingPoint) -> np.ndarray:
        """The frame back, same shape and dtype as encoded."""


CODECS: dict[str, Codec] = {}


def register(codec_class: type[Codec]) -> type[Codec]:
    """Class decorator: add one instance of the codec to the registry."""
    if codec_class.name in CODECS:
        raise ValueError(f"codec {codec_class.name!r} is registered twice")
    CODECS[codec_class.name] = codec_class()
    return codec_class


def registered_codecs(names: list[str] | None = None) -> list[Codec]:
    """The codecs to run, all by default; unknown names are an error that lists the known ones."""
    from mvmic.bench.codecs import classical, mvmicnet  # noqa: F401  (registering is importing)

    if not names:
        return list(CODECS.values())
    unknown = [name for name in names if name not in CODECS]
    if unknown:
        raise ValueError(f"unknown codec {', '.join(unknown)}; registered: {', '.join(CODECS)}")
    return [CODECS[name] for name in names]
