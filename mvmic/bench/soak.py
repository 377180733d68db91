"""`mvmic bench soak`: the gateway under steady load for minutes: failures, latency, and whether memory grows.

    Orthanc (mvmic.pacs.orthanc, in a private network namespace) <-- gateway (a real service process,
    lossless storage) <-- locust (mvmic/bench/soak_locustfile.py, in its own process): USERS clients, no
    think time, for DURATION_S, each sending these routes in turn:
        compress lossy     POST /v1/compress?quality=4: a 512x512 CT of the corpus -> JSON (bitstream + analysis)
        compress lossless  POST /v1/compress?mode=lossless -> the .mvm bitstream
        decompress         POST /v1/decompress: the CT's lossy and lossless bitstreams in turn -> DICOM
        analyze            POST /v1/analyze: the CT's lossy bitstream -> JSON
        STOW-RS            POST /dicomweb/studies: one of STOW_INSTANCES other slices of the CT's series in
                           turn (stored lossless under their own UIDs: each store replaces the last one of
                           that instance in Orthanc, so the archive does not grow with the run)
        WADO-RS            GET one instance stored before the run, decoded (Explicit VR Little Endian)
    meanwhile, every SAMPLE_S: resident memory (RSS) of the gateway's uvicorn process and of Orthanc
    --> per route: requests, failures, p50/p95/p99/max latency, requests/s (locust's final statistics);
        RSS over time; PASS when every route was exercised, no request failed, and neither
        process's RSS grew by more than its bound (RSS_GROWTH_FRACTION of its RSS after warm-up, at least
        RSS_GROWTH_FLOOR_MIB) from the end of warm-up to the end

Latency includes queueing (more clients than model workers) and is locust's: its percentiles come from
response times rounded to 2 significant digits (100 ms steps between 1 and 10 s).

Memory growth compares two windows of samples under full load, not two single samples (32 requests
in flight make RSS move by tens of MiB from one sample to the next): the median RSS of the first
window after warm-up against the median of the window that ends the run.

Run it inside a private network namespace: scripts/private-network .venv/bin/mvmic bench soak
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil  # a dependency of locust, which this bench needs anyway
import pydicom

from mvmic.corpus.manifest import Manifest
from mvmic.pacs.multipart import related_body
from mvmic.pacs.orthanc import OrthancServer, in_private_network, running_orthanc
from mvmic.service.process import running_service

USERS = 32
DURATION_S = 600
WARMUP_S = 60
SAMPLE_S = 5.0
WINDOW_S = 30.0  # each of the two windows of RSS samples compared (shorter in short runs: a third of the run)
# RSS may grow by at most max(10 % of the RSS after warm-up, 64 MiB) from the end of warm-up to the end.
# Leak: the 9 minutes after warm-up are >= 2500 requests (4.6-7 requests/s at 32 clients on 2 shared
# cores), so leaking a tenth of the 513 KiB CT that each request carries or returns (2500 x 51 KiB =
# 125 MiB) fails the gateway's ~106 MiB (10 % of ~1060 MiB). Noise: at steady load the gateway's RSS
# rises by up to 150 MiB for a sample or two and comes back, and the allocator keeps the odd step (the
# window medians moved +43 MiB in a 3-minute run). The floor is for small processes: Orthanc's caches
# creep ~1 MiB a minute (33 -> 41 MiB in 3 minutes).
RSS_GROWTH_FRACTION = 0.10
RSS_GROWTH_FLOOR_MIB = 64.0
STOW_INSTANCES = 4
CLIENT_TIMEOUT_S = 120.0  # per request; under 32 clients a request waits seconds, never minutes
LOCUSTFILE = Path(__file__).with_name("soak_locustfile.py")
DICOM, OCTET, JSON = "application/dicom", "application/octet-stream", "application/json"
RELATED = "multipart/related"


def run_soak_benchmark(corpus_dir: Path, out_dir: Path, users: int = USERS, duration_s: int = DURATION_S,
                       warmup_s: int = WARMUP_S) -> dict:
    """Soak the gateway (see the module docstring); writes soak.json and soak.md to ``out_dir`` and returns
    the result, whose "pass" says whether the run met its bounds. RuntimeError when it cannot run here
    (no private network namespace, no locust, Orthanc or the service does not start, locust fails);
    ValueError for counts or times out of range."""
    if users < 1 or duration_s < 10 or not 0 <= warmup_s < duration_s:
        raise ValueError(f"need users >= 1, duration >= 10 s and 0 <= warm-up < duration (--users, --duration, "
                         f"--warmup); got {users} users, "
                         f"{duration_s} s, warm-up {warmup_s} s")
    if importlib.util.find_spec("locust") is None:
        raise RuntimeError("locust is not installed: pip install -e '.[dev]'")
    if not in_private_network():
        raise RuntimeError("the soak starts Orthanc, which must run in a private network namespace: "
                           "scripts/private-network .venv/bin/mvmic bench soak")
    window_s = min(WINDOW_S, (duration_s - warmup_s) / 3)
    sample_s = min(SAMPLE_S, window_s / 3)
    from mvmic.bench.speed import CT_SLICE  # imports torch: not before the arguments are checked

    out_dir.mkdir(parents=True, exist_ok=True)
    with (tempfile.TemporaryDirectory() as folder, running_orthanc(Path(folder) / "orthanc") as orthanc,
          running_service(out_dir / "gateway.log", orthanc.gateway_environment()) as url):
        spec = _prepare_requests(url, corpus_dir, CT_SLICE, Path(folder) / "requests", out_dir / "locust.json")
        processes = _server_processes()
        archive_before = _archive(orthanc)
        samples, wall_s = _run_locust(url, spec, out_dir, users, duration_s, sample_s, processes)
        archive_after = _archive(orthanc)
    routes, failures = _locust_results(spec)
    memory = [_memory_growth(samples, name, warmup_s, duration_s, window_s) for name in processes]
    problems = ([f"{r['route']}: {r['failures']} of {r['requests']} requests failed"
                 for r in routes[:-1] if r["failures"]]  # the last row is all routes together
                + [f"{r['route']}: no request" for r in routes[:-1] if not r["requests"]]
                + [f"{m['process']}: RSS grew {m['growth_mib']:.0f} MiB, more than {m['bound_mib']:.0f} MiB"
                   for m in memory if not m["pass"]])
    result = {"users": users, "duration_s": duration_s, "warmup_s": warmup_s, "wall_s": wall_s,
              "sample_interval_s": sample_s, "memory_window_s": window_s, "client_timeout_s": CLIENT_TIMEOUT_S,
              "image": CT_SLICE, "cpu_cores": os.cpu_count(), "routes": routes, "failures": failures,
              "memory": memory, "orthanc_before": archive_before, "orthanc_after": archive_after, "samples": samples, "pass": not problems, "problems": problems}
    (out_dir / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    (out_dir / "soak.md").write_text(_table(result) + "\n")
    print(_table(result))
    return result


def _prepare_requests(url: str, corpus_dir: Path, image: str, folder: Path, results: Path) -> dict:
    """The routes locust sends, with their bodies in ``folder``: bitstreams made by the gateway itself, and the
    WADO-RS target stored through it. Locust writes its final statistics to ``results``."""
    entries = Manifest.load(corpus_dir / "manifest.json").entries
    ct = next((entry for entry in entries if entry.id == image), None)
    if ct is None:
        raise RuntimeError(f"{image} is not in the corpus at {corpus_dir}: run `mvmic data prepare`")
    others = sorted((e for e in entries if e.group == ct.group and e.id != ct.id), key=lambda e: e.id)[:STOW_INSTANCES]
    folder.mkdir(parents=True)
    source = (corpus_dir / ct.path).read_bytes()
    bodies = {"ct.dcm": source,
              "lossy.mvm": _post(f"{url}/v1/compress?quality=4", source, DICOM, OCTET),
              "lossless.mvm": _post(f"{url}/v1/compress?mode=lossless", source, DICOM, OCTET)}
    types = dict.fromkeys(bodies, DICOM) | {"lossy.mvm": OCTET, "lossless.mvm": OCTET}
    for entry in [ct, *others]:  # each body has its own boundary
        bodies[f"{entry.id}.stow"], types[f"{entry.id}.stow"] = related_body([(corpus_dir / entry.path).read_bytes()],
                                                                             DICOM)
    _post(f"{url}/dicomweb/studies", bodies[f"{ct.id}.stow"], types[f"{ct.id}.stow"], "application/dicom+json")
    header = pydicom.dcmread(io.BytesIO(source), stop_before_pixels=True)
    instance = (f"/dicomweb/studies/{header.StudyInstanceUID}/series/{header.SeriesInstanceUID}"
                f"/instances/{header.SOPInstanceUID}")
    for name, data in bodies.items():
        (folder / name).write_bytes(data)

    def route(name: str, method: str, path: str, body_names: list[str], accept: str, media_type: str) -> dict:
        return {"name": name, "method": method, "path": path, "accept": accept, "status": 200,
                "media_type": media_type, "bodies": [{"file": body, "content_type": types[body]} for body in body_names]}

    routes = [
        route("compress lossy", "POST", "/v1/compress?quality=4", ["ct.dcm"], JSON, JSON),
        route("compress lossless", "POST", "/v1/compress?mode=lossless", ["ct.dcm"], OCTET, OCTET),
        route("decompress", "POST", "/v1/decompress", ["lossy.mvm", "lossless.mvm"], DICOM, DICOM),
        route("analyze", "POST", "/v1/analyze", ["lossy.mvm"], JSON, JSON),
        route("STOW-RS", "POST", "/dicomweb/studies", [f"{e.id}.stow" for e in others], "application/dicom+json",
              "application/dicom+json"),
        route("WADO-RS", "GET", instance, [], f'{RELATED}; type="{DICOM}"', RELATED),
    ]
    spec = {"timeout_s": CLIENT_TIMEOUT_S, "routes": routes, "path": str(folder / "requests.json"),
            "results": str(results)}
    (folder / "requests.json").write_text(json.dumps(spec, indent=1))
    return spec


def _post(url: str, body: bytes, content_type: str, accept: str) -> bytes:
    answer = httpx.post(url, content=body, headers={"Content-Type": content_type, "Accept": accept},
                        timeout=CLIENT_TIMEOUT_S)
    if answer.status_code != 200:
        raise RuntimeError(f"preparing the soak: {url} answered {answer.status_code}: {answer.text[:300]}")
    return answer.content


def _archive(orthanc: OrthancServer) -> dict:
    """How many instances Orthanc holds and their disk size (its /statistics)."""
    answer = httpx.get(f"{orthanc.url}/statistics", auth=orthanc.auth, timeout=CLIENT_TIMEOUT_S).json()
    return {"instances": answer["CountInstances"], "disk_mib": round(int(answer["TotalDiskSize"]) / 2**20, 2)}


def _server_processes() -> dict[str, psutil.Process]:
    """The gateway's uvicorn process and Orthanc, both children of this process."""
    children = psutil.Process().children()
    found = {"gateway": [p for p in children if "uvicorn" in p.cmdline()],
             "orthanc": [p for p in children if p.name() == "Orthanc"]}
    if any(len(processes) != 1 for processes in found.values()):
        raise RuntimeError(f"expected one gateway and one Orthanc process among this process's children, found "
                           f"{ {name: [p.pid for p in processes] for name, processes in found.items()} }")
    return {name: processes[0] for name, processes in found.items()}


