"""`mvmic bench gpu` (scripts/gpu-check runs it on a lent GPU machine): CUDA parity and GPU throughput.

    python -m mvmic.bench.gpu expected   here: decode hashes of FRAMES --> scripts/gpu-check-expected.json (committed)
    python -m mvmic.bench.gpu prepare    here: --> data/gpu-check/ (ignored; scripts/gpu-check carries it): those
                                   frames' DICOMs and .mvm streams, the cp312 wheels the device image lacks,
                                   an abi3 build of mvmic.model._table_coder; checks what travels fits 64 MiB
    python -m mvmic.bench.gpu run        there (or here: --dry-run, the CPU with small counts) --> OUT/results.json

`run`'s steps, each recorded as pass / fail / error / skipped (with why) in results.json, which is
rewritten after every step so that a run stopped at its time limit still reports what it did:

    decode_hashes        compress and decode FRAMES (quality 4), and decode the streams made here:
                         sha256 of the stream, the decoded pixels and the LL1 plane the heads read
                         must equal the expected ones (entropy coding and wavelet are CPU C code,
                         so the device machine must decode bit for bit what this one decodes)
    heads_parity         the heads on the device vs on the CPU, in ONNX Runtime and in torch: largest
                         output difference, candidate boxes (same classes, < 1 px), lesion masks and
                         organ maps (< 0.1 % pixels differ), as tests/test_service.py's CUDA test
    service              `mvmic serve` with MVMIC_DEVICE=<device>, mvmic.bench.service's clients on /v1/compress
                         and /v1/analyze at concurrency 1, 8, 32, and its /metrics (OUT/metrics.txt); the
                         server starts before the first step (its start overlaps them) and is stopped
                         after this one, so that it shares no cores with the throughput steps
    heads_throughput     frames/s of the heads on 256 x 256 LL1 planes (the half-resolution plane of a
                         512 x 512 frame) in batches of 1, 8, 32, 128: ONNX Runtime (CUDA provider) and
                         torch, host-to-host (what analysis pays) and device-resident; goal >= 2,000
                         in float32 (a torch fp16-autocast row shows what half precision would add)
    codec_throughput     frames/s of compress, decompress and decode_coarse of 512 x 512 CT frames on
                         the CPU cores, on 1 .. all threads (the C kernels release the GIL)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from mvmic.paths import REPO_ROOT as ROOT

EXPECTED = ROOT / "scripts" / "gpu-check-expected.json"
PREPARED = ROOT / "data" / "gpu-check"  # ignored (/data/); scripts/gpu-check's `run` call carries it
SCHEMA = "mvmic-gpu-check/1"
QUALITY = 4
# Test-split frames: 512 x 512 CT (three of them 12-bit lung, one signed 14-bit head), 256 x 256 brain MR,
# a small abdominal CT, a 1024 x 1024 MR, a signed 16-bit 1024 x 256 NM image and an RGB ultrasound image.
FRAMES = ("pyradiomics-lung1-030", "pyradiomics-lung1-000", "pyradiomics-lung1-010", "pydicom-693_UNCR",
          "pyradiomics-brain2-000", "totalsegmentator-ct-000", "pydicom-MR2_UNCR", "pydicom-JPEG-LL",
          "pydicom-US1_UNCR", "pyradiomics-brain2-010")
SERVICE_IMAGE = "pyradiomics-lung1-030"  # mvmic.bench.speed.CT_SLICE, which mvmic.bench.service sends
GOAL_FRAMES_PER_S = 2000.0
# Heads parity, device vs CPU (tests/test_service.py's CUDA test; TF32 convolutions differ slightly).
BOX_TOLERANCE_PX = 1.0
PIXEL_DISAGREEMENT = 1e-3
# What the device image lacks for the codec and the service (KINDS.md's package list of the H200 image;
# it has torch, numpy 2, onnxruntime, scipy, numba, httpx, prometheus-client, pillow, click, h11). Pure
# wheels and cp312 builds, at the versions installed here; about 14 MiB.
DEVICE_WHEELS = ("fastapi", "starlette", "pydantic", "pydantic-core", "pydantic-settings", "python-dotenv",
                 "uvicorn", "typing-inspection", "annotated-types", "typing-extensions", "anyio", "opentelemetry-api",
                 "pydicom", "highdicom", "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pyjpegls",
                 "pycocotools")
TRAVEL_LIMIT = 64 * 2**20  # the working tree plus carried paths, per `run` call


@dataclass(frozen=True)
class Plan:
    """How much each step measures: the device's full plan, or the dry run's small one."""

    parity_frames: tuple[str, ...]  # heads parity on these FRAMES (the lung CT ones also with lesions)
    plane: int  # heads throughput on plane x plane LL1 planes
    batches: tuple[int, ...]
    seconds_per_row: float
    threads: tuple[int, ...]
    codec_seconds: float
    concurrency: tuple[int, ...]


def device_plan(cores: int) -> Plan:
    return Plan(FRAMES, 256, (1, 8, 32, 128), 1.5, tuple(sorted({1, min(4, cores), min(8, cores), cores})), 2.5,
                (1, 8, 32))


# The dry run checks the steps' mechanics, not their numbers: small frames and planes, few calls.
DRY_PLAN = Plan(("totalsegmentator-ct-000", "pyradiomics-brain2-000"), 64, (1, 2), 0.1, (1, 2), 0.3, (1,))


class Skip(Exception):
    """A step that cannot run here (no CUDA provider, no time left): recorded as skipped, with why."""


# -- here: the expected hashes and the carried folder ---------------------------------------------------

def frame_hashes(corpus_dir: Path, ids: tuple[str, ...] = FRAMES, streams_dir: Path | None = None) -> list[dict]:
    """Per frame: sha256 of its stored pixels, of its quality-4 stream, of the decoded pixels and of the
    decoded LL1 plane (float64, what the heads read). ``streams_dir``: also write each stream there."""
    import numpy as np

    from mvmic.model.codec import MvmicCodec
    from mvmic.model.quality import QUALITY_CODES
    from mvmic.pixels import read_dicom

    codec, rows = MvmicCodec.load(), []
    for frame_id in ids:
        image = read_dicom(corpus_dir / "images" / f"{frame_id}.dcm")
        stream = codec.compress(image, QUALITY_CODES[QUALITY])
        data = stream.to_bytes()
        decoded = codec.decompress(stream)
        coarse = codec.decode_coarse(stream)[0].numpy()
        if streams_dir is not None:
            streams_dir.mkdir(parents=True, exist_ok=True)
            (streams_dir / f"{frame_id}.mvm").write_bytes(data)
        rows.append({"id": frame_id, "shape": list(image.pixels.shape), "dtype": str(image.pixels.dtype),
                     "source_sha256": _sha256(image.pixels), "stream_bytes": len(data),
                     "stream_sha256": hashlib.sha256(data).hexdigest(), "decoded_sha256": _sha256(decoded),
                     "coarse_shape": list(coarse.shape), "coarse_sha256": _sha256(np.asarray(coarse))})
    return rows


def _sha256(array) -> str:
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def write_expected(corpus_dir: Path, target: Path = EXPECTED) -> dict:
    """The hashes that the device machine's decoding must reproduce, with what made them."""
    import numpy as np

    from mvmic.model.quality import QUALITY_CODES
    from mvmic.model.table_codec import DEFAULT_WEIGHTS

    document = {"schema": SCHEMA, "command": "python -m mvmic.bench.gpu expected",
                "generated": datetime.now(UTC).isoformat(timespec="seconds"),
                "python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(),
                "weights": DEFAULT_WEIGHTS.name, "weights_sha256": hashlib.sha256(DEFAULT_WEIGHTS.read_bytes()).hexdigest(),
                "quality": QUALITY, "quality_code": QUALITY_CODES[QUALITY], "frames": frame_hashes(corpus_dir)}
    target.write_text(json.dumps(document, indent=1) + "\n")
    return document


