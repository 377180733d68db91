"""Native pixel I/O: DICOM in, integer arrays at native bit depth out, and back.

The one place where MVMIC turns DICOM into pixels and pixels into DICOM; training,
the benchmarks, the CLI and the service all go through it.

    DICOM file/bytes --read_dicom--> NativeImage(header, pixels, format)
                                          |
                 new pixels (same format) v
    DICOM (Explicit VR Little Endian) <--to_dataset / write_dicom--

``pixels`` always has shape (frames, rows, columns, samples) and the signed or
unsigned integer dtype of the stored values; nothing is rescaled or windowed, so
a round trip is bit exact. Rescale slope/intercept stay in the header.
"""

from __future__ import annotations

import copy
import io
import itertools
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.pixels import get_decoder
from pydicom.uid import UID, ExplicitVRLittleEndian

from mvmic.model.pixel_format import MAX_BITS_STORED, SUPPORTED_SAMPLES, PixelFormat

# pydicom's warnings about a value that breaks its VR's rules (a UID with a leading zero, say) quote the value,
# and go to the process's stderr and log: a patient's name or a study's UID in the service's log. MVMIC reads
# and keeps such values as they are (a lossless instance is the original) and checks the attributes it uses
# itself, naming the attribute, never the value; the conformance of what it writes is checked by dciodvfy.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE

DicomSource = str | PathLike[str] | bytes | BinaryIO

SUPPORTED_BITS_ALLOCATED = (8, 16)
# PS3.3 C.7.6.3.1.2: the samples of each photometric interpretation (YBR: every YBR_* variant).
SAMPLES_OF_PHOTOMETRIC = {"MONOCHROME1": 1, "MONOCHROME2": 1, "PALETTE COLOR": 1, "RGB": 3, "YBR": 3, "HSV": 3,
                          "ARGB": 4, "CMYK": 4}
REQUIRED_PIXEL_ATTRIBUTES = (
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "SamplesPerPixel",
    "PhotometricInterpretation",
)
INTEGER_PIXEL_ATTRIBUTES = REQUIRED_PIXEL_ATTRIBUTES[:-1]
# Elements tied to the encoding of the old Pixel Data; they are wrong once the
# pixels are written uncompressed.
ENCODING_ELEMENTS = ("ExtendedOffsetTable", "ExtendedOffsetTableLengths", "DataSetTrailingPadding")
FILE_META_LENGTH = 0x00020000  # FileMetaInformationGroupLength
# Byte size of the words in "other" binary VRs, which pydicom keeps as raw bytes in
# the file's byte order.
WORD_BYTES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


class DicomInputError(ValueError):
    """The input is not a DICOM image MVMIC can read; the message names the attribute."""


class UnsupportedPixelFormatError(DicomInputError):
    """A readable DICOM image whose pixel format MVMIC does not handle (float pixels, more than 16
    bits, an undecodable transfer syntax): the request is valid, the media type is not (HTTP 415)."""


@dataclass
class NativeImage:
    """Decoded DICOM image: the header without Pixel Data plus the stored values."""

    header: Dataset
    pixels: np.ndarray  # (frames, rows, columns, samples), stored integer values
    format: PixelFormat

    @property
    def frames(self) -> int:
        return self.pixels.shape[0]

    @property
    def stored_bytes(self) -> int:
        """Bytes of the Pixel Data these pixels are written as (to_dataset), padding aside."""
        return pixel_data_bytes(self.header, self.frames)

    def frame(self, index: int) -> np.ndarray:
        """One frame as (rows, columns) for one sample, (rows, columns, samples) otherwise."""
        frame = self.pixels[index]
        return frame[..., 0] if self.format.samples_per_pixel == 1 else frame