def _run_locust(url: str, spec: dict, out_dir: Path, users: int, duration_s: int, sample_s: float,
                processes: dict[str, psutil.Process]) -> tuple[list[dict], float]:
    """Run locust headless, sampling the servers' RSS every ``sample_s`` until it exits: (samples, wall seconds).
    In-flight requests finish (--stop-timeout) before it exits, so each one is counted."""
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
               "--users", str(users), "--spawn-rate", str(max(1.0, users / 10)), "--run-time", f"{duration_s}s",
               "--stop-timeout", str(int(CLIENT_TIMEOUT_S)), "--host", url, "--csv", str(out_dir / "locust")]
    deadline = time.monotonic() + duration_s + 2 * CLIENT_TIMEOUT_S + 60
    samples: list[dict] = []
    with (out_dir / "locust.log").open("wb") as log:
        started = time.monotonic()
        locust = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "MVMIC_SOAK_REQUESTS": spec["path"]})
    def sample() -> None:
        samples.append({"t_s": round(time.monotonic() - started, 1),
                        **{f"{name}_rss_mib": round(process.memory_info().rss / 2**20, 1)
                           for name, process in processes.items()}})

    try:
        while locust.poll() is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"locust still running {deadline - started:.0f} s after it started: see "
                                   f"{out_dir / 'locust.log'}")
            sample()
            try:
                locust.wait(timeout=max(0.0, started + len(samples) * sample_s - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        sample()  # at the end of the load, whenever it fell between two samples
    finally:
        if locust.poll() is None:
            locust.kill()
            locust.wait()
    return samples, time.monotonic() - started


def _locust_results(spec: dict) -> tuple[list[dict], list[dict]]:
    """Per route (in the spec's order, then "all"): requests, failures, latency, requests/s; and the failures
    by route and error: locust's final statistics, as the locustfile wrote them."""
    path = Path(spec["results"])
    if not path.exists():
        raise RuntimeError(f"locust wrote no statistics: see {path.with_name('locust.log')}")
    results = json.loads(path.read_text())
    measured = {row["route"]: row for row in results["routes"]}
    empty = {"requests": 0, "failures": 0, "p50_ms": 0, "p95_ms": 0, "p99_ms": 0, "max_ms": 0, "mean_ms": 0,
             "requests_per_s": 0.0}
    routes = [{**empty, **measured.get(route["name"], {}), "route": route["name"]} for route in spec["routes"]]
    return routes + [{**results["all"], "route": "all"}], results["failures"]


def _memory_growth(samples: list[dict], process: str, warmup_s: float, duration_s: float, window_s: float) -> dict:
    """Median RSS of the window after warm-up and of the window that ends the run, their difference, the bound;
    and, for the reader (a leak climbs steadily, the allocator's high-water mark in steps), the least-squares
    slope of RSS from the end of warm-up to the end."""
    key = f"{process}_rss_mib"
    after_warmup = [s[key] for s in samples if warmup_s <= s["t_s"] <= warmup_s + window_s]
    at_end = [s[key] for s in samples if duration_s - window_s <= s["t_s"] <= duration_s]
    if not after_warmup or not at_end:
        raise RuntimeError(f"too few memory samples of the {process} ({len(samples)} in all) to compare")
    before, after = statistics.median(after_warmup), statistics.median(at_end)
    bound = max(RSS_GROWTH_FLOOR_MIB, RSS_GROWTH_FRACTION * before)
    loaded = [s for s in samples if warmup_s <= s["t_s"] <= duration_s]
    slope = statistics.linear_regression([s["t_s"] / 60 for s in loaded], [s[key] for s in loaded]).slope
    return {"process": process, "after_warmup_mib": before, "end_mib": after, "growth_mib": after - before,
            "growth_percent": 100 * (after - before) / before, "slope_mib_per_min": slope,
            "peak_mib": max(s[key] for s in samples),
            "bound_mib": bound, "pass": after - before <= bound}


def _table(result: dict) -> str:
    lines = [(f"# Soak: {result['users']} clients for {result['duration_s']} s through the gateway in front of "
              f"Orthanc ({result['cpu_cores']} cores; {result['image']}, 512x512 CT)"), "",
             "| route | requests | failures | p50 ms | p95 ms | p99 ms | max ms | requests/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['route']} | {r['requests']} | {r['failures']} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | "
              f"{r['p99_ms']:.0f} | {r['max_ms']:.0f} | {r['requests_per_s']:.2f} |" for r in result["routes"]]
    if result["failures"]:
        lines += ["", "| route | error | occurrences |", "|---|---|---:|"]
        lines += [f"| {f['route']} | {' '.join(f['error'][:200].split()).replace('|', '/')} | {f['occurrences']} |"
                  for f in result["failures"]]
    lines += ["", (f"Resident memory (RSS): median of the {result['memory_window_s']:.0f} s after the "
                   f"{result['warmup_s']} s warm-up against the last {result['memory_window_s']:.0f} s, "
                   f"sampled every {result['sample_interval_s']:.1f} s"), "",
              "| process | after warm-up MiB | end MiB | growth MiB | slope MiB/min | peak MiB | bound MiB | verdict |",
              "|---|---:|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {m['process']} | {m['after_warmup_mib']:.0f} | {m['end_mib']:.0f} | {m['growth_mib']:+.1f} "
              f"({m['growth_percent']:+.1f} %) | {m['slope_mib_per_min']:+.1f} | {m['peak_mib']:.0f} | {m['bound_mib']:.0f} | "
              f"{'PASS' if m['pass'] else 'FAIL'} |" for m in result["memory"]]
    samples = result["samples"]
    shown = [samples[i] for i in sorted({*range(0, len(samples), max(1, len(samples) // 10)), len(samples) - 1})]
    lines += ["", "| s | " + " | ".join(f"{m['process']} MiB" for m in result["memory"]) + " |",
              "|---:|" + "---:|" * len(result["memory"])]
    lines += [f"| {s['t_s']:.0f} | " + " | ".join(f"{s[m['process'] + '_rss_mib']:.0f}" for m in result["memory"])
              + " |" for s in shown]
    before, after = result["orthanc_before"], result["orthanc_after"]
    lines += ["", (f"Orthanc held {before['instances']} instances ({before['disk_mib']:.1f} MiB) before the run and "
                   f"{after['instances']} ({after['disk_mib']:.1f} MiB) after it")]
    verdict = "PASS" if result["pass"] else "FAIL: " + "; ".join(result["problems"])
    lines += ["", f"Result: {verdict}"]
    return "\n".join(lines)