def prepare(corpus_dir: Path, out: Path = PREPARED, python_version: str = "3.12", wheels: bool = True) -> dict:
    """Fill ``out`` with what the device machine needs and lacks: FRAMES' DICOMs and a manifest of them
    (corpus/), their streams made here (streams/), the wheels of DEVICE_WHEELS for ``python_version``
    (wheels/) and mvmic.model._table_coder built against the stable ABI (_table_coder.abi3.so, used where the
    device cannot build the extension), checked here to decode FRAMES as the regular build does."""
    from mvmic.corpus.manifest import Manifest

    manifest = Manifest.load(corpus_dir / "manifest.json")
    entries = [entry for entry in manifest.entries if entry.id in FRAMES]
    if sorted(entry.id for entry in entries) != sorted(FRAMES):
        raise ValueError(f"{corpus_dir} lacks frames of {', '.join(FRAMES)}")
    if out.exists():
        shutil.rmtree(out)
    (out / "corpus" / "images").mkdir(parents=True)
    for entry in entries:
        shutil.copyfile(corpus_dir / entry.path, out / "corpus" / entry.path)
    Manifest(entries, manifest.sources, version=manifest.version).save(out / "corpus" / "manifest.json")
    expected = json.loads(EXPECTED.read_text())["frames"] if EXPECTED.is_file() else None
    if frame_hashes(out / "corpus", streams_dir=out / "streams") != expected:
        raise ValueError(f"{EXPECTED.relative_to(ROOT)} is stale (the codec's output changed): run "
                         "`python -m mvmic.bench.gpu expected` first")
    abi3 = _build_abi3(out / "_table_coder.abi3.so", out / "corpus", expected)
    downloaded = _download_wheels(out / "wheels", python_version) if wheels else []
    travel = travel_bytes(out)
    summary = {"out": str(out), "frames": len(entries), "abi3_extension": abi3, "python_version": python_version,
               "wheels": downloaded, "bytes": _folder_bytes(out), "travel_bytes": travel,
               "travel_limit_bytes": TRAVEL_LIMIT}
    (out / "prepared.json").write_text(json.dumps(summary, indent=1) + "\n")
    if travel > TRAVEL_LIMIT:
        raise ValueError(f"the working tree and {out} come to {travel / 2**20:.1f} MiB, more than the 64 MiB a "
                         "`run` call carries")
    return summary


