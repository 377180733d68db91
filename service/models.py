"""The models the service keeps resident: loaded once, used by every request.

    Settings.weights --MvmicCodec.load (the residual model beside it)--> codec
                     --Analyzer.load (the heads beside it)--> analyzer
    request --ModelWorker.run: one model thread--> compress / decompress / analyze

Model and entropy-coding work runs on the worker thread, never on the event loop, so
health checks and uploads keep being served while an image is coded; torch's own
threads parallelise inside each call. The codec's integer entropy coding runs on the CPU.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import torch

from model.codec import QUALITY_CODES, MvmicCodec, Weights
from model.residual import MAX_ERROR
from model.tasks.analysis import Analyzer
from service.metrics import ServiceMetrics
from service.settings import Settings

T = TypeVar("T")


class DeviceUnavailableError(RuntimeError):
    """The configured device cannot be used here."""


@dataclass
class ResidentModels:
    codec: MvmicCodec
    analyzer: Analyzer
    heads: Weights
    device: str

    def describe(self) -> dict:
        """What GET /v1/models reports."""
        residual = self.codec.residual
        return {
            "model_id": self.codec.model_id,
            "device": self.device,
            "weights": {
                "codec": {"file": self.codec.weights.path.name, "sha256": self.codec.weights.sha256},
                "residual": None if residual is None else {"file": residual[1].path.name, "sha256": residual[1].sha256},
                "heads": {"file": self.heads.path.name, "sha256": self.heads.sha256},
            },
            "operating_points": {"quality": {str(q): code for q, code in QUALITY_CODES.items()},
                                 "modes": ["lossy"] + (["near-lossless", "lossless"] if residual else []),
                                 "max_error": [1, MAX_ERROR] if residual else None},
            "tasks": ["lesion detection (boxes)", "lesion segmentation (COCO RLE)"],
        }


def resolve_device(requested: str) -> str:
    if requested not in ("auto", "cpu", "cuda"):
        raise DeviceUnavailableError(f"MVMIC_DEVICE={requested!r}: use auto, cpu or cuda")
    if requested == "cuda":
        raise DeviceUnavailableError("MVMIC_DEVICE=cuda: GPU inference is not implemented yet; use cpu or auto")
    return "cpu"


def load_models(settings: Settings) -> ResidentModels:
    device = resolve_device(settings.device)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    codec = MvmicCodec.load(settings.weights)
    heads = settings.weights.with_name(f"{settings.weights.stem}-heads.pt")
    analyzer = Analyzer.load(codec, heads)
    return ResidentModels(codec, analyzer, Weights(heads, hashlib.sha256(heads.read_bytes()).hexdigest()), device)


class ModelWorker:
    """One thread for model work, off the event loop; each call's wait and compute time are measured.
    Calls run one image each (mvmic_batch_size observes 1): requests are not batched yet."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mvmic-model")
        self.metrics = metrics

    async def run(self, work: Callable[..., T], *args) -> T:
        submitted = time.perf_counter()

        def measured() -> T:
            started = time.perf_counter()
            self.metrics.queue_wait.observe(started - submitted)
            self.metrics.batch_size.observe(1)
            try:
                return work(*args)
            finally:
                self.metrics.model_seconds.labels(work.__name__).observe(time.perf_counter() - started)

        return await asyncio.get_running_loop().run_in_executor(self.executor, measured)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
