"""mvmicnet-w97-v3's lossy layer: compiled wavelet and table-context rANS against the torch path,
exactness, escapes, damaged payloads, version 2 streams, and a torch-free decompress."""

from __future__ import annotations

import dataclasses
import io
import itertools
import subprocess
import sys
import threading
import zlib

import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataelem import DataElement

from mvmic.model import lifting, lifting_kernels, table_contexts
from mvmic.model.bitstream import Bitstream, Layer, LayerKind
from mvmic.model.cnn_base import CNN_WEIGHTS
from mvmic.model.codec import MvmicCodec
from mvmic.model.entropy_coder import CodingTables
from mvmic.model.errors import CodecInputError
from mvmic.model.quality import QUALITY_CODES, step_of
from mvmic.model.subbands import dequantize
from mvmic.model.table_codec import MODEL_ID, TableCodec, base_layers, levels_of, normalised_planes
from mvmic.pixels import DicomInputError, PixelFormat, read_dataset
from mvmic.training.table_fit import fit
from mvmic.transcode import dicom_to_mvm, instance_to_dicom, mvm_instance, mvm_to_dicom


@pytest.fixture(scope="module")
def table() -> TableCodec:
    return TableCodec.load()


@pytest.fixture(scope="module")
def cnn() -> MvmicCodec:
    return MvmicCodec.load(CNN_WEIGHTS)