def read_dicom(source: DicomSource) -> NativeImage:
    """Read a DICOM image into stored integer values at native bit depth.

    Raises DicomInputError, naming the attribute at fault, for anything that is not
    a single- or multi-frame integer image of at most 16 bits stored.
    """
    dataset = read_dataset(source)
    decoded_elements(dataset)  # now, so that a malformed element is named before any check reads it
    _check_pixel_module(dataset)
    _check_native_length(dataset)
    _check_bits_outside_stored(dataset)
    pixels, photometric = _decode(dataset)
    declared = (int(dataset.get("NumberOfFrames") or 1), int(dataset.Rows), int(dataset.Columns))
    if pixels.shape[:3] != declared:
        raise DicomInputError(f"PixelData decodes to {pixels.shape[0]} frame(s) of {pixels.shape[1]} x "
                              f"{pixels.shape[2]}, where the header declares {declared[0]} of {declared[1]} x "
                              f"{declared[2]}")
    # Native YBR_FULL_422 is coded as YBR_FULL and written back subsampled (to_dataset): the same bytes.
    native_422 = _is_native_ybr_422(dataset)
    header = _header_after_decoding(dataset, "YBR_FULL_422" if native_422 else photometric)
    check_writable(header)
    pixel_format = PixelFormat(
        bits_stored=int(header.BitsStored),
        signed=bool(header.PixelRepresentation),
        samples_per_pixel=int(header.SamplesPerPixel),
        photometric=photometric,
    )
    _check_decoded_range(pixels, pixel_format)
    return NativeImage(header=header, pixels=pixels.astype(pixel_format.dtype, copy=False), format=pixel_format)


def _check_decoded_range(pixels: np.ndarray, fmt: PixelFormat) -> None:
    """Refuse decoded values outside the range of BitsStored: a compressed codestream of more bits than its header
    declares (native Pixel Data: _check_bits_outside_stored). Coded in BitsStored bits, they would not come back."""
    low, high = int(pixels.min()), int(pixels.max())
    if low < fmt.min_value or high > fmt.max_value:
        raise UnsupportedPixelFormatError(
            f"PixelData decodes to values {low}..{high}, outside the {'signed' if fmt.signed else 'unsigned'} range "
            f"{fmt.min_value}..{fmt.max_value} of BitsStored {fmt.bits_stored}: MVMIC would not give them back, so it "
            "does not code this image")


def to_dataset(image: NativeImage, pixels: np.ndarray | None = None) -> Dataset:
    """Header of ``image`` with ``pixels`` (default: its own) as Explicit VR Little Endian."""
    pixels = image.pixels if pixels is None else pixels
    _check_pixels_fit(pixels, image)
    dataset = copy.deepcopy(image.header)
    container = np.dtype(f"<{'i' if image.format.signed else 'u'}{dataset.BitsAllocated // 8}")
    if dataset.PhotometricInterpretation == "YBR_FULL_422":
        pixels = _subsampled_422(pixels)
    elif dataset.SamplesPerPixel > 1 and dataset.get("PlanarConfiguration") == 1:
        pixels = pixels.transpose(0, 3, 1, 2)  # colour-by-plane: all red, then green, then blue, per frame
    data = np.ascontiguousarray(pixels, dtype=container).tobytes()
    dataset.PixelData = data + b"\x00" * (len(data) % 2)  # values have even length
    dataset["PixelData"].VR = "OB" if dataset.BitsAllocated == 8 else "OW"
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return dataset


def write_dicom(path: str | PathLike[str], image: NativeImage, pixels: np.ndarray | None = None) -> None:
    """Write ``image`` (or its header with new ``pixels``) as an uncompressed DICOM file."""
    to_dataset(image, pixels).save_as(Path(path), enforce_file_format=True)


def dicom_bytes(image: NativeImage, pixels: np.ndarray | None = None) -> bytes:
    """The DICOM file that write_dicom would write, in memory."""
    buffer = io.BytesIO()
    to_dataset(image, pixels).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def first_line(error: BaseException) -> str:
    """The first line of an error's message, else its type's name: what a one-line refusal quotes of a
    library's error (pydicom appends a traceback to the message of some)."""
    message = str(error).strip()
    return message.splitlines()[0] if message else type(error).__name__


def read_dataset(source: DicomSource) -> Dataset:
    """A DICOM file as a pydicom Dataset, pixels left as they are (FileMetaInformationGroupLength left out: it
    is the file's, not the dataset's); DicomInputError if it is not one."""
    stream = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    try:
        dataset = pydicom.dcmread(stream)
        # The byte length of the file meta as read: pydicom writes a new one into every file it writes, unless the
        # read one is there with another VR than UL (a damaged one), which it would write as it is, wrongly.
        dataset.get("file_meta", Dataset()).pop(FILE_META_LENGTH, None)
        return dataset
    except InvalidDicomError as exc:
        raise DicomInputError(f"not a DICOM file: {first_line(exc)}") from exc
    except FileNotFoundError:
        raise
    except Exception as exc:  # pydicom raises many types on malformed files
        raise DicomInputError(f"not a readable DICOM file: {type(exc).__name__}: {first_line(exc)}") from exc


