"""`mvmic bench tasks`: both task sets per rate, from the bitstream and from pixels.

    task sets of the test split:
      synthetic: one-sample frames with synthetic lesions (fixed seed per frame)  -> lesion Dice/IoU, AP50, mAP
      real:      frames with an expert lesion, unmodified                         -> lesion scores
      organs:    frames with an organ map (TotalSegmentator's output), unmodified  -> Dice/IoU per organ, AP50, mAP
    per quality: MVMICNet .mvm --Analyzer (partial decoding, heads)-----> scores of each stage's heads (int8 as
                 served on a CPU; the last stage's float heads beside them)
                             --decode--> pixels --PixelReference---------> scores "pixel ref on MVMICNet"
                 JPEG 2000 at the same bits per pixel --decode--> pixels --PixelReference --> "pixel ref on JPEG 2000"
    once: uncompressed pixels --PixelReference-------------------------> "pixel ref, uncompressed"
    BD-rate at equal Dice (lesion Dice; mean organ Dice): the heads against the JPEG 2000 route
    Dice of the last stage against the first at equal rate; middle quality's Dice against the uncompressed reference
    time per frame at the middle quality: analyse the bitstream vs decode then analyse pixels
    examples.png: a few frames with truth and the served heads' masks and boxes at the middle quality

Scores are pooled over each set (mvmic.model.tasks.evaluation). Tables in tasks.md, rows in tasks.json.
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

from mvmic.bench.bdrate import bd_rate
from mvmic.bench.codecs import CODECS, OperatingPoint, registered_codecs
from mvmic.corpus.manifest import Manifest
from mvmic.model.codec import MvmicCodec
from mvmic.model.colour import normalised_planes
from mvmic.model.quality import QUALITY_CODES
from mvmic.model.rate_distortion import bits_per_pixel
from mvmic.model.tasks.analysis import Analyzer, FrameAnalysis
from mvmic.model.tasks.evaluation import TaskScores
from mvmic.model.tasks.heads import PixelReference, standardise
from mvmic.model.tasks.lesions import boxes_of, insert_lesions
from mvmic.model.tasks.organs import ORGAN_CLASSES, organ_boxes
from mvmic.model.tasks.outputs import Detections, decode_detections, organ_maps, segmentation_masks
from mvmic.paths import WEIGHTS_DIR
from mvmic.pixels import PixelFormat
from mvmic.training.stage3_joint import STAGE2_CODEC, STAGE2_HEADS, STAGE3_CODEC, STAGE3_HEADS

QUALITIES = (1, 2, 4, 6, 8)
MIDDLE_QUALITY = 4
DEFAULT_PIXEL_REFERENCE = WEIGHTS_DIR / "pixel-reference.pt"
SETS = ("synthetic", "real", "organs")
KEY_SCORE = {"synthetic": "lesion Dice", "real": "lesion Dice", "organs": "mean organ Dice"}


@dataclass
class TaskCase:
    id: str
    frame: np.ndarray  # (rows, columns) stored integers, lesions included
    format: PixelFormat
    mask: np.ndarray  # (rows, columns) bool, lesions
    organs: np.ndarray | None  # (rows, columns) uint8 organ map, None where the frame has none
    boxes: np.ndarray  # (n, 5) x0 y0 x1 y1 class (mvmic.model.tasks.heads.DETECTION_CLASSES)


def key_score(scores: dict, task_set: str) -> float:
    """The score BD-rate and the stage comparisons use: lesion Dice, or the mean organ Dice."""
    return scores["mean_organ_dice"] if task_set == "organs" else scores["lesion"]["dice"]


def _case(case_id: str, frame: np.ndarray, fmt: PixelFormat, mask: np.ndarray, lesion_boxes: np.ndarray,
          organs: np.ndarray | None) -> TaskCase:
    boxes = np.column_stack([lesion_boxes.reshape(-1, 4), np.zeros(len(lesion_boxes))])
    if organs is not None:
        boxes = np.concatenate([boxes, organ_boxes(organs)])
    return TaskCase(case_id, frame, fmt, mask, organs, boxes)


def synthetic_cases(corpus_dir: Path, split: str) -> list[TaskCase]:
    """Every one-sample frame of the split with synthetic lesions, the same on every run. A real
    lesion of the frame stays a lesion to find: finding it is no false positive. Organs are not
    scored here (the lesions change the organs' appearance): the organ set is unmodified frames."""
    cases = []
    for entry in Manifest.load(corpus_dir / "manifest.json").select(split):
        image = entry.read(corpus_dir)
        if image.format.samples_per_pixel != 1:
            continue
        real = entry.labels(corpus_dir).lesion
        for frame in range(image.frames):
            generator = np.random.default_rng(zlib.crc32(f"{entry.id}/{frame}".encode()))
            lesions = insert_lesions(image.pixels[frame, ..., 0], generator)
            stored = np.clip(np.round(lesions.image), image.format.min_value, image.format.max_value)
            cases.append(_case(f"{entry.id}/{frame}", stored.astype(image.format.dtype), image.format,
                               lesions.mask | real, np.concatenate([lesions.boxes, boxes_of(real)]), None))
    return cases


def real_cases(corpus_dir: Path, split: str) -> list[TaskCase]:
    """Frames of the split whose expert mask holds a lesion, unmodified."""
    cases = []
    for entry in Manifest.load(corpus_dir / "manifest.json").select(split):
        mask = entry.labels(corpus_dir).lesion
        if mask.any():
            image = entry.read(corpus_dir)
            cases.append(_case(entry.id, image.pixels[0, ..., 0], image.format, mask, boxes_of(mask), None))
    return cases


def organ_cases(corpus_dir: Path, split: str) -> list[TaskCase]:
    """Frames of the split with an organ map, unmodified (no lesion in them is known)."""
    cases = []
    for entry in Manifest.load(corpus_dir / "manifest.json").select(split):
        organs = entry.labels(corpus_dir).organs
        if organs is not None:
            image = entry.read(corpus_dir)
            cases.append(_case(entry.id, image.pixels[0, ..., 0], image.format, np.zeros(organs.shape, bool),
                               np.zeros((0, 4)), organs))
    return cases


def add_analysis(scores: TaskScores, case: TaskCase, analysis: FrameAnalysis) -> None:
    scores.add_frame(analysis.mask, case.mask, analysis.organs, case.organs,
                     Detections(analysis.boxes, analysis.scores, analysis.classes), case.boxes)


class PixelAnalyzer:
    """The pixel-domain reference applied to stored integers, as the heads' benchmark needs it."""

    def __init__(self, path: Path = DEFAULT_PIXEL_REFERENCE) -> None:
        self.network = PixelReference()
        self.network.load_state_dict(torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True))
        self.network.eval()

    @torch.no_grad()
    def analyse(self, frame: np.ndarray, fmt: PixelFormat) -> FrameAnalysis:
        plane = torch.from_numpy(normalised_planes(frame, fmt)[0].astype(np.float32))[None, None]
        outputs = self.network(standardise(plane))
        found = decode_detections(outputs, frame.shape)[0]
        return FrameAnalysis(0, found.boxes, found.scores, found.classes, segmentation_masks(outputs, frame.shape)[0],
                             organ_maps(outputs, frame.shape)[0])

    def score(self, frame: np.ndarray, fmt: PixelFormat, case: TaskCase, scores: TaskScores) -> None:
        add_analysis(scores, case, self.analyse(frame, fmt))


