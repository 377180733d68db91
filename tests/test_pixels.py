"""Tests for mvmic.pixels on real DICOM files: the corpus and pydicom's test data."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate_extended, generate_frames
from pydicom.pixels import apply_color_lut
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian

from mvmic.corpus.manifest import CorpusEntry, Manifest
from mvmic.pixels import (
    DicomInputError,
    NativeImage,
    PixelFormat,
    UnsupportedPixelFormatError,
    dicom_bytes,
    read_dicom,
    to_dataset,
    write_dicom,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
CORPUS_DIR = REPO_ROOT / "data" / "corpus"

# Some pydicom test files are anonymised with hashes where UIDs belong; pydicom warns on every read.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning"),
    pytest.mark.filterwarnings("ignore:The value length .* exceeds the maximum length:UserWarning"),
]

# File meta elements a rewrite must change: group length, transfer syntax, implementation class/version.
REWRITTEN_META = {Tag(0x0002, 0x0000), Tag(0x0002, 0x0010), Tag(0x0002, 0x0012), Tag(0x0002, 0x0013)}
PIXEL_DATA = Tag(0x7FE0, 0x0010)
# Byte size of the words of the binary VRs that pydicom keeps as raw bytes in the file's byte order.
WORD_BYTES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}

Key = tuple[Any, ...]


# ---------------------------------------------------------------- helpers


def _corpus_entries() -> list[CorpusEntry | None]:
    # Parametrisation happens at collection, before fixtures; None makes the test fail, never skip.
    path = CORPUS_DIR / "manifest.json"
    return Manifest.load(path).entries if path.is_file() else [None]


def _require(entry: CorpusEntry | None) -> CorpusEntry:
    if entry is None:
        pytest.fail(f"no corpus at {CORPUS_DIR}: run `mvmic data prepare` (make test does) before pytest")
    return entry


def _testdata(name: str) -> str:
    path = get_testdata_file(name)
    if path is None:
        pytest.fail(f"pydicom test file {name} is not installed (pydicom-data missing?)")
    return str(path)


def _elements(ds: Dataset, big_endian: bool = False, prefix: Key = ()) -> Iterator[tuple[Key, Any]]:
    """Every element, nested ones included, as (tag path, (VR, value)); words of big-endian files made little."""
    for elem in ds:
        key = (*prefix, elem.tag)
        if elem.VR == "SQ":
            yield key, ("SQ", len(elem.value))
            for index, item in enumerate(elem.value):
                yield from _elements(item, big_endian, (*key, index))
            continue
        value = elem.value
        size = WORD_BYTES.get(elem.VR)
        if big_endian and size and isinstance(value, bytes):
            value = np.frombuffer(value, f">u{size}").astype(f"<u{size}").tobytes()
        yield key, (elem.VR, value)


def _header_differences(original: Dataset, written: Dataset, ignore: AbstractSet[int] = frozenset()) -> list[str]:
    """Elements that differ between two datasets, skipping PixelData and the ``ignore`` tags at any depth."""
    big_endian = not original.original_encoding[1]

    def table(ds: Dataset, big: bool) -> dict[Key, Any]:
        return {k: v for k, v in _elements(ds, big) if k[-1] != PIXEL_DATA and k[-1] not in ignore}

    old, new = table(original, big_endian), table(written, False)
    return [f"{key}: {str(old.get(key))[:80]} != {str(new.get(key))[:80]}"
            for key in sorted(old.keys() | new.keys(), key=str) if old.get(key) != new.get(key)]


def _meta_differences(original: Dataset, written: Dataset) -> list[str]:
    old = {e.tag: e.value for e in original.file_meta if e.tag not in REWRITTEN_META}
    new = {e.tag: e.value for e in written.file_meta if e.tag not in REWRITTEN_META}
    # A file meta must name the dataset's own SOP instance; pydicom corrects files where they disagree.
    for meta_key, ds_key in (("MediaStorageSOPClassUID", "SOPClassUID"), ("MediaStorageSOPInstanceUID", "SOPInstanceUID")):
        if ds_key in original:
            old[Tag(meta_key)] = original[ds_key].value
    return [f"file meta {tag}: {old.get(tag)!r} != {new.get(tag)!r}"
            for tag in sorted(old.keys() | new.keys()) if old.get(tag) != new.get(tag)]


def _round_trip(image: NativeImage) -> tuple[bytes, NativeImage]:
    data = dicom_bytes(image)
    return data, read_dicom(data)


def _assert_same_image(actual: NativeImage, expected: NativeImage) -> None:
    assert actual.format == expected.format
    assert actual.pixels.dtype == expected.pixels.dtype
    assert actual.pixels.shape == expected.pixels.shape
    assert np.array_equal(actual.pixels, expected.pixels)


def _dicom_from(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _corpus_file(name: str) -> Path:
    path = CORPUS_DIR / "images" / name
    if not path.is_file():
        pytest.fail(f"corpus file {path} is missing: run `mvmic data prepare` before pytest")
    return path


# ---------------------------------------------------------------- 1. round trip of every corpus file


@pytest.mark.parametrize("entry", _corpus_entries(), ids=lambda e: e.id if e else "corpus-missing")
def test_corpus_file_round_trips_pixels_and_header(entry: CorpusEntry | None) -> None:
    path = CORPUS_DIR / _require(entry).path
    image = read_dicom(path)
    data, again = _round_trip(image)
    _assert_same_image(again, image)

    original, written = pydicom.dcmread(path), pydicom.dcmread(io.BytesIO(data))
    assert written.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert _header_differences(original, written) == []
    assert _meta_differences(original, written) == []


# ---------------------------------------------------------------- 2. compressed and big-endian originals


@pytest.mark.parametrize(
    ("name", "reference", "frames"),
    [
        ("MR2_J2KR.dcm", "MR2_UNCR.dcm", 1),  # JPEG 2000 lossless
        ("emri_small_jpeg_ls_lossless.dcm", "emri_small.dcm", 10),  # JPEG-LS lossless
        ("emri_small_RLE.dcm", "emri_small.dcm", 10),  # RLE
        ("emri_small_big_endian.dcm", "emri_small.dcm", 10),  # Explicit VR Big Endian
    ],
)
def test_lossless_encodings_decode_to_the_uncompressed_pixels(name: str, reference: str, frames: int) -> None:
    image, expected = read_dicom(_testdata(name)), read_dicom(_testdata(reference))
    assert image.frames == frames
    _assert_same_image(image, expected)
    data, again = _round_trip(image)
    _assert_same_image(again, expected)

    original, written = pydicom.dcmread(_testdata(name)), pydicom.dcmread(io.BytesIO(data))
    assert written.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert written.SOPInstanceUID == original.SOPInstanceUID
    assert written.PatientID == original.PatientID


def test_jpeg_lossless_signed_nm_decodes_and_round_trips() -> None:
    path = _testdata("JPEG-LL.dcm")
    image = read_dicom(path)
    assert image.format == PixelFormat(bits_stored=16, signed=True, samples_per_pixel=1, photometric="MONOCHROME2")
    assert image.pixels.dtype == np.int16
    # pydicom's own decoder is the independent reference for the values.
    assert np.array_equal(image.frame(0), pydicom.dcmread(path).pixel_array)
    data, again = _round_trip(image)
    _assert_same_image(again, image)
    written = pydicom.dcmread(io.BytesIO(data))
    original = pydicom.dcmread(path, stop_before_pixels=True)
    assert (written.SOPInstanceUID, written.PatientID, written.Modality) == (
        original.SOPInstanceUID, original.PatientID, "NM")


def test_big_endian_palette_image_keeps_its_colour_lut(tmp_path: Path) -> None:
    source = _testdata("gdcm-US-ALOKA-16_big.dcm")
    image = read_dicom(source)
    assert image.format.photometric == "PALETTE COLOR"
    target = tmp_path / "palette.dcm"
    write_dicom(target, image)

    original, written = pydicom.dcmread(source), pydicom.dcmread(target)
    assert written.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (written.SOPInstanceUID, written.PatientID) == (original.SOPInstanceUID, original.PatientID)
    # The LUT words were big-endian; unswapped they would map indices to the wrong colours.
    colours, expected = apply_color_lut(written.pixel_array, written), apply_color_lut(original.pixel_array, original)
    assert colours.shape == (480, 640, 3)
    assert np.array_equal(colours, expected)
    assert len(np.unique(expected)) > 1  # a constant image would compare equal whatever the LUT


def test_extended_offset_table_is_dropped_with_the_encoding() -> None:
    # An offset table into compressed frames is wrong once the frames are stored native.
    ds = pydicom.dcmread(_testdata("emri_small_RLE.dcm"))
    frames = list(generate_frames(ds.PixelData, number_of_frames=ds.NumberOfFrames))
    ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(frames)
    image = read_dicom(_dicom_from(ds))
    _assert_same_image(image, read_dicom(_testdata("emri_small.dcm")))
    written = pydicom.dcmread(io.BytesIO(dicom_bytes(image)))
    assert "ExtendedOffsetTable" not in written
    assert "ExtendedOffsetTableLengths" not in written
    assert written.SOPInstanceUID == ds.SOPInstanceUID


def _readable_pydicom_files() -> Iterator[tuple[Path, NativeImage]]:
    for path in sorted({Path(p) for p in get_testdata_files("**/*") if Path(p).is_file()}):
        try:
            yield path, read_dicom(path)
        except DicomInputError:
            continue  # rejected inputs have their own tests below


# Differences a rewrite is meant to make: decoded colour space and interleaving, elements describing the
# old encoding, and retired group lengths (which pydicom does not write).
REWRITTEN_PIXEL_DESCRIPTION = {
    Tag("PhotometricInterpretation"), Tag("PlanarConfiguration"),
    Tag("ExtendedOffsetTable"), Tag("ExtendedOffsetTableLengths"), Tag("DataSetTrailingPadding"),
}


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's test files are odd on purpose, and say so
def test_every_readable_pydicom_file_round_trips() -> None:
    # All encodings and byte orders pydicom ships: pixels exact, every other element kept.
    failures, count = [], 0
    for path, image in _readable_pydicom_files():
        count += 1
        data, again = _round_trip(image)
        if not (again.format == image.format and again.pixels.dtype == image.pixels.dtype
                and np.array_equal(again.pixels, image.pixels)):
            failures.append(f"{path.name}: pixels or format changed")
        original, written = pydicom.dcmread(path), pydicom.dcmread(io.BytesIO(data))
        ignore = REWRITTEN_PIXEL_DESCRIPTION | {e.tag for e in original if e.tag.element == 0}
        failures += [f"{path.name}: {d}" for d in _header_differences(original, written, ignore)]
        failures += [f"{path.name}: {d}" for d in _meta_differences(original, written)]
    assert count >= 100, f"only {count} pydicom test files were readable"
    assert failures == []


# ---------------------------------------------------------------- 3. shapes


def test_multi_frame_shape() -> None:
    image = read_dicom(_testdata("emri_small.dcm"))
    assert image.pixels.shape == (10, 64, 64, 1)
    assert image.frames == 10
    assert image.frame(0).shape == (64, 64)
    assert np.array_equal(image.frame(9), image.pixels[9, :, :, 0])


def test_rgb_shape_and_dtype() -> None:
    image = read_dicom(_testdata("US1_UNCR.dcm"))
    assert image.pixels.shape == (1, 480, 640, 3)
    assert image.pixels.dtype == np.uint8
    assert image.format == PixelFormat(bits_stored=8, signed=False, samples_per_pixel=3, photometric="RGB")
    assert image.frame(0).shape == (480, 640, 3)
    # Colour-by-pixel: the three samples of a pixel are not all equal in a real colour ultrasound image.
    assert not np.array_equal(image.frame(0)[..., 0], image.frame(0)[..., 1])


def test_read_accepts_path_bytes_and_file_object() -> None:
    path = _testdata("MR_small.dcm")
    from_path = read_dicom(path)
    with open(path, "rb") as stream:
        from_stream = read_dicom(stream)
    _assert_same_image(read_dicom(Path(path).read_bytes()), from_path)
    _assert_same_image(from_stream, from_path)
    assert from_path.pixels.shape == (1, 64, 64, 1)


@pytest.mark.parametrize(
    ("fmt", "peak", "low", "high", "dtype"),
    [
        (PixelFormat(12, False), 4095, 0, 4095, np.uint16),
        (PixelFormat(14, True), 16383, -8192, 8191, np.int16),
        (PixelFormat(8, False, 3, "RGB"), 255, 0, 255, np.uint8),
        (PixelFormat(16, True), 65535, -32768, 32767, np.int16),
    ],
)
def test_pixel_format_ranges(fmt: PixelFormat, peak: int, low: int, high: int, dtype: type) -> None:
    assert (fmt.peak, fmt.min_value, fmt.max_value, fmt.dtype) == (peak, low, high, np.dtype(dtype))


@pytest.mark.parametrize("entry", _corpus_entries(), ids=lambda e: e.id if e else "corpus-missing")
def test_corpus_values_lie_in_the_bits_stored_range(entry: CorpusEntry | None) -> None:
    image = read_dicom(CORPUS_DIR / _require(entry).path)
    assert image.pixels.dtype == image.format.dtype
    assert image.format.min_value <= int(image.pixels.min())
    assert int(image.pixels.max()) <= image.format.max_value


# ---------------------------------------------------------------- 4. writing new pixels


@pytest.fixture(scope="module")
def mr12() -> NativeImage:
    """A 12-bit unsigned corpus MR image (5MR2, 1024 x 1024)."""
    image = read_dicom(_corpus_file("pydicom-MR2_UNCR.dcm"))
    assert image.format.bits_stored == 12 and not image.format.signed
    return image


@pytest.fixture(scope="module")
def ct14() -> NativeImage:
    """A 14-bit signed corpus CT image (CQ500)."""
    image = read_dicom(_corpus_file("pydicom-693_UNCR.dcm"))
    assert image.format.bits_stored == 14 and image.format.signed
    return image


def test_new_pixels_at_the_range_limits_round_trip(mr12: NativeImage, ct14: NativeImage) -> None:
    for image in (mr12, ct14):
        fmt = image.format
        # Wider dtype, extreme values, a non-contiguous view: all must be stored as given.
        flipped = image.pixels[:, ::-1].astype(np.int64)
        flipped[0, 0, 0, 0], flipped[0, -1, -1, 0] = fmt.min_value, fmt.max_value
        pixels = flipped[:, ::-1]  # upside down again: a view with negative strides
        assert not pixels.flags.c_contiguous
        again = read_dicom(dicom_bytes(image, pixels))
        assert again.pixels.dtype == fmt.dtype
        assert again.format == fmt
        assert np.array_equal(again.pixels, pixels)


def test_writing_new_pixels_leaves_the_image_alone(mr12: NativeImage) -> None:
    before = mr12.pixels.copy()
    ds = to_dataset(mr12, np.zeros_like(mr12.pixels))
    assert "PixelData" not in mr12.header
    assert np.array_equal(mr12.pixels, before)
    assert ds.SOPInstanceUID == mr12.header.SOPInstanceUID
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_odd_length_8_bit_pixel_data_is_padded_and_round_trips() -> None:
    source = read_dicom(_corpus_file("pydicom-JPGLosslessP14SV1_1s_1f_8b.dcm"))
    header = source.header
    header.Rows, header.Columns = 3, 3
    pixels = np.arange(9, dtype=np.uint8).reshape(1, 3, 3, 1) * 20
    image = NativeImage(header=header, pixels=pixels, format=source.format)
    data = dicom_bytes(image)
    assert len(pydicom.dcmread(io.BytesIO(data)).PixelData) == 10  # DICOM values have even length
    assert np.array_equal(read_dicom(data).pixels, pixels)


@pytest.mark.parametrize(
    ("image_name", "value"),
    [("mr12", 4096), ("mr12", -1), ("ct14", 8192), ("ct14", -8193)],
)
def test_values_outside_bits_stored_are_refused(image_name: str, value: int, request: pytest.FixtureRequest) -> None:
    image: NativeImage = request.getfixturevalue(image_name)
    pixels = image.pixels.astype(np.int32)
    pixels[0, 10, 20, 0] = value
    with pytest.raises(ValueError, match=f"BitsStored {image.format.bits_stored}"):
        dicom_bytes(image, pixels)


def test_wrong_shape_is_refused(mr12: NativeImage) -> None:
    with pytest.raises(ValueError, match="shape"):
        dicom_bytes(mr12, mr12.pixels[:, :-1])
    with pytest.raises(ValueError, match="shape"):
        to_dataset(mr12, mr12.pixels[0])  # (rows, columns, samples) without the frame axis


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.bool_])
def test_non_integer_dtype_is_refused(mr12: NativeImage, dtype: type, tmp_path: Path) -> None:
    pixels = mr12.pixels.astype(dtype)
    with pytest.raises(ValueError, match=np.dtype(dtype).name):
        write_dicom(tmp_path / "float.dcm", mr12, pixels)
    assert not (tmp_path / "float.dcm").exists()


# ---------------------------------------------------------------- 5. bad input


def _header_of(name: str) -> Dataset:
    return pydicom.dcmread(_corpus_file(name))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(), "not a DICOM file"),
        (b"Patient: Jane Doe\nThis is a report, not an image.\n" * 20, "not a DICOM file"),
        (b"", "not a DICOM file"),
        (b"\x00" * 128 + b"DICM", "PixelData"),  # a preamble and nothing after it: no image
    ],
    ids=["random-bytes", "text", "empty", "preamble-only"],
)
def test_not_dicom_is_refused(data: bytes, match: str) -> None:
    with pytest.raises(DicomInputError, match=match):
        read_dicom(data)


def test_text_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("Not a DICOM file.\n" * 40)
    with pytest.raises(DicomInputError, match="not a DICOM file"):
        read_dicom(path)


def test_missing_file_is_a_file_not_found_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_dicom(tmp_path / "nowhere.dcm")


@pytest.mark.parametrize("name", ["rtplan.dcm", "test-SR.dcm"])
def test_dicom_without_pixel_data_is_refused(name: str) -> None:
    with pytest.raises(DicomInputError, match="PixelData"):
        read_dicom(_testdata(name))


@pytest.mark.parametrize("keyword", ["FloatPixelData", "DoubleFloatPixelData"])
def test_float_pixel_data_is_refused(keyword: str) -> None:
    ds = _header_of("pydicom-MR_small.dcm")
    size = 4 if keyword == "FloatPixelData" else 8
    del ds.PixelData
    setattr(ds, keyword, np.zeros(ds.Rows * ds.Columns, dtype=f"<f{size}").tobytes())
    with pytest.raises(DicomInputError, match=keyword):
        read_dicom(_dicom_from(ds))


def test_32_bit_dose_grid_is_refused() -> None:
    # rtdose has BitsAllocated 32 and BitsStored 32; BitsAllocated is checked first.
    with pytest.raises(DicomInputError, match="BitsAllocated 32"):
        read_dicom(_testdata("rtdose.dcm"))


def test_bits_stored_above_bits_allocated_is_refused() -> None:
    ds = _header_of("pydicom-MR_small.dcm")
    ds.BitsStored, ds.HighBit = 17, 16
    with pytest.raises(DicomInputError, match="BitsStored 17"):
        read_dicom(_dicom_from(ds))


def test_four_samples_per_pixel_is_refused() -> None:
    ds = _header_of("pydicom-US1_UNCR.dcm")
    ds.SamplesPerPixel = 4
    ds.PhotometricInterpretation = "ARGB"
    with pytest.raises(DicomInputError, match="SamplesPerPixel 4"):
        read_dicom(_dicom_from(ds))


@pytest.mark.parametrize("syntax", ["1.2.3.4", "1.2.840.10008.5.1.4.1.1.7", "2.25.323708217038257544495275216054827656036"])
def test_a_transfer_syntax_uid_that_is_not_one_is_refused(syntax: str) -> None:
    """Found by fuzzing (fuzz/dicom_input.py): an unknown UID, an SOP class's, a private one (MVMIC's own) as
    TransferSyntaxUID raised pydicom's bare ValueError "UID is not a transfer syntax"."""
    ds = _header_of("pydicom-MR_small.dcm")
    ds.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()  # in Explicit VR Little Endian: pydicom writes no other encoding for such a UID
    pydicom.dcmwrite(buffer, ds, implicit_vr=False, little_endian=True, force_encoding=True)
    with pytest.raises(UnsupportedPixelFormatError, match=f"TransferSyntaxUID {syntax} is not a transfer syntax"):
        read_dicom(buffer.getvalue())


