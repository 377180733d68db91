"""The residual layer: lossless and near-lossless on real test-split images, exact decoding, damage, CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from mvmic.model import cnn_base, enc_residual
from mvmic.model.bitstream import (
    Bitstream,
    Layer,
    LayerKind,
    TrailingDataError,
    TruncatedError,
    WeightsMismatchError,
    pack_integers,
    pack_payloads,
    unpack_integers,
    unpack_payloads,
)
from mvmic.model.cnn_base import CNN_WEIGHTS
from mvmic.model.codec import MvmicCodec, max_error_of
from mvmic.model.errors import BoundViolationError, CodecInputError
from mvmic.model.exact_base import BandStepsFixed
from mvmic.model.quality import QUALITY_CODES
from mvmic.model.rate_control import compress_at
from mvmic.model.residual import LOG_STEPS_PER_OCTAVE, MAX_ERROR, integer_log, quantize_residual
from mvmic.model.table_codec import DEFAULT_WEIGHTS
from mvmic.model.tasks.analysis import Analyzer
from mvmic.pixels import NativeImage, read_dicom

# Small real test-split images of every kind the corpus has: CT 12 and 14 bits (signed), MR,
# 8-bit ultrasound, RGB ultrasound, 16-bit NM.
LOSSLESS_SUBSET = ("pyradiomics-brain2-010", "pyradiomics-lung1-030", "pydicom-693_UNCR", "pydicom-US1_UNCR",
                   "pydicom-examples_rgb_color", "pydicom-JPEG-LL")


@pytest.fixture(scope="module")
def codec() -> MvmicCodec:
    return MvmicCodec.load()


def _image(corpus_dir: Path, entry_id: str) -> NativeImage:
    return read_dicom(corpus_dir / "images" / f"{entry_id}.dcm")


def _sha256(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()


@pytest.mark.parametrize("entry_id", LOSSLESS_SUBSET)
def test_lossless_round_trip_is_exact(codec, corpus_dir, corpus_manifest, entry_id) -> None:
    assert entry_id in {e.id for e in corpus_manifest.select("test")}
    image = _image(corpus_dir, entry_id)
    data = compress_at(codec, image.pixels, image.format, max_error=0).to_bytes()
    decoded = codec.decompress(Bitstream.from_bytes(data))
    assert decoded.dtype == image.pixels.dtype and _sha256(decoded) == _sha256(image.pixels)
    raw_bits = image.pixels.size * image.pixels.dtype.itemsize * 8
    assert 8 * len(data) < 0.75 * raw_bits  # and it compresses


@pytest.mark.parametrize("entry_id", ["pyradiomics-lung1-030", "pydicom-examples_rgb_color", "pydicom-JPEG-LL"])
def test_near_lossless_bound_holds_on_every_sample(codec, corpus_dir, entry_id) -> None:
    image = _image(corpus_dir, entry_id)
    sizes = []
    for max_error in (1, 2, 4):
        stream = compress_at(codec, image.pixels, image.format, max_error=max_error)
        error = np.abs(codec.decompress(stream).astype(np.int64) - image.pixels.astype(np.int64))
        assert error.max() == max_error  # within the bound, and using it
        assert max_error_of(stream) == max_error
        sizes.append(len(stream.to_bytes()))
    assert sizes == sorted(sizes, reverse=True)


def test_a_broken_bound_is_an_error_not_a_bitstream(codec, corpus_dir, monkeypatch) -> None:
    image = _image(corpus_dir, "pyradiomics-brain2-010")
    # A bug in the residual path: some samples quantised one step off.
    broken = lambda residual, max_error: quantize_residual(residual, max_error) + (residual.abs() > 2)
    monkeypatch.setattr(enc_residual, "quantize_residual", broken)
    with pytest.raises(BoundViolationError, match="above the promised 1: bitstream withheld"):
        codec.compress(image, QUALITY_CODES[6], max_error=1)
    unchecked = codec.compress_pixels(image.pixels, image.format, QUALITY_CODES[6], max_error=1, verify=False)
    assert np.abs(codec.decompress(unchecked).astype(np.int64) - image.pixels).max() > 1


def test_residual_quantiser_bound_holds_for_every_value() -> None:
    residual = torch.arange(-5000, 5001, dtype=torch.int64)
    for max_error in range(MAX_ERROR + 1):
        q = quantize_residual(residual, max_error)
        assert int((residual - (2 * max_error + 1) * q).abs().max()) == max_error
    assert torch.equal(quantize_residual(residual, 0), residual)


def test_integer_log_is_monotone_and_exact() -> None:
    values = torch.arange(0, 70000, dtype=torch.int64)
    logs = integer_log(values)
    assert logs.dtype == torch.int64 and int(logs[0]) == 0
    assert bool((logs[1:] >= logs[:-1]).all())
    assert int(integer_log(torch.tensor([1023]))) == LOG_STEPS_PER_OCTAVE * 10  # 1 + 1023 = 2**10
    assert torch.equal(integer_log(-values), logs)


def test_exact_base_is_the_float_decoder_within_one_unit(codec, corpus_dir) -> None:
    for entry_id in ("pyradiomics-brain2-010", "pydicom-examples_rgb_color"):
        image = _image(corpus_dir, entry_id)
        code = QUALITY_CODES[5]
        bands = codec.quantized_planes(image.pixels[0], image.format, code)
        _, base = codec.base_of(bands, code, image.format)
        lossy = codec.decompress(_base_only(codec.compress(image, code)))[0].astype(np.int64)
        assert base.shape == lossy.shape and np.abs(base - lossy).max() <= 1
        assert np.mean(base != lossy) < 0.01


def test_decoding_is_exact_with_float_paths_perturbed_and_other_threads(corpus_dir, monkeypatch) -> None:
    # Encode losslessly and near-losslessly, then decode with every float of the models perturbed by
    # 1e-5 relative noise, the float base-layer path (dequantisation, synthesis) perturbed, and another
    # thread count: the pixels must be the same, bit for bit.
    reference = MvmicCodec.load(CNN_WEIGHTS)  # the integer CNN's floats are the ones to perturb
    streams = []
    for entry_id, max_error in (("pyradiomics-brain2-010", 0), ("pydicom-examples_rgb_color", 0),
                                ("pyradiomics-lung1-030", 2)):
        image = _image(corpus_dir, entry_id)
        streams.append(compress_at(reference, image.pixels, image.format, max_error=max_error))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = [_sha256(reference.decompress(s)) for s in streams]
    finally:
        torch.set_num_threads(threads)
    perturbed = MvmicCodec.load(CNN_WEIGHTS)
    generator = torch.Generator().manual_seed(2)
    noisy = lambda t: t * (1 + 1e-5 * torch.randn(t.shape, generator=generator, dtype=t.dtype))
    with torch.no_grad():
        for parameter in itertools.chain(perturbed.context.parameters(), perturbed.residual[0].parameters()):
            parameter.copy_(noisy(parameter))
        perturbed.scales = noisy(perturbed.scales)
    synthesis = cnn_base.synthesis  # the lossy decoder's float wavelet
    monkeypatch.setattr(cnn_base, "synthesis", lambda bands: noisy(synthesis(bands)))
    torch.set_num_threads(2)
    try:
        got = [_sha256(perturbed.decompress(s)) for s in streams]
    finally:
        torch.set_num_threads(threads)
    assert got == expected


def test_analysis_reads_only_the_base_layer(codec, corpus_dir) -> None:
    image = _image(corpus_dir, "pyradiomics-lung1-030")
    analyzer = Analyzer.load(codec)
    code = QUALITY_CODES[6]
    lossless = codec.compress(image, code, max_error=0)
    base_only = _base_only(lossless)
    assert len(base_only.layers) < len(lossless.layers)
    assert [f.to_json() for f in analyzer.analyze(lossless)] == [f.to_json() for f in analyzer.analyze(base_only)]
    # The base layer of a lossless bitstream is an ordinary lossy preview (without its restoration filter).
    assert _sha256(codec.decompress(base_only)) == _sha256(codec.decompress(_base_only(codec.compress(image, code))))


def _base_only(stream: Bitstream) -> Bitstream:
    """``stream`` with its BASE layers alone: the residual layer is coded against the unfiltered base."""
    return dataclasses.replace(stream, layers=tuple(layer for layer in stream.layers if layer.kind == LayerKind.BASE))


def _with_residual_payload(stream: Bitstream, change) -> Bitstream:
    layers = tuple(dataclasses.replace(layer, payload=change(layer.payload)) if layer.kind == LayerKind.RESIDUAL
                   else layer for layer in stream.layers)
    return dataclasses.replace(stream, layers=layers)


def test_damaged_or_foreign_residual_layers_are_refused(codec, corpus_dir, tmp_path) -> None:
    image = _image(corpus_dir, "pyradiomics-brain2-010")
    stream = codec.compress(image, QUALITY_CODES[6], max_error=0)

    def parts(payload: bytes) -> list[bytes]:
        return unpack_payloads(payload)

    foreign = _with_residual_payload(stream, lambda p: pack_payloads([parts(p)[0], bytes(8), *parts(p)[2:]]))
    with pytest.raises(WeightsMismatchError, match="residual"):
        codec.decompress(foreign)
    header = unpack_integers(parts(stream.layers[1].payload)[0])
    for bad_header, message in (([MAX_ERROR + 1, *header[1:]], "maximum error"),
                                ([0, *header[1:-3]], "levels"), ([0, *header[1:-1], 0], "band steps")):
        bad = _with_residual_payload(stream, lambda p, h=bad_header: pack_payloads([pack_integers(h), *parts(p)[1:]]))
        with pytest.raises(ValueError, match=message):
            codec.decompress(bad)
    with pytest.raises(TruncatedError):
        codec.decompress(_with_residual_payload(stream, lambda p: p[:-1]))
    with pytest.raises(TrailingDataError):
        unpack_integers(pack_integers([1, -2]) + b"\x00")
    # A codec without a residual model cannot promise a bound, nor decode one.
    lonely = tmp_path / "lonely.npz"
    lonely.write_bytes(DEFAULT_WEIGHTS.read_bytes())
    lossy_only = MvmicCodec.load(lonely)
    with pytest.raises(CodecInputError, match="residual model"):
        lossy_only.compress(image, QUALITY_CODES[6], max_error=0)
    with pytest.raises(WeightsMismatchError, match="no residual model"):
        lossy_only.decompress(stream)
    with pytest.raises(CodecInputError, match="maximum error 17"):
        codec.compress(image, QUALITY_CODES[6], max_error=17)


def test_garbage_residual_with_a_valid_crc_never_crashes(codec, corpus_dir) -> None:
    image = _image(corpus_dir, "pyradiomics-brain2-010")
    stream = codec.compress(image, QUALITY_CODES[6], max_error=1)
    noise = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()

    def scramble(payload: bytes) -> bytes:
        header, fingerprint, plane = unpack_payloads(payload)
        weights, _ = unpack_payloads(plane)
        return pack_payloads([header, fingerprint, pack_payloads([weights, noise])])

    try:
        decoded = codec.decompress(Bitstream.from_bytes(_with_residual_payload(stream, scramble).to_bytes()))
    except ValueError:
        return
    assert decoded.shape == image.pixels.shape


def test_residual_layers_of_images_under_5_pixels_a_side_are_refused(codec, corpus_dir) -> None:
    """Found by fuzzing (fuzz/mvm_decoder.py): a residual stream whose rows and columns were forged below 5
    (the header layer too) failed in torch (an empty torch.cat, a padding wider than the plane): the residual
    passes need 5 x 5 pixels, and the encoder, which failed the same way, never made such a layer."""
    image = _image(corpus_dir, "pyradiomics-brain2-010")
    pixels = np.ascontiguousarray(image.pixels[:, :8, :8])
    stream = codec.compress_pixels(pixels, image.format, QUALITY_CODES[6], max_error=0)
    for rows, columns in ((2, 2), (1, 8), (4, 9), (8, 1)):
        forged = dataclasses.replace(stream, rows=rows, columns=columns)
        with pytest.raises(ValueError, match=f"a residual layer for a {rows} x {columns} image: residual layers code "
                                             "images of at least 5 x 5 pixels"):
            codec.decompress(forged)
        with pytest.raises(CodecInputError, match="at least (5 x 5|2 x 2)"):  # 1 x 8: too small for a base too
            codec.compress_pixels(np.ascontiguousarray(pixels[:, :rows, :columns]), image.format, QUALITY_CODES[6],
                                  max_error=0)
    for rows, columns in ((5, 5), (5, 8)):  # the smallest: coded and decoded exactly
        small = np.ascontiguousarray(pixels[:, :rows, :columns])
        assert np.array_equal(codec.decompress(codec.compress_pixels(small, image.format, QUALITY_CODES[6], max_error=0)),
                              small)


def test_band_steps_are_validated() -> None:
    assert BandStepsFixed.of(5, 2.0**-8).levels == 5
    for steps in ((), (1, 2), (0, 1, 1, 1), (1, 1, 1, 1 << 41)):
        with pytest.raises(ValueError, match="band steps"):
            BandStepsFixed(steps)


def test_a_lossy_bitstream_has_no_bound(codec, corpus_dir) -> None:
    image = _image(corpus_dir, "pyradiomics-brain2-010")
    stream = codec.compress(image, QUALITY_CODES[4])
    assert max_error_of(stream) is None
    header = Layer(LayerKind.DICOM_HEADER, 0, b"x")
    assert max_error_of(dataclasses.replace(stream, layers=(*stream.layers, header))) is None


def test_cli_lossless_keeps_the_instance_and_near_lossless_marks_it(tmp_path, corpus_dir, mvmic) -> None:
    source = corpus_dir / "images" / "pyradiomics-brain2-010.dcm"
    original = pydicom.dcmread(source)
    refused = mvmic("compress", str(source), str(tmp_path / "x.mvm"), "--mode", "lossless", "--quality", "6")
    assert refused.returncode == 1 and "a quality does not apply with a maximum error" in refused.stderr
    for mode in (("--mode", "lossless"), ("--mode", "near-lossless", "--max-error", "2", "--no-verify")):
        compressed, decoded = tmp_path / f"{mode[1]}.mvm", tmp_path / f"{mode[1]}.dcm"
        run = mvmic("compress", str(source), str(compressed), *mode)
        assert run.returncode == 0, run.stderr
        if mode[1] == "lossless":
            assert "maximum error 0" in run.stdout
        run = mvmic("decompress", str(compressed), str(decoded))
        assert run.returncode == 0, run.stderr
        result = pydicom.dcmread(decoded)
        error = np.abs(result.pixel_array.astype(np.int64) - original.pixel_array.astype(np.int64)).max()
        if mode[1] == "lossless":
            assert error == 0 and result.SOPInstanceUID == original.SOPInstanceUID
            # The original's own statement ("00": never lossy compressed) stands; nothing marks it lossy.
            assert result.LossyImageCompression == original.LossyImageCompression == "00"
            assert "DerivationCodeSequence" not in result
        else:
            assert error <= 2 and result.SOPInstanceUID != original.SOPInstanceUID
            assert result.LossyImageCompression == "01" and result.LossyImageCompressionMethod == "MVMICNET"
            assert float(result.LossyImageCompressionRatio) > 2
            assert "maximum error 2" in result.DerivationDescription


@pytest.mark.parametrize(("options", "message"), [
    (("--mode", "near-lossless"), "needs a max error between 1 and 16"),
    (("--mode", "near-lossless", "--max-error", "17"), "needs a max error between 1 and 16"),
    (("--max-error", "2"), "applies to mode near-lossless only"),
    (("--mode", "lossless", "--target-bpp", "2"), "does not apply with a maximum error"),
    (("--target-bpp", "-1"), "target bits per pixel -1.0: a positive finite number is needed"),
    (("--target-bpp", "0"), "a positive finite number is needed"),
    (("--target-bpp", "nan"), "a positive finite number is needed"),
    (("--target-psnr", "inf"), "target PSNR inf: a positive finite number is needed"),
])
def test_cli_mode_errors_are_one_line(tmp_path, corpus_dir, mvmic, options, message) -> None:
    source = corpus_dir / "images" / "pyradiomics-brain2-010.dcm"
    run = mvmic("compress", str(source), str(tmp_path / "x.mvm"), *options)
    assert run.returncode == 1 and message in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "x.mvm").exists()