def _frames(corpus_dir, corpus_manifest, count: int = 20) -> list:
    """``count`` real test-split frames of different patients and modalities, grey and colour."""
    entries = corpus_manifest.select("test")[:: max(1, len(corpus_manifest.select("test")) // count)][:count]
    assert len(entries) == count
    return [(entry.id, entry.read(corpus_dir)) for entry in entries]


def test_compiled_wavelet_equals_torch_bit_for_bit() -> None:
    rng = np.random.default_rng(7)
    for shape in ((512, 512), (37, 53), (2, 3), (3, 2), (64, 121), (17, 16)):
        plane = rng.normal(size=shape) * 1000
        levels = max(1, levels_of(*shape))
        expected = lifting.analysis(torch.from_numpy(plane)[None, None], levels)
        low, details = lifting_kernels.analysis(plane, levels)
        assert np.array_equal(expected.low[0, 0].numpy(), low)
        for torch_level, level in zip(expected.details, details, strict=True):
            assert all(np.array_equal(a[0, 0].numpy(), b) for a, b in zip(torch_level, level, strict=True))
        assert np.array_equal(lifting.synthesis(expected)[0, 0].numpy(), lifting_kernels.synthesis(low, details))


def test_torch_and_compiled_paths_give_identical_bitstreams_and_pixels(table, cnn, corpus_dir, corpus_manifest) -> None:
    # 20 real test frames: the torch quantiser (mvmic.model.lifting + mvmic.model.subbands, as version 2 and training
    # compute it) and the compiled one give the same integer bands, hence byte-identical payloads; the
    # torch synthesis and the compiled one give the same decoded pixels.
    for name, image in _frames(corpus_dir, corpus_manifest):
        frame, code = image.frame(0), QUALITY_CODES[4]
        for plane, torch_bands in zip(normalised_planes(frame, image.format),
                                      cnn.quantized_planes(frame, image.format, code), strict=True):
            bands = table.quantize(plane, code)
            as_torch = [torch_bands.low.flatten()] + [b.flatten() for level in torch_bands.details for b in level]
            ours = [bands.low.ravel()] + [b.ravel() for level in bands.details() for b in level]
            assert all(np.array_equal(a.numpy(), b) for a, b in zip(as_torch, ours, strict=True)), name
            payload = table.encode_bands(bands)
            decoded = table.decode_bands(payload, *plane.shape)
            assert np.array_equal(decoded.flat, bands.flat) and np.array_equal(decoded.low, bands.low), name
            expected = lifting.synthesis(dequantize(torch_bands, step_of(code), cnn.scales))[0, 0].numpy()
            assert np.array_equal(table.dequantize(decoded, code), expected), name


def test_entropy_decoding_is_exact_under_float_noise_and_threads(table, corpus_dir, corpus_manifest) -> None:
    # The table index of every coefficient is integer arithmetic on decoded integers: perturbing every
    # float the codec holds (band step scales, synthesis gains) changes the reconstruction, never the
    # decoded integers; nor does decoding on several threads at once, which also gives the same pixels
    # (the restoration filter is integer arithmetic on the decoded planes).
    perturbed = TableCodec(table.weights, table.lut.reshape(table_contexts.LUT_SHAPE), table.cdfs, table.lengths,
                           table.offsets, table.band_scales * (1 + 1e-5), table.gains * (1 - 1e-5))
    streams = []
    for _, image in _frames(corpus_dir, corpus_manifest)[:8]:
        stream = table.compress_pixels(image.pixels[:1], image.format, QUALITY_CODES[5])
        streams.append((stream, [table.frame_bands(layer.payload, stream) for layer in base_layers(stream)],
                        table.decompress(stream)))
    assert any(layer.kind == LayerKind.RESTORATION for stream, _, _ in streams for layer in stream.layers)
    results: dict[int, bool] = {}

    def decode(index: int) -> None:
        results[index] = all(
            all(np.array_equal(a.flat, b.flat) and np.array_equal(a.low, b.low)
                for a, b in zip(perturbed.frame_bands(layer.payload, stream), bands, strict=True))
            and np.array_equal(table.decompress(stream), pixels)
            for stream, expected, pixels in streams for layer, bands in zip(base_layers(stream), expected, strict=True))

    workers = [threading.Thread(target=decode, args=(i,)) for i in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert results == {0: True, 1: True, 2: True}


def test_escapes_and_extreme_coefficients_round_trip(table) -> None:
    rng = np.random.default_rng(3)
    plane = rng.normal(size=(40, 70)) * 1e-3
    bands = table.quantize(plane, QUALITY_CODES[4])
    extremes = np.array([2**30 - 1, -(2**30 - 1), 70_000, -65_537, 5_000, 1, -1, 0])
    bands.flat[: len(extremes)] = extremes
    bands.low[0, 0], bands.low[-1, -1] = 2**29, -(2**29)
    decoded = table.decode_bands(table.encode_bands(bands), *plane.shape)
    assert np.array_equal(decoded.flat, bands.flat) and np.array_equal(decoded.low, bands.low)
    bands.flat[0] = 2**30
    with pytest.raises(ValueError, match="2\\*\\*30"):
        table.encode_bands(bands)


def test_damaged_payloads_decode_without_crashing(table) -> None:
    rng = np.random.default_rng(5)
    bands = table.quantize(rng.normal(size=(64, 64)) * 0.1, QUALITY_CODES[6])
    payload = bytearray(table.encode_bands(bands))
    for trial in range(50):
        damaged = bytearray(payload)
        if trial % 2:
            damaged[1 + rng.integers(len(damaged) - 1)] ^= 1 << int(rng.integers(8))
        else:
            damaged = bytearray([0]) + bytearray(rng.integers(0, 256, size=2 * int(rng.integers(0, 40)), dtype=np.uint8))
        decoded = table.decode_bands(bytes(damaged), 64, 64)  # wrong values, but no crash and no hang
        assert decoded.flat.shape == bands.flat.shape
    for bad in (b"", bytes([250, 0, 0]), bytes([0, 0])):
        with pytest.raises(ValueError):
            table.decode_bands(bad, 64, 64)


def test_version_2_streams_still_decode_and_equal_version_3(cnn, corpus_dir, corpus_manifest) -> None:
    served = MvmicCodec.load()
    assert served.model_id == MODEL_ID
    _, image = _frames(corpus_dir, corpus_manifest, 20)[3]
    crop = np.ascontiguousarray(image.pixels[:1, :96, :96])
    old = cnn.compress_pixels(crop, image.format, QUALITY_CODES[4])
    new = served.compress_pixels(crop, image.format, QUALITY_CODES[4])
    assert old.model_id == "mvmicnet-w97-v2" and new.model_id == MODEL_ID
    # The same quantiser: both streams' base layers decode to the same pixels, each through its own model
    # (version 3 streams add a restoration layer where it pays).
    new_base = dataclasses.replace(new, layers=tuple(base_layers(new)))
    assert np.array_equal(served.decompress(old), served.decompress(new_base))
    assert np.array_equal(served.decompress(old), cnn.decompress(old))


def test_fitting_never_raises_the_training_bits(table) -> None:
    rng = np.random.default_rng(11)
    counts = np.zeros((table_contexts.CELLS, 1024), np.int64)
    scales = rng.uniform(0.05, 20, size=table_contexts.CELLS)
    for cell in rng.choice(table_contexts.CELLS, size=400, replace=False):
        magnitudes = np.minimum(np.abs(rng.laplace(scale=scales[cell], size=300)).round().astype(int), 1023)
        np.add.at(counts[cell], magnitudes, 1)
    lut, tables, history = fit(counts, CodingTables(*(torch.from_numpy(v) for v in (table.cdfs, table.lengths,
                                                                                       table.offsets))), rounds=3)
    assert lut.shape == table_contexts.LUT_SHAPE and lut.max() < len(tables.lengths)
    assert all(later <= earlier * (1 + 1e-9) for earlier, later in itertools.pairwise(history))


def test_decompress_of_a_lossy_stream_never_imports_torch(tmp_path, corpus_dir) -> None:
    source = corpus_dir / "images" / "pyradiomics-brain2-010.dcm"
    compressed, decoded = tmp_path / "mr.mvm", tmp_path / "mr.dcm"
    run = subprocess.run([sys.executable, "-m", "mvmic.cli", "compress", str(source), str(compressed), "--quality", "4"],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    probe = ("import sys; from mvmic.cli import main; sys.argv = ['mvmic', 'decompress', sys.argv[1], sys.argv[2]]; "
             "code = main(); assert 'torch' not in sys.modules, 'torch imported'; "
             "assert 'numba' not in sys.modules, 'numba imported'; sys.exit(code)")
    run = subprocess.run([sys.executable, "-c", probe, str(compressed), str(decoded)], capture_output=True, text=True,
                         check=False)
    assert run.returncode == 0, run.stderr
    assert decoded.stat().st_size > 256 * 256 * 2


def test_images_under_16_pixels_a_side_are_coded_not_zeroed(table) -> None:
    # No wavelet level fits: the plane is its own low band (gain 1), coded by its DPCM.
    rng = np.random.default_rng(13)
    fmt = PixelFormat(bits_stored=12, signed=False)
    for rows, columns in ((2, 2), (15, 512), (3, 257), (9, 9)):
        pixels = rng.integers(0, 4096, size=(1, rows, columns, 1)).astype(np.uint16)
        for quality in (1, 8):
            decoded = table.decompress(table.compress_pixels(pixels, fmt, QUALITY_CODES[quality]))
            error = np.abs(decoded.astype(int) - pixels.astype(int)).max()
            assert error <= 4096 * step_of(QUALITY_CODES[quality]), (rows, columns, quality, error)


def test_weights_of_another_context_definition_are_refused(table, tmp_path) -> None:
    with np.load(table.weights.path) as npz:
        arrays = {name: npz[name] for name in npz.files}
    arrays["context_version"] = np.array(1)
    older = tmp_path / "older.npz"
    np.savez(older, **arrays)
    with pytest.raises(ValueError, match="context definition 1"):
        TableCodec.load(older)
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="is not mvmicnet-w97-v3 weights"):
        TableCodec.load(tmp_path / "empty.npz")


def test_version_2_codes_and_decodes_images_without_a_wavelet_level(table, cnn, corpus_dir) -> None:
    """Found by fuzzing (fuzz/mvm_decoder.py): a version 2 stream forged below 16 pixels a side (no wavelet
    level) failed in the band gains (IndexError), in the decoder and the encoder alike. With no level the low
    band is the image (gain 1, as version 3's table has it): both versions reconstruct the same pixels."""
    image = pydicom.dcmread(corpus_dir / "images" / "pyradiomics-brain2-010.dcm")
    fmt = PixelFormat(int(image.BitsStored), bool(image.PixelRepresentation))
    pixels = np.ascontiguousarray(image.pixel_array[None, 100:108, 100:111, None].astype(fmt.dtype))
    for code in (QUALITY_CODES[1], QUALITY_CODES[8]):
        assert np.array_equal(cnn.decompress(cnn.compress_pixels(pixels, fmt, code)),
                              table.decompress(table.compress_pixels(pixels, fmt, code)))


def test_version_2_codes_and_decodes_at_most_2_22_samples_a_stream(cnn, corpus_dir) -> None:
    """Found by fuzzing (fuzz/mvm_decoder.py, a timeout): a 1.3 KB version 2 stream declaring 33 frames of
    16 x 8192 ran the integer CNN over 4.3 M samples, more than 10 s here; 2**28 samples would have taken a
    quarter of an hour. Version 2 refuses more than 2**22 samples a stream before decoding any, and its encoder
    refuses to make one (a zero-stride array stands for the pixels: only its shape counts)."""
    image = pydicom.dcmread(corpus_dir / "images" / "pyradiomics-brain2-010.dcm")
    fmt = PixelFormat(int(image.BitsStored), bool(image.PixelRepresentation))
    pixels = np.ascontiguousarray(image.pixel_array[None, 100:116, 100:116, None].astype(fmt.dtype))
    stream = cnn.compress_pixels(pixels, fmt, QUALITY_CODES[4])
    forged = dataclasses.replace(stream, columns=8192, frames=33, layers=tuple(
        dataclasses.replace(stream.layers[0], frame=frame) for frame in range(33)))
    served = MvmicCodec.load()  # decodes version 2 through the CNN beside it, as the service does
    for codec in (cnn, served):
        with pytest.raises(ValueError, match="4325376 samples: mvmicnet-w97-v2 .* codes at most 4194304 samples"):
            codec.decompress(forged)
    with pytest.raises(CodecInputError, match="codes at most 4194304 samples a stream"):
        cnn.compress_pixels(np.broadcast_to(np.zeros(1, fmt.dtype), (1, 2048, 2049, 1)), fmt, QUALITY_CODES[4])


def test_a_stream_whose_geometry_is_not_its_headers_is_refused(table, corpus_dir) -> None:
    source = (corpus_dir / "images" / "pyradiomics-brain2-010.dcm").read_bytes()
    compressed = dicom_to_mvm(source, MvmicCodec.load(), quality=4)
    stream = Bitstream.from_bytes(compressed.data)
    forged = dataclasses.replace(stream, rows=8192, columns=8192).to_bytes()  # a valid CRC, a lying header
    with pytest.raises(ValueError, match="geometry 8192 x 8192"):
        mvm_to_dicom(forged, table)


@pytest.mark.parametrize("change", [{"signed": True}, {"bits_stored": 16}, {"photometric": "MONOCHROME1"}])
def test_a_stream_whose_pixel_format_is_not_its_headers_is_refused(corpus_dir, change) -> None:
    """Found by fuzzing (fuzz/mvm_decoder.py): a stream and its DICOM header (or the header of the instance
    holding it) that disagree on sign, bits stored or photometric interpretation decoded to an instance that
    misdescribed its pixels."""
    source = (corpus_dir / "images" / "pyradiomics-brain2-010.dcm").read_bytes()
    compressed = dicom_to_mvm(source, None, max_error=0)
    forged = dataclasses.replace(Bitstream.from_bytes(compressed.data), **change).to_bytes()
    with pytest.raises(ValueError, match="is not its DICOM header's"):
        mvm_to_dicom(forged, None)
    instance = pydicom.dcmread(io.BytesIO(mvm_instance(compressed, None)))
    keyword, value = {"signed": ("PixelRepresentation", 1), "bits_stored": ("BitsStored", 16),
                      "photometric": ("PhotometricInterpretation", "MONOCHROME1")}[next(iter(change))]
    setattr(instance, keyword, value)
    with pytest.raises(ValueError, match="is not the instance's header's"):
        instance_to_dicom(instance, None)


def test_an_instance_whose_pixel_data_is_not_encapsulated_items_is_refused(corpus_dir) -> None:
    """Found by fuzzing (fuzz/mvm_instance.py): pydicom's ValueError on a damaged item tag escaped the decoding
    of an MVMIC instance unexplained."""
    source = (corpus_dir / "images" / "pyradiomics-brain2-010.dcm").read_bytes()
    instance = read_dataset(mvm_instance(dicom_to_mvm(source, None, max_error=0), None))
    instance.PixelData = b"\xfe\xff\x00\xe0" + bytes(4) + b"\x53\x48\x0a\x00" + bytes(8)  # item, then not one
    with pytest.raises(DicomInputError, match="the Pixel Data of an MVMIC instance is not encapsulated items: "
                                              "Unexpected tag"):
        instance_to_dicom(instance, None)


def test_a_header_element_that_cannot_be_decoded_is_named(corpus_dir) -> None:
    """Found by fuzzing (fuzz/mvm_decoder.py): Columns with a VR that is none (bytes 55 60) in the DICOM header
    layer, or in the instance holding the stream: pydicom's NotImplementedError escaped the check of the
    geometry, which read it first."""
    source = (corpus_dir / "images" / "pyradiomics-brain2-010.dcm").read_bytes()
    compressed = dicom_to_mvm(source, None, max_error=0)
    stream = Bitstream.from_bytes(compressed.data)
    columns, damaged = b"\x28\x00\x11\x00US", b"\x28\x00\x11\x00\x55\x60"
    header = zlib.compress(zlib.decompress(stream.layers[-1].payload).replace(columns, damaged))
    forged = dataclasses.replace(stream, layers=(*stream.layers[:-1], Layer(LayerKind.DICOM_HEADER, 0, header)))
    with pytest.raises(ValueError, match=r"the DICOM header layer is damaged: header element cannot be decoded: "
                                         r".*\(0028,0011\)"):
        mvm_to_dicom(forged.to_bytes(), None)
    instance = mvm_instance(compressed, None)
    assert instance.count(columns) == 1
    with pytest.raises(DicomInputError, match=r"header element cannot be decoded: .*\(0028,0011\)"):
        instance_to_dicom(read_dataset(instance.replace(columns, damaged)), None)


def test_a_header_that_is_cut_short_or_cannot_be_written_back_is_refused_in_one_line(corpus_dir) -> None:
    """Found by fuzzing (fuzz/mvm_decoder.py): a DICOM header layer whose deflated stream was cut short decoded
    from what inflated (a partial header); one holding an element pydicom cannot write (group 0000, a command
    element) decoded to an instance the service then failed to write (a 500, not a 400), and the search for the
    element at fault failed on one that pydicom cannot decode. The refusal names the element and quotes
    pydicom's error in one line, not the traceback pydicom appends to it."""
    source = (corpus_dir / "images" / "pyradiomics-brain2-010.dcm").read_bytes()
    compressed = dicom_to_mvm(source, None, max_error=0)
    stream = Bitstream.from_bytes(compressed.data)
    header = zlib.decompress(stream.layers[-1].payload)
    body = 144 + int.from_bytes(header[140:144], "little")  # after the file meta (its group length at 140)
    command = b"\x00\x00\x00\x00UL\x04\x00" + bytes(4)  # CommandGroupLength (0000,0000)
    odd_length = b"\xdf\x7f\x10\x10SL\x02\x00\x01\x02"  # private (7FDF,1010) SL of 2 bytes: not decodable
    for payload, message in ((stream.layers[-1].payload[:-8], "cut short"),
                             (zlib.compress(header[:body] + command + header[body:]),
                              "cannot be written back as DICOM: Command Set elements"),
                             (zlib.compress(header + odd_length), "cannot be decoded: .*\\(7FDF,1010\\)")):
        forged = dataclasses.replace(stream, layers=(*stream.layers[:-1], Layer(LayerKind.DICOM_HEADER, 0, payload)))
        with pytest.raises(ValueError, match=f"the DICOM header layer is damaged: .*{message}") as refused:
            mvm_to_dicom(forged.to_bytes(), None)
        assert "\n" not in str(refused.value)
    instance = read_dataset(mvm_instance(compressed, None))
    instance["PatientName"] = DataElement(0x00100010, "US", "not a number")
    with pytest.raises(ValueError, match="cannot be written back as DICOM: .*\\(0010,0010\\)"):
        instance_to_dicom(instance, None)


def test_a_source_without_instance_uid_decodes_to_a_derivative(corpus_dir) -> None:
    dataset = pydicom.dcmread(corpus_dir / "images" / "pyradiomics-brain2-010.dcm")
    del dataset.SOPInstanceUID
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    compressed = dicom_to_mvm(buffer.getvalue(), MvmicCodec.load(), quality=4)
    decoded = mvm_to_dicom(compressed.data, TableCodec.load())
    assert decoded.LossyImageCompression == "01" and "SourceImageSequence" not in decoded
    assert decoded.SOPInstanceUID


def test_frames_on_threads_give_the_same_stream_and_pixels(table, corpus_dir, corpus_manifest) -> None:
    from mvmic.cli import _on_all_cores

    _, image = _frames(corpus_dir, corpus_manifest)[0]
    pixels = np.ascontiguousarray(np.concatenate([image.pixels[:1], image.pixels[:1] // 2, image.pixels[:1] // 3]))
    one = table.compress_pixels(pixels, image.format, QUALITY_CODES[4], threads=1)
    two = table.compress_pixels(pixels, image.format, QUALITY_CODES[4], threads=2)
    assert one.to_bytes() == two.to_bytes()
    assert np.array_equal(table.decompress(one, threads=1), table.decompress(one, threads=3))
    everywhere = _on_all_cores(TableCodec.load())  # what `mvmic compress` / `decompress` use
    assert everywhere.threads >= 1 and table.threads == 1