def _build_abi3(target: Path, corpus_dir: Path, expected: list[dict]) -> str:
    """mvmic/model/table_coder.c with setup.py's flags against the stable ABI of Python 3.11 (it loads in any
    later CPython); its one macro outside that ABI is mapped to the function. Returns what was checked."""
    import sysconfig

    command = ["gcc", "-shared", "-fPIC", "-O3", "-ffp-contract=off", "-std=c11", "-Wall",
               "-DPy_LIMITED_API=0x030B0000", "-DPyBytes_AS_STRING=PyBytes_AsString",
               f"-I{sysconfig.get_paths()['include']}", str(ROOT / "mvmic" / "model" / "table_coder.c"), "-o", str(target)]
    subprocess.run(command, check=True)
    check = ("import importlib.util, json, sys\n"
             f"spec = importlib.util.spec_from_file_location('mvmic.model._table_coder', {str(target)!r})\n"
             "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
             "sys.modules['mvmic.model._table_coder'] = module\n"
             "from mvmic.bench.gpu import frame_hashes\n"
             f"print(json.dumps(frame_hashes(__import__('pathlib').Path({str(corpus_dir)!r}))))\n")
    result = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, check=True)
    if json.loads(result.stdout.splitlines()[-1]) != expected:
        raise ValueError(f"{target} decodes differently from mvmic.model._table_coder")
    return f"built with gcc, decodes the {len(expected)} frames as the regular build does"


def _download_wheels(target: Path, python_version: str) -> list[str]:
    from importlib.metadata import version

    platforms = [f"--platform=manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 34)] + [
        "--platform=manylinux2014_x86_64", "--platform=manylinux1_x86_64"]
    pins = [f"{name}=={version(name)}" for name in DEVICE_WHEELS]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    f"--python-version={python_version}", "--implementation=cp", *platforms, "-d", str(target),
                    *pins], check=True)
    return sorted(path.name for path in target.glob("*.whl"))