def test_a_codestream_of_more_bits_than_bits_stored_is_refused() -> None:
    """Found by fuzzing (fuzz/dicom_input.py): an 8-bit JPEG-LS codestream under BitsStored 7 decoded to values up
    to 255, which the lossless coder, coding 7 bits, clipped: its own check withheld the stream (a 500 from
    /v1/compress, an error logged by the gateway)."""
    ds = pydicom.dcmread(_testdata("JPEGLSNearLossless_08.dcm"))
    ds.BitsStored, ds.HighBit = 7, 6
    with pytest.raises(UnsupportedPixelFormatError, match=r"decodes to values 0\.\.2\d\d, outside the unsigned range "
                                                          r"0\.\.127 of BitsStored 7"):
        read_dicom(_dicom_from(ds))


def test_empty_pixel_data_is_refused() -> None:
    """Found by fuzzing (fuzz/dicom_input.py): pydicom reads an empty PixelData as None, and the length check
    raised TypeError on it."""
    ds = _header_of("pydicom-MR_small.dcm")
    ds.PixelData = b""
    with pytest.raises(DicomInputError, match=r"PixelData \(7FE0,0010\) is empty or not binary"):
        read_dicom(_dicom_from(ds))


@pytest.mark.parametrize(("frames", "match"), [("2.5", "NumberOfFrames 2.5 is not a number of frames"),
                                                ("-1", "NumberOfFrames -1 is not a number of frames"),
                                                ("2", "decodes to 1 frame\\(s\\) of 3 x 3, where the header declares 2")])
