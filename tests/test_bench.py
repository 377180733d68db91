"""The classical baselines and the rate-distortion harness on real corpus images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mvmic.bench.codecs import CODECS, Codec, OperatingPoint, register, registered_codecs
from mvmic.bench.rd import Measurement
from mvmic.bench.report import bounded_ratios
from mvmic.corpus.manifest import CorpusEntry, Manifest
from mvmic.model.rate_distortion import bits_per_pixel, max_abs_error, psnr

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "data" / "corpus"


def _corpus_entries() -> list[CorpusEntry]:
    manifest_path = CORPUS / "manifest.json"
    if not manifest_path.exists():
        pytest.fail(f"no corpus at {CORPUS}: run `mvmic data prepare` (make test does)")
    return Manifest.load(manifest_path).entries


def _one_per_format() -> list[CorpusEntry]:
    """One image of each (bits stored, signedness, samples) found in the corpus."""
    chosen: dict[tuple[int, bool, int], CorpusEntry] = {}
    for entry in sorted(_corpus_entries(), key=lambda e: e.rows * e.columns):
        chosen.setdefault((entry.bits_stored, entry.signed, entry.samples_per_pixel), entry)
    return list(chosen.values())


FORMAT_SAMPLES = _one_per_format() if (CORPUS / "manifest.json").exists() else []


def test_corpus_covers_the_pixel_formats_the_baselines_must_handle() -> None:
    formats = {(e.bits_stored, e.signed, e.samples_per_pixel) for e in _one_per_format()}
    assert (12, False, 1) in formats and (8, False, 3) in formats
    assert any(signed for _, signed, _ in formats), "no signed image to test the level shift"
    assert len({bits for bits, _, _ in formats}) >= 4


CLASSICAL = ["JPEG 2000", "HTJ2K", "JPEG-LS", "JPEG XL"]  # MVMICNet has its own tests (test_codec.py)


@pytest.mark.parametrize("codec", registered_codecs(CLASSICAL), ids=lambda c: c.name)
@pytest.mark.parametrize("entry", FORMAT_SAMPLES, ids=lambda e: f"{e.id}-{e.bits_stored}bit")
def test_lossless_points_are_exact_and_lossy_points_compress(codec: Codec, entry: CorpusEntry) -> None:
    image = entry.read(CORPUS)
    frame, fmt = image.frame(0), image.format
    raw_bpp = 8 * frame.dtype.itemsize * fmt.samples_per_pixel
    # One lossless point and the two ends of the lossy range: the points between (and JPEG XL's efforts e9, e10:
    # 96 s on a 2k CR) change only the encoder's parameters, not how the wrapper hands samples over and back;
    # `mvmic bench rd` measures every point and refuses any inexact lossless one.
    lossy = [point for point in codec.points if not point.lossless]
    for point in [next(point for point in codec.points if point.lossless), *dict.fromkeys(lossy[:1] + lossy[-1:])]:
        encoded = codec.encode(frame, fmt, point)
        decoded = codec.decode(encoded, fmt, point)
        assert decoded.shape == frame.shape and decoded.dtype == frame.dtype
        if point.lossless:
            assert np.array_equal(decoded, frame), f"{codec.name} {point.label} is not exact on {entry.id}"
        else:
            assert bits_per_pixel(encoded, frame) < raw_bpp
            assert fmt.min_value <= decoded.min() and decoded.max() <= fmt.max_value


@pytest.mark.parametrize("entry", FORMAT_SAMPLES, ids=lambda e: f"{e.id}-{e.bits_stored}bit")
def test_avif_codes_every_pixel_format_lossy(entry: CorpusEntry) -> None:
    # AVIF has no lossless point here (imagecodecs codes grey losslessly only); grey goes in as R = G = B and is
    # coded as Y alone, 13 to 16 bits lose their low bits first: both ends of the range keep shape, dtype and
    # stored range, compress, and the higher quality is closer to the original.
    avif = CODECS["AVIF"]
    image = entry.read(CORPUS)
    frame, fmt = image.frame(0), image.format
    quality = []
    for point in (avif.points[0], avif.points[-1]):
        encoded = avif.encode(frame, fmt, point)
        decoded = avif.decode(encoded, fmt, point)
        assert decoded.shape == frame.shape and decoded.dtype == frame.dtype
        assert fmt.min_value <= decoded.min() and decoded.max() <= fmt.max_value
        assert bits_per_pixel(encoded, frame) < 8 * frame.dtype.itemsize * fmt.samples_per_pixel
        quality.append(psnr(frame, decoded, fmt.peak))
    assert quality[1] > quality[0] and quality[1] > 35, (entry.id, quality)


def test_jpeg_ls_near_bounds_the_error() -> None:
    jpeg_ls = CODECS["JPEG-LS"]
    for entry in FORMAT_SAMPLES:
        image = entry.read(CORPUS)
        frame = image.frame(0)
        for point in jpeg_ls.points:
            decoded = jpeg_ls.decode(jpeg_ls.encode(frame, image.format, point), image.format, point)
            assert max_abs_error(frame, decoded) <= point.param, f"NEAR={point.param} on {entry.id}"


def test_jpeg2000_hits_its_target_rates() -> None:
    jpeg2000 = CODECS["JPEG 2000"]
    entry = next(e for e in _corpus_entries() if e.id == "pyradiomics-lung1-030")
    image = entry.read(CORPUS)
    frame = image.frame(0)
    for point in (p for p in jpeg2000.points if not p.lossless):
        encoded = jpeg2000.encode(frame, image.format, point)
        assert bits_per_pixel(encoded, frame) == pytest.approx(point.param, rel=0.1)


def test_psnr_uses_the_native_peak() -> None:
    original = np.zeros((4, 4), np.uint16)
    decoded = original.copy()
    decoded[0, 0] = 16  # MSE = 16**2 / 16 = 16
    assert psnr(original, decoded, peak=4095) == pytest.approx(10 * np.log10(4095**2 / 16))
    assert psnr(original, original, peak=255) == float("inf")


def test_registering_a_codec_twice_is_an_error() -> None:
    class Duplicate(Codec):
        name = "JPEG 2000"
        points = (OperatingPoint("lossless", lossless=True),)

        def encode(self, frame, fmt, point):  # pragma: no cover - never called
            raise AssertionError

        def decode(self, data, fmt, point):  # pragma: no cover - never called
            raise AssertionError

    registered_codecs()  # make sure the classical codecs are registered first
    with pytest.raises(ValueError, match="registered twice"):
        register(Duplicate)


def test_unknown_codec_name_is_a_clear_cli_error(tmp_path: Path) -> None:
    result = _mvmic("bench", "rd", "--corpus", str(CORPUS), "--codec", "JPEG 3000", "--out", str(tmp_path))
    assert result.returncode == 1
    assert "unknown codec JPEG 3000" in result.stderr and "Traceback" not in result.stderr


def test_missing_mvmicnet_weights_are_a_clear_cli_error(tmp_path: Path) -> None:
    result = _mvmic("bench", "rd", "--corpus", str(CORPUS), "--mvmicnet-weights", str(tmp_path / "none.pt"),
                    "--out", str(tmp_path))
    assert result.returncode == 1
    assert "no MVMICNet weights at" in result.stderr and "Traceback" not in result.stderr


def test_bench_rd_writes_json_table_and_plot(tmp_path: Path) -> None:
    codecs = [argument for name in CLASSICAL for argument in ("--codec", name)]
    result = _mvmic("bench", "rd", "--corpus", str(CORPUS), "--split", "val", "--out", str(tmp_path), *codecs)
    assert result.returncode == 0, result.stderr
    payload = json.loads((tmp_path / "rd.json").read_text())
    val_frames = sum(e.frames for e in _corpus_entries() if e.split == "val")
    assert payload["frames"] == val_frames
    points = {(row["codec"], row["point"]) for row in payload["summary"]}
    assert {("JPEG 2000", "5/3 lossless"), ("JPEG-LS", "NEAR=2"), ("HTJ2K", "lossless"), ("JPEG XL", "d=1")} <= points
    assert all(row["max_abs_error"] == 0 for row in payload["summary"] if row["lossless"])
    assert {row["codec"] for row in payload["bd_vs_reference"]} == {"HTJ2K", "JPEG-LS", "JPEG XL"}
    assert "| JPEG 2000 | 9/7 0.5 bpp |" in (tmp_path / "rd.md").read_text()
    assert (tmp_path / "rd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| codec | point | bpp |" in result.stdout


def test_bench_rd_reports_lossless_and_near_lossless_against_jpeg_ls(tmp_path: Path) -> None:
    result = _mvmic("bench", "rd", "--corpus", str(CORPUS), "--split", "val", "--out", str(tmp_path),
                    "--codec", "MVMICNet lossless", "--codec", "JPEG-LS")
    assert result.returncode == 0, result.stderr
    rows = {(row["codec"], row["point"]): row for row in json.loads((tmp_path / "rd.json").read_text())["summary"]}
    lossless = rows[("MVMICNet lossless", "lossless")]
    assert lossless["exact_frames"] == lossless["frames"] and lossless["error_bound"] == 0
    for bound in (1, 2, 4):
        row = rows[("MVMICNet lossless", f"max error {bound}")]
        assert row["error_bound"] == bound and 0 < row["max_abs_error"] <= bound
        assert row["mean_bpp"] < lossless["mean_bpp"]
        assert rows[("JPEG-LS", f"NEAR={bound}")]["error_bound"] == bound
    report = (tmp_path / "rd.md").read_text()
    assert "| bound | codec | point | bpp | max err | enc ms | dec ms |" in report
    assert "| 0 | MVMICNet lossless | lossless |" in report and "| 2 | JPEG-LS | NEAR=2 |" in report
    ratios = {(row["point"], row["reference"]): row
              for row in json.loads((tmp_path / "rd.json").read_text())["exact_vs_reference"]}
    near = {(f"max error {bound}", f"JPEG-LS NEAR={bound}") for bound in (1, 2, 4)}
    assert set(ratios) == {("lossless", "JPEG-LS lossless"), *near}
    frames = sum(entry.frames for entry in _corpus_entries() if entry.split == "val")
    assert f"| max error 2 | JPEG-LS NEAR=2 | {frames} |" in report


def test_bounded_ratios_compare_frame_by_frame() -> None:
    def row(image: str, modality: str, codec: str, point: str, bpp: float) -> Measurement:
        return Measurement(image, 0, modality, codec, point, point == "lossless", None, bpp, float("inf"), 0, 1, 1)

    measurements = [row("a", "CT", "MVMICNet lossless", "lossless", 2.0),
                    row("a", "CT", "JPEG XL", "lossless e9", 4.0),
                    row("b", "MR", "MVMICNet lossless", "lossless", 3.0),
                    row("b", "MR", "JPEG XL", "lossless e9", 2.0),
                    row("c", "MR", "MVMICNet lossless", "lossless", 1.0)]  # no reference: left out
    (ratio,) = bounded_ratios(measurements)
    assert ratio["reference"] == "JPEG XL lossless e9" and ratio["frames"] == 2
    assert ratio["mean_ratio"] == pytest.approx(2.5 / 3.0) and ratio["median_frame_ratio"] == pytest.approx(1.0)
    assert ratio["smaller_share"] == 0.5 and ratio["by_modality"]["MR"]["reference_mean_bpp"] == 2.0


def _mvmic(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mvmic.cli", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
