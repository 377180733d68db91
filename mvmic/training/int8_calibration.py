"""The int8 heads' calibration set, read from the corpus's train split (`mvmic export-onnx --int8` and the heads'
training exports; the quantisation itself is mvmic.model.tasks.quantize).

    train split, one-channel frames (one per entry, evenly spread) --quantised at every quality
        (QUALITY_CODES, in turn)--> LL1 planes as the decoder gives them (coarse_reconstruction),
        standardised over each frame --> quantize_heads' activation ranges
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mvmic.corpus.manifest import Manifest
from mvmic.model.cnn_base import coarse_reconstruction
from mvmic.model.codec import MvmicCodec
from mvmic.model.quality import QUALITY_CODES
from mvmic.model.tasks.heads import standardise
from mvmic.model.tasks.quantize import CALIBRATION_SPLIT
from mvmic.model.tasks.runtime import export_heads_file

CALIBRATION_FRAMES = 64  # one frame per corpus entry, spread over the split's entries


def calibration_planes(corpus_dir: Path, codec: MvmicCodec, count: int = CALIBRATION_FRAMES) -> list[np.ndarray]:
    """Standardised LL1 planes (1, 1, h, w) float32 of ``count`` one-channel frames of the train split, evenly
    spread over its entries, each quantised at the next quality code in turn. Raises FileNotFoundError
    without a corpus (`mvmic data prepare`), ValueError when its train split has no one-channel frame."""
    manifest = corpus_dir / "manifest.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"no corpus at {corpus_dir} to calibrate the int8 heads on: run `mvmic data prepare`")
    entries = [e for e in Manifest.load(manifest).select(CALIBRATION_SPLIT) if e.samples_per_pixel == 1]
    if not entries:
        raise ValueError(f"the {CALIBRATION_SPLIT} split of the corpus at {corpus_dir} holds no one-channel frame to "
                         "calibrate the int8 heads on")
    chosen = [entries[i] for i in np.unique(np.linspace(0, len(entries) - 1, min(count, len(entries))).astype(int))]
    codes, planes = list(QUALITY_CODES.values()), []
    for index, entry in enumerate(chosen):
        image = entry.read(corpus_dir)
        code = codes[index % len(codes)]
        bands = codec.quantized_planes(image.frame(0), image.format, code)[0]
        with torch.no_grad():
            coarse = coarse_reconstruction(bands, code, 1, codec.scales)
            planes.append(standardise(coarse.float()).numpy())
    return planes


def export_heads_with_int8(weights: Path, corpus_dir: Path, target: Path | None = None, command: str | None = None,
                           codec: MvmicCodec | None = None) -> Path:
    """mvmic.model.tasks.runtime.export_heads_file with the int8 model, calibrated on the train split of the corpus at
    ``corpus_dir`` as ``codec`` (default: the served one) quantises it; errors as calibration_planes' and
    export_heads_file's."""
    planes = calibration_planes(corpus_dir, MvmicCodec.load() if codec is None else codec)
    return export_heads_file(weights, target, command, planes)