def travel_bytes(carried: Path) -> int:
    """What a `run` call sends: tracked and untracked-not-ignored files, plus the carried folder."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    tree = sum((ROOT / name).stat().st_size for name in listed if name and (ROOT / name).is_file())
    return tree + _folder_bytes(carried)


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


# -- there: the check ----------------------------------------------------------------------------------

class Results:
    """results.json, rewritten whole after every step."""

    def __init__(self, out: Path, device: str, dry_run: bool) -> None:
        self.path, self.started = out / "results.json", time.monotonic()
        self.document = {"schema": SCHEMA, "started": datetime.now(UTC).isoformat(timespec="seconds"),
                         "mode": "dry-run" if dry_run else "device", "device": device,
                         "setup": {key[len("GPU_CHECK_"):].lower(): value for key, value in os.environ.items()
                                   if key.startswith("GPU_CHECK_")},
                         "environment": {}, "steps": {}, "summary": {}}
        self.write()

    def step(self, name: str, work: Callable[[], dict], deadline: float, needs_s: float = 0.0) -> dict:
        started = time.monotonic()
        print(f"[gpu-check] {name} ...", flush=True)
        try:
            if deadline - started < needs_s:
                raise Skip(f"{deadline - started:.0f} s left of the budget, the step needs about {needs_s:.0f} s")
            outcome = work()
            outcome.setdefault("status", "pass")
        except Skip as exc:
            outcome = {"status": "skipped", "reason": str(exc)}
        except Exception as exc:  # noqa: BLE001 - every failure is a result to bring back
            outcome = {"status": "error", "error": f"{type(exc).__name__}: {exc}",
                       "traceback": traceback.format_exc()[-4000:]}
        outcome["seconds"] = round(time.monotonic() - started, 2)
        self.document["steps"][name] = outcome
        print(f"[gpu-check] {name}: {outcome['status']} ({outcome['seconds']} s)"
              + (f" {outcome.get('reason') or outcome.get('error')}" if outcome["status"] in ("skipped", "error")
                 else ""), flush=True)
        self.write()
        return outcome

    def finish(self) -> bool:
        steps = self.document["steps"]
        failed = sorted(name for name, step in steps.items() if step["status"] in ("fail", "error"))
        self.document["summary"] = {
            "ok": not failed, "failed": failed,
            "skipped": {name: step["reason"] for name, step in steps.items() if step["status"] == "skipped"},
            "not_verified": sorted({note for step in steps.values() for note in step.get("not_verified", [])}),
            "heads_best_frames_per_s": steps.get("heads_throughput", {}).get("best_frames_per_s"),
            "goal_frames_per_s": GOAL_FRAMES_PER_S,
            "goal_met": steps.get("heads_throughput", {}).get("goal_met")}
        self.document["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
        self.document["elapsed_s"] = round(time.monotonic() - self.started, 1)
        self.write()
        return not failed

    def write(self) -> None:
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(self.document, indent=1) + "\n")
        partial.replace(self.path)


def run_gpu_check(out: Path, device: str = "auto", dry_run: bool = False, corpus_dir: Path | None = None,
                  streams_dir: Path | None = None, budget_s: float = 300.0, service: bool = True) -> dict:
    """Run the steps (module docstring) on ``device`` (auto: cuda:0 when torch sees a GPU, else cpu) and
    write OUT/results.json (and OUT/metrics.txt, OUT/uvicorn.log from the service step)."""
    deadline = time.monotonic() + budget_s
    out.mkdir(parents=True, exist_ok=True)
    corpus_dir = corpus_dir or (PREPARED / "corpus" if (PREPARED / "corpus" / "manifest.json").is_file()
                                else ROOT / "data" / "corpus")
    streams_dir = streams_dir or (PREPARED / "streams" if (PREPARED / "streams").is_dir() else None)
    environment = probe()
    device = _resolve(device, environment)
    results = Results(out, device, dry_run)
    results.document["environment"] = environment
    results.document["corpus"] = str(corpus_dir)
    results.write()
    cores = environment["cpu_cores"]
    plan = DRY_PLAN if dry_run else device_plan(cores)
    if dry_run:  # torch's default threads stall on a small, busy machine (650 ms instead of 8 ms a 64 x 64 plane)
        import torch

        torch.set_num_threads(1)
    expected = json.loads(EXPECTED.read_text())
    # The server starts first: loading its models (and compiling the exact layer's numba kernels, tens of
    # seconds on a fresh tree) overlaps the first two steps; it is stopped before the throughput steps.
    server = Server(out, device) if service else None
    try:
        results.step("decode_hashes", lambda: check_hashes(corpus_dir, expected, streams_dir), deadline)
        results.step("heads_parity", lambda: heads_parity(corpus_dir, device, plan.parity_frames), deadline)
        if server is not None:  # leaves THROUGHPUT_S of the budget to the throughput steps
            results.step("service", lambda: service_check(server, corpus_dir, out, device, plan,
                                                          deadline - THROUGHPUT_S), deadline - THROUGHPUT_S,
                         needs_s=20)
    finally:
        if server is not None:
            server.stop()
    results.step("heads_throughput", lambda: heads_throughput(corpus_dir, device, plan, deadline - 30),
                 deadline, needs_s=10)
    results.step("codec_throughput", lambda: codec_throughput(corpus_dir, plan, deadline), deadline, needs_s=5)
    results.finish()
    return results.document


def _resolve(device: str, environment: dict) -> str:
    cuda = environment.get("torch", {}).get("cuda_available")
    if device == "auto":
        return "cuda:0" if cuda else "cpu"
    if device.startswith("cuda"):
        if not cuda:
            raise RuntimeError(f"--device {device}: torch sees no CUDA device here (environment: "
                               f"{json.dumps(environment.get('torch'))})")
        return device if ":" in device else "cuda:0"
    return device


def probe() -> dict:
    """What this machine has: Python, the packages the check needs (with versions), torch's CUDA, ONNX
    Runtime's providers, the codec's compiled kernels, nvidia-smi."""
    from importlib import import_module
    from importlib.metadata import PackageNotFoundError, version

    found: dict = {"python": sys.version.split()[0], "executable": sys.executable, "machine": platform.machine(),
                   "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                   "packages": {}}
    for module, distribution in (("numpy", "numpy"), ("torch", "torch"), ("onnxruntime", None), ("onnx", "onnx"),
                                 ("pydicom", "pydicom"), ("pycocotools", "pycocotools"), ("fastapi", "fastapi"),
                                 ("uvicorn", "uvicorn"), ("pydantic_settings", "pydantic-settings"),
                                 ("highdicom", "highdicom"), ("numba", "numba"), ("scipy", "scipy")):
        try:
            imported = import_module(module)
            found["packages"][module] = getattr(imported, "__version__", None) or version(distribution or module)
        except (ImportError, PackageNotFoundError) as exc:
            found["packages"][module] = f"missing: {exc}"
    for distribution in ("onnxruntime", "onnxruntime-gpu", "mvmic"):
        try:
            found["packages"][f"dist:{distribution}"] = version(distribution)
        except PackageNotFoundError:
            found["packages"][f"dist:{distribution}"] = None
    try:
        import torch

        cuda = torch.cuda.is_available()
        found["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda, "cuda_available": cuda,
                          "cudnn": torch.backends.cudnn.version() if cuda else None,
                          "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                          "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                          "cudnn_benchmark": torch.backends.cudnn.benchmark, "threads": torch.get_num_threads()}
        if cuda:
            properties = torch.cuda.get_device_properties(0)
            found["torch"].update(gpu=properties.name, capability=list(torch.cuda.get_device_capability(0)),
                                  gpu_memory_gib=round(properties.total_memory / 2**30, 1),
                                  multiprocessors=properties.multi_processor_count)
    except ImportError as exc:
        found["torch"] = {"error": str(exc), "cuda_available": False}
    try:
        import onnxruntime

        found["onnxruntime"] = {"version": onnxruntime.__version__, "device": onnxruntime.get_device(),
                                "providers": onnxruntime.get_available_providers()}
    except ImportError as exc:
        found["onnxruntime"] = {"error": str(exc), "providers": []}
    try:
        from mvmic.model import _table_coder

        found["table_coder"] = _table_coder.__file__
    except ImportError as exc:
        found["table_coder"] = f"missing: {exc}"
    query = "name,driver_version,memory.total,memory.used,clocks.sm,clocks.max.sm,power.draw"
    found["nvidia_smi"] = _command(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"])
    return found


def _command(command: list[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        return (result.stdout or result.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable: {exc}"


def check_hashes(corpus_dir: Path, expected: dict, streams_dir: Path | None) -> dict:
    """FRAMES compressed and decoded here against the expected hashes; the streams made where the
    expected hashes were made (``streams_dir``), decoded here, against their decoded hashes."""
    from mvmic.model.bitstream import Bitstream
    from mvmic.model.codec import MvmicCodec

    found = {row["id"]: row for row in frame_hashes(corpus_dir, tuple(row["id"] for row in expected["frames"]))}
    frames, mismatches = [], []
    for want in expected["frames"]:
        got = found[want["id"]]
        differing = [key for key in ("source_sha256", "stream_sha256", "decoded_sha256", "coarse_sha256")
                     if got[key] != want[key]]
        row = {"id": want["id"], "shape": want["shape"], "stream_bytes": got["stream_bytes"], "differing": differing}
        if differing:
            row["found"] = {key: got[key] for key in differing}
        frames.append(row)
        mismatches += [f"{want['id']}: {key}" for key in differing]
    carried = 0
    if streams_dir is not None:
        codec = MvmicCodec.load()
        for want in expected["frames"]:
            path = streams_dir / f"{want['id']}.mvm"
            if not path.is_file():
                continue
            data = path.read_bytes()
            stream = Bitstream.from_bytes(data)
            if hashlib.sha256(data).hexdigest() != want["stream_sha256"]:
                mismatches.append(f"{want['id']}: carried stream is not the expected one")
            elif _sha256(codec.decompress(stream)) != want["decoded_sha256"]:
                mismatches.append(f"{want['id']}: carried stream decodes differently")
            elif _sha256(codec.decode_coarse(stream)[0].numpy()) != want["coarse_sha256"]:
                mismatches.append(f"{want['id']}: carried stream's LL1 plane differs")
            carried += 1
    from mvmic.model import _table_coder

    return {"status": "fail" if mismatches else "pass", "frames": frames, "matched": len(frames) - len(
        {m.split(":")[0] for m in mismatches}), "total": len(frames), "carried_streams_decoded": carried,
        "mismatches": mismatches, "table_coder": _table_coder.__file__,
        "expected_from": {key: expected.get(key) for key in ("generated", "python", "numpy", "weights_sha256")}}


def _streams(corpus_dir: Path, lesions: bool, frames: tuple[str, ...] = FRAMES) -> list:
    """(id, Bitstream) of FRAMES at quality 4 and, with ``lesions``, of the lung CT frames with synthetic
    lesions inserted (as tests/test_onnx_runtime.py does), so that lesion boxes and masks are compared."""
    import numpy as np

    from mvmic.model.codec import MvmicCodec
    from mvmic.model.quality import QUALITY_CODES
    from mvmic.model.tasks.lesions import insert_lesions
    from mvmic.pixels import read_dicom

    codec, streams = MvmicCodec.load(), []
    for index, frame_id in enumerate(frames):
        image = read_dicom(corpus_dir / "images" / f"{frame_id}.dcm")
        streams.append((frame_id, codec.compress(image, QUALITY_CODES[QUALITY])))
        if lesions and "lung1" in frame_id:
            fmt = image.format
            lesioned = insert_lesions(image.frame(0), np.random.default_rng(index)).image
            pixels = np.clip(np.round(lesioned), fmt.min_value, fmt.max_value).astype(fmt.dtype)[None, ..., None]
            streams.append((f"{frame_id}+lesions", codec.compress_pixels(pixels, fmt, QUALITY_CODES[QUALITY])))
    return streams


def heads_parity(corpus_dir: Path, device: str, frames: tuple[str, ...] = FRAMES) -> dict:
    """Each runtime's heads on ``device`` against the same runtime on the CPU, on the LL1 planes of
    ``frames`` (and of the lung CT ones with lesions): outputs, every candidate box, masks, organ maps."""
    import numpy as np
    import torch

    from mvmic.model.codec import MvmicCodec
    from mvmic.model.tasks.analysis import DEFAULT_HEADS, Analyzer
    from mvmic.model.tasks.heads import standardise
    from mvmic.model.tasks.outputs import decode_detections, organ_maps, segmentation_masks

    codec = MvmicCodec.load()
    planes = [(frame_id, (stream.rows, stream.columns), standardise(codec.decode_coarse(stream)[0].float()))
              for frame_id, stream in _streams(corpus_dir, True, frames)]
    runtimes, not_verified = {}, []
    for runtime in ("onnx", "torch"):
        on_cpu = Analyzer.load(codec, DEFAULT_HEADS, "cpu", runtime)
        on_device = Analyzer.load(codec, DEFAULT_HEADS, device, runtime)
        providers = on_device.heads.providers if runtime == "onnx" else None
        if device != "cpu" and runtime == "onnx" and "CUDAExecutionProvider" not in providers:
            runtimes[runtime] = {"status": "skipped", "providers": providers,
                                 "reason": "this onnxruntime has no CUDAExecutionProvider (the image lacks "
                                           "onnxruntime-gpu): the ONNX heads ran on the CPU on both sides"}
            not_verified.append("ONNX Runtime CUDA provider parity")
            continue
        worst = {"output_abs": 0.0, "box_px": 0.0, "score": 0.0, "mask_disagreement": 0.0, "organ_disagreement": 0.0}
        boxes = class_mismatches = 0
        for _, shape, plane in planes:
            with torch.no_grad():
                expected = on_cpu.heads(plane)
                found = on_device.heads(plane if runtime == "onnx" else plane.to(device)).to("cpu")
            for name in ("lesion", "organs", "heatmap", "size", "offset"):
                difference = (getattr(found, name) - getattr(expected, name)).abs().max().item()
                worst["output_abs"] = max(worst["output_abs"], difference)
            for ours, theirs in zip(decode_detections(found, shape), decode_detections(expected, shape), strict=True):
                if ours.classes.tolist() != theirs.classes.tolist():
                    class_mismatches += 1
                    continue
                boxes += len(ours.boxes)
                worst["box_px"] = max(worst["box_px"], float(np.abs(ours.boxes - theirs.boxes).max(initial=0)))
                worst["score"] = max(worst["score"], float(np.abs(ours.scores - theirs.scores).max(initial=0)))
            for key, decode in (("mask_disagreement", segmentation_masks), ("organ_disagreement", organ_maps)):
                worst[key] = max(worst[key], float((decode(found, shape) != decode(expected, shape)).mean()))
        passed = (class_mismatches == 0 and worst["box_px"] < BOX_TOLERANCE_PX
                  and max(worst["mask_disagreement"], worst["organ_disagreement"]) < PIXEL_DISAGREEMENT)
        runtimes[runtime] = {"status": "pass" if passed else "fail", "providers": providers, "frames": len(planes),
                             "candidate_boxes": boxes, "frames_with_other_classes": class_mismatches,
                             "worst": worst}
    failed = any(r["status"] == "fail" for r in runtimes.values())
    return {"status": "fail" if failed else "pass", "device": device, "runtimes": runtimes,
            "criteria": {"box_px_below": BOX_TOLERANCE_PX, "pixel_disagreement_below": PIXEL_DISAGREEMENT},
            "not_verified": not_verified}


def _rate(call: Callable[[], object], frames: int, seconds: float, sync: Callable[[], None]) -> dict:
    """frames/s of ``call`` (``frames`` per call) over at least ``seconds`` and 3 calls, after 2 warm-ups."""
    for _ in range(2):
        call()
    sync()
    times, started = [], time.perf_counter()
    while len(times) < 3 or time.perf_counter() - started < seconds:
        began = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - began)
    return {"calls": len(times), "frames_per_s": round(frames * len(times) / sum(times), 1),
            "ms_per_call_median": round(1000 * statistics.median(times), 3)}


def _ll1_planes(corpus_dir: Path, count: int, size: int = 256):
    """``count`` standardised LL1 planes (N, 1, size, size) float32 of the 512 x 512 frames (256 x 256,
    cropped to ``size``), repeated."""
    import torch

    from mvmic.model.codec import MvmicCodec
    from mvmic.model.tasks.heads import standardise

    codec = MvmicCodec.load()
    planes = [standardise(codec.decode_coarse(stream)[0].float()) for _, stream in _streams(corpus_dir, False)
              if (stream.rows, stream.columns) == (512, 512)]
    stacked = torch.cat(planes)[..., :size, :size]
    return stacked.repeat((count + len(planes) - 1) // len(planes), 1, 1, 1)[:count].contiguous()


def heads_throughput(corpus_dir: Path, device: str, plan: Plan, deadline: float) -> dict:
    """frames/s of the heads per runtime, mode and batch size (module docstring)."""
    import onnxruntime
    import torch

    from mvmic.model.tasks.analysis import DEFAULT_HEADS
    from mvmic.model.tasks.runtime import OUTPUTS, OnnxHeads, load_heads_weights, onnx_path

    planes = _ll1_planes(corpus_dir, max(plan.batches), plan.plane)
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    model = onnx_path(DEFAULT_HEADS).read_bytes()
    torch_heads = load_heads_weights(DEFAULT_HEADS).to(device)
    ort_device = OnnxHeads(model, device)
    ort_cuda = "CUDAExecutionProvider" in ort_device.providers
    rows, skipped, not_verified = [], [], []

    def torch_resident(batch: torch.Tensor, autocast: bool = False) -> Callable[[], object]:
        resident = batch.to(device)

        def call() -> object:
            with torch.inference_mode(), torch.autocast("cuda", torch.float16, enabled=autocast):
                return torch_heads(resident)
        return call

    def torch_host(batch: torch.Tensor) -> Callable[[], object]:
        def call() -> object:  # as Analyzer.analyze_latent: CPU tensor in, CPU outputs out
            with torch.inference_mode():
                return torch_heads(batch.to(device)).to("cpu")
        return call

    def ort_resident(batch: torch.Tensor) -> Callable[[], object]:
        session, binding = ort_device.session, ort_device.session.io_binding()
        index = torch.device(device).index or 0
        binding.bind_ortvalue_input("planes", onnxruntime.OrtValue.ortvalue_from_numpy(batch.numpy(), "cuda", index))
        for name in OUTPUTS:
            binding.bind_output(name, "cuda", index)

        def call() -> object:
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()
        return call

    configurations: list[tuple[str, str, Callable[[torch.Tensor], Callable[[], object]], tuple[int, ...]]] = [
        ("torch", "host-to-host", torch_host, plan.batches),
        ("onnxruntime", "host-to-host", lambda batch: lambda: ort_device(batch), plan.batches)]
    if cuda:
        configurations += [("torch", "device-resident", torch_resident, plan.batches),
                           ("torch fp16 autocast", "device-resident", lambda b: torch_resident(b, True), plan.batches)]
        if ort_cuda:  # and the CPU provider beside it, for reference
            ort_cpu = OnnxHeads(model, "cpu")
            configurations += [("onnxruntime", "device-resident", ort_resident, plan.batches),
                               ("onnxruntime cpu", "host-to-host", lambda batch: lambda: ort_cpu(batch), (1, 8))]
        else:  # the host-to-host rows above are then the CPU provider's
            not_verified.append("ONNX Runtime CUDA provider throughput")
    for runtime, mode, make, batches in configurations:
        if runtime == "onnxruntime":
            runtime = f"onnxruntime {'cuda' if ort_cuda else 'cpu'}" if cuda else "onnxruntime cpu"
        for batch in batches:
            if time.monotonic() + 3 * plan.seconds_per_row > deadline:
                skipped.append(f"{runtime} {mode} batch {batch}: no time left")
                continue
            rows.append({"runtime": runtime, "mode": mode, "batch": batch,
                         **_rate(make(planes[:batch]), batch, plan.seconds_per_row, sync)})
            print(f"[gpu-check]   heads {runtime:<22} {mode:<16} batch {batch:>3}: "
                  f"{rows[-1]['frames_per_s']:>9.1f} frames/s", flush=True)
    fp32 = [row for row in rows if "fp16" not in row["runtime"]]
    best = max(fp32, key=lambda row: row["frames_per_s"], default=None)
    result = {"device": device, "plane": [plan.plane, plan.plane], "rows": rows, "skipped_rows": skipped,
              "ort_providers": ort_device.providers, "best_frames_per_s": best and best["frames_per_s"],
              "best": best, "goal_frames_per_s": GOAL_FRAMES_PER_S,
              "goal_met": bool(best and best["frames_per_s"] >= GOAL_FRAMES_PER_S) if cuda else None,
              "not_verified": not_verified}
    if cuda:
        result["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result


def codec_throughput(corpus_dir: Path, plan: Plan, deadline: float) -> dict:
    """frames/s of the codec's work on 512 x 512 CT frames on ``plan.threads`` threads (one codec, shared)."""
    from mvmic.model.bitstream import Bitstream
    from mvmic.model.codec import MvmicCodec
    from mvmic.model.quality import QUALITY_CODES
    from mvmic.pixels import read_dicom

    codec, code = MvmicCodec.load(), QUALITY_CODES[QUALITY]
    images = [read_dicom(corpus_dir / "images" / f"{frame_id}.dcm") for frame_id in FRAMES]
    images = [image for image in images if image.pixels.shape[1:] == (512, 512, 1)]
    streams = [codec.compress(image, code).to_bytes() for image in images]
    work: dict[str, Callable[[int], object]] = {
        "compress": lambda i: codec.compress(images[i % len(images)], code).to_bytes(),
        "decompress": lambda i: codec.decompress(Bitstream.from_bytes(streams[i % len(streams)])),
        "decode_coarse": lambda i: codec.decode_coarse(Bitstream.from_bytes(streams[i % len(streams)]))}
    rows, skipped = [], []
    for name, call in work.items():
        for threads in plan.threads:
            if time.monotonic() + plan.codec_seconds + 2 > deadline:
                skipped.append(f"{name} on {threads} threads: no time left")
                continue
            rows.append({"work": name, "threads": threads, **_threaded_rate(call, threads, plan.codec_seconds)})
            print(f"[gpu-check]   codec {name:<13} {threads:>2} threads: {rows[-1]['frames_per_s']:>8.1f} frames/s",
                  flush=True)
    for row in rows:
        single = next(r for r in rows if r["work"] == row["work"] and r["threads"] == 1)
        row["scaling"] = round(row["frames_per_s"] / (single["frames_per_s"] * row["threads"]), 3)
    return {"frame": [512, 512], "quality": QUALITY, "rows": rows, "skipped_rows": skipped}


