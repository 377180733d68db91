"""MVMICNet end to end on real corpus images: rates, exact entropy decoding, damaged input, CLI."""

from __future__ import annotations

import dataclasses
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from mvmic.model import cdf97, lifting
from mvmic.model.bitstream import Bitstream, BitstreamError, InvalidFieldError, WeightsMismatchError, unpack_payloads
from mvmic.model.cnn_base import CNN_WEIGHTS
from mvmic.model.cnn_base import MODEL_ID as CNN_MODEL_ID
from mvmic.model.codec import MvmicCodec
from mvmic.model.colour import offset_of
from mvmic.model.errors import CodecInputError
from mvmic.model.lifting import zero_subbands
from mvmic.model.lossless import stream as exact_stream
from mvmic.model.quality import QUALITY_CODES
from mvmic.model.rate_control import compress_at
from mvmic.model.rate_distortion import psnr
from mvmic.pixels import NativeImage, PixelFormat, read_dicom
from mvmic.service.errors import STATUS_BY_ERROR


@pytest.fixture(scope="module")
def codec() -> MvmicCodec:
    return MvmicCodec.load()


def _image(corpus_dir: Path, entry_id: str) -> NativeImage:
    return read_dicom(corpus_dir / "images" / f"{entry_id}.dcm")


@pytest.mark.parametrize("entry_id", ["pyradiomics-lung1-030", "pydicom-693_UNCR", "pydicom-US1_UNCR",
                                      "pydicom-emri_small", "pyradiomics-breast1-010"])
def test_round_trip_keeps_format_and_rate_grows_with_quality(codec, corpus_dir, entry_id) -> None:
    image = _image(corpus_dir, entry_id)
    rates, qualities = [], []
    for quality in (1, 4, 8):
        data = compress_at(codec, image.pixels, image.format, quality=quality).to_bytes()
        decoded = codec.decompress(Bitstream.from_bytes(data))
        assert decoded.shape == image.pixels.shape and decoded.dtype == image.pixels.dtype
        rates.append(len(data))
        qualities.append(psnr(image.pixels, decoded, image.format.peak))
    assert rates == sorted(rates) and rates[0] < rates[-1]
    assert qualities == sorted(qualities) and qualities[-1] > qualities[0] + 6


def test_operating_points_span_the_low_rate_range(codec, corpus_dir) -> None:
    image = _image(corpus_dir, "pyradiomics-lung1-030")
    pixels = image.pixels.shape[1] * image.pixels.shape[2]
    bpp = [8 * len(codec.compress(image, code).to_bytes()) / pixels for code in QUALITY_CODES.values()]
    assert len(bpp) >= 6 and bpp == sorted(bpp)
    assert bpp[0] < 0.1 and bpp[-1] > 0.8


def test_rate_targets_are_met(codec, corpus_dir) -> None:
    image = _image(corpus_dir, "pyradiomics-brain2-010")
    pixels = image.pixels.shape[1] * image.pixels.shape[2]
    stream = compress_at(codec, image.pixels, image.format, target_bpp=0.5)
    assert 0.3 < 8 * len(stream.to_bytes()) / pixels <= 0.5
    stream = compress_at(codec, image.pixels, image.format, target_psnr=45.0)
    assert psnr(image.pixels, codec.decompress(stream), image.format.peak) >= 45.0
    with pytest.raises(ValueError, match="not quality and target_bpp"):
        compress_at(codec, image.pixels, image.format, quality=2, target_bpp=0.5)


def _latents(codec: MvmicCodec, stream: Bitstream) -> list[torch.Tensor]:
    """The entropy-decoded integer subbands of the first frame, flattened."""
    part = unpack_payloads(stream.layers[0].payload)[0]
    levels = cdf97.max_levels(stream.rows, stream.columns)
    shapes = zero_subbands(stream.rows, stream.columns, min(levels, 5))
    bands = codec.context.decode(part, shapes, stream.quality_code)
    return [bands.low.flatten()] + [b.flatten() for level in bands.details for b in level]


