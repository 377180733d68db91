"""`mvmic bench service`: throughput and latency of the service under concurrent clients.

    a real service process (mvmic.service.process) on 127.0.0.1 --for compress (a 512x512 CT, quality 4,
    JSON with analysis) and analyze (its bitstream), at each concurrency: that many clients send
    requests back to back until REQUESTS_PER_CLIENT each are answered--> requests/s, p50, p99 latency

Client and server share the machine's cores, as they would on a 2-core gateway. The server runs as
configured by the MVMIC_* environment (MVMIC_WORKERS model workers, default one per core, each with
MVMIC_THREADS torch threads, default cores // workers); the result records the worker and thread
counts the server reported on /metrics. Latency includes queueing: with more clients than workers,
requests wait for a free worker.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path

import httpx

from mvmic.bench.speed import CT_SLICE
from mvmic.service.process import running_service
from mvmic.service.settings import cpu_cores

CONCURRENCY = (1, 8, 32)
REQUESTS_PER_CLIENT = 4  # 2 gave 16 requests at 8 clients: two rounds, start-up dominated (16.5-19.7 req/s run to run)
MIN_REQUESTS = 32
TIMEOUT_S = 600.0


def run_service_benchmark(corpus_dir: Path, out_dir: Path, concurrency: tuple[int, ...] = CONCURRENCY) -> dict:
    source = (corpus_dir / "images" / f"{CT_SLICE}.dcm").read_bytes()
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    with running_service(out_dir / "uvicorn.log") as url:
        stream = httpx.post(f"{url}/v1/compress", content=source, params={"quality": 4}, timeout=TIMEOUT_S,
                            headers={"Content-Type": "application/dicom", "Accept": "application/octet-stream"})
        stream.raise_for_status()
        work = {"compress": (f"{url}/v1/compress?quality=4", source, "application/dicom"),
                "analyze": (f"{url}/v1/analyze", stream.content, "application/octet-stream")}
        for route, (target, body, media_type) in work.items():
            for clients in concurrency:
                rows.append({"route": route, "concurrency": clients,
                             **asyncio.run(_load(target, body, media_type, clients))})
        server = _server_gauges(url)
    result = {"image": CT_SLICE, "cpu_cores": cpu_cores(), "workers": int(server["mvmic_model_workers"]),
              "torch_threads_per_worker": int(server["mvmic_model_torch_threads"]), "rows": rows}
    (out_dir / "service.json").write_text(json.dumps(result, indent=1) + "\n")
    print(_table(result))
    return result


def _server_gauges(url: str) -> dict[str, float]:
    """The server's unlabelled model gauges (workers, torch threads) from its /metrics."""
    rows = httpx.get(f"{url}/metrics", timeout=TIMEOUT_S).text.splitlines()
    return {name: float(value) for name, value in (row.split(" ", 1) for row in rows
                                                   if row.startswith("mvmic_model_") and "{" not in row)}


async def _load(url: str, body: bytes, media_type: str, clients: int) -> dict:
    total = max(MIN_REQUESTS, REQUESTS_PER_CLIENT * clients)
    latencies: list[float] = []
    remaining = iter(range(total))

    async def client(session: httpx.AsyncClient) -> None:
        for _ in remaining:
            started = time.perf_counter()
            response = await session.post(url, content=body, headers={"Content-Type": media_type})
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=TIMEOUT_S, limits=limits) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {"requests": total, "requests_per_s": total / wall, "p50_ms": 1000 * statistics.median(ordered),
            "p99_ms": 1000 * ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]}


def _table(result: dict) -> str:
    lines = [(f"# Service: {result['image']} 512x512 CT, {result['cpu_cores']} cores, {result['workers']} model "
              f"workers x {result['torch_threads_per_worker']} torch threads"), "",
             "| route | concurrency | requests | requests/s | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['route']} | {r['concurrency']} | {r['requests']} | {r['requests_per_s']:.2f} | "
              f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} |" for r in result["rows"]]
    return "\n".join(lines)
