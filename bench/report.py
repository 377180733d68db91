"""Tables, BD-rates and the R-D plot of a rate-distortion run."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only: no display here or in CI
import matplotlib.pyplot as plt

from bench.bdrate import bd_psnr, bd_rate
from bench.codecs import Codec

if TYPE_CHECKING:
    from bench.rd import Measurement

REFERENCE_CODEC = "JPEG 2000"
LEARNED_CODEC = "MVMICNet"


def summarize(codecs: list[Codec], measurements: list[Measurement]) -> list[dict]:
    """One row per codec and operating point, in registration order."""
    by_point: dict[tuple[str, str], list[Measurement]] = defaultdict(list)
    for m in measurements:
        by_point[(m.codec, m.point)].append(m)
    rows = []
    for codec in codecs:
        for point in codec.points:
            group = by_point.get((codec.name, point.label), [])
            if group:
                bound = 0 if point.lossless else point.max_error
                rows.append(_summary_row(codec.name, point.label, point.lossless, bound, group))
    return rows


def _summary_row(codec: str, point: str, lossless: bool, bound: int | None, group: list[Measurement]) -> dict:
    finite = [m.psnr for m in group if math.isfinite(m.psnr)]
    return {
        "codec": codec,
        "point": point,
        "lossless": lossless,
        "error_bound": bound,  # 0 lossless, the promised maximum error near-lossless, None otherwise
        "frames": len(group),
        "mean_bpp": statistics.fmean(m.bpp for m in group),
        # Exact frames have infinite PSNR; the mean is over the others, None if all exact.
        "mean_psnr": statistics.fmean(finite) if finite else None,
        "exact_frames": len(group) - len(finite),
        "max_abs_error": max(m.max_abs_error for m in group),
        "mean_encode_ms": statistics.fmean(m.encode_ms for m in group),
        "mean_decode_ms": statistics.fmean(m.decode_ms for m in group),
    }


def bd_against_reference(codecs: list[Codec], measurements: list[Measurement]) -> list[dict]:
    """Median per-frame BD-rate and BD-PSNR, overall and by modality: every codec against JPEG 2000,
    and the learned codec against each classical one too."""
    curves = _lossy_curves(measurements)
    names = [codec.name for codec in codecs]
    pairs = [(name, REFERENCE_CODEC) for name in names if name != REFERENCE_CODEC]
    if LEARNED_CODEC in names:
        pairs += [(LEARNED_CODEC, name) for name in names if name not in (LEARNED_CODEC, REFERENCE_CODEC)]
    rows = []
    for test, reference in pairs:
        per_frame = _per_frame_bd(curves, test, reference)
        if per_frame:
            rows.append({"codec": test, "reference": reference, **_medians(per_frame),
                         "by_modality": {mod: _medians([r for r in per_frame if r["modality"] == mod])
                                         for mod in sorted({r["modality"] for r in per_frame})}})
    return rows


def _lossy_curves(measurements: Iterable[Measurement]) -> dict[tuple[str, int, str], list[Measurement]]:
    """Lossy, inexact points by (image, frame, codec); repeated points collapse to one."""
    curves: dict[tuple[str, int, str], dict[tuple[float, float], Measurement]] = defaultdict(dict)
    for m in measurements:
        if not m.lossless and math.isfinite(m.psnr):
            curves[(m.image, m.frame, m.codec)][(round(m.bpp, 6), round(m.psnr, 6))] = m
    return {key: list(points.values()) for key, points in curves.items()}


def _per_frame_bd(curves: dict[tuple[str, int, str], list[Measurement]], codec: str, against: str) -> list[dict]:
    results = []
    for (image, frame, name), test in curves.items():
        reference = curves.get((image, frame, against))
        if name != codec or not reference:
            continue
        args = ([m.bpp for m in reference], [m.psnr for m in reference], [m.bpp for m in test], [m.psnr for m in test])
        try:
            results.append({"modality": test[0].modality, "bd_rate": bd_rate(*args), "bd_psnr": bd_psnr(*args)})
        except ValueError:
            continue  # curves that do not overlap have no BD value; counted as missing
    return results


def _medians(results: list[dict]) -> dict:
    return {"frames": len(results),
            "median_bd_rate_percent": statistics.median(r["bd_rate"] for r in results),
            "median_bd_psnr_db": statistics.median(r["bd_psnr"] for r in results)}


def markdown_report(split: str, frames: int, summary: list[dict], bd: list[dict], wall_seconds: float) -> str:
    lines = [f"# Rate-distortion, {split} split: {frames} frames, {wall_seconds:.0f} s", "",
             ("PSNR on the native range (peak 2^BitsStored - 1), mean over frames that are not exact; "
             "bits per pixel include all headers."), "",
             "| codec | point | bpp | PSNR dB | exact | max err | enc ms | dec ms |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in summary:
        psnr_text = "lossless" if row["mean_psnr"] is None else f"{row['mean_psnr']:.2f}"
        lines.append(f"| {row['codec']} | {row['point']} | {row['mean_bpp']:.4f} | {psnr_text} | "
                     f"{row['exact_frames']}/{row['frames']} | {row['max_abs_error']} | "
                     f"{row['mean_encode_ms']:.1f} | {row['mean_decode_ms']:.1f} |")
    bounded = sorted((row for row in summary if row["error_bound"] is not None),
                     key=lambda row: (row["error_bound"], row["mean_bpp"]))
    if bounded:
        lines += ["", ("Lossless and near-lossless (bound = the maximum error promised; 0 = lossless), "
                  "smallest first:"), "",
                  "| bound | codec | point | bpp | max err | enc ms | dec ms |", "|---:|---|---|---:|---:|---:|---:|"]
        lines += [f"| {row['error_bound']} | {row['codec']} | {row['point']} | {row['mean_bpp']:.4f} | "
                  f"{row['max_abs_error']} | {row['mean_encode_ms']:.1f} | {row['mean_decode_ms']:.1f} |"
                  for row in bounded]
    if bd:
        modalities = sorted({mod for row in bd for mod in row["by_modality"]})
        lines += ["", ("BD-rate of a codec against a reference (median over frames; negative = fewer bits "
                  "at equal PSNR), BD-PSNR in brackets:"), "",
                  "| codec | reference | all | " + " | ".join(modalities) + " |",
                  "|---|---|---:|" + "---:|" * len(modalities)]
        for row in bd:
            cells = [_bd_cell(row)] + [_bd_cell(row["by_modality"].get(mod)) for mod in modalities]
            lines.append(f"| {row['codec']} | {row['reference']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _bd_cell(row: dict | None) -> str:
    if not row:
        return "-"
    return f"{row['median_bd_rate_percent']:+.1f}% ({row['median_bd_psnr_db']:+.2f} dB, n={row['frames']})"


def plot_rd(codecs: list[Codec], summary: list[dict], path: Path, title: str) -> None:
    figure, axes = plt.subplots(figsize=(7, 5))
    for codec in codecs:
        points = [r for r in summary if r["codec"] == codec.name and not r["lossless"] and r["mean_psnr"] is not None]
        points.sort(key=lambda r: r["mean_bpp"])
        if points:
            axes.plot([r["mean_bpp"] for r in points], [r["mean_psnr"] for r in points], marker="o", label=codec.name)
    axes.set_xscale("log")
    axes.set_xlabel("bits per pixel (mean over frames)")
    axes.set_ylabel("PSNR on native range, dB (mean over frames)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
