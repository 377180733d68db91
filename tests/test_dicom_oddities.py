"""What modalities really send, built here with pydicom: every instance MVMIC accepts comes back bit for bit
from lossless coding, what it cannot keep exactly it refuses (and the gateway stores as received), and
nothing ends in a traceback. The inputs are those of ../shared/cases (issue 18), made in code."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from mvmic.cli import main
from mvmic.model.codec import MvmicCodec
from mvmic.pacs import storage
from mvmic.pacs.storage import StoragePolicy, prepare_instance, render
from mvmic.pixels import UnsupportedPixelFormatError, read_dicom
from mvmic.transcode import dicom_to_mvm, mvm_to_dicom

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
RT_DOSE = "1.2.840.10008.5.1.4.1.1.481.2"
LOSSLESS = StoragePolicy(max_error=0)


def dicom_instance(pixel_data: bytes, rows: int, columns: int, *, bits_allocated: int = 16, bits_stored: int | None = None,
              signed: bool = False, samples: int = 1, photometric: str = "MONOCHROME2", frames: int = 1,
              big_endian: bool = False, sop_class: str = SECONDARY_CAPTURE, **elements) -> bytes:
    """A Part 10 file of an image with these attributes and ``pixel_data`` as given (already in the byte
    order of the transfer syntax)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian if big_endian else ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "Oddity^Test", "ODD-1", "OT"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, columns, samples, photometric
    ds.BitsAllocated, ds.BitsStored = bits_allocated, bits_stored or bits_allocated
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, int(signed)
    if samples > 1:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixel_data + b"\x00" * (len(pixel_data) % 2)
    ds["PixelData"].VR = "OB" if bits_allocated == 8 else "OW"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True, little_endian=not big_endian, implicit_vr=False)
    return buffer.getvalue()


def ct_like(rows: int, columns: int, seed: int = 0) -> np.ndarray:
    """12-bit unsigned values with structure (a gradient and noise), as a CT's stored values."""
    rng = np.random.default_rng(seed)
    gradient = np.add.outer(np.arange(rows) * 7, np.arange(columns) * 3)
    return ((gradient + rng.integers(0, 40, (rows, columns))) % 4096).astype("<u2")


@pytest.fixture(scope="module")
def codec() -> MvmicCodec:
    return MvmicCodec.load()


def _lossless_round_trip(data: bytes) -> tuple[Dataset, Dataset]:
    decoded = mvm_to_dicom(dicom_to_mvm(data, None, max_error=0).data, None)
    return pydicom.dcmread(io.BytesIO(data)), decoded


@pytest.mark.parametrize(("rows", "columns"), [(1, 1), (2, 2), (15, 512), (3, 257), (16, 16), (35, 33)])
def test_images_of_every_size_are_coded_exactly(rows: int, columns: int, codec) -> None:
    data = dicom_instance(ct_like(rows, columns).tobytes(), rows, columns, bits_stored=12)
    original, decoded = _lossless_round_trip(data)
    assert decoded.PixelData == original.PixelData and decoded.SOPInstanceUID == original.SOPInstanceUID
    if min(rows, columns) >= 2:  # the lossy base layer codes from 2 x 2 up
        lossy = mvm_to_dicom(dicom_to_mvm(data, codec, 4).data, codec)
        assert (lossy.Rows, lossy.Columns) == (rows, columns) and len(lossy.PixelData) == len(original.PixelData)


@pytest.mark.parametrize(("rows", "columns"), [(16, 16), (35, 33), (2, 2)])
def test_the_gateway_never_stores_an_instance_bigger_than_it_received(rows: int, columns: int, codec) -> None:
    noise = np.random.default_rng(rows).integers(0, 4096, (rows, columns)).astype("<u2")  # no code shrinks it
    data = dicom_instance(noise.tobytes(), rows, columns, bits_stored=12)
    prepared = prepare_instance(data, codec, None, LOSSLESS)
    assert prepared.failure is None and prepared.instances == [data]
    assert "stored as received: the MVMIC instance would be" in prepared.note
    big = dicom_instance(ct_like(256, 256).tobytes(), 256, 256, bits_stored=12)
    stored = prepare_instance(big, codec, None, LOSSLESS).instances
    assert len(stored) == 1 and len(stored[0]) < len(big)