def _check_pixel_module(dataset: Dataset) -> None:
    for keyword in ("FloatPixelData", "DoubleFloatPixelData"):
        if keyword in dataset:
            raise UnsupportedPixelFormatError(f"{keyword}: floating-point pixel data is not supported, only integer PixelData")
    if "PixelData" not in dataset:
        raise DicomInputError("PixelData (7FE0,0010) is missing: the file holds no image")
    if not isinstance(dataset.PixelData, bytes) or not dataset.PixelData:
        raise DicomInputError(f"PixelData (7FE0,0010) is empty or not binary (VR {dataset['PixelData'].VR}): the file "
                              "holds no image")
    for keyword in REQUIRED_PIXEL_ATTRIBUTES:
        if dataset.get(keyword) in (None, ""):
            raise DicomInputError(f"{keyword} is missing: required to interpret PixelData")
    for keyword in INTEGER_PIXEL_ATTRIBUTES:  # US: a damaged VR gives a string, several values, a float
        value, least = dataset.get(keyword), 1 if keyword in ("Rows", "Columns") else 0
        if not isinstance(value, int) or isinstance(value, float) or value < least:
            raise DicomInputError(f"{keyword} {value!r} is not an integer of at least {least} (VR "
                                  f"{dataset[keyword].VR}, expected US)")
    syntax = dataset.get("file_meta", Dataset()).get("TransferSyntaxUID")
    if not syntax:
        raise DicomInputError("TransferSyntaxUID (0002,0010) is missing from the file meta information")
    if not UID(syntax).is_transfer_syntax:
        raise UnsupportedPixelFormatError(f"TransferSyntaxUID {syntax} is not a transfer syntax MVMIC reads "
                                          "(DICOM's, as pydicom knows them)")
    if dataset.BitsAllocated not in SUPPORTED_BITS_ALLOCATED:
        raise UnsupportedPixelFormatError(f"BitsAllocated {dataset.BitsAllocated} is not supported (8 or 16)")
    if not 1 <= dataset.BitsStored <= min(MAX_BITS_STORED, dataset.BitsAllocated):
        raise UnsupportedPixelFormatError(
            f"BitsStored {dataset.BitsStored} is not supported "
            f"(1 to {min(MAX_BITS_STORED, dataset.BitsAllocated)} with BitsAllocated {dataset.BitsAllocated})"
        )
    frames = dataset.get("NumberOfFrames")
    if frames not in (None, "") and not (isinstance(frames, int) and not isinstance(frames, float) and frames >= 0):
        raise DicomInputError(f"NumberOfFrames {frames} is not a number of frames")
    if dataset.SamplesPerPixel not in SUPPORTED_SAMPLES:
        raise UnsupportedPixelFormatError(f"SamplesPerPixel {dataset.SamplesPerPixel} is not supported (1 or 3)")
    photometric = str(dataset.PhotometricInterpretation)
    expected = SAMPLES_OF_PHOTOMETRIC.get(photometric.split("_")[0] if photometric.startswith("YBR") else photometric)
    if expected is not None and dataset.SamplesPerPixel != expected:
        raise DicomInputError(f"SamplesPerPixel {dataset.SamplesPerPixel} does not fit PhotometricInterpretation "
                              f"{photometric}, which has {expected} sample(s) per pixel")


def pixel_data_bytes(header: Dataset, frames: int) -> int:
    """Bytes of native Pixel Data that a header's pixel attributes declare for ``frames`` frames, padding
    aside (YBR_FULL_422: two samples a pixel, PS3.3 C.7.6.3.1.2)."""
    samples = 2 if str(header.PhotometricInterpretation) == "YBR_FULL_422" else int(header.SamplesPerPixel)
    return frames * int(header.Rows) * int(header.Columns) * samples * int(header.BitsAllocated) // 8