def test_entropy_decoding_is_exact_under_float_noise_and_thread_changes(corpus_dir, corpus_manifest) -> None:
    # 20 real test-split frames (128 x 128 centre crops keep it fast); encode once, then decode the
    # latents with every float parameter of the model perturbed by 1e-5 relative noise (the integer
    # networks code from integers frozen at load, so it must not reach them), the wavelet constants
    # perturbed too, and another thread count: the latents must not change.
    entries = [e for e in corpus_manifest.select("test") if e.samples_per_pixel == 1][::3][:20]
    assert len(entries) == 20
    reference = MvmicCodec.load(CNN_WEIGHTS)  # version 2's integer CNN (version 3: tests/test_lossy_coder.py)
    perturbed = MvmicCodec.load(CNN_WEIGHTS)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in perturbed.context.parameters():
            parameter.mul_(1 + 1e-5 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    constants = {name: getattr(lifting, name) for name in ("ALPHA", "BETA", "GAMMA", "DELTA", "KAPPA")}
    threads = torch.get_num_threads()
    for entry in entries:
        image = entry.read(corpus_dir)
        top, left = max(0, (entry.rows - 128) // 2), max(0, (entry.columns - 128) // 2)
        crop = np.ascontiguousarray(image.pixels[:1, top : top + 128, left : left + 128])
        stream = reference.compress_pixels(crop, image.format, QUALITY_CODES[5])
        torch.set_num_threads(1)
        expected = _latents(reference, stream)
        try:
            torch.set_num_threads(2)
            for name, value in constants.items():
                setattr(lifting, name, value * (1 + 1e-5))
            got = _latents(perturbed, stream)
        finally:
            torch.set_num_threads(threads)
            for name, value in constants.items():
                setattr(lifting, name, value)
        assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True)), entry.id


