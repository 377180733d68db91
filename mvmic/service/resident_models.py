"""The models the service keeps resident: loaded once, used by every request.

    Settings.weights_dir --MvmicCodec.load (with the residual model)--> codec (CPU: integer entropy coding)
                         --Analyzer.load--> analyzer (heads on the device: CUDA when there is one)

Both are read-only once loaded (eval mode, no_grad, frozen integer weights; every call builds its own
coders and tensors), so the model workers (mvmic.service.model_workers) share them. The codec's entropy
coding is integer arithmetic and runs on the CPU on every machine (its bitstreams must decode the same
everywhere); the heads, the one float network, run on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mvmic.model.codec import MvmicCodec
from mvmic.model.pixel_format import PixelFormat
from mvmic.model.quality import MAX_ERROR, QUALITY_CODES
from mvmic.model.rate_control import compress_at
from mvmic.model.table_codec import Weights
from mvmic.model.tasks.analysis import Analyzer
from mvmic.model.tasks.organs import ORGAN_CLASSES
from mvmic.model.tasks.runtime import int8_path
from mvmic.service.schemas import ResidentModelsReport
from mvmic.service.settings import Settings


class DeviceUnavailableError(RuntimeError):
    """The configured device cannot be used here."""


@dataclass
class ResidentModels:
    codec: MvmicCodec
    analyzer: Analyzer
    heads: Weights
    device: str

    def describe(self) -> ResidentModelsReport:
        """What GET /v1/models reports."""
        residual = self.codec.residual
        return ResidentModelsReport.model_validate({
            "model_id": self.codec.model_id,
            "device": self.device,
            "weights": {
                "codec": {"file": self.codec.weights.path.name, "sha256": self.codec.weights.sha256},
                "residual": None if residual is None else {"file": residual[1].path.name, "sha256": residual[1].sha256},
                "heads": {"file": self.heads.path.name, "sha256": self.heads.sha256,
                          "runtime": self.analyzer.runtime,
                          "model_sha256": self.analyzer.provenance["heads_model_sha256"]},
            },
            "operating_points": {"quality": {str(q): code for q, code in QUALITY_CODES.items()},
                                 "modes": ["lossy"] + (["near-lossless", "lossless"] if residual else []),
                                 "max_error": [1, MAX_ERROR] if residual else None},
            "tasks": ["lesion detection (boxes)", "lesion segmentation (COCO RLE)",
                      "organ detection (boxes)", "organ segmentation (COCO RLE per organ)"],
            "organ_classes": list(ORGAN_CLASSES),
        })


def resolve_device(requested: str) -> str:
    """``auto`` is the first CUDA device when torch sees one, else the CPU; an explicit CUDA device
    that torch cannot use is refused rather than silently replaced by the CPU."""
    if requested == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return requested
    if requested == "cuda" or (requested.startswith("cuda:") and requested[5:].isdigit()):
        index = int(requested[5:] or 0) if ":" in requested else 0
        if index >= torch.cuda.device_count():
            raise DeviceUnavailableError(f"MVMIC_DEVICE={requested}: torch sees {torch.cuda.device_count()} "
                                         "CUDA device(s) here; use auto or cpu")
        return f"cuda:{index}"
    raise DeviceUnavailableError(f"MVMIC_DEVICE={requested!r}: use auto, cpu, cuda or cuda:N")


def check_settings(settings: Settings) -> str:
    """The device to use, once the settings are known to be usable: `mvmic serve` checks them before
    it starts the server, so a wrong device or weights folder is a message, not a failed readiness."""
    device = resolve_device(settings.device)
    files = [settings.codec_weights, settings.heads_weights]
    if settings.heads_runtime == "onnx-int8":
        files.append(int8_path(settings.heads_weights))
    for needed in files:
        if not needed.is_file():
            raise FileNotFoundError(f"MVMIC_WEIGHTS_DIR={settings.weights_dir}: no {needed.name} there")
    return device


def load_models(settings: Settings) -> ResidentModels:
    device = check_settings(settings)
    codec = MvmicCodec.load(settings.codec_weights)
    heads = settings.heads_weights
    analyzer = Analyzer.load(codec, heads, device, settings.heads_runtime)
    models = ResidentModels(codec, analyzer, Weights(heads, analyzer.heads_sha256), device)
    warm_up(models)
    return models


def warm_up(models: ResidentModels) -> None:
    """Code, decode and analyse a small synthetic image, lossy and lossless, before the workers share the
    models: what is built on first use (the exact layer's numba kernels and their self-check, which may
    recompile them; ONNX Runtime's first run) is then built once, on one thread, rather than by several
    workers at once, and the first requests do not wait for it."""
    rows = np.arange(64)
    pixels = ((rows[:, None] * 40 + rows[None, :] * 20) % 4096).astype(np.uint16)[None, :, :, None]
    fmt = PixelFormat(bits_stored=12, signed=False)
    lossy = compress_at(models.codec, pixels, fmt, quality=4)
    exact = compress_at(models.codec, pixels, fmt, max_error=0)  # verified: decoded too
    models.codec.decompress(lossy)
    models.analyzer.analyze_many([lossy, exact])


