"""MVMICNet in the rate-distortion harness: the shipped weights, or those ``measure_weights`` names
(`mvmic bench rd --mvmicnet-weights`; mvmic.bench.rd names them in each worker process too).

    MVMICNet            the base layer alone at each --quality point
    MVMICNet lossless   the exact stream (mvmic.model.lossless, no weights): lossless and near-lossless
                        (max error 1, 2, 4), as `mvmic compress --mode ...` writes it, one thread

The bytes counted are the whole single-frame .mvm bitstream (header, payload, CRC),
as JPEG 2000's are its whole codestream. The lossless codec's encode time leaves out the
encoder's own check of the bound (a decode, on by default in the CLI): the run checks every
point itself.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np

from mvmic.bench.codecs import Codec, OperatingPoint, register
from mvmic.model.bitstream import Bitstream
from mvmic.model.codec import MvmicCodec
from mvmic.model.lossless import stream as exact_stream
from mvmic.model.quality import QUALITY_CODES
from mvmic.model.table_codec import DEFAULT_WEIGHTS
from mvmic.pixels import PixelFormat

_measured = DEFAULT_WEIGHTS  # the weights measured_codec loads in this process


def measure_weights(weights: Path) -> None:
    """Measure MVMICNet with ``weights`` (a codec weights file) in this process; FileNotFoundError if absent."""
    global _measured
    if not weights.is_file():
        raise FileNotFoundError(f"no MVMICNet weights at {weights}")
    _measured = weights


def measured_weights() -> Path:
    return _measured


def measured_codec() -> MvmicCodec:
    return _loaded(_measured)


@cache
def _loaded(weights: Path) -> MvmicCodec:
    return MvmicCodec.load(weights)  # once per process and file: each worker loads it


def _pixels(frame: np.ndarray) -> np.ndarray:
    return frame[None, ..., None] if frame.ndim == 2 else frame[None]


def _frame(pixels: np.ndarray, fmt: PixelFormat) -> np.ndarray:
    return pixels[0, ..., 0] if fmt.samples_per_pixel == 1 else pixels[0]


@register
class MvmicNet(Codec):
    name = "MVMICNet"
    points = tuple(OperatingPoint(f"quality {quality}", param=code) for quality, code in QUALITY_CODES.items())

    def encode(self, frame: np.ndarray, fmt: PixelFormat, point: OperatingPoint) -> bytes:
        return measured_codec().compress_pixels(_pixels(frame), fmt, point.param).to_bytes()

    def decode(self, data: bytes, fmt: PixelFormat, point: OperatingPoint) -> np.ndarray:
        return _frame(measured_codec().decompress(Bitstream.from_bytes(data)), fmt)


@register
class MvmicNetLossless(Codec):
    name = "MVMICNet lossless"
    points = (OperatingPoint("lossless", param=0, lossless=True),
              *(OperatingPoint(f"max error {bound}", param=bound, max_error=bound) for bound in (1, 2, 4)))

    def encode(self, frame: np.ndarray, fmt: PixelFormat, point: OperatingPoint) -> bytes:
        return exact_stream.compress(_pixels(frame), fmt, point.param, verify=False).to_bytes()

    def decode(self, data: bytes, fmt: PixelFormat, point: OperatingPoint) -> np.ndarray:
        return _frame(exact_stream.decompress(Bitstream.from_bytes(data)), fmt)


def record_test_metrics(summary: list[dict], bd: list[dict], command: str) -> list[Path]:
    """Write this run's rows into the manifest of the weights they measured: the base layer's into
    the codec's (the exact layer has no weights)."""
    codec = measured_codec()
    files = [(codec.weights, MvmicNet.name)]
    written = []
    for weights, name in files:
        manifest_path = weights.path.with_suffix(".json")
        rows = [row for row in summary if row["codec"] == name]
        if not rows or not manifest_path.exists():
            continue
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("sha256") != weights.sha256:
            continue  # the manifest describes other weights; never attach numbers to the wrong file
        manifest["test_metrics"] = {"command": command, "points": rows,
                                    "bd_rate": [row for row in bd if row["codec"] == name]}
        manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
        written.append(manifest_path)
    return written
