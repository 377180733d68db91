"""`mvmic bench archive`: archive-job throughput on a local Ray with 1, 2, ... workers, and what it projects to.

    the corpus's --split (its DICOM files, linked into a source folder) --> `mvmic archive compress` in the
    --mode (lossless by default) into a fresh DEST, once per worker count, all in one Ray instance started here
    --> per run: wall time from the start to the last record (Ray's actors starting, each loading the codec,
        included), and the steady rate: the instances recorded after every worker's first one, over the time
        from that first round to the last record (what a long job runs at) --> instances/s and source bytes/s,
        the speed-up against one worker, and worker-seconds per instance
    --> archive.json and archive.md in --out, with projections from the measured worker-seconds per instance:
        one node of --node-cores cores and --nodes such nodes, assuming throughput keeps growing with workers
        as it did here (an estimate, marked as one; the PACS's ingest rate and storage are not measured)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from mvmic.archive.engine import LEDGER_NAME, ArchiveJob, run_archive
from mvmic.archive.worker import WorkerConfig
from mvmic.corpus.manifest import Manifest
from mvmic.pacs.storage import StoragePolicy
from mvmic.transcode import error_bound


def run_archive_benchmark(corpus_dir: Path, out_dir: Path, split: str = "test", worker_counts: tuple[int, ...] = (1, 2),
                          mode: str = "lossless", max_error: int | None = None, node_cores: int = 32,
                          nodes: int = 10) -> dict:
    import ray

    entries = [entry for entry in Manifest.load(corpus_dir / "manifest.json").entries if entry.split == split]
    if not entries:
        raise ValueError(f"the corpus has no {split} split")
    policy = StoragePolicy(error_bound(mode, max_error))
    with tempfile.TemporaryDirectory(prefix="mvmic-bench-archive-") as scratch:
        source = Path(scratch) / "source"
        for entry in entries:
            (source / entry.path).parent.mkdir(parents=True, exist_ok=True)
            os.link(corpus_dir / entry.path, source / entry.path)  # never copied, never changed
        source_bytes = sum((source / entry.path).stat().st_size for entry in entries)
        ray.init(num_cpus=max(worker_counts), include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        try:
            runs = [_measure(source, Path(scratch) / f"dest-{workers}", policy, workers, source_bytes)
                    for workers in worker_counts]
        finally:
            ray.shutdown()
    one = runs[0]
    for run in runs:
        run["speedup"] = run["steady_instances_per_s"] / one["steady_instances_per_s"]
    per_instance_s = one["worker_seconds_per_instance"]
    mean_bytes = source_bytes / len(entries)
    node = node_cores / per_instance_s
    result = {
        "split": split, "mode": mode, "max_error": policy.max_error, "instances": len(entries),
        "source_bytes": source_bytes, "cpu_cores": os.cpu_count(), "runs": runs,
        "projection": {
            "estimate": True, "node_cores": node_cores, "nodes": nodes, "worker_seconds_per_instance": per_instance_s,
            "node_instances_per_s": node, "node_bytes_per_s": node * mean_bytes,
            "cluster_instances_per_s": node * nodes, "cluster_bytes_per_s": node * nodes * mean_bytes,
            "million_instances_hours_on_cluster": 1e6 / (node * nodes) / 3600,
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "archive.json").write_text(json.dumps(result, indent=1) + "\n")
    (out_dir / "archive.md").write_text(markdown_report(result))
    print(markdown_report(result))
    return result


def _measure(source: Path, dest: Path, policy: StoragePolicy, workers: int, source_bytes: int) -> dict:
    stamps: list[float] = []

    def timed(records, total):
        for record in records:
            stamps.append(time.monotonic())
            yield record

    job = ArchiveJob(WorkerConfig(policy, source=source, out=dest), dest / LEDGER_NAME)
    started = time.monotonic()
    summary = run_archive(job, "mvmic bench archive", workers=workers, progress=timed)
    if summary.failures:
        raise RuntimeError(f"{len(summary.failures)} instances failed: {summary.lines()[2:]}")
    shutil.rmtree(dest)
    steady = stamps[workers - 1:]  # from the moment every worker has finished its first instance
    steady_s = steady[-1] - steady[0]
    steady_count = len(steady) - 1
    rate = steady_count / steady_s
    return {"workers": workers, "instances": len(stamps), "wall_s": stamps[-1] - started,
            "first_record_s": stamps[0] - started, "steady_instances_per_s": rate,
            "steady_bytes_per_s": rate * source_bytes / len(stamps),
            "worker_seconds_per_instance": workers / rate,
            "bytes_after": summary.bytes_after, "bytes_before": summary.bytes_before}


def markdown_report(result: dict) -> str:
    lines = [(f"# Archive job throughput: {result['instances']} instances of the {result['split']} split, "
             f"{result['source_bytes'] / 2**20:.1f} MiB, {result['mode']}, local Ray on {result['cpu_cores']} cores"),
             "",
             ("| workers | wall s (start to last) | first record s | steady instances/s | steady MiB/s | speed-up | "
             "worker-s per instance |"),
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for run in result["runs"]:
        lines.append(f"| {run['workers']} | {run['wall_s']:.1f} | {run['first_record_s']:.1f} | "
                     f"{run['steady_instances_per_s']:.2f} | {run['steady_bytes_per_s'] / 2**20:.2f} | "
                     f"{run['speedup']:.2f}x | {run['worker_seconds_per_instance']:.3f} |")
    projection = result["projection"]
    lines += ["", (f"Projection (an estimate from one worker's {projection['worker_seconds_per_instance']:.3f} s per "
                  f"instance, assuming linear growth with workers): one {projection['node_cores']}-core node "
                  f"{projection['node_instances_per_s']:.0f} instances/s ({projection['node_bytes_per_s'] / 2**20:.0f} "
                  f"MiB/s); {projection['nodes']} such nodes {projection['cluster_instances_per_s']:.0f} instances/s "
                  f"({projection['cluster_bytes_per_s'] / 2**20:.0f} MiB/s), a million such instances in "
                  f"{projection['million_instances_hours_on_cluster']:.2f} h. The PACS's ingest rate is not measured."), ""]
    return "\n".join(lines)