def test_a_number_of_frames_that_is_not_the_pixels_is_refused(frames: str, match: str) -> None:
    """Found by fuzzing (fuzz/dicom_input.py): a JPEG of one frame whose NumberOfFrames said 2 or 2.5 was coded
    as one frame under a header of two, a stream that then failed to decode (the gateway's own check)."""
    ds = pydicom.dcmread(_testdata("SC_rgb_small_odd_jpeg.dcm"))
    ds.NumberOfFrames = frames
    with pytest.raises(DicomInputError, match=match):
        read_dicom(_dicom_from(ds))


@pytest.mark.parametrize(
    "keyword",
    ["Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation", "SamplesPerPixel",
     "PhotometricInterpretation"],
)
def test_missing_pixel_description_is_refused(keyword: str) -> None:
    ds = _header_of("pydicom-MR_small.dcm")
    delattr(ds, keyword)
    with pytest.raises(DicomInputError, match=keyword):
        read_dicom(_dicom_from(ds))


def test_pydicom_truncated_pixel_data_is_refused() -> None:
    with pytest.raises(DicomInputError, match="PixelData"):
        read_dicom(_testdata("MR_truncated.dcm"))


def test_more_frames_than_pixel_data_is_refused() -> None:
    ds = _header_of("pydicom-emri_small.dcm")
    ds.NumberOfFrames = 11
    with pytest.raises(DicomInputError, match="PixelData"):
        read_dicom(_dicom_from(ds))


