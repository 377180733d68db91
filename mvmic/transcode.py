"""DICOM <-> .mvm: what `mvmic compress` / `mvmic decompress` (and the service) do.

    DICOM --read_dicom--> NativeImage --compress_at--> Bitstream (base layers)
          + the header without Pixel Data, deflated, as a DICOM_HEADER layer --> .mvm

    .mvm --Bitstream.from_bytes(this model, these weights)--> decompress --> pixels
          + DICOM_HEADER layer --> DICOM (Explicit VR Little Endian):
            lossless: the source's header as it was (same SOP Instance UID, nothing marked lossy);
            lossy and near-lossless: lossy_derivative (new UID, LossyImageCompression, ratio, method)

    .mvm --Bitstream.from_bytes--> Analyzer (partial decoding, task heads) --> analysis JSON
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass

import pydicom
from pydicom.dataset import Dataset

from model.bitstream import Bitstream, Layer, LayerKind, fingerprint
from model.codec import MvmicCodec, max_error_of
from model.rate_control import compress_at
from model.tasks.analysis import Analyzer
from mvmic.derivative import lossy_derivative
from mvmic.pixels import DicomSource, NativeImage, PixelFormat, header_bytes, read_dicom, to_dataset

METHOD = "MVMICNET"


@dataclass(frozen=True)
class Compressed:
    data: bytes  # the .mvm file
    bits_per_pixel: float  # whole file, header layer included
    ratio: float  # uncompressed Pixel Data bytes / file bytes
    quality_code: int  # of the base layer
    max_error: int | None  # None lossy, 0 lossless, else near-lossless


def dicom_to_mvm(source: DicomSource, codec: MvmicCodec, quality: int | None = None,
                 target_bpp: float | None = None, target_psnr: float | None = None,
                 max_error: int | None = None, verify: bool = True) -> Compressed:
    image = read_dicom(source)
    header_layer = Layer(LayerKind.DICOM_HEADER, 0, zlib.compress(header_bytes(image.header), 9))
    stream = compress_at(codec, image.pixels, image.format, quality, target_bpp, target_psnr, (header_layer,),
                         max_error, verify)
    data = stream.to_bytes()
    pixels = image.pixels.shape[0] * image.pixels.shape[1] * image.pixels.shape[2]
    raw_bytes = pixels * image.format.samples_per_pixel * image.header.BitsAllocated // 8
    return Compressed(data, 8 * len(data) / pixels, raw_bytes / len(data), stream.quality, max_error)


def mvm_to_dicom(data: bytes, codec: MvmicCodec) -> Dataset:
    stream = _parse(data, codec)
    source = _source_header(stream)
    pixels = codec.decompress(stream)
    max_error = max_error_of(stream)
    if max_error == 0:
        header = source  # the original instance, pixel for pixel: same UID, not a derivative
    else:
        ratio = pixels.size * source.BitsAllocated / 8 / len(data)
        kind = "Lossy" if max_error is None else f"Near-lossless (maximum error {max_error})"
        header = lossy_derivative(source, ratio, METHOD,
                                  f"{kind} compression with {codec.model_id}, quality code {stream.quality}")
    fmt = PixelFormat(stream.bits_stored, stream.signed, stream.samples_per_pixel, stream.photometric)
    return to_dataset(NativeImage(header=header, pixels=pixels, format=fmt))


def analyze_mvm(data: bytes, analyzer: Analyzer) -> dict:
    """The analysis document of a bitstream: lesion boxes and COCO-RLE segmentation per frame."""
    stream = _parse(data, analyzer.codec)
    return {"model_id": stream.model_id, "rows": stream.rows, "columns": stream.columns,
            "quality_code": stream.quality, "frames": [frame.to_json() for frame in analyzer.analyze(stream)]}


def _parse(data: bytes, codec: MvmicCodec) -> Bitstream:
    return Bitstream.from_bytes(data, expected_model_id=codec.model_id,
                                expected_fingerprint=fingerprint(codec.weights.sha256))


def _source_header(stream: Bitstream) -> Dataset:
    layers = [layer for layer in stream.layers if layer.kind == LayerKind.DICOM_HEADER]
    if not layers:
        raise ValueError("the bitstream carries no DICOM header layer, so no DICOM instance can be rebuilt from it")
    try:
        return pydicom.dcmread(io.BytesIO(zlib.decompress(layers[0].payload)))
    except (zlib.error, pydicom.errors.InvalidDicomError) as exc:
        raise ValueError(f"the DICOM header layer is damaged: {exc}") from exc