def _threaded_rate(call: Callable[[int], object], threads: int, seconds: float) -> dict:
    """frames/s of ``threads`` threads each calling ``call`` back to back for ``seconds`` (after a warm-up)."""
    call(0)
    stop = time.perf_counter() + seconds

    def worker(offset: int) -> int:
        done = 0
        while time.perf_counter() < stop or done == 0:
            call(offset + done)
            done += 1
        return done

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        done = sum(pool.map(worker, range(threads)))
    elapsed = time.perf_counter() - started
    return {"frames": done, "frames_per_s": round(done / elapsed, 1)}


class Server:
    """`mvmic serve` with MVMIC_DEVICE=``device`` on a free port of 127.0.0.1, its log in OUT/uvicorn.log."""

    def __init__(self, out: Path, device: str) -> None:
        from mvmic.service.process import free_port

        self.url, self.log, self.started = f"http://127.0.0.1:{free_port()}", out / "uvicorn.log", time.monotonic()
        command = [sys.executable, "-m", "mvmic.cli", "serve", "--host", "127.0.0.1", "--port",
                   self.url.rsplit(":", 1)[1]]
        environment = {**os.environ, "MVMIC_DEVICE": device, "PYTHONUNBUFFERED": "1"}
        with self.log.open("wb") as output:
            self.process = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT,
                                            env=environment)

    def wait_ready(self, timeout: float) -> float:
        """Seconds from the start until /readyz answered 200; ServiceStartError (with the log) otherwise."""
        from mvmic.child_process import wait_until_answering
        from mvmic.service.process import ServiceStartError

        wait_until_answering(self.process, f"{self.url}/readyz", timeout, self.log, ServiceStartError,
                             lambda response: response.status_code == 200)
        return round(time.monotonic() - self.started, 1)

    def stop(self) -> None:
        from mvmic.child_process import stop

        if self.process.poll() is None:
            stop(self.process)