def ybr_422_words(frames: int, rows: int, columns: int) -> bytes:
    """Y1 Y2 Cb Cr for each pair of pixels, a picture that changes from frame to frame."""
    rng = np.random.default_rng(422)
    luma = (np.add.outer(np.arange(rows), np.arange(columns)) * 3 % 200 + 20)[None] + np.arange(frames)[:, None, None]
    words = np.empty((frames, rows, columns // 2, 4), np.uint8)
    words[..., :2] = luma.reshape(frames, rows, columns // 2, 2)
    chroma = np.add.outer(np.arange(rows) * 2, np.arange(columns // 2))[None, ..., None] + np.array([60, 90])
    words[..., 2:] = chroma + rng.integers(0, 4, (frames, rows, columns // 2, 2))
    return words.tobytes()


def test_uncompressed_ybr_full_422_cine_is_read_and_coded_exactly(codec) -> None:
    data = dicom_instance(ybr_422_words(3, 40, 48), 40, 48, bits_allocated=8, samples=3, photometric="YBR_FULL_422", frames=3,
                     Modality="US")
    image = read_dicom(data)
    single = pydicom.dcmread(io.BytesIO(data))
    expected = pydicom.pixels.pixel_array(single, index=1, as_rgb=False)  # pydicom reads one frame right
    assert image.pixels.shape == (3, 40, 48, 3) and (image.pixels[1] == expected).all()
    original, decoded = _lossless_round_trip(data)
    assert decoded.PhotometricInterpretation == "YBR_FULL_422" and decoded.PixelData == original.PixelData
    lossy = mvm_to_dicom(dicom_to_mvm(data, codec, 6).data, codec)
    assert lossy.PhotometricInterpretation == "YBR_FULL_422" and len(lossy.PixelData) == len(original.PixelData)
    prepared = prepare_instance(data, codec, None, LOSSLESS)
    assert prepared.failure is None and prepared.note.startswith("compressed")


def test_bits_above_bits_stored_are_never_dropped(tmp_path, codec) -> None:
    """An overlay in bit 12 of 16-bit words with BitsStored 12 (group 6000 declares it): decoders drop those
    bits, so MVMIC refuses the image and the gateway keeps it as received."""
    values = ct_like(64, 64)
    overlay = np.zeros((64, 64), np.uint16)
    overlay[10:30, 10:50] = 1
    data = dicom_instance((values | overlay << 12).astype("<u2").tobytes(), 64, 64, bits_stored=12)
    with pytest.raises(UnsupportedPixelFormatError, match="bits set above BitsStored 12"):
        read_dicom(data)
    prepared = prepare_instance(data, codec, None, LOSSLESS)
    assert prepared.failure is None and prepared.instances == [data]
    (tmp_path / "overlay.dcm").write_bytes(data)
    assert main(["compress", str(tmp_path / "overlay.dcm"), str(tmp_path / "o.mvm"), "--mode", "lossless"]) == 1
    # Signed values sign-extend above BitsStored: that is no extra information, and codes exactly.
    signed = (values.astype(np.int16) - 2048).astype("<i2")
    original, decoded = _lossless_round_trip(dicom_instance(signed.tobytes(), 64, 64, bits_stored=12, signed=True))
    assert decoded.PixelData == original.PixelData


@pytest.mark.parametrize(("bits_allocated", "bits_stored"), [(8, 1), (8, 8), (16, 12), (16, 16)])
def test_signed_colour_with_negative_green_is_coded_exactly(bits_allocated: int, bits_stored: int) -> None:
    """Found by tests/test_properties.py: the exact layer coded signed colour's green plane as it was, and its
    own check withheld every stream with a negative green sample (exact layer version 2 fixes it)."""
    low, high = -(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1
    values = np.random.default_rng(bits_stored).integers(low, high + 1, (5, 7, 3))
    values[0, 0] = (0, low, high)
    data = dicom_instance(values.astype(f"<i{bits_allocated // 8}").tobytes(), 5, 7, bits_allocated=bits_allocated,
                          bits_stored=bits_stored, signed=True, samples=3, photometric="RGB")
    original, decoded = _lossless_round_trip(data)
    assert decoded.PixelData == original.PixelData
    near = mvm_to_dicom(dicom_to_mvm(data, None, max_error=1).data, None)
    buffer = io.BytesIO()
    near.save_as(buffer, enforce_file_format=True)
    assert np.abs(read_dicom(buffer.getvalue()).pixels[0].astype(np.int64) - values).max() <= 1


def test_palette_colour_indices_are_coded_lossless_only(tmp_path, codec) -> None:
    indices = (ct_like(32, 32) * 16).astype("<u2")
    descriptor = [4096, 0, 16]
    lut = (np.arange(4096, dtype="<u2") * 16).tobytes()
    data = dicom_instance(indices.tobytes(), 32, 32, photometric="PALETTE COLOR",
                     RedPaletteColorLookupTableDescriptor=descriptor, GreenPaletteColorLookupTableDescriptor=descriptor,
                     BluePaletteColorLookupTableDescriptor=descriptor, RedPaletteColorLookupTableData=lut,
                     GreenPaletteColorLookupTableData=lut[::-1], BluePaletteColorLookupTableData=lut)
    original, decoded = _lossless_round_trip(data)
    assert decoded.PixelData == original.PixelData
    assert decoded.GreenPaletteColorLookupTableData == original.GreenPaletteColorLookupTableData
    (tmp_path / "palette.dcm").write_bytes(data)
    for mode in (["--mode", "near-lossless", "--max-error", "1"], ["--mode", "lossy"]):
        assert main(["compress", str(tmp_path / "palette.dcm"), str(tmp_path / "p.mvm"), *mode]) == 1
    with pytest.raises(ValueError, match="PALETTE COLOR holds indices into colour tables: it is coded lossless only"):
        dicom_to_mvm(data, codec, 4)


def test_a_big_endian_instance_mvmic_does_not_code_is_given_little_endian() -> None:
    """32-bit RT Dose in Explicit VR Big Endian: stored as received, retrieved as Explicit VR Little Endian
    with its pixel words (and other binary elements) swapped."""
    dose = (np.arange(2 * 8 * 10, dtype=np.uint32) * 25_000).reshape(2, 8, 10)
    data = dicom_instance(dose.astype(">u4").tobytes(), 8, 10, bits_allocated=32, frames=2, big_endian=True,
                     sop_class=RT_DOSE, DoseGridScaling=1.5e-5, GridFrameOffsetVector=[0.0, 2.5], Modality="RTDOSE")
    prepared = prepare_instance(data, None, None, LOSSLESS)
    assert prepared.instances == [data] and "BitsAllocated 32 is not supported" in prepared.note
    decoded, syntax = render(data, [ExplicitVRLittleEndian], None)
    given = pydicom.dcmread(io.BytesIO(decoded))
    assert given.file_meta.TransferSyntaxUID == syntax == ExplicitVRLittleEndian
    assert (given.pixel_array == dose).all() and given.GridFrameOffsetVector == [0.0, 2.5]
    assert render(data, ["*"], None) == (data, ExplicitVRBigEndian)


def test_an_unexpected_error_while_compressing_stores_the_instance_as_received(monkeypatch, caplog, codec) -> None:
    """A bug in compression (a fault injected here) neither loses the instance nor fails the request."""
    data = dicom_instance(ct_like(256, 256).tobytes(), 256, 256, bits_stored=12)

    def broken(*args, **kwargs):
        raise IndexError("a bug")

    monkeypatch.setattr(storage, "dicom_to_mvm", broken)
    with caplog.at_level(logging.ERROR, logger="mvmic.pacs"):
        prepared = prepare_instance(data, codec, None, LOSSLESS)
    assert prepared.failure is None and prepared.instances == [data]
    assert "unexpected error" in prepared.note and "IndexError: a bug" in caplog.text


def test_an_instance_without_a_transfer_syntax_is_stored_and_given_as_received(codec) -> None:
    """Found by fuzzing (fuzz/dicom_input.py): the gateway stores an instance whose file meta has no
    TransferSyntaxUID as received, and giving it back as Explicit VR Little Endian failed (AttributeError)."""
    data = Path(get_testdata_file("meta_missing_tsyntax.dcm")).read_bytes()
    prepared = prepare_instance(data, codec, None, LOSSLESS)
    assert prepared.failure is None and prepared.instances == [data]
    with pytest.raises(storage.NotAcceptableError, match=r"declares no transfer syntax \(0002,0010\)"):
        render(data, [ExplicitVRLittleEndian], codec)
    assert render(data, ["*"], codec) == (data, "")


def test_a_file_meta_length_of_another_vr_is_not_written_into_the_stream(codec) -> None:
    """Found by fuzzing (fuzz/dicom_input.py): FileMetaInformationGroupLength with VR DS was copied into the
    stream's DICOM header layer, where pydicom wrote its new length as a DS string: the header read back wrongly,
    and the gateway's own stream failed to decode (an unexpected error, the instance stored as received)."""
    data = dicom_instance(ct_like(16, 16).tobytes(), 16, 16, bits_stored=12)
    assert data.count(b"\x02\x00\x00\x00UL\x04\x00") == 1
    damaged = data.replace(b"\x02\x00\x00\x00UL\x04\x00", b"\x02\x00\x00\x00DS\x04\x00")
    decoded = mvm_to_dicom(dicom_to_mvm(damaged, None, max_error=0).data, None)
    assert decoded.PixelData == pydicom.dcmread(io.BytesIO(data)).PixelData
    assert decoded.file_meta.MediaStorageSOPInstanceUID == decoded.SOPInstanceUID
    prepared = prepare_instance(damaged, codec, None, LOSSLESS)
    assert prepared.failure is None and "unexpected" not in prepared.note


def test_an_instance_whose_uid_cannot_be_decoded_is_not_understood(codec) -> None:
    """Found by fuzzing (fuzz/dicom_input.py): SOPInstanceUID with an unknown VR; the gateway read it outside
    its error handling and pydicom's NotImplementedError escaped the STOW-RS request."""
    data = dicom_instance(ct_like(4, 4).tobytes(), 4, 4, bits_stored=12)
    assert data.count(b"\x08\x00\x18\x00UI") == 1
    damaged = data.replace(b"\x08\x00\x18\x00UI", b"\x08\x00\x18\x00LI")
    prepared = prepare_instance(damaged, codec, None, LOSSLESS)
    assert prepared.failure == storage.CANNOT_UNDERSTAND and prepared.instances == []
    assert "cannot be decoded" in prepared.note and "(0008,0018)" in prepared.note
    with pytest.raises(ValueError, match=r"cannot be decoded: .*\(0008,0018\)"):
        render(damaged, [ExplicitVRLittleEndian], codec)


def test_an_instance_the_gateway_cannot_convert_is_refused_in_one_line(codec) -> None:
    """Found by fuzzing (fuzz/dicom_input.py): Implicit VR Little Endian with PixelPaddingValue (US or SS by
    PixelRepresentation) and no PixelRepresentation is stored as received, and cannot be written in Explicit VR;
    the 406 quoted pydicom's message with the traceback pydicom appends to it."""
    dataset = pydicom.dcmread(io.BytesIO(dicom_instance(ct_like(4, 4).tobytes(), 4, 4, bits_stored=12,
                                                        PixelPaddingValue=0)))
    del dataset.PixelRepresentation
    dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    buffer = io.BytesIO()
    dataset.save_as(buffer, implicit_vr=True, little_endian=True, enforce_file_format=True)
    data = buffer.getvalue()
    assert prepare_instance(data, codec, None, LOSSLESS).instances == [data]
    with pytest.raises(storage.NotAcceptableError, match=r"\(0028,0120\)") as refused:
        render(data, [ExplicitVRLittleEndian], codec)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("name", ["OBXXXX1A_expb.dcm", "OBXXXX1A_expb_2frame.dcm", "SC_rgb_small_odd_big_endian.dcm",
                                  "MR_small_bigendian.dcm"])
def test_big_endian_instances_are_given_little_endian_with_the_same_pixels(name: str) -> None:
    """pydicom's big-endian files, 8-bit data in OW among them (written in 16-bit words)."""
    path = get_testdata_file(name)
    given = pydicom.dcmread(io.BytesIO(render(Path(path).read_bytes(), [ExplicitVRLittleEndian], None)[0]))
    assert given.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(given.pixel_array, pydicom.dcmread(path).pixel_array)


@pytest.mark.parametrize(("extra", "message"), [
    (np.arange(64 * 64, dtype="<u2").tobytes(), "PixelData holds 16384 bytes where"),  # a frame NumberOfFrames omits
    (b"\x01\x02" * 50, "PixelData holds 8292 bytes where"),  # trailing bytes
])
def test_pixel_data_beyond_what_is_declared_is_never_dropped(extra: bytes, message: str, codec) -> None:
    data = dicom_instance(ct_like(64, 64).tobytes() + extra, 64, 64, bits_stored=12)
    with pytest.raises(UnsupportedPixelFormatError, match=message):
        read_dicom(data)
    prepared = prepare_instance(data, codec, None, LOSSLESS)
    assert prepared.failure is None and prepared.instances == [data]


def test_a_non_zero_pad_byte_is_never_dropped() -> None:
    ds = pydicom.dcmread(io.BytesIO(dicom_instance(bytes(range(35)) + b"\x00", 5, 7, bits_allocated=8)))
    ds.PixelData = bytes(range(35)) + b"\xff"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    with pytest.raises(UnsupportedPixelFormatError, match="pad byte is 0xff, not zero"):
        read_dicom(buffer.getvalue())


@pytest.mark.parametrize("name", ["color-pl.dcm", "SC_rgb.dcm"])
def test_colour_by_plane_comes_back_byte_for_byte(name: str) -> None:
    data = Path(get_testdata_file(name)).read_bytes()
    original, decoded = _lossless_round_trip(data)
    assert decoded.PlanarConfiguration == original.PlanarConfiguration and decoded.PixelData == original.PixelData


def test_the_gateway_stores_readable_dicom_whose_pixels_it_cannot_read_as_received(codec) -> None:
    odd_422 = dicom_instance(bytes(2 * 4 * 21), 4, 21, bits_allocated=8, samples=3, photometric="YBR_FULL_422")
    truncated = dicom_instance(ct_like(64, 64).tobytes()[:-512], 64, 64, bits_stored=12)
    for data in (odd_422, truncated):
        with pytest.raises(ValueError):
            read_dicom(data)
        prepared = prepare_instance(data, codec, None, LOSSLESS)
        assert prepared.failure is None and prepared.instances == [data], prepared.note


@pytest.mark.parametrize(("photometric", "samples"), [("YBR_FULL_422", 1), ("PALETTE COLOR", 3), ("RGB", 1),
                                                      ("MONOCHROME2", 3)])
def test_samples_that_do_not_fit_the_photometric_interpretation_are_named(photometric: str, samples: int,
                                                                          codec) -> None:
    data = dicom_instance(bytes(4 * 6 * samples), 4, 6, bits_allocated=8, samples=samples, photometric=photometric)
    with pytest.raises(ValueError, match=f"SamplesPerPixel {samples} does not fit PhotometricInterpretation"):
        read_dicom(data)
    prepared = prepare_instance(data, codec, None, LOSSLESS)
    assert prepared.instances == [data] and "unexpected" not in prepared.note
