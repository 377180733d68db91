"""`mvmic bench tasks`: lesion segmentation and detection per rate, from the bitstream and from pixels.

    test split frame --synthetic lesions (fixed seed per frame)--> case   | real: frames with an expert lesion
      per quality: MVMICNet .mvm --Analyzer (partial decoding, heads)-----> scores "MVMICNet heads"
                               --decode--> pixels --PixelReference---------> scores "pixel ref on MVMICNet"
                   JPEG 2000 at the same bits per pixel --decode--> pixels --PixelReference --> "pixel ref on JPEG 2000"
      once: uncompressed pixels --PixelReference-------------------------> "pixel ref, uncompressed"
    BD-rate at equal Dice: MVMICNet heads against the JPEG 2000 route (operational points of each curve)
    Dice of the last stage against the first at equal rate; middle quality's Dice against the uncompressed reference
    time per frame at the middle quality: analyse the bitstream vs decode then analyse pixels

Scores are pooled over the set (model.tasks.evaluation). Tables in tasks.md, rows in tasks.json.
"""

from __future__ import annotations

import io
import json
import statistics
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.bdrate import bd_rate
from bench.codecs import CODECS, OperatingPoint, registered_codecs
from model.codec import QUALITY_CODES, MvmicCodec, normalised_planes
from model.tasks.analysis import Analyzer
from model.tasks.evaluation import TaskScores
from model.tasks.heads import PixelReference
from model.tasks.joint import STAGE2_CODEC, STAGE2_HEADS, STAGE3_CODEC, STAGE3_HEADS
from model.tasks.lesions import boxes_of, insert_lesions
from model.tasks.objectives import decode_detections, segmentation_masks
from mvmic.corpus.manifest import Manifest
from mvmic.metrics import bits_per_pixel
from mvmic.pixels import PixelFormat

QUALITIES = (1, 2, 4, 6, 8)
MIDDLE_QUALITY = 4
DEFAULT_PIXEL_REFERENCE = Path(__file__).resolve().parents[1] / "weights" / "pixel-reference.pt"


@dataclass
class TaskCase:
    id: str
    frame: np.ndarray  # (rows, columns) stored integers, lesions included
    format: PixelFormat
    mask: np.ndarray
    boxes: np.ndarray


def synthetic_cases(corpus_dir: Path, split: str) -> list[TaskCase]:
    """Every one-sample frame of the split with synthetic lesions, the same on every run. A real
    lesion of the frame stays a lesion to find: finding it is no false positive."""
    cases = []
    for entry in Manifest.load(corpus_dir / "manifest.json").select(split):
        image = entry.read(corpus_dir)
        if image.format.samples_per_pixel != 1:
            continue
        real = np.load(corpus_dir / entry.label)["mask"] if entry.label else np.zeros(image.pixels.shape[1:3], bool)
        for frame in range(image.frames):
            generator = np.random.default_rng(zlib.crc32(f"{entry.id}/{frame}".encode()))
            lesions = insert_lesions(image.pixels[frame, ..., 0], generator)
            stored = np.clip(np.round(lesions.image), image.format.min_value, image.format.max_value)
            cases.append(TaskCase(f"{entry.id}/{frame}", stored.astype(image.format.dtype), image.format,
                                  lesions.mask | real, np.concatenate([lesions.boxes, boxes_of(real)])))
    return cases


def real_cases(corpus_dir: Path, split: str) -> list[TaskCase]:
    """Frames of the split whose expert mask holds a lesion, unmodified."""
    cases = []
    for entry in Manifest.load(corpus_dir / "manifest.json").select(split):
        if not entry.label:
            continue
        mask = np.load(corpus_dir / entry.label)["mask"]
        if mask.any():
            image = entry.read(corpus_dir)
            cases.append(TaskCase(entry.id, image.pixels[0, ..., 0], image.format, mask, boxes_of(mask)))
    return cases


class PixelAnalyzer:
    """The pixel-domain reference applied to stored integers, as the heads' benchmark needs it."""

    def __init__(self, path: Path = DEFAULT_PIXEL_REFERENCE) -> None:
        self.network = PixelReference()
        self.network.load_state_dict(torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True))
        self.network.eval()

    @torch.no_grad()
    def score(self, frame: np.ndarray, fmt: PixelFormat, case: TaskCase, scores: TaskScores) -> None:
        plane = torch.from_numpy(normalised_planes(frame, fmt)[0].astype(np.float32))[None, None]
        outputs = self.network(plane)
        found = decode_detections(outputs, frame.shape)[0]
        scores.add(segmentation_masks(outputs, frame.shape)[0], case.mask, found.boxes, found.scores, case.boxes)


def default_stages() -> dict[str, tuple[Path, Path]]:
    """(codec weights, heads weights) of each training stage that exists."""
    stages = {"stage 2": (STAGE2_CODEC, STAGE2_HEADS), "stage 3": (STAGE3_CODEC, STAGE3_HEADS)}
    return {name: paths for name, paths in stages.items() if all(p.exists() for p in paths)}


