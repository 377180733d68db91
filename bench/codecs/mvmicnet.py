"""MVMICNet in the rate-distortion harness: the shipped weights (or those named by the
MVMIC_BENCH_WEIGHTS environment variable, which worker processes inherit) at each --quality point.

The bytes counted are the whole single-frame .mvm bitstream (header, payload, CRC),
as JPEG 2000's are its whole codestream.
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path

import numpy as np

from bench.codecs import Codec, OperatingPoint, register
from model.bitstream import Bitstream
from model.codec import DEFAULT_WEIGHTS, QUALITY_CODES, MvmicCodec
from mvmic.pixels import PixelFormat

WEIGHTS_VARIABLE = "MVMIC_BENCH_WEIGHTS"


def measured_weights() -> Path:
    return Path(os.environ.get(WEIGHTS_VARIABLE, DEFAULT_WEIGHTS))


@register
class MvmicNet(Codec):
    name = "MVMICNet"
    points = tuple(OperatingPoint(f"quality {quality}", param=code) for quality, code in QUALITY_CODES.items())

    @cached_property
    def codec(self) -> MvmicCodec:
        return MvmicCodec.load(measured_weights())  # once per process: each worker loads it

    def encode(self, frame: np.ndarray, fmt: PixelFormat, point: OperatingPoint) -> bytes:
        pixels = frame[None, ..., None] if frame.ndim == 2 else frame[None]
        return self.codec.compress_pixels(pixels, fmt, point.param).to_bytes()

    def decode(self, data: bytes, fmt: PixelFormat, point: OperatingPoint) -> np.ndarray:
        pixels = self.codec.decompress(Bitstream.from_bytes(data))[0]
        return pixels[..., 0] if fmt.samples_per_pixel == 1 else pixels


def record_test_metrics(summary: list[dict], bd: list[dict], command: str) -> Path | None:
    """Write this run's MVMICNet rows into the manifest of the weights it measured."""
    manifest_path = measured_weights().with_suffix(".json")
    if not manifest_path.exists():
        return None
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("sha256") != MvmicCodec.load(measured_weights()).weights.sha256:
        return None  # the manifest describes other weights; never attach numbers to the wrong file
    manifest["test_metrics"] = {
        "command": command,
        "points": [row for row in summary if row["codec"] == MvmicNet.name],
        "bd_rate": [row for row in bd if row["codec"] == MvmicNet.name],
    }
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest_path
