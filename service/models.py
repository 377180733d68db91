"""The models the service keeps resident: loaded once, used by every request.

    Settings.weights_dir --MvmicCodec.load (with the residual model)--> codec (CPU: integer entropy coding)
                         --Analyzer.load--> analyzer (heads on the device: CUDA when there is one)
    request --ModelWorker: one model thread--> compress / decompress (one image a call)
                                               analysis of concurrent requests (batched)

Model and entropy-coding work runs on the worker thread, never on the event loop, so
health checks and uploads keep being served while an image is coded; torch's own
threads parallelise inside each call. Analyses that arrive together are batched: their
entropy decoding stays per image, the heads run once per batch of equal-sized frames.
The codec's entropy coding is integer arithmetic and runs on the CPU on every machine (its
bitstreams must decode the same everywhere); the heads, the one float network, run on the device.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from model.codec import QUALITY_CODES, MvmicCodec, Weights
from model.residual import MAX_ERROR
from model.tasks.analysis import Analyzer
from model.tasks.organs import ORGAN_CLASSES
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
            "tasks": ["lesion detection (boxes)", "lesion segmentation (COCO RLE)",
                      "organ detection (boxes)", "organ segmentation (COCO RLE per organ)"],
            "organ_classes": list(ORGAN_CLASSES),
        }


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
    for needed in (settings.codec_weights, settings.heads_weights):
        if not needed.is_file():
            raise FileNotFoundError(f"MVMIC_WEIGHTS_DIR={settings.weights_dir}: no {needed.name} there")
    return device


def load_models(settings: Settings) -> ResidentModels:
    device = check_settings(settings)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    codec = MvmicCodec.load(settings.codec_weights)
    heads = settings.heads_weights
    analyzer = Analyzer.load(codec, heads, device)
    return ResidentModels(codec, analyzer, Weights(heads, analyzer.heads_sha256), device)


@dataclass
class _Job:
    item: Any  # a call (batch is None) or one item of a batch
    batch: Callable[[list], list] | None  # runs several items in one call, results in order
    future: Future
    submitted: float


class ModelWorker:
    """The model thread: jobs run one after the other, off the event loop. Jobs of one batch function
    (e.g. Analyzer.analyze_many) that arrive within ``max_delay`` seconds of the first, up to
    ``batch_size``, run as one call; other jobs that arrive meanwhile wait their turn, in order.
    Each job's queue wait, each call's compute time and batch size are measured."""

    def __init__(self, metrics: ServiceMetrics, batch_size: int = 8, max_delay: float = 0.005) -> None:
        self.metrics, self.batch_size, self.max_delay = metrics, batch_size, max_delay
        self.jobs: queue.Queue[_Job | None] = queue.Queue()
        self.thread = threading.Thread(target=self._serve, name="mvmic-model", daemon=True)
        self.thread.start()

    def submit(self, work: Callable[..., T], *args) -> Future:
        return self._put(functools.partial(work, *args), None)

    async def run(self, work: Callable[..., T], *args) -> T:
        return await asyncio.wrap_future(self.submit(work, *args))

    async def run_batched(self, batch: Callable[[list], list], item: Any) -> Any:
        return await asyncio.wrap_future(self._put(item, batch))

    def close(self) -> None:
        self.jobs.put(None)

    def _put(self, item: Any, batch: Callable[[list], list] | None) -> Future:
        future: Future = Future()
        self.jobs.put(_Job(item, batch, future, time.perf_counter()))
        return future

    def _serve(self) -> None:
        waiting: collections.deque[_Job | None] = collections.deque()
        while True:
            job = waiting.popleft() if waiting else self.jobs.get()
            if job is None:
                return
            batch = [job] if job.batch is None else self._gather(job, waiting)
            self._execute(batch)

    def _gather(self, first: _Job, waiting: collections.deque) -> list[_Job]:
        """``first`` and the jobs of its batch function among those waiting or arriving before the delay."""
        batch = [first]
        for job in list(waiting):
            if len(batch) < self.batch_size and job is not None and job.batch == first.batch:
                waiting.remove(job)
                batch.append(job)
        deadline = time.perf_counter() + self.max_delay
        while len(batch) < self.batch_size:
            try:
                job = self.jobs.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                break
            if job is not None and job.batch == first.batch:
                batch.append(job)
            else:
                waiting.append(job)
        return batch

    def _execute(self, batch: list[_Job]) -> None:
        started = time.perf_counter()
        for job in batch:
            self.metrics.queue_wait.observe(started - job.submitted)
        self.metrics.batch_size.observe(len(batch))
        work = batch[0].batch or batch[0].item.func  # the batch function, or the function of a partial
        try:
            results = batch[0].batch([j.item for j in batch]) if batch[0].batch else [batch[0].item()]
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the error
            for job in batch:
                job.future.set_exception(exc)
        else:
            for job, result in zip(batch, results, strict=True):
                job.future.set_result(result)
        finally:
            self.metrics.model_seconds.labels(work.__name__).observe(time.perf_counter() - started)
