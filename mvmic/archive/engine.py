"""`mvmic archive compress`: an archive job on Ray, local by default, or on a cluster.

    driver: DEST claimed (its lock, and the job's settings in DEST/archive-job.json, whatever ledger a job
        keeps) --> Ledger (locked; the job's settings checked) --> a PACS destination asked once (credentials)
        --> the source's items (a folder's files, or QIDO-RS over the PACS) minus those done (skipped, unless a
        file written for one is gone from DEST; with --discard-originals a done one's original is discarded
        now if a kill came between) --> Ray: a local instance started in-process (num_cpus: the cores, or
        --workers if more), or the cluster at --address --> WORKERS actors of mvmic.archive.worker.ArchiveWorker,
        one CPU each (and a share of the GPUs when the job analyses and the cluster has some), each loading the
        codec and heads once --> items handed to idle actors one at a time (ray.wait), so only WORKERS are in
        flight --> each Record written to the ledger as it arrives (progress bar) --> with --discard-originals,
        a source file removed once its record is durable --> ArchiveSummary

A worker process that dies (out of memory, killed) fails its instance ("the worker died") and is restarted;
the job goes on. Nothing but records crosses Ray: workers read their instances and write or store the
results themselves, so a folder job on a cluster needs SOURCE and DEST on a filesystem every node mounts.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from mvmic.archive.ledger import DONE, Ledger, Record, exclusive, same_job
from mvmic.archive.sources import FolderSource, Item, PacsSource
from mvmic.archive.worker import STAGING, ArchiveWorker, PacsAddress, WorkerConfig
from mvmic.whole_file import write_whole

LEDGER_NAME = "archive-ledger.sqlite"
DEST_LOCK, DEST_JOB = "archive.lock", "archive-job.json"  # beside the ledger at DEST's top: no source name lands there
OBJECT_STORE_BYTES = 256 * 2**20  # only records cross Ray: a local instance needs little shared memory
ACTOR_RESTARTS = 3
CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ArchiveJob:
    """An archive job: ``worker`` says what each instance goes through; ``ledger`` where the job's records are;
    ``discard_originals`` removes a source file once its compressed instance is written, read back and
    recorded (folder sources only: a PACS source's originals are kept in ``worker.originals`` unless None)."""

    worker: WorkerConfig
    ledger: Path
    discard_originals: bool = False

    def settings(self) -> dict:
        """What a rerun must keep the same (the ledger refuses another job's run): no credentials."""
        config, policy = self.worker, self.worker.policy
        pacs = f"pacs {_without_userinfo(config.pacs.root)}" if config.pacs else None
        return {"source": str(config.source.resolve()) if config.source else pacs,
                "destination": str(config.out.resolve()) if config.out else pacs,
                "max_error": policy.max_error, "quality": policy.quality, "analysis": policy.with_analysis}


@dataclass
class ArchiveSummary:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys((*DONE, "failed", "skipped"), 0))
    bytes_before: int = 0  # of the instances compressed by this run
    bytes_after: int = 0
    failures: list[Record] = field(default_factory=list)

    def add(self, record: Record) -> None:
        self.counts[record.state] += 1
        if record.state == "failed":
            self.failures.append(record)
        elif record.state == "compressed":
            self.bytes_before += record.bytes_before
            self.bytes_after += record.bytes_after

    def lines(self) -> list[str]:
        counts = self.counts
        saved = self.bytes_before - self.bytes_after
        share = f" ({100 * saved / self.bytes_before:.1f} %)" if self.bytes_before else ""
        return [(f"compressed {counts['compressed']}, unchanged {counts['unchanged']}, failed {counts['failed']}, "
                f"done by an earlier run {counts['skipped']}"),
                f"bytes {self.bytes_before} -> {self.bytes_after}: {saved} saved{share}",
                *(f"failed {record.key}: {record.error}" for record in sorted(self.failures, key=lambda r: r.key))]


def run_archive(job: ArchiveJob, command: str, workers: int | None = None, address: str | None = None,
                gpus_per_worker: float | None = None,
                progress: Callable[[Iterable, int], Iterable] = lambda items, total: items) -> ArchiveSummary:
    """Runs (or resumes) ``job``: every instance of its source not yet done goes through a worker and into the
    ledger. ``workers`` actors (default: every CPU of the Ray cluster); ``address`` a Ray cluster to join
    (default: a local Ray in this process); ``gpus_per_worker`` (default: the cluster's GPUs shared among the
    workers when the job analyses, else none). Raises LedgerError for another job's ledger, ValueError for
    settings that cannot work, PacsError when the PACS cannot be listed."""
    if workers is not None and workers < 1:
        raise ValueError("--workers must be at least 1")
    settings = job.settings()
    with ExitStack() as held:
        if job.worker.out is not None:
            held.enter_context(_claim(job.worker.out, settings))
            shutil.rmtree(job.worker.out / STAGING, ignore_errors=True)  # a killed run's: nobody else writes there
        ledger = held.enter_context(Ledger(job.ledger, settings))
        if job.worker.source is not None and job.worker.pacs is not None:
            _check_pacs(job.worker.pacs)
        ledger.start_run(command)
        summary = ArchiveSummary()
        pending = _pending(job, ledger, summary)
        if pending:
            _run_on_ray(job, ledger, pending, summary, workers, address, gpus_per_worker, progress)
        ledger.finish_run(summary.counts)
        return summary