def default_stages() -> dict[str, tuple[Path, Path]]:
    """(codec weights, heads weights) of each training stage that exists."""
    stages = {"stage 2": (STAGE2_CODEC, STAGE2_HEADS), "stage 3": (STAGE3_CODEC, STAGE3_HEADS)}
    return {name: paths for name, paths in stages.items() if all(p.exists() for p in paths)}


def stage_analyzers(stages: dict[str, tuple[Path, Path]]) -> dict[str, Analyzer]:
    """Each stage's heads as the service runs them (runtime "auto": int8 on a CPU where they were exported so);
    the last stage's also in float, as "NAME float" before it, when it runs in int8: what quantisation costs."""
    analyzers = {}
    for index, (name, (codec, heads)) in enumerate(stages.items()):
        served = Analyzer.load(MvmicCodec.load(codec), heads)
        if index == len(stages) - 1 and served.runtime == "onnx-int8":
            analyzers[f"{name} float"] = Analyzer.load(served.codec, heads, runtime="onnx")
        analyzers[name] = served
    return analyzers


def run_tasks_benchmark(corpus_dir: Path, out_dir: Path, stages: dict[str, tuple[Path, Path]] | None = None,
                        pixel_reference: Path = DEFAULT_PIXEL_REFERENCE, split: str = "test", every: int = 1) -> dict:
    registered_codecs(["JPEG 2000"])
    analyzers = stage_analyzers(stages or default_stages())
    pixels = PixelAnalyzer(pixel_reference)
    result = {"split": split, "qualities": list(QUALITIES), "sets": {}, "every": every,
              "organ_labels": "TotalSegmentator's output, not expert labels", "organ_classes": list(ORGAN_CLASSES),
              "weights": {name: [str(p) for p in paths] for name, paths in (stages or default_stages()).items()},
              "runtimes": {name: analyzer.runtime for name, analyzer in analyzers.items()}}
    synthetic = synthetic_cases(corpus_dir, split)[::every]  # every: a quicker run on a subset
    sets = {"synthetic": synthetic, "real": real_cases(corpus_dir, split), "organs": organ_cases(corpus_dir, split)}
    for name, cases in sets.items():
        result["sets"][name] = _run_set(name, cases, analyzers, pixels)
        print(f"{name}: {len(cases)} frames done", flush=True)
    served = list(analyzers.values())[-1]
    result["timing"] = _timing(synthetic[:: max(1, 8 // every)], served, pixels)
    out_dir.mkdir(parents=True, exist_ok=True)
    _examples(sets, served, out_dir / "examples.png")
    (out_dir / "tasks.json").write_text(json.dumps(result, indent=1) + "\n")
    (out_dir / "tasks.md").write_text(markdown(result) + "\n")
    print(markdown(result))
    return result


def _run_set(task_set: str, cases: list[TaskCase], analyzers: dict[str, Analyzer], pixels: PixelAnalyzer) -> dict:
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
                add_analysis(stage_scores[name], case, analyzer.analyze(streams[name], min_score=0.0)[0])
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
    result = {"frames": len(cases), "key_score": KEY_SCORE[task_set], "pixel_ref_uncompressed": reference, "rows": rows,
              "bd_rate_vs_jpeg2000": {name: _bd_rate_at_equal_score(rows, name, task_set) for name in analyzers},
              "middle_rate_vs_uncompressed_reference": {
                  name: key_score(middle["stages"][name], task_set) / max(key_score(reference, task_set), 1e-9)
                  for name in analyzers}}
    if len(analyzers) > 1:
        first, last = next(iter(analyzers)), served
        result["equal_rate"] = {"stages": [first, last], "rows": _score_at_equal_rate(rows, first, last, task_set)}
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


def _bd_rate_at_equal_score(rows: list[dict], stage: str, task_set: str) -> float | str:
    """Rate change of the stage's heads against the JPEG 2000 route at an equal key score (JPEG 2000 ran
    at the last stage's rates), both curves reduced to their operational points."""
    served = list(rows[0]["stages"])[-1]
    reference = _operational([r["stages"][served]["bpp"] for r in rows],
                             [key_score(r["pixel_ref_on_jpeg2000"], task_set) for r in rows])
    test = _operational([r["stages"][stage]["bpp"] for r in rows], [key_score(r["stages"][stage], task_set) for r in rows])
    try:
        return bd_rate(*reference, *test, quality_name=KEY_SCORE[task_set], fit="pchip")
    except ValueError as exc:
        return f"n/a: {exc}"


def _score_at_equal_rate(rows: list[dict], reference: str, test: str, task_set: str) -> list[dict]:
    """At each of the test stage's points, the reference stage's key score at the same bits per pixel,
    interpolated linearly in log rate between its two nearest points (None outside its range)."""
    log_rates = np.log([r["stages"][reference]["bpp"] for r in rows])
    scores = np.array([key_score(r["stages"][reference], task_set) for r in rows])
    order = np.argsort(log_rates)
    compared = []
    for row in rows:
        rate, value = row["stages"][test]["bpp"], key_score(row["stages"][test], task_set)
        inside = log_rates.min() <= np.log(rate) <= log_rates.max()
        at_rate = float(np.interp(np.log(rate), log_rates[order], scores[order])) if inside else None
        compared.append({"quality": row["quality"], "bpp": rate, "score": value, "reference_score": at_rate})
    return compared


def _timing(cases: list[TaskCase], analyzer: Analyzer, pixels: PixelAnalyzer) -> dict:
    from_bitstream, from_pixels = [], []
    for case in cases:
        stream = analyzer.codec.compress_pixels(case.frame[None, ..., None], case.format, QUALITY_CODES[MIDDLE_QUALITY])
        started = time.perf_counter()
        analyzer.analyze(stream)
        from_bitstream.append(time.perf_counter() - started)
        started = time.perf_counter()
        pixels.analyse(analyzer.codec.decompress(stream)[0, ..., 0], case.format)  # no scoring: as analyze()
        from_pixels.append(time.perf_counter() - started)
    analyse_ms, decode_ms = 1000 * statistics.median(from_bitstream), 1000 * statistics.median(from_pixels)
    return {"frames": len(cases), "quality": MIDDLE_QUALITY, "analyse_bitstream_ms": analyse_ms,
            "decode_then_analyse_ms": decode_ms, "speedup": decode_ms / analyse_ms}


def _examples(sets: dict[str, list[TaskCase]], analyzer: Analyzer, path: Path) -> None:
    """Frames of each set: the image, the truth and what the served heads find at the middle quality
    (lesions in red, organs in colour, boxes in the colour of their class; organs only on the organ
    set, whose frames alone have organ labels). Lesion sets show their frames with the most lesion
    pixels, the organ set two frames a third and two thirds into its volume."""
    from PIL import Image

    tiles = []
    for name, cases in sets.items():
        if name == "organs":
            chosen = [cases[len(cases) // 3], cases[2 * len(cases) // 3]] if cases else []
        else:
            chosen = sorted(cases, key=lambda c: -int(c.mask.sum()))[: 2 if name == "synthetic" else 1]
        for case in chosen:
            stream = analyzer.codec.compress_pixels(case.frame[None, ..., None], case.format,
                                                    QUALITY_CODES[MIDDLE_QUALITY])
            found = analyzer.analyze(stream)[0]
            keep = found.classes > 0 if name == "organs" else found.classes == 0
            row = [_grey(case.frame),
                   _overlay(case.frame, case.mask, case.organs, case.boxes[:, :4], case.boxes[:, 4]),
                   _overlay(case.frame, found.mask, found.organs if name == "organs" else None,
                            found.boxes[keep], found.classes[keep])]
            tile = Image.fromarray(np.concatenate(row, axis=1).astype(np.uint8))
            tiles.append(np.asarray(tile.resize((768, round(768 * tile.height / tile.width)))))
    if tiles:
        Image.fromarray(np.concatenate(tiles, axis=0)).save(path)


COLOURS = np.array([[230, 25, 75], [245, 130, 48], [60, 180, 75], [0, 130, 200], [255, 225, 25],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230]], dtype=np.float64)  # per DETECTION_CLASSES


def _grey(frame: np.ndarray) -> np.ndarray:
    low, high = np.percentile(frame, [1, 99])
    return np.clip((frame - low) / max(high - low, 1), 0, 1)[..., None] * 255 * np.ones(3)


def _overlay(frame: np.ndarray, lesion: np.ndarray, organs: np.ndarray | None, boxes: np.ndarray,
             classes: np.ndarray) -> np.ndarray:
    from PIL import Image, ImageDraw

    image = _grey(frame)
    if organs is not None:
        image[organs > 0] = 0.55 * image[organs > 0] + 0.45 * COLOURS[organs[organs > 0]]
    image[lesion] = 0.4 * image[lesion] + 0.6 * COLOURS[0]
    drawn = Image.fromarray(image.astype(np.uint8))
    draw = ImageDraw.Draw(drawn)
    for box, index in zip(boxes, classes, strict=True):
        draw.rectangle([float(v) for v in box], outline=tuple(int(v) for v in COLOURS[int(index)]))
    return np.asarray(drawn, dtype=np.float64)


def markdown(result: dict) -> str:
    lines = [f"# Task benchmark ({result['split']} split)", "",
             (f"Organ labels are {result['organ_labels']}. Columns of examples.png: image, truth, served heads at "
             f"quality {MIDDLE_QUALITY}.")]
    for name, data in result["sets"].items():
        ref = data["pixel_ref_uncompressed"]
        stages = list(data["rows"][0]["stages"])
        organs = name == "organs"
        columns = ("bpp", "mean organ Dice", "organ AP50", "organ mAP") if organs else ("bpp", "Dice", "IoU", "AP50", "mAP")
        header = ["quality"] + [f"{stage} {column}" for stage in stages for column in columns]
        header += [f"pixel ref on MVMICNet {data['key_score']}", f"pixel ref on JPEG 2000 {data['key_score']}"]
        lines += ["", f"## {name}: {data['frames']} frames, {_truth_summary(ref, organs)}", "",
                  f"Pixel reference on uncompressed images: {_summary(ref, organs)}", "",
                  "| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
        for row in data["rows"]:
            cells = [str(row["quality"])]
            for stage in stages:
                scores = row["stages"][stage]
                cells.append(f"{scores['bpp']:.3f}")
                values = ((scores["mean_organ_dice"], scores["organ_ap50"], scores["organ_map"]) if organs else
                          (scores["lesion"]["dice"], scores["lesion"]["iou"], scores["lesion"]["ap50"],
                           scores["lesion"]["map"]))
                cells += [f"{v:.3f}" for v in values]
            cells += [f"{key_score(row[route], name):.3f}" for route in ("pixel_ref_on_mvmicnet", "pixel_ref_on_jpeg2000")]
            lines.append("| " + " | ".join(cells) + " |")
        if organs:
            middle = next(r for r in data["rows"] if r["quality"] == MIDDLE_QUALITY)["stages"][stages[-1]]
            per_class = [f"{organ} {ref['organs'][organ]['dice']:.3f} / {middle['organs'][organ]['dice']:.3f}"
                         for organ in ref["organs"] if organ in middle["organs"]]
            lines += ["", f"Dice per organ, pixel reference uncompressed / {stages[-1]} heads at quality "
                      f"{MIDDLE_QUALITY}: " + "; ".join(per_class)]
        lines.append("")
        for stage, bd in data["bd_rate_vs_jpeg2000"].items():
            lines.append(f"BD-rate at equal {data['key_score']}, {stage} heads vs the pixel reference on JPEG 2000: "
                         + (f"{bd:+.1f} %" if isinstance(bd, float) else bd))
        for stage, ratio in data["middle_rate_vs_uncompressed_reference"].items():
            lines.append(f"Quality {MIDDLE_QUALITY}, {stage} heads: {data['key_score']} {ratio:.2f}x the pixel "
                         "reference's on uncompressed images")
        if "equal_rate" in data:
            reference, test = data["equal_rate"]["stages"]
            compared = [f"q{c['quality']} {c['score']:.3f} vs "
                        + (f"{c['reference_score']:.3f}" if c["reference_score"] is not None else "n/a (outside its rates)")
                        for c in data["equal_rate"]["rows"]]
            lines.append(f"{data['key_score']} at equal rate, {test} vs {reference} (log-rate interpolation): "
                         + "; ".join(compared))
    timing = result["timing"]
    lines += ["", (f"Time per frame (quality {timing['quality']}, median of {timing['frames']}): analyse the "
                   f"bitstream {timing['analyse_bitstream_ms']:.0f} ms, decode then analyse pixels "
                   f"{timing['decode_then_analyse_ms']:.0f} ms ({timing['speedup']:.1f}x)")]
    return "\n".join(lines)


def _truth_summary(scores: dict, organs: bool) -> str:
    if organs:
        return f"{sum(o['true_boxes'] for o in scores['organs'].values())} organ boxes of {len(scores['organs'])} classes"
    return f"{scores['lesion']['true_boxes']} lesions"


def _summary(scores: dict, organs: bool) -> str:
    if organs:
        return (f"mean organ Dice {scores['mean_organ_dice']:.3f}, organ AP50 {scores['organ_ap50']:.3f}, "
                f"organ mAP {scores['organ_map']:.3f}")
    lesion = scores["lesion"]
    return f"Dice {lesion['dice']:.3f}, IoU {lesion['iou']:.3f}, AP50 {lesion['ap50']:.3f}, mAP {lesion['map']:.3f}"