def run_tasks_benchmark(corpus_dir: Path, out_dir: Path, stages: dict[str, tuple[Path, Path]] | None = None,
                        pixel_reference: Path = DEFAULT_PIXEL_REFERENCE, split: str = "test", every: int = 1) -> dict:
    registered_codecs(["JPEG 2000"])
    analyzers = {name: Analyzer.load(MvmicCodec.load(codec), heads)
                 for name, (codec, heads) in (stages or default_stages()).items()}
    pixels = PixelAnalyzer(pixel_reference)
    result = {"split": split, "qualities": list(QUALITIES), "sets": {}, "every": every,
              "weights": {name: [str(p) for p in paths] for name, paths in (stages or default_stages()).items()}}
    synthetic = synthetic_cases(corpus_dir, split)[::every]  # every: a quicker run on a subset
    for name, cases in (("synthetic", synthetic), ("real", real_cases(corpus_dir, split))):
        result["sets"][name] = _run_set(cases, analyzers, pixels)
        print(f"{name}: {len(cases)} frames done", flush=True)
    served = list(analyzers.values())[-1]
    result["timing"] = _timing(synthetic[:: max(1, 8 // every)], served, pixels)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tasks.json").write_text(json.dumps(result, indent=1) + "\n")
    (out_dir / "tasks.md").write_text(markdown(result) + "\n")
    print(markdown(result))
    return result


def _run_set(cases: list[TaskCase], analyzers: dict[str, Analyzer], pixels: PixelAnalyzer) -> dict:
    """Scores per quality: each stage's heads on its own bitstreams; the pixel reference on the
    last stage's decoded pixels and on JPEG 2000 at the last stage's rate."""
    uncompressed = TaskScores()
    for case in cases:
        pixels.score(case.frame, case.format, case, uncompressed)
    served = list(analyzers)[-1]
    jpeg2000 = CODECS["JPEG 2000"]
    rows = []
    for quality in QUALITIES:
        stage_scores = {name: TaskScores() for name in analyzers}
        stage_rates: dict[str, list[float]] = {name: [] for name in analyzers}
        on_mvmic, on_jpeg2000 = TaskScores(), TaskScores()
        for case in cases:
            streams = {}
            for name, analyzer in analyzers.items():
                streams[name] = analyzer.codec.compress_pixels(case.frame[None, ..., None], case.format,
                                                               QUALITY_CODES[quality])
                stage_rates[name].append(bits_per_pixel(streams[name].to_bytes(), case.frame))
                analysis = analyzer.analyze(streams[name], min_score=0.0)[0]
                stage_scores[name].add(analysis.mask, case.mask, analysis.boxes, analysis.scores, case.boxes)
            decoded = analyzers[served].codec.decompress(streams[served])[0, ..., 0]
            pixels.score(decoded, case.format, case, on_mvmic)
            point = OperatingPoint(f"{stage_rates[served][-1]:.3f} bpp", param=stage_rates[served][-1])
            decoded = jpeg2000.decode(jpeg2000.encode(case.frame, case.format, point), case.format, point)
            pixels.score(decoded, case.format, case, on_jpeg2000)
        rows.append({"quality": quality,
                     "stages": {name: {"bpp": float(np.mean(stage_rates[name])), **stage_scores[name].as_dict()}
                                for name in analyzers},
                     "pixel_ref_on_mvmicnet": on_mvmic.as_dict(), "pixel_ref_on_jpeg2000": on_jpeg2000.as_dict()})
    reference = uncompressed.as_dict()
    middle = next(r for r in rows if r["quality"] == MIDDLE_QUALITY)
    result = {"frames": len(cases), "pixel_ref_uncompressed": reference, "rows": rows,
              "bd_rate_dice_vs_jpeg2000": {name: _bd_rate_at_equal_dice(rows, name) for name in analyzers},
              "middle_rate_dice_vs_uncompressed_reference": {
                  name: middle["stages"][name]["dice"] / max(reference["dice"], 1e-9) for name in analyzers}}
    if len(analyzers) > 1:
        first, last = next(iter(analyzers)), served
        result["equal_rate"] = {"stages": [first, last], "rows": _dice_at_equal_rate(rows, first, last)}
    return result


def _operational(rates: list[float], dice: list[float]) -> tuple[list[float], list[float]]:
    """The points of a curve that beat every cheaper point: the best Dice reachable at each rate.
    A rate-Dice curve is not monotone (the heads may do slightly worse at a higher rate), and the
    cubic fits of BD-rate need a curve that is."""
    kept_rates, kept_dice = [], []
    for rate, value in sorted(zip(rates, dice, strict=True)):
        if not kept_dice or value > kept_dice[-1]:
            kept_rates.append(rate)
            kept_dice.append(value)
    return kept_rates, kept_dice


def _bd_rate_at_equal_dice(rows: list[dict], stage: str) -> float | str:
    """Rate change of the stage's heads against the JPEG 2000 route at equal Dice (JPEG 2000 ran at
    the last stage's rates), both curves reduced to their operational points."""
    served = list(rows[0]["stages"])[-1]
    reference = _operational([r["stages"][served]["bpp"] for r in rows], [r["pixel_ref_on_jpeg2000"]["dice"] for r in rows])
    test = _operational([r["stages"][stage]["bpp"] for r in rows], [r["stages"][stage]["dice"] for r in rows])
    try:
        return bd_rate(*reference, *test, quality_name="Dice")
    except ValueError as exc:
        return f"n/a: {exc}"


def _dice_at_equal_rate(rows: list[dict], reference: str, test: str) -> list[dict]:
    """At each of the test stage's points, the reference stage's Dice at the same bits per pixel,
    interpolated linearly in log rate between its two nearest points (None outside its range)."""
    log_rates = np.log([r["stages"][reference]["bpp"] for r in rows])
    dice = np.array([r["stages"][reference]["dice"] for r in rows])
    order = np.argsort(log_rates)
    compared = []
    for row in rows:
        rate, value = row["stages"][test]["bpp"], row["stages"][test]["dice"]
        inside = log_rates.min() <= np.log(rate) <= log_rates.max()
        at_rate = float(np.interp(np.log(rate), log_rates[order], dice[order])) if inside else None
        compared.append({"quality": row["quality"], "bpp": rate, "dice": value, "reference_dice": at_rate})
    return compared


def _timing(cases: list[TaskCase], analyzer: Analyzer, pixels: PixelAnalyzer) -> dict:
    from_bitstream, from_pixels = [], []
    for case in cases:
        stream = analyzer.codec.compress_pixels(case.frame[None, ..., None], case.format, QUALITY_CODES[MIDDLE_QUALITY])
        started = time.perf_counter()
        analyzer.analyze(stream)
        from_bitstream.append(time.perf_counter() - started)
        started = time.perf_counter()
        pixels.score(analyzer.codec.decompress(stream)[0, ..., 0], case.format, case, TaskScores())
        from_pixels.append(time.perf_counter() - started)
    analyse_ms, decode_ms = 1000 * statistics.median(from_bitstream), 1000 * statistics.median(from_pixels)
    return {"frames": len(cases), "quality": MIDDLE_QUALITY, "analyse_bitstream_ms": analyse_ms,
            "decode_then_analyse_ms": decode_ms, "speedup": decode_ms / analyse_ms}


def markdown(result: dict) -> str:
    lines = [f"# Task benchmark ({result['split']} split)"]
    for name, data in result["sets"].items():
        ref = data["pixel_ref_uncompressed"]
        stages = list(data["rows"][0]["stages"])
        header = ["quality"] + [f"{stage} {column}" for stage in stages for column in ("bpp", "Dice", "IoU", "AP50")]
        header += ["pixel ref on MVMICNet Dice", "pixel ref on JPEG 2000 Dice", "pixel ref on JPEG 2000 AP50"]
        lines += ["", f"## {name} lesions: {data['frames']} frames, {ref['true_boxes']} lesions", "",
                  (f"Pixel reference on uncompressed images: Dice {ref['dice']:.3f}, IoU {ref['iou']:.3f}, "
                   f"AP50 {ref['ap50']:.3f}"), "",
                  "| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
        for row in data["rows"]:
            cells = [str(row["quality"])]
            for stage in stages:
                scores = row["stages"][stage]
                cells += [f"{scores['bpp']:.3f}", f"{scores['dice']:.3f}", f"{scores['iou']:.3f}", f"{scores['ap50']:.3f}"]
            cells += [f"{row['pixel_ref_on_mvmicnet']['dice']:.3f}", f"{row['pixel_ref_on_jpeg2000']['dice']:.3f}",
                      f"{row['pixel_ref_on_jpeg2000']['ap50']:.3f}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        for stage, bd in data["bd_rate_dice_vs_jpeg2000"].items():
            lines.append(f"BD-rate at equal Dice, {stage} heads vs the pixel reference on JPEG 2000: "
                         + (f"{bd:+.1f} %" if isinstance(bd, float) else bd))
        for stage, ratio in data["middle_rate_dice_vs_uncompressed_reference"].items():
            lines.append(f"Quality {MIDDLE_QUALITY}, {stage} heads: Dice {ratio:.2f}x the pixel reference's on "
                         "uncompressed images")
        if "equal_rate" in data:
            reference, test = data["equal_rate"]["stages"]
            compared = [f"q{c['quality']} {c['dice']:.3f} vs "
                        + (f"{c['reference_dice']:.3f}" if c["reference_dice"] is not None else "n/a (outside its rates)")
                        for c in data["equal_rate"]["rows"]]
            lines.append(f"Dice at equal rate, {test} vs {reference} (log-rate interpolation): " + "; ".join(compared))
    timing = result["timing"]
    lines += ["", (f"Time per frame (quality {timing['quality']}, median of {timing['frames']}): analyse the "
                   f"bitstream {timing['analyse_bitstream_ms']:.0f} ms, decode then analyse pixels "
                   f"{timing['decode_then_analyse_ms']:.0f} ms ({timing['speedup']:.1f}x)")]
    return "\n".join(lines)