def _declared_bytes(dataset: Dataset) -> int:
    """Bytes of native Pixel Data that a dataset declares (pixel_data_bytes of its NumberOfFrames)."""
    return pixel_data_bytes(dataset, int(dataset.get("NumberOfFrames") or 1))


def _check_native_length(dataset: Dataset) -> None:
    """Refuse native Pixel Data longer than its attributes declare (more frames than NumberOfFrames says,
    trailing bytes) or with a non-zero pad byte: decoders drop those bytes, so no MVMIC stream could give
    them back. Shorter Pixel Data is the decoders' error (DicomInputError)."""
    if UID(dataset.file_meta.TransferSyntaxUID).is_compressed:
        return
    declared, held = _declared_bytes(dataset), len(dataset.PixelData)
    padding = dataset.PixelData[declared:]
    if held == declared + 1 and padding != b"\x00":
        raise UnsupportedPixelFormatError(f"PixelData's pad byte is {padding[0]:#04x}, not zero: MVMIC would not "
                                          "give it back, so it does not code this image")
    if held > declared + (declared % 2):
        raise UnsupportedPixelFormatError(
            f"PixelData holds {held} bytes where NumberOfFrames, Rows, Columns, SamplesPerPixel and BitsAllocated "
            f"declare {declared} (and a zero pad byte when odd): MVMIC would not give the rest back, so it does "
            "not code this image")


