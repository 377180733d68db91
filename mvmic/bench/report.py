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

from mvmic.bench.bdrate import bd_psnr, bd_rate
from mvmic.bench.codecs import Codec

if TYPE_CHECKING:
    from mvmic.bench.rd import Measurement

REFERENCE_CODEC = "JPEG 2000"
LEARNED_CODEC = "MVMICNet"
EXACT_CODEC = "MVMICNet lossless"
# The exact layer's references: lossless against every classical lossless point, near-lossless tau
# against JPEG-LS NEAR = tau.
LOSSLESS_REFERENCES = (("JPEG XL", "lossless e9"), ("JPEG XL", "lossless e10"), ("JPEG XL", "lossless e7"),
                       ("JPEG 2000", "5/3 lossless"), ("JPEG-LS", "lossless"), ("HTJ2K", "lossless"))


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


def bounded_ratios(measurements: list[Measurement]) -> list[dict]:
    """The exact codec's size against its references, frame by frame, at each bound: the ratio of the
    mean bits per pixel, the median per-frame ratio, the share of frames where it is smaller, and
    the mean bits per pixel of both by modality. Only frames that both coded count."""
    sizes = {(m.codec, m.point, m.image, m.frame): m for m in measurements}
    rows = []
    for point in sorted({m.point for m in measurements if m.codec == EXACT_CODEC}):
        ours = [m for m in measurements if m.codec == EXACT_CODEC and m.point == point]
        bound = ours[0].max_error or 0
        references = LOSSLESS_REFERENCES if bound == 0 else (("JPEG-LS", f"NEAR={bound}"),)
        for codec, reference_point in references:
            pairs = [(m, sizes[(codec, reference_point, m.image, m.frame)]) for m in ours
                     if (codec, reference_point, m.image, m.frame) in sizes]
            if not pairs:
                continue
            ratios = [m.bpp / r.bpp for m, r in pairs]
            modalities = sorted({m.modality for m, _ in pairs})
            rows.append({
                "codec": EXACT_CODEC, "point": point, "error_bound": bound,
                "reference": f"{codec} {reference_point}", "frames": len(pairs),
                "mean_bpp": statistics.fmean(m.bpp for m, _ in pairs),
                "reference_mean_bpp": statistics.fmean(r.bpp for _, r in pairs),
                "median_frame_ratio": statistics.median(ratios),
                "smaller_share": sum(ratio < 1 for ratio in ratios) / len(ratios),
                "by_modality": {mod: {"frames": sum(m.modality == mod for m, _ in pairs),
                                      "mean_bpp": statistics.fmean(m.bpp for m, _ in pairs if m.modality == mod),
                                      "reference_mean_bpp": statistics.fmean(r.bpp for m, r in pairs
                                                                             if m.modality == mod)}
                                for mod in modalities},
            })
    for row in rows:
        row["mean_ratio"] = row["mean_bpp"] / row["reference_mean_bpp"]
    return rows


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


def markdown_report(split: str, frames: int, summary: list[dict], bd: list[dict], wall_seconds: float,
                    ratios: list[dict] = ()) -> str:
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
    if ratios:
        modalities = sorted({mod for row in ratios for mod in row["by_modality"]})
        lines += ["", (f"{EXACT_CODEC} against each reference, frame by frame: ratio of the mean bpp, median "
                  "per-frame ratio, share of frames where it is smaller; by modality, its mean bpp / the "
                  "reference's:"), "",
                  "| point | reference | frames | bpp | reference bpp | mean ratio | median ratio | smaller | "
                  + " | ".join(modalities) + " |",
                  "|---|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(modalities)]
        for row in ratios:
            cells = [_modality_cell(row["by_modality"].get(mod)) for mod in modalities]
            lines.append(f"| {row['point']} | {row['reference']} | {row['frames']} | {row['mean_bpp']:.4f} | "
                         f"{row['reference_mean_bpp']:.4f} | {row['mean_ratio']:.3f} | "
                         f"{row['median_frame_ratio']:.3f} | {100 * row['smaller_share']:.0f} % | "
                         + " | ".join(cells) + " |")
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


def _modality_cell(row: dict | None) -> str:
    return "-" if not row else f"{row['mean_bpp']:.3f} / {row['reference_mean_bpp']:.3f} (n={row['frames']})"


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
