"""The service's pool of model workers (mvmic.service.model_workers.ModelWorkers), on plain functions: concurrency,
batching, errors, cancellation, shutdown and the gauges. The service over HTTP: tests/test_service.py."""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError, Future

import pytest
from pydantic import ValidationError

from mvmic.service import model_workers
from mvmic.service.model_workers import ModelWorkers, torch_threads
from mvmic.service.prometheus import ServiceMetrics
from mvmic.service.settings import Settings, cpu_cores

WAIT_S = 10.0  # the longest any test waits for something that should take milliseconds


def _gauge(metrics: ServiceMetrics, name: str, work: str) -> float:
    value = metrics.registry.get_sample_value(name, {"work": work})
    return 0.0 if value is None else value


def _until(condition, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@pytest.fixture
def metrics() -> ServiceMetrics:
    return ServiceMetrics()


def _blocker(release: threading.Event, started: threading.Semaphore | None = None):
    def block() -> str:
        if started is not None:
            started.release()
        assert release.wait(WAIT_S)
        return "released"
    return block


def test_two_slow_jobs_run_at_once_on_two_workers(metrics: ServiceMetrics) -> None:
    def slow(seconds: float) -> str:
        time.sleep(seconds)  # releases the GIL, as torch's and numba's kernels do
        return threading.current_thread().name

    for workers, at_once in ((2, True), (1, False)):
        pool = ModelWorkers(metrics, workers=workers)
        started = time.perf_counter()
        futures = [pool.submit(slow, 0.4) for _ in range(2)]
        names = {future.result(WAIT_S) for future in futures}
        wall = time.perf_counter() - started
        assert pool.close(WAIT_S)
        assert (wall < 0.7) == at_once and (wall >= 0.8) != at_once, (workers, wall)
        assert len(names) == (2 if at_once else 1) and all(name.startswith("mvmic-model-") for name in names)
    assert metrics.registry.get_sample_value("mvmic_model_workers") == 1  # the last pool's


def test_an_error_reaches_its_own_request_only_and_the_workers_go_on(metrics: ServiceMetrics) -> None:
    pool = ModelWorkers(metrics, workers=2, max_delay=0.05)

    def analyse_many(items: list) -> list:
        return [item * 10 for item in items]

    def fail(message: str) -> None:
        raise ValueError(message)

    futures = [pool.submit(fail, "bad input"), pool.submit(abs, -3), *(pool.submit_batched(analyse_many, i)
                                                                     for i in range(3))]
    with pytest.raises(ValueError, match="bad input"):
        futures[0].result(WAIT_S)
    assert [future.result(WAIT_S) for future in futures[1:]] == [3, 0, 10, 20]

    def broken_batch(items: list) -> list:
        raise RuntimeError(f"out of memory with {len(items)}")

    for future in [pool.submit_batched(broken_batch, i) for i in range(2)]:
        with pytest.raises(RuntimeError, match="out of memory"):
            future.result(WAIT_S)
    assert pool.submit(sum, [1, 2]).result(WAIT_S) == 3 and all(thread.is_alive() for thread in pool.threads)
    assert pool.close(WAIT_S)  # joined: every call has been counted
    assert _gauge(metrics, "mvmic_model_jobs_running", "fail") == 0
    assert metrics.registry.get_sample_value("mvmic_model_seconds_count", {"work": "fail"}) == 1


def test_the_gauges_count_jobs_waiting_and_running(metrics: ServiceMetrics) -> None:
    release, started = threading.Event(), threading.Semaphore(0)
    pool = ModelWorkers(metrics, workers=1)
    block = _blocker(release, started)
    first = pool.submit(block)
    assert started.acquire(timeout=WAIT_S)
    waiting = [pool.submit(block) for _ in range(3)]
    assert _gauge(metrics, "mvmic_model_jobs_running", "block") == 1
    assert _gauge(metrics, "mvmic_model_jobs_waiting", "block") == 3
    release.set()
    assert [future.result(WAIT_S) for future in [first, *waiting]] == ["released"] * 4
    _until(lambda: _gauge(metrics, "mvmic_model_jobs_running", "block") == 0)
    assert _gauge(metrics, "mvmic_model_jobs_waiting", "block") == 0
    assert metrics.registry.get_sample_value("mvmic_queue_wait_seconds_count") == 4
    assert pool.close(WAIT_S)


def test_jobs_that_wait_together_run_as_one_batch(metrics: ServiceMetrics) -> None:
    release, started = threading.Event(), threading.Semaphore(0)
    calls: list[list[int]] = []

    def analyse_many(items: list[int]) -> list[int]:
        calls.append(list(items))
        return [-item for item in items]

    pool = ModelWorkers(metrics, workers=1, batch_size=4, max_delay=0.0)
    blocked = pool.submit(_blocker(release, started))
    assert started.acquire(timeout=WAIT_S)
    futures = [pool.submit_batched(analyse_many, i) for i in range(6)]
    assert _gauge(metrics, "mvmic_model_jobs_waiting", "analyse_many") == 6
    release.set()
    assert blocked.result(WAIT_S) == "released" and [f.result(WAIT_S) for f in futures] == [0, -1, -2, -3, -4, -5]
    assert calls == [[0, 1, 2, 3], [4, 5]]  # up to batch_size a call, each item's own result
    assert metrics.registry.get_sample_value("mvmic_batch_size_count") == 3  # the blocker, then two batches
    assert pool.close(WAIT_S)


def test_a_burst_on_idle_workers_is_shared_out_not_run_on_one(metrics: ServiceMetrics) -> None:
    sizes: list[int] = []
    both_running = threading.Barrier(2, timeout=WAIT_S)

    def analyse_many(items: list[int]) -> list[int]:
        sizes.append(len(items))
        both_running.wait()  # a batch of all four on one worker would leave the other idle and break the barrier
        return items

    pool = ModelWorkers(metrics, workers=2, batch_size=8, max_delay=0.0)
    _until(lambda: pool._idle == 2)
    with pool._changed:  # the four arrive at once: no worker takes one before the others are queued
        futures = [pool.submit_batched(analyse_many, i) for i in range(4)]
    assert [future.result(WAIT_S) for future in futures] == [0, 1, 2, 3]
    assert sorted(sizes) == [2, 2]
    assert pool.close(WAIT_S)


def test_a_cancelled_job_is_skipped(metrics: ServiceMetrics) -> None:
    release, started = threading.Event(), threading.Semaphore(0)
    ran: list[str] = []
    pool = ModelWorkers(metrics, workers=1)
    pool.submit(_blocker(release, started))
    assert started.acquire(timeout=WAIT_S)
    gone: Future = pool.submit(ran.append, "gone")
    assert gone.cancel()  # its request went away while it waited (asyncio.wrap_future cancels it so)
    kept = pool.submit(ran.append, "kept")
    release.set()
    assert kept.result(WAIT_S) is None and ran == ["kept"]
    with pytest.raises(CancelledError):
        gone.result()
    assert pool.close(WAIT_S)


def test_close_runs_the_queued_jobs_joins_the_workers_and_refuses_more(metrics: ServiceMetrics) -> None:
    release, started = threading.Event(), threading.Semaphore(0)
    pool = ModelWorkers(metrics, workers=2, max_delay=0.0)
    block = _blocker(release, started)
    running = [pool.submit(block) for _ in range(2)]
    assert started.acquire(timeout=WAIT_S) and started.acquire(timeout=WAIT_S)
    queued = [pool.submit(pow, 2, n) for n in range(5)]
    assert not pool.close(timeout=0.2)  # both still busy: not joined yet
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(pow, 2, 9)
    release.set()
    assert pool.close(WAIT_S)
    assert not any(thread.is_alive() for thread in pool.threads)
    assert [f.result(0) for f in running] == ["released"] * 2 and [f.result(0) for f in queued] == [1, 2, 4, 8, 16]


def test_workers_and_torch_threads_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MVMIC_WORKERS", raising=False)
    monkeypatch.delenv("MVMIC_THREADS", raising=False)
    assert Settings().workers == cpu_cores() >= 1
    monkeypatch.setenv("MVMIC_WORKERS", "3")
    assert Settings().workers == 3
    monkeypatch.setenv("MVMIC_WORKERS", "0")
    with pytest.raises(ValidationError, match="workers"):
        Settings()
    monkeypatch.setattr(model_workers, "cpu_cores", lambda: 8)
    for workers, threads, expected in ((8, 0, 1), (2, 0, 4), (1, 0, 8), (3, 0, 2), (16, 0, 1), (2, 3, 3)):
        assert torch_threads(Settings(workers=workers, threads=threads)) == expected, (workers, threads)
