"""Property-based tests (hypothesis): whatever the geometry, bit depth, signedness, frame count and samples of
an uncompressed image, lossless coding gives back its Pixel Data byte for byte, near-lossless keeps every
stored sample within its bound, and the lossy base layer decodes to the image's shape and range."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_dicom_oddities import dicom_instance

from mvmic.model.codec import MvmicCodec
from mvmic.pixels import read_dicom
from mvmic.service.errors import STATUS_BY_ERROR
from mvmic.transcode import dicom_to_mvm, mvm_to_dicom

# Small images keep each example to milliseconds; the examples are drawn afresh on every run (no database).
PROPERTY_SETTINGS = settings(max_examples=60, deadline=None, database=None,
                             suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@st.composite
def images(draw) -> tuple[bytes, np.ndarray, int]:
    """A Part 10 image: (file, stored values (frames, rows, columns, samples) as read, BitsStored)."""
    bits_allocated = draw(st.sampled_from([8, 16]))
    bits_stored = draw(st.integers(1, bits_allocated))
    signed = draw(st.booleans())
    samples = draw(st.sampled_from([1, 3]))
    photometric = draw(st.sampled_from(["MONOCHROME1", "MONOCHROME2"] if samples == 1 else
                                       ["RGB", "YBR_FULL"] + ([] if signed else ["YBR_FULL_422"])))
    frames, rows, columns = draw(st.integers(1, 3)), draw(st.integers(1, 24)), draw(st.integers(1, 24))
    if photometric == "YBR_FULL_422":
        columns += columns % 2  # pairs of pixels share their chroma
    low, high = (-(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1) if signed else (0, (1 << bits_stored) - 1)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (frames, rows, columns, samples)
    if draw(st.booleans()):  # a ramp that prediction codes well, or noise
        ramp = np.add.outer(np.arange(rows), np.arange(columns))[None, ..., None] + np.arange(samples)
        values = low + (np.broadcast_to(ramp, shape) % (high - low + 1))
    else:
        values = rng.integers(low, high + 1, shape)
    container = np.dtype(f"<{'i' if signed else 'u'}{bits_allocated // 8}")
    stored = values
    if photometric == "YBR_FULL_422":
        values = values.copy()
        values[:, :, 1::2, 1:] = values[:, :, 0::2, 1:]  # the chroma of a pair, as reading repeats it
        stored = np.concatenate([values[..., 0].reshape(frames, rows, columns // 2, 2),
                                 values[:, :, 0::2, 1:]], axis=-1)  # Y1 Y2 Cb Cr
    data = dicom_instance(stored.astype(container).tobytes(), rows, columns, bits_allocated=bits_allocated,
                          bits_stored=bits_stored, signed=signed, samples=samples, frames=frames,
                          photometric=photometric)
    return data, values, bits_stored


@pytest.fixture(scope="module")
def codec() -> MvmicCodec:
    return MvmicCodec.load()


@PROPERTY_SETTINGS
@given(image=images())
def test_lossless_gives_back_the_pixel_data_byte_for_byte(image) -> None:
    data = image[0]
    decoded = mvm_to_dicom(dicom_to_mvm(data, None, max_error=0).data, None)
    original = pydicom.dcmread(io.BytesIO(data))
    assert decoded.PixelData == original.PixelData and decoded.SOPInstanceUID == original.SOPInstanceUID


@PROPERTY_SETTINGS
@given(image=images(), bound=st.integers(1, 16))
def test_near_lossless_keeps_every_sample_within_its_bound(image, bound: int) -> None:
    data, values, _ = image
    decoded = mvm_to_dicom(dicom_to_mvm(data, None, max_error=bound).data, None)
    buffer = io.BytesIO()
    decoded.save_as(buffer, enforce_file_format=True)
    pixels = read_dicom(buffer.getvalue()).pixels
    assert np.abs(pixels.astype(np.int64) - values).max() <= bound


@PROPERTY_SETTINGS
@given(image=images(), quality=st.integers(1, 8))
def test_the_lossy_base_layer_decodes_to_the_images_shape_and_range(codec, image, quality: int) -> None:
    data, values, bits_stored = image
    if min(values.shape[1:3]) < 2:  # the lossy base layer codes from 2 x 2 up: a clear refusal below
        with pytest.raises(ValueError, match="too small"):
            dicom_to_mvm(data, codec, quality)
        return
    decoded = mvm_to_dicom(dicom_to_mvm(data, codec, quality).data, codec)
    buffer = io.BytesIO()
    decoded.save_as(buffer, enforce_file_format=True)
    image = read_dicom(buffer.getvalue())
    assert image.pixels.shape == values.shape
    assert image.format.min_value <= image.pixels.min() and image.pixels.max() <= image.format.max_value
    assert image.format.bits_stored == bits_stored


@pytest.fixture(scope="module")
def streams(codec) -> dict[str, bytes]:
    """A lossless, a near-lossless and a lossy .mvm of a small 2-frame CT-like image (the DICOM header inside)."""
    values = np.add.outer(np.arange(24) * 40, np.arange(20) * 7)[None, ..., None] + np.arange(2)[:, None, None, None]
    data = dicom_instance(values.astype("<u2").tobytes(), 24, 20, bits_stored=12, frames=2)
    return {"lossless": dicom_to_mvm(data, None, max_error=0).data,
            "near-lossless": dicom_to_mvm(data, None, max_error=2).data,
            "lossy": dicom_to_mvm(data, codec, 4).data}


def _with_crc(body: bytes) -> bytes:
    """``body`` followed by its CRC32, as the container ends: so that damage reaches the parser and decoders."""
    return body + zlib.crc32(body).to_bytes(4, "little")


@PROPERTY_SETTINGS
@given(kind=st.sampled_from(["lossless", "near-lossless", "lossy"]), data=st.data())
def test_a_damaged_stream_is_refused_with_a_clear_error(codec, streams, kind: str, data) -> None:
    """Bytes flipped, cut or inserted anywhere (the CRC made to match): decoding gives a DICOM instance or raises
    one of the input errors the service answers with a 4xx (STATUS_BY_ERROR; the CLI with a one-line message),
    nothing else: a bare ValueError would be a bug's 500."""
    body = bytearray(streams[kind][:-4])
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(body) - 1))
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            body[at] ^= data.draw(st.integers(1, 255))
        elif action == "cut":
            del body[at: at + data.draw(st.integers(1, 16))]
        else:
            body[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    damaged = _with_crc(bytes(body))
    try:
        decoded = mvm_to_dicom(damaged, codec)
    except tuple(kind for kind, _ in STATUS_BY_ERROR):
        return
    assert decoded.Rows * decoded.Columns > 0