def _claim(out: Path, settings: dict) -> IO:
    """DEST for this job alone: its lock (DEST/archive.lock), held while the job runs; and its settings
    (DEST/archive-job.json), which every later job writing there must share, whichever ledger it keeps.
    LedgerError otherwise; NotADirectoryError (an OSError) for a DEST that is a file."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"DEST {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    lock = exclusive(out / DEST_LOCK, f"DEST {out}")
    try:
        recorded = out / DEST_JOB
        if recorded.is_file():
            same_job(json.loads(recorded.read_text()), settings, f"DEST {out} holds the output")
        else:
            write_whole(recorded, json.dumps(settings, indent=1, sort_keys=True).encode() + b"\n")
    except BaseException:
        lock.close()
        raise
    return lock


def _check_pacs(address: PacsAddress) -> None:
    """One authenticated search, so that a PACS that cannot be reached or refuses these credentials stops
    the job at once (PacsError) instead of failing every instance."""
    pacs = address.client()
    try:
        pacs.search("studies", "limit=1")
    finally:
        pacs.close()


def _pending(job: ArchiveJob, ledger: Ledger, summary: ArchiveSummary) -> list[Item]:
    """The source's items not done by an earlier run (a file changed since is done again)."""
    done = ledger.done()
    config = job.worker
    if config.source is not None:
        source = FolderSource(config.source)
        items = list(source.items())
    else:
        pacs = config.pacs.client()
        try:
            items = list(PacsSource(pacs, config.studies).items())
        finally:
            pacs.close()
    pending = []
    for item in items:
        record = done.get(item.key)
        if record is None or (item.size is not None
                              and (record.source_size, record.source_mtime_ns, record.source_ctime_ns)
                              != (item.size, item.mtime_ns, item.ctime_ns)) \
                or not _outputs_in_place(job, record):
            pending.append(item)
            continue
        summary.counts["skipped"] += 1
        if job.discard_originals:  # a kill came between the record and the discard
            _discard(job, record)
    return pending


def _run_on_ray(job: ArchiveJob, ledger: Ledger, pending: list[Item], summary: ArchiveSummary, workers: int | None,
                address: str | None, gpus_per_worker: float | None, progress) -> None:
    import ray
    from ray.exceptions import RayActorError

    from mvmic.model.table_codec import cpu_cores

    started_here = not ray.is_initialized()
    if started_here and address is None:
        ray.init(num_cpus=max(workers or 0, cpu_cores()), object_store_memory=OBJECT_STORE_BYTES,
                 include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    elif started_here:
        _check_reachable(address)
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    try:
        resources = ray.cluster_resources()
        cpus = int(resources.get("CPU", 0))
        workers = workers or cpus
        if workers > cpus:
            raise ValueError(f"--workers {workers}: the Ray cluster has {cpus} CPUs, and each worker takes one")
        if gpus_per_worker is None:
            gpus = resources.get("GPU", 0) if job.worker.policy.with_analysis else 0
            gpus_per_worker = min(1.0, gpus / workers)
        actor = ray.remote(ArchiveWorker).options(num_cpus=1, num_gpus=gpus_per_worker,
                                                  max_restarts=ACTOR_RESTARTS, max_task_retries=0)
        device = "cuda" if gpus_per_worker > 0 else "cpu"
        idle = [actor.remote(job.worker, device) for _ in range(min(workers, len(pending)))]
        items = iter(pending)
        in_flight: dict = {}

        def results():
            while True:
                while idle and (item := next(items, None)) is not None:
                    worker = idle.pop()
                    in_flight[worker.process.remote(item)] = (worker, item)
                if not in_flight:
                    return
                [ready], _ = ray.wait(list(in_flight), num_returns=1)
                worker, item = in_flight.pop(ready)
                try:
                    yield ray.get(ready)
                except RayActorError as exc:  # the process died under this instance: fail it, go on
                    yield Record(item.key, "failed", error=f"the worker processing it died ({type(exc).__name__})",
                                 source_size=item.size, source_mtime_ns=item.mtime_ns, source_ctime_ns=item.ctime_ns)
                    worker = actor.remote(job.worker, device)
                idle.append(worker)

        for record in progress(results(), len(pending)):
            ledger.record(record)
            summary.add(record)
            if job.discard_originals and record.state in DONE:
                _discard(job, record)
    finally:
        if started_here:
            ray.shutdown()


def _outputs_in_place(job: ArchiveJob, record: Record) -> bool:
    """Whether what a folder job wrote for a done instance is still in DEST (every file, the instance at its
    recorded size); a PACS destination is not asked."""
    out = job.worker.out
    if out is None:
        return True
    names = record.result.split("\n") if record.result else []
    try:
        return bool(names) and (out / names[0]).stat().st_size == record.bytes_after \
            and all((out / name).is_file() for name in names[1:])
    except OSError:
        return False


def _check_reachable(address: str) -> None:
    """ValueError unless something listens at a HOST:PORT address (Ray would wait for it without end); auto
    and ray:// addresses fail on their own within seconds."""
    if address == "auto" or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--address {address}: give auto, HOST:PORT of the cluster's head, or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ValueError(f"no Ray cluster answers at {address} ({exc.strerror or type(exc).__name__})") from exc


def _discard(job: ArchiveJob, record: Record) -> None:
    """Removes a done instance's source file once it is still the file that was archived (its sha256 the one
    recorded) and what was written for it reads back as recorded (folder destinations) or was stored and
    checked (the PACS)."""
    source = job.worker.source
    if source is None or not (source / record.key).is_file():
        return
    if hashlib.sha256((source / record.key).read_bytes()).hexdigest() != record.sha256:
        return  # another file now: the next run archives it
    if job.worker.out is not None:
        written = job.worker.out / record.result.split("\n")[0]
        if not written.is_file() or hashlib.sha256(written.read_bytes()).hexdigest() != record.result_sha256:
            return  # not what was recorded: keep the original
    os.remove(source / record.key)


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]).geturl()