def _check_bits_outside_stored(dataset: Dataset) -> None:
    """Refuse native Pixel Data whose words carry bits above BitsStored (an overlay embedded in the pixel
    words, or padding): decoders drop them, so no MVMIC stream could give the stored bytes back. Signed
    values may only sign-extend there. Compressed syntaxes hold BitsStored bits by construction."""
    syntax = UID(dataset.file_meta.TransferSyntaxUID)
    allocated, stored = int(dataset.BitsAllocated), int(dataset.BitsStored)
    if syntax.is_compressed or stored >= allocated:
        return
    words = np.frombuffer(dataset.PixelData, f"{'<' if syntax.is_little_endian else '>'}u{allocated // 8}",
                          count=min(_declared_bytes(dataset), len(dataset.PixelData)) // (allocated // 8))
    high = words >> (stored - 1 if dataset.PixelRepresentation else stored)
    allowed = (0, (1 << (allocated - stored + 1)) - 1) if dataset.PixelRepresentation else (0,)
    outside = int(np.count_nonzero(~np.isin(high, allowed)))
    if outside:
        raise UnsupportedPixelFormatError(
            f"{outside} stored values have bits set above BitsStored {stored} of BitsAllocated {allocated} (e.g. an "
            "overlay embedded in the pixel words): MVMIC would not give them back, so it does not code this image")


def _decode(dataset: Dataset) -> tuple[np.ndarray, str]:
    """All frames as (frames, rows, columns, samples) and the photometric of the result."""
    syntax = UID(dataset.file_meta.TransferSyntaxUID)
    if _is_native_ybr_422(dataset):
        return _expanded_422(dataset), "YBR_FULL"
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise UnsupportedPixelFormatError(f"TransferSyntaxUID {syntax} ({syntax.name}) cannot be decoded") from exc
    if not decoder.is_available:
        raise UnsupportedPixelFormatError(f"TransferSyntaxUID {syntax.name}: no decoder plugin is installed")
    # Compressed colour (JPEG YCbCr) comes out as RGB, as a decompressing PACS stores it;
    # uncompressed data is never colour-converted, so it round-trips bit for bit.
    as_rgb = syntax.is_compressed
    frames, photometric = [], str(dataset.PhotometricInterpretation)
    try:
        for array, pixel_module in decoder.iter_array(dataset, as_rgb=as_rgb):
            frames.append(array.reshape(array.shape[0], array.shape[1], -1).astype(array.dtype.newbyteorder("<")))
            photometric = pixel_module["photometric_interpretation"]
    except Exception as exc:  # decoders raise ValueError, RuntimeError, struct errors...
        raise DicomInputError(f"PixelData cannot be decoded ({syntax.name}): {first_line(exc)}") from exc
    # A decoder upsamples YBR_FULL_422 chroma: the array it returns is YBR_FULL.
    return np.stack(frames), "YBR_FULL" if photometric == "YBR_FULL_422" else photometric


def _is_native_ybr_422(dataset: Dataset) -> bool:
    return (str(dataset.PhotometricInterpretation) == "YBR_FULL_422"
            and not UID(dataset.file_meta.TransferSyntaxUID).is_compressed)


def _expanded_422(dataset: Dataset) -> np.ndarray:
    """Native YBR_FULL_422 Pixel Data as YBR_FULL (frames, rows, columns, 3): each pair of pixels stores
    Y1 Y2 Cb Cr (PS3.3 C.7.6.3.1.2), the pair's chroma repeated over both, as pydicom's pixel_array gives
    one frame (its frame iterator mis-sizes these frames: 2 or more frames failed to decode)."""
    rows, columns, frames = int(dataset.Rows), int(dataset.Columns), int(dataset.get("NumberOfFrames") or 1)
    if columns % 2:
        raise DicomInputError(f"YBR_FULL_422 pairs the pixels of a row: Columns must be even, not {columns}")
    syntax, size = UID(dataset.file_meta.TransferSyntaxUID), int(dataset.BitsAllocated) // 8
    dtype = np.dtype(f"{'<' if syntax.is_little_endian else '>'}{'i' if dataset.PixelRepresentation else 'u'}{size}")
    if len(dataset.PixelData) < _declared_bytes(dataset):
        raise DicomInputError(f"PixelData holds {len(dataset.PixelData)} bytes, {frames} YBR_FULL_422 frame(s) of "
                              f"{rows} x {columns} need {_declared_bytes(dataset)}")
    pairs = np.frombuffer(dataset.PixelData, dtype, count=_declared_bytes(dataset) // size)
    pairs = pairs.reshape(frames, rows, columns // 2, 4)
    expanded = np.empty((frames, rows, columns, 3), dtype.newbyteorder("<"))
    expanded[..., 0] = pairs[..., :2].reshape(frames, rows, columns)
    expanded[..., 1] = np.repeat(pairs[..., 2], 2, axis=-1)
    expanded[..., 2] = np.repeat(pairs[..., 3], 2, axis=-1)
    return expanded


def _subsampled_422(pixels: np.ndarray) -> np.ndarray:
    """YBR_FULL (frames, rows, columns, 3) as YBR_FULL_422 words (frames, rows, columns // 2, 4): Y1 Y2 Cb Cr,
    each chroma the rounded mean of the pair's (exactly the stored one after a lossless round trip; within
    a near-lossless bound of it when both are)."""
    frames, rows, columns = pixels.shape[:3]
    pairs = pixels.reshape(frames, rows, columns // 2, 2, 3).astype(np.int64)
    packed = np.empty((frames, rows, columns // 2, 4), np.int64)
    packed[..., :2] = pairs[..., 0]
    packed[..., 2:] = (pairs[..., 0, 1:] + pairs[..., 1, 1:] + 1) // 2
    return packed


def _header_after_decoding(dataset: Dataset, photometric: str) -> Dataset:
    """The dataset without Pixel Data, its pixel description updated to the decoded array."""
    del dataset.PixelData
    for keyword in ENCODING_ELEMENTS:
        if keyword in dataset:
            delattr(dataset, keyword)
    dataset.PhotometricInterpretation = photometric
    if dataset.SamplesPerPixel > 1 and dataset.get("PlanarConfiguration") not in (0, 1):
        dataset.PlanarConfiguration = 0  # required for colour; to_dataset writes what it declares
    _make_little_endian(dataset)
    return dataset


def _make_little_endian(dataset: Dataset) -> None:
    """Decode every element and mark the header as Explicit VR Little Endian.

    Elements stay raw until first accessed, and a raw element whose VR was left to
    inference cannot be written; binary words from a big-endian file are swapped.
    """
    swap = not dataset.original_encoding[1]
    for element in decoded_elements(dataset):
        size = WORD_BYTES.get(element.VR)
        if swap and size and isinstance(element.value, bytes):
            element.value = np.frombuffer(element.value, f">u{size}").astype(f"<u{size}").tobytes()
    dataset.set_original_encoding(False, True, dataset.original_character_set)


def decoded_elements(dataset: Dataset) -> list:
    """Every element of the file meta and the dataset, nested ones too, decoded: pydicom decodes each on first
    access, where a malformed one raises whatever its decoding does (NotImplementedError for an unknown VR,
    ValueError for a length that does not fit it...). DicomInputError, quoting pydicom's message, for the first."""
    try:
        return list(itertools.chain(dataset.file_meta.iterall(), dataset.iterall()))
    except Exception as exc:  # pydicom raises many types
        raise DicomInputError(f"header element cannot be decoded: {first_line(exc)}") from exc


def as_little_endian(dataset: Dataset) -> Dataset:
    """An uncompressed dataset from a big-endian file (Explicit VR Big Endian, retired) in Explicit VR
    Little Endian, in place: Pixel Data swapped in words of BitsAllocated (8-bit data in OW: in 16-bit
    words), every other binary element in words of its VR (PS3.5 7.3). Raises DicomInputError for an
    element that cannot be decoded."""
    pixel_data, vr = dataset.get("PixelData"), dataset["PixelData"].VR if "PixelData" in dataset else None
    if pixel_data is not None:
        del dataset.PixelData
    _make_little_endian(dataset)
    if pixel_data is not None:
        # Words of BitsAllocated; 8-bit data in OW (pydicom's reading too) was written in 16-bit words.
        allocated = int(dataset.get("BitsAllocated", 8))
        size = allocated // 8 if allocated > 8 else 2 if vr == "OW" else 1
        dataset.PixelData = (np.frombuffer(pixel_data, f">u{size}", count=len(pixel_data) // size).astype(f"<u{size}")
                             .tobytes() + pixel_data[len(pixel_data) // size * size:]) if size > 1 else pixel_data
        dataset["PixelData"].VR = vr if vr in ("OB", "OW") else "OW"
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return dataset


def header_bytes(header: Dataset) -> bytes:
    """A header (no Pixel Data) as a DICOM file in Explicit VR Little Endian."""
    copied = copy.copy(header)  # shallow: only the file meta changes
    copied.file_meta = copy.deepcopy(header.file_meta)
    copied.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    copied.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def check_writable(header: Dataset) -> None:
    """Refuse now (DicomInputError, naming the element at fault) a header that could not be written back
    with the pixels: after coding them, or after decoding them."""
    try:
        header_bytes(header)
    except Exception as exc:  # pydicom raises many types, not always naming the element
        raise DicomInputError(f"header cannot be written back as DICOM: {_element_at_fault(header)}{first_line(exc)}") from exc


def _element_at_fault(dataset: Dataset) -> str:
    """'(gggg,eeee) Keyword: ' of the first top-level element that cannot be written, or ''. pydicom decodes
    elements lazily: one that cannot even be decoded is at fault too."""
    stream = DicomBytesIO()
    stream.is_little_endian, stream.is_implicit_VR = True, False
    try:
        encoding = dataset._character_set
    except Exception:  # noqa: BLE001 - an undecodable SpecificCharacterSet
        return "(0008,0005) SpecificCharacterSet: "
    meta = getattr(dataset, "file_meta", None) or Dataset()
    tags = [(meta, tag) for tag in meta.keys()] + [(dataset, tag) for tag in dataset.keys()]  # noqa: SIM118 - a
    for owner, tag in tags:  # Dataset's own iterator decodes each element, which may fail: the tags do not
        try:
            write_data_element(stream, owner[tag], encoding)
        except Exception:  # noqa: BLE001 - any failure marks the element we are looking for
            return f"{tag} {keyword_for_tag(tag) or 'private'}: "
    return ""


def _check_pixels_fit(pixels: np.ndarray, image: NativeImage) -> None:
    if pixels.shape != image.pixels.shape:
        raise ValueError(f"pixels have shape {pixels.shape}, the image has {image.pixels.shape}")
    if not np.issubdtype(pixels.dtype, np.integer):
        raise ValueError(f"pixels must be integers, got {pixels.dtype}")
    low, high = int(pixels.min()), int(pixels.max())
    fmt = image.format
    if low < fmt.min_value or high > fmt.max_value:
        raise ValueError(
            f"pixel values {low}..{high} exceed BitsStored {fmt.bits_stored} "
            f"({'signed' if fmt.signed else 'unsigned'} range {fmt.min_value}..{fmt.max_value})"
        )
