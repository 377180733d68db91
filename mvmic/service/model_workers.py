"""The service's pool of model threads: coding and analysis off the event loop.

    request --ModelWorkers: MVMIC_WORKERS model threads, one queue--> compress / decompress (one image a call)
                                                                     analyses waiting together (batched)

Model and entropy-coding work runs on the worker threads, never on the event loop, so health checks and
uploads keep being served while images are coded. The workers share the one loaded codec and analyzer
(mvmic.service.resident_models). Analyses that wait together are batched: their entropy decoding stays per
image, the heads run once per batch of equal-sized frames.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from mvmic.service.prometheus import ServiceMetrics
from mvmic.service.settings import Settings, cpu_cores

T = TypeVar("T")


def torch_threads(settings: Settings) -> int:
    """Torch's intra-op threads for each model worker: MVMIC_THREADS, else CPU cores // workers (at least 1).

    Every worker thread that runs a torch operator drives its own team of that many threads, so
    ``workers`` busy workers keep workers x threads threads running: more than the cores and they
    only take turns (OpenMP threads spin while they wait for each other), fewer and cores idle
    under load. With the default of one worker per core each worker computes on one thread: the
    cores are filled by requests in flight rather than by splitting one image, which costs no
    synchronisation and lets one request's torch work overlap another's GIL-bound Python and entropy
    coding, so throughput under load is higher; one request alone on an idle server runs on one core.
    Where a single request's latency matters more, set MVMIC_WORKERS=1 and leave the threads to the
    cores. Apply it (configure_torch) before the workers start: a thread keeps the count it had at
    its first parallel torch operator (measured with torch 2.14's OpenMP backend)."""
    return settings.threads or max(1, cpu_cores() // settings.workers)


def configure_torch(settings: Settings) -> int:
    """Set torch's intra-op threads (torch_threads) for every thread that has not yet run torch work."""
    threads = torch_threads(settings)
    torch.set_num_threads(threads)
    return threads


@dataclass
class _Job:
    item: Any  # a call (batch is None) or one item of a batch
    batch: Callable[[list], list] | None  # runs several items in one call, results in order
    future: Future
    submitted: float
    kind: str  # the work's name, the metrics' label: the batch function's, or the called function's


class ModelWorkers:
    """A pool of model threads: ``workers`` jobs run at once, off the event loop, on one shared set of
    weights; the others wait in one queue, first come first served.

    Jobs of one batch function (e.g. Analyzer.analyze_many) run together: the worker that takes the
    first also takes those of the same function already waiting, and those that arrive within
    ``max_delay`` seconds, up to ``batch_size``, but at most its share ceil(jobs / (1 + idle workers)):
    a burst of analyses on an idle pool is spread over the idle workers (on a CPU one worker running
    a batch of eight, one image after the other, would leave the others idle); once every worker is
    busy the queue grows and each free worker takes a batch (on a GPU the heads then run once per
    batch, which is where batching pays). Each job's queue wait, each call's compute time and batch
    size are measured; the gauges count jobs waiting and running, by work.

    ``close`` refuses new jobs, lets the workers finish those queued and joins them."""

    def __init__(self, metrics: ServiceMetrics, workers: int = 1, batch_size: int = 8,
                 max_delay: float = 0.005) -> None:
        if workers < 1 or batch_size < 1:
            raise ValueError(f"need at least one worker and a batch size of at least 1, not {workers}, {batch_size}")
        self.metrics, self.batch_size, self.max_delay = metrics, batch_size, max_delay
        self._changed = threading.Condition()  # guards everything below; notified on a new job and on close
        self._queue: collections.deque[_Job] = collections.deque()
        self._idle = 0  # workers waiting for a job
        self._closed = False
        metrics.workers.set(workers)
        self.threads = [threading.Thread(target=self._serve, name=f"mvmic-model-{index}", daemon=True)
                        for index in range(workers)]
        for thread in self.threads:
            thread.start()

    def submit(self, work: Callable[..., T], *args) -> Future:
        return self._put(functools.partial(work, *args), None, work.__name__)

    async def run(self, work: Callable[..., T], *args) -> T:
        return await asyncio.wrap_future(self.submit(work, *args))

    def submit_batched(self, batch: Callable[[list], list], item: Any) -> Future:
        """``item``'s result of ``batch`` run on it and on whichever items of the same function wait with it."""
        return self._put(item, batch, batch.__name__)

    async def run_batched(self, batch: Callable[[list], list], item: Any) -> Any:
        return await asyncio.wrap_future(self.submit_batched(batch, item))

    def close(self, timeout: float | None = None) -> bool:
        """Refuse new jobs, run those queued, and join the workers; False if some still run after ``timeout``."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self.threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self.threads)

    def _put(self, item: Any, batch: Callable[[list], list] | None, kind: str) -> Future:
        future: Future = Future()
        with self._changed:
            if self._closed:
                raise RuntimeError("the model workers are shut down")
            self._queue.append(_Job(item, batch, future, time.perf_counter(), kind))
            self.metrics.jobs_waiting.labels(kind).inc()
            self._changed.notify_all()  # an idle worker, or one gathering a batch
        return future

    def _serve(self) -> None:
        while (batch := self._take()) is not None:
            self._execute(batch)

    def _take(self) -> list[_Job] | None:
        """The next job (with the rest of its batch); None once closed and nothing is left to run."""
        with self._changed:
            self._idle += 1
            while not self._queue and not self._closed:
                self._changed.wait()
            self._idle -= 1
            if not self._queue:
                return None
            batch = [self._queue.popleft()]
            if batch[0].batch is not None:
                self._gather(batch)
            for job in batch:
                self.metrics.jobs_waiting.labels(job.kind).dec()
        return batch

    def _gather(self, batch: list[_Job]) -> None:
        """Add the jobs of ``batch[0]``'s batch function that wait or arrive before the delay, up to its share
        (self._changed is held; waiting releases it)."""
        function = batch[0].batch
        deadline = time.perf_counter() + self.max_delay
        while True:
            same = [job for job in self._queue if job.batch == function]
            share = min(self.batch_size, -(-(len(batch) + len(same)) // (1 + self._idle)))
            for job in same[: max(0, share - len(batch))]:
                self._queue.remove(job)
                batch.append(job)
            left = deadline - time.perf_counter()
            if len(batch) >= self.batch_size or left <= 0 or self._closed:
                return
            self._changed.wait(left)

    def _execute(self, batch: list[_Job]) -> None:
        # A future cancelled while it waited (its request went away) is dropped; the others can no longer be.
        batch = [job for job in batch if job.future.set_running_or_notify_cancel()]
        if not batch:
            return
        started, kind = time.perf_counter(), batch[0].kind
        for job in batch:
            self.metrics.queue_wait.observe(started - job.submitted)
        self.metrics.batch_size.observe(len(batch))
        running = self.metrics.jobs_running.labels(kind)
        running.inc(len(batch))
        try:
            results = batch[0].batch([j.item for j in batch]) if batch[0].batch else [batch[0].item()]
            if len(results) != len(batch):
                raise RuntimeError(f"{kind} answered {len(results)} results for {len(batch)} jobs")
        except BaseException as exc:  # noqa: BLE001 - every request of the batch gets the error; the worker goes on
            for job in batch:
                job.future.set_exception(exc)
        else:
            for job, result in zip(batch, results, strict=True):
                job.future.set_result(result)
        finally:
            running.dec(len(batch))
            self.metrics.model_seconds.labels(kind).observe(time.perf_counter() - started)