THROUGHPUT_S = 100.0  # of the budget, kept for the heads and codec throughput steps after the service step


def service_check(server: Server, corpus_dir: Path, out: Path, device: str, plan: Plan, deadline: float) -> dict:
    """mvmic.bench.service's load on the server's compress and analyze at ``plan.concurrency``, then its /metrics
    (OUT/metrics.txt)."""
    import asyncio

    import httpx

    from mvmic.bench.service import _load, _server_gauges

    url = server.url
    source = (corpus_dir / "images" / f"{SERVICE_IMAGE}.dcm").read_bytes()
    try:
        startup_s = server.wait_ready(max(10.0, deadline - time.monotonic() - 15))
        served = httpx.get(f"{url}/v1/models", timeout=30).json()
        stream = httpx.post(f"{url}/v1/compress", content=source, params={"quality": QUALITY}, timeout=120,
                            headers={"Content-Type": "application/dicom", "Accept": "application/octet-stream"})
        stream.raise_for_status()
        work = {"compress": (f"{url}/v1/compress?quality={QUALITY}", source, "application/dicom"),
                "analyze": (f"{url}/v1/analyze", stream.content, "application/octet-stream")}
        rows, skipped = [], []
        for route, (target, body, media_type) in work.items():
            for clients in plan.concurrency:
                if time.monotonic() + 15 > deadline:
                    skipped.append(f"{route} at concurrency {clients}: no time left")
                    continue
                rows.append({"route": route, "concurrency": clients, **asyncio.run(_load(target, body, media_type,
                                                                                      clients))})
                print(f"[gpu-check]   service {route:<8} concurrency {clients:>2}: "
                      f"{rows[-1]['requests_per_s']:.1f} requests/s, p50 {rows[-1]['p50_ms']:.0f} ms, "
                      f"p99 {rows[-1]['p99_ms']:.0f} ms", flush=True)
        metrics = httpx.get(f"{url}/metrics", timeout=30).text
        (out / "metrics.txt").write_text(metrics)
        gauges = _server_gauges(url)
    finally:
        server.stop()
    wrong_device = served.get("device") != device
    # mvmic.model.tasks.runtime.providers_for warns in the server's log when its ONNX Runtime lacks the CUDA provider
    cpu_provider = device != "cpu" and "has no CUDA provider" in server.log.read_text(errors="replace")
    return {"status": "fail" if wrong_device else "pass", "image": SERVICE_IMAGE, "startup_s": startup_s,
            "served_device": served.get("device"), "asked_device": device, "heads_on_onnx_cpu_provider": cpu_provider,
            "not_verified": ["the service's heads on the ONNX Runtime CUDA provider"] if cpu_provider else [],
            "workers": int(gauges.get("mvmic_model_workers", 0)),
            "torch_threads_per_worker": int(gauges.get("mvmic_model_torch_threads", 0)), "rows": rows,
            "skipped_rows": skipped, "metrics": summarise_metrics(metrics)}


