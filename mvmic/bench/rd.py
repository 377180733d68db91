"""`mvmic bench rd`: every registered codec at every operating point on a corpus split.

    manifest (split) --> frames --(process pool)--> encode / decode each point
        --> Measurement rows --> summary + BD-rate vs JPEG 2000 --> rd.json, rd.md, rd.png

Each frame is coded at its real BitsStored and signedness; PSNR uses the native peak.
A lossless point that does not reproduce the frame exactly, or a near-lossless point with an
error above its bound, fails the run.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mvmic.bench.codecs import Codec, registered_codecs
from mvmic.bench.codecs.mvmicnet import (
    MvmicNet,
    MvmicNetLossless,
    measure_weights,
    measured_weights,
    record_test_metrics,
)
from mvmic.bench.report import bd_against_reference, bounded_ratios, markdown_report, plot_rd, summarize
from mvmic.corpus.manifest import CorpusEntry, Manifest
from mvmic.model.rate_distortion import bits_per_pixel, max_abs_error, psnr


@dataclass(frozen=True)
class Measurement:
    image: str  # corpus entry id
    frame: int
    modality: str
    codec: str
    point: str
    lossless: bool
    max_error: int | None  # the bound a near-lossless point promises
    bpp: float
    psnr: float  # inf when exact
    max_abs_error: int
    encode_ms: float
    decode_ms: float


@dataclass(frozen=True)
class FrameTask:
    corpus_dir: Path
    entry: CorpusEntry
    frame: int
    codec_names: tuple[str, ...]


def run_rd_benchmark(corpus_dir: Path, split: str, out_dir: Path, codec_names: list[str] | None = None,
                     jobs: int | None = None, command: str = "", mvmicnet_weights: Path | None = None,
                     ) -> list[Measurement]:
    """Measure, write rd.json/md/png to ``out_dir``; on the test split, record MVMICNet's rows and
    ``command`` (the command line that ran this) in the manifests of the measured weights (``mvmicnet_weights``,
    default the shipped ones; FileNotFoundError if absent)."""
    if mvmicnet_weights is not None:
        measure_weights(mvmicnet_weights)
    codecs = registered_codecs(codec_names)
    entries = Manifest.load(corpus_dir / "manifest.json").select(split)
    if not entries:
        raise ValueError(f"the corpus at {corpus_dir} has no {split!r} images")
    tasks = [FrameTask(corpus_dir, entry, frame, tuple(c.name for c in codecs))
             for entry in entries for frame in range(entry.frames)]
    started = time.perf_counter()
    measurements = _run(tasks, jobs or os.cpu_count() or 1)
    wall_seconds = time.perf_counter() - started
    _write_outputs(out_dir, split, codecs, measurements, wall_seconds, command)
    violations = [m for m in measurements if m.max_abs_error > (0 if m.lossless else _no_bound(m.max_error))]
    if violations:
        names = ", ".join(sorted({f"{m.codec} {m.point} on {m.image}" for m in violations}))
        raise RuntimeError(f"lossless or near-lossless points broke their error bound: {names}")
    return measurements


def _run(tasks: list[FrameTask], jobs: int) -> list[Measurement]:
    if jobs == 1:
        return [m for task in tasks for m in measure_frame(task)]
    # Largest frames first, so that no worker is left with a big one at the end.
    tasks = sorted(tasks, key=lambda t: -t.entry.rows * t.entry.columns)
    with ProcessPoolExecutor(max_workers=jobs, initializer=_start_worker, initargs=(measured_weights(),)) as pool:
        return [m for rows in pool.map(measure_frame, tasks) for m in rows]


def _start_worker(mvmicnet_weights: Path) -> None:
    measure_weights(mvmicnet_weights)
    # The pool already fills the cores; torch threads on top of it oversubscribe them,
    # which slowed MVMICNet here several times over.
    torch.set_num_threads(1)


def measure_frame(task: FrameTask) -> list[Measurement]:
    """Encode and decode one frame at every point of every codec."""
    image = task.entry.read(task.corpus_dir)
    frame, fmt = image.frame(task.frame), image.format
    rows = []
    for codec in registered_codecs(list(task.codec_names)):
        for point in codec.points:
            started = time.perf_counter()
            encoded = codec.encode(frame, fmt, point)
            encoded_at = time.perf_counter()
            decoded = codec.decode(encoded, fmt, point)
            decoded_at = time.perf_counter()
            _check_shape(codec, frame, decoded)
            rows.append(Measurement(
                image=task.entry.id, frame=task.frame, modality=task.entry.modality,
                codec=codec.name, point=point.label, lossless=point.lossless, max_error=point.max_error,
                bpp=bits_per_pixel(encoded, frame), psnr=psnr(frame, decoded, fmt.peak),
                max_abs_error=max_abs_error(frame, decoded),
                encode_ms=1000 * (encoded_at - started), decode_ms=1000 * (decoded_at - encoded_at),
            ))
    return rows


def _no_bound(max_error: int | None) -> float:
    return float("inf") if max_error is None else max_error


def _check_shape(codec: Codec, frame, decoded) -> None:
    if decoded.shape != frame.shape or decoded.dtype != frame.dtype:
        raise RuntimeError(f"{codec.name} decoded {decoded.shape} {decoded.dtype}, expected {frame.shape} {frame.dtype}")


def _write_outputs(out_dir: Path, split: str, codecs: list[Codec], measurements: list[Measurement],
                   wall_seconds: float, command: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(codecs, measurements)
    bd = bd_against_reference(codecs, measurements)
    ratios = bounded_ratios(measurements)
    frames = len({(m.image, m.frame) for m in measurements})
    report = markdown_report(split, frames, summary, bd, wall_seconds, ratios)
    (out_dir / "rd.md").write_text(report)
    plot_rd(codecs, summary, out_dir / "rd.png", title=f"{split} split, {frames} frames")
    payload = {"split": split, "frames": frames, "wall_seconds": round(wall_seconds, 2),
               "summary": summary, "bd_vs_reference": bd, "exact_vs_reference": ratios,
               "measurements": [_json_safe(asdict(m)) for m in measurements]}
    (out_dir / "rd.json").write_text(json.dumps(payload, indent=1) + "\n")
    print(report)
    print(f"written: {out_dir / 'rd.json'}, {out_dir / 'rd.md'}, {out_dir / 'rd.png'}")
    if split == "test" and any(codec.name in (MvmicNet.name, MvmicNetLossless.name) for codec in codecs):
        for manifest in record_test_metrics(summary, bd, command):
            print(f"test metrics recorded in {manifest}")


def _json_safe(row: dict) -> dict:
    """JSON has no infinity: an exact reconstruction's PSNR is written as null."""
    return {key: (None if isinstance(value, float) and value == float("inf") else value) for key, value in row.items()}
