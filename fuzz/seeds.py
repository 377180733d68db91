"""Seed inputs of the fuzz targets, built in code from the corpus (data/corpus) and the oddity builders of
tests/test_dicom_oddities.py: small, so that one execution takes milliseconds.

    corpus image --read_dicom, crop to a few rows and columns, lean header--> small DICOM (dicom_seeds)
    small DICOM --dicom_to_mvm: lossy, near-lossless, lossless (+ the first lossless design: base + residual
                  layers; + a stream of the integer-CNN model)--> .mvm (mvm_seeds)
    .mvm --mvm_instance--> DICOM instance with the .mvm encapsulated (instance_seeds)
"""

from __future__ import annotations

import copy
import functools
import hashlib
import io
import json
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
from common import REPO_ROOT
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from test_dicom_oddities import ct_like, dicom_instance, ybr_422_words

from mvmic.model.bitstream import Layer, LayerKind
from mvmic.model.cnn_base import CNN_WEIGHTS
from mvmic.model.codec import MvmicCodec
from mvmic.pixels import NativeImage, dicom_bytes, header_bytes, read_dicom
from mvmic.transcode import Compressed, dicom_to_mvm, mvm_instance

CORPUS = REPO_ROOT / "data" / "corpus"
# Small pydicom test files of syntaxes the corpus lacks (compressed, big endian, deflated, 32-bit).
PYDICOM_FILES = ("JPEGLSNearLossless_08.dcm", "JPEGLSNearLossless_16.dcm", "SC_rgb_small_odd.dcm",
                 "SC_rgb_small_odd_big_endian.dcm", "SC_rgb_small_odd_jpeg.dcm", "SC_rgb_rle.dcm",
                 "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "rtdose_1frame.dcm")
MAX_HEADER_VALUE = 128  # longer element values are left out of the seeds' headers (bytes per execution)


def write(folder: Path, inputs: list[bytes]) -> list[Path]:
    """Each input as a file named by its sha1 (as libFuzzer names corpus files); the folder is emptied first."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    paths = []
    for data in inputs:
        path = folder / hashlib.sha1(data).hexdigest()
        path.write_bytes(data)
        paths.append(path)
    return paths


def corpus_images(size: int = 12) -> list[NativeImage]:
    """One image of each pixel format of the corpus (photometric, samples, bits stored, sign, frames), cropped
    to about ``size`` x ``size`` pixels at its centre (odd sizes too) and at most 2 frames, with a lean header."""
    images = []
    for index, image in enumerate(_one_of_each_format()):
        rows, columns = size + index % 3, size + (index * 5) % 7  # size..size + 2 x size..size + 6
        top, left = (image.pixels.shape[1] - rows) // 2, (image.pixels.shape[2] - columns) // 2
        pixels = np.ascontiguousarray(image.pixels[:2, top:top + rows, left:left + columns])
        images.append(NativeImage(_lean(image.header, pixels.shape), pixels, image.format))
    return images


@functools.cache
def _one_of_each_format() -> tuple[NativeImage, ...]:
    manifest = json.loads((CORPUS / "manifest.json").read_text())
    chosen: dict[tuple, dict] = {}
    for entry in manifest["entries"]:
        key = (entry["photometric"], entry["samples_per_pixel"], entry["bits_stored"], entry["signed"],
               entry["frames"] > 1)
        chosen.setdefault(key, entry)
    return tuple(read_dicom(CORPUS / entry["path"]) for entry in chosen.values())


def _lean(header: Dataset, shape: tuple[int, ...]) -> Dataset:
    """``header`` without private, sequence or long elements, its geometry set to ``shape`` (frames, rows,
    columns, samples)."""
    lean = Dataset()
    lean.file_meta = copy.deepcopy(header.file_meta)
    for element in header:
        if element.tag.is_private or element.VR == "SQ" or len(str(element.value)) > MAX_HEADER_VALUE:
            continue
        lean.add(copy.deepcopy(element))  # the cached image keeps its own
    lean.Rows, lean.Columns = shape[1], shape[2]
    if "NumberOfFrames" in header or shape[0] > 1:
        lean.NumberOfFrames = shape[0]
    for keyword in ("FrameIncrementPointer", "SliceLocation"):
        if keyword in lean:
            delattr(lean, keyword)
    return lean


def oddities() -> list[bytes]:
    """DICOM files of what modalities really send (tests/test_dicom_oddities.py's builders), small."""
    palette = {"photometric": "PALETTE COLOR",
               **{f"{colour}PaletteColorLookupTableDescriptor": [4, 0, 8] for colour in ("Red", "Green", "Blue")},
               **{f"{colour}PaletteColorLookupTableData": bytes(range(first, first + 8, 2))
                  for first, colour in enumerate(("Red", "Green", "Blue"))}}
    overlay = (ct_like(8, 8) | (np.eye(8, dtype=np.uint16) << 12)).astype("<u2")
    signed_colour = (np.arange(6 * 5 * 3, dtype=np.int16).reshape(6, 5, 3) * 97 - 4000).astype("<i2")
    return [
        dicom_instance(ct_like(9, 11).tobytes(), 9, 11, bits_stored=12),
        dicom_instance(ct_like(9, 11).byteswap().tobytes(), 9, 11, bits_stored=12, big_endian=True),
        dicom_instance(ct_like(2 * 6, 7).tobytes(), 6, 7, bits_stored=12, frames=2),
        dicom_instance(ybr_422_words(2, 4, 6), 4, 6, bits_allocated=8, samples=3, photometric="YBR_FULL_422",
                       frames=2),
        dicom_instance(bytes(range(5 * 7)), 5, 7, bits_allocated=8, **palette),
        dicom_instance(overlay.tobytes(), 8, 8, bits_stored=12),
        dicom_instance(signed_colour.tobytes(), 6, 5, bits_stored=14, signed=True, samples=3, photometric="RGB"),
        dicom_instance(bytes(range(35)) + b"\x00", 5, 7, bits_allocated=8),  # odd length, zero pad byte
        dicom_instance(ct_like(1, 1).tobytes(), 1, 1, bits_stored=12),
        dicom_instance((np.arange(2 * 4 * 5, dtype=np.uint32) * 25_000).astype(">u4").tobytes(), 4, 5,
                       bits_allocated=32, frames=2, big_endian=True, Modality="RTDOSE"),
    ]


def pydicom_files() -> list[bytes]:
    return [Path(get_testdata_file(name)).read_bytes() for name in PYDICOM_FILES]


def implicit_vr(data: bytes) -> bytes:
    """The same instance in Implicit VR Little Endian."""
    dataset = pydicom.dcmread(io.BytesIO(data))
    buffer = io.BytesIO()
    dataset.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    dataset.save_as(buffer, enforce_file_format=True, implicit_vr=True, little_endian=True)
    return buffer.getvalue()


def dicom_seeds(images: list[NativeImage]) -> list[bytes]:
    """Small DICOM files: cropped corpus images, one in Implicit VR too, the oddities, pydicom's files."""
    cropped = [dicom_bytes(image) for image in images]
    return [*cropped, implicit_vr(cropped[0]), *oddities(), *pydicom_files()]


def compressed_streams(images: list[NativeImage], codec: MvmicCodec) -> list[Compressed]:
    """Every mode of every cropped image: lossy (qualities 1..8 in turn), near-lossless (max error 1..3),
    lossless (PALETTE COLOR: lossless only)."""
    streams = []
    for index, image in enumerate(images):
        data = dicom_bytes(image)
        if image.format.photometric != "PALETTE COLOR":
            streams.append(dicom_to_mvm(data, codec, quality=1 + index % 8))
            streams.append(dicom_to_mvm(data, codec, max_error=1 + index % 3))
        streams.append(dicom_to_mvm(data, codec, max_error=0))
    return streams


def older_streams(image: NativeImage, codec: MvmicCodec) -> list[bytes]:
    """Streams this build still decodes: the first lossless design (base + residual layers) and a lossy stream of the integer-CNN model (mvmicnet-w97-v2). Both encoders need a
    wavelet level: ``image`` is 16 x 16 pixels at least."""
    header = Layer(LayerKind.DICOM_HEADER, 0, zlib.compress(header_bytes(image.header), 9))
    cnn = MvmicCodec.load(CNN_WEIGHTS)
    streams = [codec.compress_pixels(image.pixels, image.format, 40, max_error=bound) for bound in (0,)]
    streams.append(cnn.compress_pixels(image.pixels, image.format, 40))
    return [replace(stream, layers=(*stream.layers, header)).to_bytes() for stream in streams]


def mvm_seeds(images: list[NativeImage], codec: MvmicCodec) -> list[bytes]:
    grey = next(image for image in corpus_images(16) if image.format.samples_per_pixel == 1 and image.frames == 1)
    return [compressed.data for compressed in compressed_streams(images, codec)] + older_streams(grey, codec)


def instance_seeds(images: list[NativeImage], codec: MvmicCodec) -> list[bytes]:
    """The DICOM instances a PACS behind the gateway stores: one per mode and image."""
    return [mvm_instance(compressed, codec) for compressed in compressed_streams(images, codec)]