def summarise_metrics(text: str) -> dict:
    """From Prometheus text: each histogram's count and mean by its labels, and the requests by status."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    requests: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        if name.startswith("mvmic_requests_total"):
            requests[name[len("mvmic_requests_total"):]] = float(value)
        for suffix, into in (("_sum", sums), ("_count", counts)):
            base, _, labels = name.partition("{")
            if base.endswith(suffix):
                into[base[: -len(suffix)] + (f"{{{labels}" if labels else "")] = float(value)
    histograms = {key: {"count": int(counts[key]), "mean": round(sums[key] / counts[key], 6) if counts[key] else None}
                  for key in sorted(counts) if key in sums}
    return {"histograms": histograms, "requests": requests}


# -- command line --------------------------------------------------------------------------------------

def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """`run`'s options, shared with `mvmic bench gpu`."""
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "results" / "gpu"),
                        help="where results.json goes (default: $OUT, else results/gpu)")
    parser.add_argument("--device", default="auto", help="auto (cuda:0 when torch sees a GPU), cuda, cuda:N or cpu")
    parser.add_argument("--dry-run", action="store_true",
                        help="small counts (batches 1 and 2, 1 and 2 threads, one client): a quick check of the "
                             "steps, on the CPU unless --device says otherwise")
    parser.add_argument("--corpus", type=Path, default=None,
                        help="folder with images/<frame>.dcm (default: data/gpu-check/corpus, else data/corpus)")
    parser.add_argument("--streams", type=Path, default=None,
                        help="streams made where the expected hashes were (default: data/gpu-check/streams)")
    parser.add_argument("--budget-s", type=float, default=300.0,
                        help="seconds the steps may take in all; a step that no longer fits is skipped "
                             "(default: %(default)s)")
    parser.add_argument("--no-service", dest="service", action="store_false", help="skip the service step")