def test_damaged_and_foreign_bitstreams_are_rejected(codec, corpus_dir) -> None:
    image = _image(corpus_dir, "pyradiomics-brain2-010")
    data = codec.compress(image, QUALITY_CODES[4]).to_bytes()
    for cut in (0, 10, len(data) // 2, len(data) - 1):
        with pytest.raises(BitstreamError):
            Bitstream.from_bytes(data[:cut])
    for position in (60, len(data) // 2, len(data) - 10):
        damaged = bytearray(data)
        damaged[position] ^= 0x10
        with pytest.raises(BitstreamError):
            Bitstream.from_bytes(bytes(damaged))
    stream = Bitstream.from_bytes(data)
    other = dataclasses.replace(stream, weights_fingerprint=bytes(8)).to_bytes()
    with pytest.raises(WeightsMismatchError):
        Bitstream.from_bytes(other, expected_model_id=codec.model_id,
                             expected_fingerprint=stream.weights_fingerprint)


def test_a_header_offset_or_scale_other_than_the_encoders_is_refused(codec, corpus_dir) -> None:
    # The decoders derive the mapping (v - offset) / 2**scale_log2 from the pixel format; a header that declares
    # another (its CRC recomputed, as a forger would) is refused as a damaged stream, HTTP 400, by every decoder.
    image = _image(corpus_dir, "pyradiomics-brain2-010")
    lossy = codec.compress(image, QUALITY_CODES[4])
    exact = compress_at(None, image.pixels, image.format, max_error=0)
    assert (lossy.offset, lossy.scale_log2) == (offset_of(image.format), image.format.bits_stored)
    assert (exact.offset, exact.scale_log2) == (0, 0)
    for stream, decoders in ((lossy, (codec.decompress, codec.decode_coarse, codec.table.decompress)),
                             (exact, (codec.decompress, codec.decode_coarse))):
        assert np.array_equal(codec.decompress(Bitstream.from_bytes(stream.to_bytes())), codec.decompress(stream))
        for field, value in (("offset", stream.offset + 1), ("offset", -1),
                             ("scale_log2", stream.scale_log2 + 1), ("scale_log2", stream.scale_log2 - 1)):
            forged = Bitstream.from_bytes(dataclasses.replace(stream, **{field: value}).to_bytes())
            for decode in decoders:
                with pytest.raises(InvalidFieldError, match=f"^{field} {value}: ") as refused:
                    decode(forged)
                assert next(code for kind, code in STATUS_BY_ERROR if isinstance(refused.value, kind)) == 400


def test_exact_streams_of_the_older_header_layout_still_decode(codec, corpus_dir) -> None:
    # Before exact streams needed no weights (commit 9a6e937) they were written under the v2 model id with the lossy
    # mapping's offset and scale_log2 and a quality code; the header check must not refuse them (the PACS keeps them).
    image = _image(corpus_dir, "pyradiomics-brain2-010")  # unsigned: the older offset is 2**(BitsStored - 1)
    exact = compress_at(None, image.pixels, image.format, max_error=0)
    older = dataclasses.replace(exact, model_id=CNN_MODEL_ID, weights_fingerprint=bytes(range(8)),
                                offset=offset_of(image.format), scale_log2=image.format.bits_stored, quality_code=70)
    older = Bitstream.from_bytes(older.to_bytes())
    assert older.offset > 0
    for decode in (codec.decompress, exact_stream.decompress):
        assert np.array_equal(decode(older), image.pixels)
    with pytest.raises(InvalidFieldError, match="^offset 0: "):  # the older scale with the newer offset: neither
        codec.decompress(Bitstream.from_bytes(dataclasses.replace(older, offset=0).to_bytes()))


def test_garbage_payload_with_a_valid_crc_decodes_without_crashing(codec, corpus_dir) -> None:
    # Only a deliberate forgery gets past the CRC; it may decode to noise, never crash or hang.
    image = _image(corpus_dir, "pyradiomics-brain2-010")
    stream = codec.compress(image, QUALITY_CODES[4])
    layer = stream.layers[0]
    noise = np.random.default_rng(0).integers(0, 256, len(layer.payload), dtype=np.uint8).tobytes()
    forged = dataclasses.replace(stream, layers=(dataclasses.replace(layer, payload=layer.payload[:6] + noise[6:]),))
    try:
        decoded = codec.decompress(Bitstream.from_bytes(forged.to_bytes()))
    except ValueError:
        return
    assert decoded.shape == image.pixels.shape


def test_uncodeable_images_are_refused(codec) -> None:
    palette = PixelFormat(bits_stored=8, signed=False, photometric="PALETTE COLOR")
    with pytest.raises(CodecInputError, match="PALETTE COLOR"):
        codec.compress_pixels(np.zeros((1, 8, 8, 1), np.uint8), palette, 40)
    with pytest.raises(CodecInputError, match="too small"):
        codec.compress_pixels(np.zeros((1, 1, 8, 1), np.uint8), PixelFormat(8, False), 40)


def test_cli_compress_decompress_writes_a_lossy_derivative(tmp_path, corpus_dir, mvmic) -> None:
    source = corpus_dir / "images" / "pyradiomics-brain2-010.dcm"
    compressed, decoded = tmp_path / "mr.mvm", tmp_path / "mr.dcm"
    run = mvmic("compress", str(source), str(compressed), "--target-bpp", "1.0")
    assert run.returncode == 0, run.stderr
    assert 8 * compressed.stat().st_size / (256 * 256) <= 1.0
    run = mvmic("decompress", str(compressed), str(decoded))
    assert run.returncode == 0, run.stderr
    original, result = pydicom.dcmread(source), pydicom.dcmread(decoded)
    assert result.SOPInstanceUID != original.SOPInstanceUID
    assert result.file_meta.MediaStorageSOPInstanceUID == result.SOPInstanceUID
    assert result.LossyImageCompression == "01"
    assert result.LossyImageCompressionMethod == "MVMICNET" and float(result.LossyImageCompressionRatio) > 8
    assert result.SourceImageSequence[0].ReferencedSOPInstanceUID == original.SOPInstanceUID
    assert result.DerivationCodeSequence[0].CodeValue == "113040"
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "BitsStored"):
        assert result.get(keyword) == original.get(keyword), keyword
    assert psnr(original.pixel_array, result.pixel_array, 4095) > 40


def test_a_derivative_has_one_uid_per_source_and_bitstream(codec, corpus_dir) -> None:
    """Decoding a stream twice, or storing it as an instance, gives one derivative, not several: a repeated
    STOW or compress-study replaces it in the PACS instead of storing a copy."""
    from mvmic.transcode import dicom_to_mvm, mvm_instance, mvm_to_dicom

    source = (corpus_dir / "images" / "pyradiomics-brain2-010.dcm").read_bytes()
    streams = [dicom_to_mvm(source, codec, quality) for quality in (2, 2, 5)]
    uids = [str(mvm_to_dicom(stream.data, codec).SOPInstanceUID) for stream in streams]
    stored = pydicom.dcmread(BytesIO(mvm_instance(streams[0], codec)))
    assert uids[0] == uids[1] == stored.SOPInstanceUID == stored.file_meta.MediaStorageSOPInstanceUID
    assert uids[2] != uids[0] and pydicom.dcmread(BytesIO(source)).SOPInstanceUID not in uids


def test_cli_errors_are_one_line(tmp_path, mvmic) -> None:
    not_dicom = tmp_path / "x.dcm"
    not_dicom.write_bytes(b"hello")
    run = mvmic("compress", str(not_dicom), str(tmp_path / "x.mvm"))
    assert run.returncode == 1 and "mvmic: error: not a DICOM file" in run.stderr and "Traceback" not in run.stderr
    garbage = tmp_path / "x.mvm"
    garbage.write_bytes(b"MVM\x01" + bytes(40))
    run = mvmic("decompress", str(garbage), str(tmp_path / "y.dcm"))
    assert run.returncode == 1 and "mvmic: error:" in run.stderr and "Traceback" not in run.stderr