@pytest.mark.parametrize("name", ["pydicom-CT_small.dcm", "pydicom-MR-SIEMENS-DICOM-WithOverlays.dcm"])
@pytest.mark.parametrize("length", [1000, 132])
def test_truncated_file_is_a_dicom_input_error(name: str, length: int) -> None:
    data = _corpus_file(name).read_bytes()
    assert len(data) > 2 * length
    with pytest.raises(DicomInputError):
        read_dicom(data[:length])


def test_directory_is_a_dicom_input_error(tmp_path: Path) -> None:
    with pytest.raises(DicomInputError):
        read_dicom(tmp_path)


def _patched(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1, f"{old!r} occurs {data.count(old)} times"
    return data.replace(old, new)


# Single-byte damage to real corpus headers, as a bad disk or transfer leaves it. Explicit VR Little
# Endian element header: group and element as little-endian words, the VR, a 2-byte length.
DAMAGED_HEADERS = {
    # SliceThickness (0018,0050) with an unknown VR instead of DS.
    "unknown-vr": ("pydicom-CT_small.dcm", b"\x18\x00\x50\x00DS", b"\x18\x00\x50\x00ZZ",
                   r"\(0018,0050\)|SliceThickness"),
    # MediaStorageSOPInstanceUID (0002,0003) in the file meta with an unknown VR instead of UI.
    "unknown-vr-in-file-meta": ("pydicom-CT_small.dcm", b"\x02\x00\x03\x00UI", b"\x02\x00\x03\x00ZZ",
                                r"\(0002,0003\)|MediaStorageSOPInstanceUID"),
    # A non-ASCII byte in ImageOrientationPatient (0020,0037), in a file whose character set is ISO 2022.
    "non-ascii-decimal-string": ("pydicom-J2K_pixelrep_mismatch.dcm", b"\\-0.3746", b"\\-0.37\xf66",
                                 r"\(0020,0037\)|ImageOrientationPatient"),
    # A non-ASCII byte in FrameOfReferenceUID (0020,0052) of a file without a character set.
    "non-ascii-uid": ("pydicom-CT_small.dcm", b"\x20\x00\x52\x00UI\x2e\x00\x31", b"\x20\x00\x52\x00UI\x2e\x00\xf6",
                      r"\(0020,0052\)|FrameOfReferenceUID"),
    # PhotometricInterpretation (0028,0004) with an unknown VR, read by the checks before anything else decoded
    # it: pydicom's NotImplementedError escaped (found by fuzzing, fuzz/dicom_input.py).
    "unknown-vr-of-a-pixel-attribute": ("pydicom-CT_small.dcm", b"\x28\x00\x04\x00CS", b"\x28\x00\x04\x00CT",
                                        r"\(0028,0004\)|PhotometricInterpretation"),
    # BitsStored (0028,0101) read as a date (VR DA): a string, which the range check compared with integers
    # (TypeError; found by fuzzing, fuzz/dicom_input.py).
    "string-bits-stored": ("pydicom-CT_small.dcm", b"\x28\x00\x01\x01US", b"\x28\x00\x01\x01DA", r"BitsStored"),
    # Private (0019,1058) whose group turned into 0002, the file meta group, inside the dataset.
    "file-meta-group-in-dataset": ("pydicom-CT_small.dcm", b"\x19\x00\x58\x10SS", b"\x02\x00\x58\x10SS",
                                   r"\(0002,1058\)|0002"),
}


@pytest.mark.parametrize("damage", DAMAGED_HEADERS, ids=str)
def test_damaged_header_is_refused_or_round_trips(damage: str) -> None:
    # The contract: read_dicom refuses bad input with a DicomInputError naming the attribute,
    # and whatever it accepts, dicom_bytes can write back. Any other exception breaks callers
    # (the CLI and the service catch DicomInputError, not NotImplementedError or TypeError).
    name, old, new, attribute = DAMAGED_HEADERS[damage]
    data = _patched(_corpus_file(name).read_bytes(), old, new)
    try:
        image = read_dicom(data)
    except DicomInputError as exc:
        assert re.search(attribute, str(exc)), f"DicomInputError does not name the attribute: {exc}"
        return
    except Exception as exc:  # noqa: BLE001 - the point is which exception escapes
        pytest.fail(f"read_dicom raised {type(exc).__name__}, not DicomInputError: {exc}")
    try:
        again = read_dicom(dicom_bytes(image))
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"read_dicom accepted the file but dicom_bytes raised {type(exc).__name__}: {exc}")
    _assert_same_image(again, image)