def run_from_arguments(args: argparse.Namespace) -> int:
    device = "cpu" if args.dry_run and args.device == "auto" else args.device
    document = run_gpu_check(args.out, device, args.dry_run, args.corpus, args.streams, args.budget_s, args.service)
    summary = document["summary"]
    print(f"[gpu-check] {args.out / 'results.json'}: ok {summary['ok']}, failed {summary['failed'] or 'none'}, "
          f"skipped {list(summary['skipped']) or 'none'}, heads best {summary['heads_best_frames_per_s']} frames/s")
    return 0 if summary["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mvmic.bench.gpu", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    expected = commands.add_parser("expected", help=f"write {EXPECTED.relative_to(ROOT)} from this machine's decoding")
    expected.add_argument("--corpus", type=Path, default=ROOT / "data" / "corpus")
    expected.add_argument("--out", type=Path, default=EXPECTED)
    ready = commands.add_parser("prepare", help="fill data/gpu-check/ for scripts/gpu-check (needs PyPI)")
    ready.add_argument("--corpus", type=Path, default=ROOT / "data" / "corpus")
    ready.add_argument("--out", type=Path, default=PREPARED)
    ready.add_argument("--python-version", default="3.12", help="the device's Python (default: %(default)s)")
    ready.add_argument("--no-wheels", dest="wheels", action="store_false")
    add_run_arguments(commands.add_parser("run", help="the check (scripts/gpu-check runs it on the device)"))
    args = parser.parse_args(argv)
    if args.command == "expected":
        document = write_expected(args.corpus, args.out)
        print(f"{args.out}: {len(document['frames'])} frames, weights {document['weights']}")
        return 0
    if args.command == "prepare":
        summary = prepare(args.corpus, args.out, args.python_version, args.wheels)
        print(json.dumps(summary, indent=1))
        return 0
    return run_from_arguments(args)


if __name__ == "__main__":
    sys.exit(main())
