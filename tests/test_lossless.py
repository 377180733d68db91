"""The exact layer (mvmic.model.lossless): lossless and near-lossless coding of real corpus frames."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import subprocess
import sys
import zlib

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from mvmic.model.bitstream import Bitstream, Layer, LayerKind, WeightsMismatchError
from mvmic.model.codec import MvmicCodec, max_error_of
from mvmic.model.errors import CodecInputError
from mvmic.model.lossless import stream as exact_stream
from mvmic.model.lossless.layer import ExactLayerError, decode_frame, default_stripes, encode_frame
from mvmic.model.lossless.plane_coder import KNOWN_STREAM, LS_TAPS, decode_plane, encode_plane, known_answer_plane
from mvmic.model.rate_control import compress_at
from mvmic.pixels import PixelFormat, header_bytes, read_dicom
from mvmic.transcode import mvm_to_dicom, needs_weights

# one frame of each modality in the test split, and the colour ones
FRAMES = ("pyradiomics-lung1-030", "pyradiomics-brain2-010", "pydicom-JPEG-LL", "pydicom-US1_UNCR",
          "pydicom-examples_rgb_color", "pydicom-693_UNCR")


@pytest.fixture(scope="module")
def images(corpus_dir, corpus_manifest):
    entries = {entry.id: entry for entry in corpus_manifest.entries}
    return {name: entries[name].read(corpus_dir) for name in FRAMES}


@pytest.fixture(scope="module")
def codec() -> MvmicCodec:
    return MvmicCodec.load()


def _sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


@pytest.mark.parametrize("name", FRAMES)
def test_lossless_is_exact_on_real_frames(images, codec, name) -> None:
    image = images[name]
    stream = compress_at(codec, image.pixels, image.format, max_error=0)
    assert [layer.kind for layer in stream.layers] == [LayerKind.EXACT] * image.frames
    decoded = codec.decompress(Bitstream.from_bytes(stream.to_bytes()))
    assert decoded.dtype == image.pixels.dtype and _sha(decoded) == _sha(image.pixels)
    assert max_error_of(stream) == 0
    raw_bits = image.pixels.size * image.format.dtype.itemsize * 8
    assert len(stream.to_bytes()) * 8 < raw_bits / 2  # these frames compress at least 2:1 losslessly


@pytest.mark.parametrize(("name", "max_error"), [("pyradiomics-lung1-030", 1), ("pyradiomics-brain2-010", 2),
                                                  ("pydicom-US1_UNCR", 4), ("pydicom-693_UNCR", 16),
                                                  ("pydicom-JPEG-LL", 3)])
def test_near_lossless_keeps_every_sample_within_the_bound(images, codec, name, max_error) -> None:
    image = images[name]
    lossless = len(compress_at(codec, image.pixels, image.format, max_error=0).to_bytes())
    stream = compress_at(codec, image.pixels, image.format, max_error=max_error)
    error = np.abs(codec.decompress(stream).astype(np.int64) - image.pixels.astype(np.int64))
    assert error.max() == max_error  # within the bound, and using it
    assert max_error_of(stream) == max_error and len(stream.to_bytes()) < lossless


def test_signed_and_tiny_images_of_every_size_are_exact() -> None:
    rng = np.random.default_rng(5)
    for bits, signed in ((16, True), (16, False), (8, False), (12, True), (1, False)):
        fmt = PixelFormat(bits, signed)
        for rows, columns in ((1, 1), (1, 7), (5, 1), (2, 2), (3, 257), (15, 16), (40, 33)):
            frame = rng.integers(fmt.min_value, fmt.max_value + 1, size=(rows, columns, 1)).astype(fmt.dtype)
            for max_error in (0, 2):
                decoded = decode_frame(encode_frame(frame, fmt, max_error), rows, columns, fmt)
                assert decoded.dtype == fmt.dtype and decoded.shape == frame.shape
                assert np.abs(decoded.astype(np.int64) - frame).max() <= max_error


def test_extreme_values_at_16_bits_survive(images) -> None:
    fmt = PixelFormat(16, False)
    frame = np.zeros((64, 64, 1), dtype=np.uint16)
    frame[::2, ::3] = 65535  # the largest errors a 16-bit prediction can make
    assert np.array_equal(decode_frame(encode_frame(frame, fmt, 0), 64, 64, fmt), frame)


def test_stripes_decode_alike_on_one_or_two_threads(images) -> None:
    image = images["pyradiomics-lung1-030"]
    frame = image.pixels[0]
    one = encode_frame(frame, image.format, 0, stripes=2, threads=1)
    assert encode_frame(frame, image.format, 0, stripes=2, threads=2) == one  # the bytes do not depend on threads
    for threads in (1, 2):
        assert np.array_equal(decode_frame(one, 512, 512, image.format, threads=threads), frame)
    single = encode_frame(frame, image.format, 0, stripes=1)
    assert len(one) < 1.02 * len(single)  # a stripe costs little
    assert default_stripes(512) == 1 and default_stripes(1024) == 2


def test_damaged_layers_are_refused_or_decode_to_the_right_shape(images) -> None:
    image = images["pyradiomics-brain2-010"]
    payload = bytearray(encode_frame(image.pixels[0], image.format, 0))
    with pytest.raises(ExactLayerError):
        decode_frame(bytes(payload[:10]), 256, 256, image.format)
    payload[len(payload) // 2] ^= 0xFF  # inside the range coder's bytes: garbage, never out of bounds
    decoded = decode_frame(bytes(payload), 256, 256, image.format)
    assert decoded.shape == (256, 256, 1) and not np.array_equal(decoded, image.pixels[0])


def test_a_coder_buffer_too_small_reports_the_size_it_needs() -> None:
    plane = (np.arange(32 * 32, dtype=np.int32).reshape(32, 32) * 997) % 4096
    data = np.zeros(16, dtype=np.uint8)
    needed = encode_plane(plane.copy(), 4095, 0, data, np.zeros((24, LS_TAPS), dtype=np.int64))
    assert needed > 16


def test_lossless_streams_name_their_format_version(images, codec) -> None:
    image = images["pydicom-JPEG-LL"]
    data = compress_at(codec, image.pixels, image.format, max_error=0).to_bytes()
    assert data[3] == 2  # version 2: builds that read version 1 only refuse it by name
    lossy = codec.compress_pixels(image.pixels, image.format, 36).to_bytes()
    assert lossy[3] == 1


def test_the_coder_loads_from_the_cache_not_a_compilation() -> None:
    """The kernels come from numba's on-disk cache (make warms it): a fresh process codes a frame
    without compiling anything."""
    code = ("from mvmic.model.lossless.warm import warm; from mvmic.model.lossless.plane_coder import decode_plane, encode_plane; "
            "warm(); kernels = (encode_plane, decode_plane); "
            "print(sum(sum(k.stats.cache_hits.values()) for k in kernels), "
            "sum(sum(k.stats.cache_misses.values()) for k in kernels))")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)  # fills the cache if empty
    hits, misses = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                  text=True).stdout.split()
    assert int(hits) >= 2 and int(misses) == 0


def test_cli_codes_exact_streams_without_the_weights_or_torch(tmp_path, corpus_dir) -> None:
    """`mvmic compress --mode lossless` and `mvmic decompress` of the result never load the learned
    codec: exact streams need no weights, so start-up is Python, pydicom and numba only."""
    source = corpus_dir / "images" / "pyradiomics-brain2-010.dcm"
    compressed, decoded = tmp_path / "x.mvm", tmp_path / "x.dcm"
    code = ("import sys; from mvmic.cli import main; "
            f"assert main(['compress', {str(source)!r}, {str(compressed)!r}, '--mode', 'lossless']) == 0; "
            f"assert main(['decompress', {str(compressed)!r}, {str(decoded)!r}]) == 0; "
            "print(sorted(m for m in ('torch', 'mvmic.model.codec') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith("[]")
    assert _sha(read_dicom(decoded).pixels) == _sha(read_dicom(source).pixels)


def test_exact_streams_decode_without_a_codec_and_lossy_ones_do_not(images, codec) -> None:
    image = images["pydicom-JPEG-LL"]
    header = Layer(LayerKind.DICOM_HEADER, 0, zlib.compress(header_bytes(image.header)))
    lossless = compress_at(None, image.pixels, image.format, max_error=0, extra_layers=(header,)).to_bytes()
    assert not needs_weights(lossless)
    assert _sha(read_dicom(_part10(mvm_to_dicom(lossless, None))).pixels) == _sha(image.pixels)
    lossy = compress_at(codec, image.pixels, image.format, quality=4, extra_layers=(header,)).to_bytes()
    assert needs_weights(lossy)
    with pytest.raises(WeightsMismatchError, match="needs that model's weights"):
        mvm_to_dicom(lossy, None)


def test_a_stream_larger_than_the_decoders_take_is_refused_before_decoding(images, codec) -> None:
    """A stream's frames were bounded one by one (8192 x 8192), not together: a forged stream of a few KB
    declaring a frame's layer again and again decoded 4096 x 4096 frames until memory ran out (a 4-frame one
    took 8.6 s here). The decoders refuse more than 2**28 samples a stream before allocating any, and the
    encoders refuse to make such a stream (a zero-stride array stands for the pixels: only its shape counts)."""
    image = images["pyradiomics-brain2-010"]
    exact = compress_at(None, image.pixels, image.format, max_error=0)
    lossy = compress_at(codec, image.pixels, image.format, quality=4)
    for stream, decoder in ((exact, codec), (lossy, codec), (exact, None)):
        forged = dataclasses.replace(stream, rows=4096, columns=4096, frames=17,
                                     layers=tuple(Layer(stream.layers[0].kind, frame, stream.layers[0].payload)
                                                  for frame in range(17)))
        with pytest.raises(ValueError, match="17 frames of 4096 x 4096 x 1 exceed this decoder's limit of "
                                             "268435456 samples a stream"):
            (decoder or exact_stream).decompress(forged)
    for shape in ((17, 4096, 4096, 1), (1, 8192, 8193, 1), (6, 4096, 4096, 3)):
        pixels = np.broadcast_to(np.zeros(1, image.pixels.dtype), shape)
        for max_error in (0, None):
            with pytest.raises(CodecInputError, match="image too large: .* exceed this decoder's limit"):
                compress_at(codec, pixels, image.format, max_error=max_error)


def _part10(dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_the_known_answer_is_this_source_s() -> None:
    """KNOWN_STREAM pins the format; it is checked against kernels compiled afresh from the source (not
    numba's cache, which a change to range_coder.py alone would not refresh)."""
    import numba

    plane, coefficients = known_answer_plane()
    data = np.zeros(4096, dtype=np.uint8)
    used = numba.njit(error_model="numpy")(encode_plane.py_func)(plane.copy(), 4095, 0, data, coefficients)
    assert data[:used].tobytes() == KNOWN_STREAM
    decoded = np.zeros_like(plane)
    numba.njit(error_model="numpy")(decode_plane.py_func)(decoded, 4095, 0, data[:used].copy(), coefficients)
    assert np.array_equal(decoded, plane)


def test_an_instance_without_a_sop_instance_uid_round_trips_losslessly(tmp_path, mvmic) -> None:
    """Real files lack UIDs now and then: lossless gives the instance back as it was, UID-less too."""
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del dataset.SOPInstanceUID
    source, compressed, decoded = tmp_path / "x.dcm", tmp_path / "x.mvm", tmp_path / "y.dcm"
    dataset.save_as(source)
    assert mvmic("compress", str(source), str(compressed), "--mode", "lossless").returncode == 0
    run = mvmic("decompress", str(compressed), str(decoded))
    assert run.returncode == 0 and "SOP Instance UID none" in run.stdout, run.stderr
    back = pydicom.dcmread(decoded)
    assert "SOPInstanceUID" not in back and np.array_equal(back.pixel_array, dataset.pixel_array)
