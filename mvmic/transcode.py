"""DICOM <-> .mvm: what `mvmic compress` / `mvmic decompress` (and the service) do.

    DICOM --read_dicom--> NativeImage --compress_at--> Bitstream (base layers; lossless and
          near-lossless: an exact stream, made without the codec) + the header without Pixel
          Data, deflated, as a DICOM_HEADER layer --> .mvm

    .mvm --Bitstream.from_bytes(this model, these weights; an exact stream: any)--> decompress --> pixels
          + DICOM_HEADER layer --> DICOM (Explicit VR Little Endian):
            lossless: the source's header as it was (same SOP Instance UID, nothing marked lossy);
            lossy and near-lossless: lossy_derivative (new UID, LossyImageCompression, ratio, method)

    .mvm --Bitstream.from_bytes--> Analyzer (partial decoding, task heads) --> analysis JSON

    Compressed --mvm_instance--> DICOM whose Pixel Data is the .mvm, encapsulated (fragments,
          undefined length) under the private transfer syntax MVM_TRANSFER_SYNTAX: the instance a
          PACS stores (lossless: the original header; else the lossy derivative's)
    such an instance --instance_to_dicom--> the same instance decoded (same UID, Explicit VR LE)
"""

from __future__ import annotations

import copy
import io
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_fragments
from pydicom.uid import UID

from mvmic.derivative import lossy_derivative
from mvmic.model.bitstream import (
    EXACT_FORMAT_VERSION,
    Bitstream,
    Layer,
    LayerError,
    LayerKind,
    TrailingDataError,
    WeightsMismatchError,
    format_version,
)
from mvmic.model.lossless import stream as exact_stream
from mvmic.model.quality import MAX_ERROR
from mvmic.model.rate_control import compress_at
from mvmic.pixels import (
    SUPPORTED_BITS_ALLOCATED,
    DicomInputError,
    DicomSource,
    NativeImage,
    check_writable,
    decoded_elements,
    first_line,
    header_bytes,
    pixel_data_bytes,
    read_dataset,
    read_dicom,
    to_dataset,
)

if TYPE_CHECKING:  # the codec and the heads (and torch) load only where a stream needs them
    from mvmic.model.codec import MvmicCodec
    from mvmic.model.table_codec import TableCodec
    from mvmic.model.tasks.analysis import Analyzer, FrameAnalysis

METHOD = "MVMICNET"
MAX_HEADER_BYTES = 64 * 2**20  # a DICOM header without its pixels: far below this
# Private transfer syntax (a UUID-derived 2.25 UID): Pixel Data holds one .mvm bitstream, padded to
# even length, in the fragments of an encapsulated value.
MVM_TRANSFER_SYNTAX = UID("2.25.323708217038257544495275216054827656036")


MODES = ("lossy", "near-lossless", "lossless")


def error_bound(mode: str, max_error: int | None) -> int | None:
    """The error bound of a mode and maximum error (the CLI's, the service's and the gateway's
    storage setting): None for lossy, 0 for lossless, else 1..MAX_ERROR stored units."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: use one of {', '.join(MODES)}")
    if mode == "near-lossless":
        if max_error is None or not 1 <= max_error <= MAX_ERROR:
            raise ValueError(f"mode near-lossless needs a max error between 1 and {MAX_ERROR}")
        return max_error
    if max_error is not None:
        raise ValueError(f"a max error applies to mode near-lossless only, not {mode}")
    return 0 if mode == "lossless" else None


@dataclass(frozen=True)
class Compressed:
    data: bytes  # the .mvm file
    bits_per_pixel: float  # whole file, header layer included
    ratio: float  # uncompressed Pixel Data bytes / file bytes
    quality_code: int  # of the base layer
    max_error: int | None  # None lossy, 0 lossless, else near-lossless
    header: Dataset  # the source instance without its Pixel Data


def dicom_to_mvm(source: DicomSource, codec: MvmicCodec | None, quality: int | None = None,
                 target_bpp: float | None = None, target_psnr: float | None = None,
                 max_error: int | None = None, verify: bool = True) -> Compressed:
    """One DICOM instance (a Part 10 file: path, bytes or file object; any transfer syntax pydicom decodes) to a
    .mvm bitstream holding its stored values and, in a DICOM_HEADER layer, its header without Pixel Data.

    Pixels: 1 to 16 bits stored, signed or unsigned, 1 or 3 samples, any number of frames, coded on the native
    integer range. The operating point (mvmic.model.rate_control.compress_at): lossy at ``quality`` 1..8
    (default 4; mvmic.model.quality.QUALITY_CODES gives the quality code written in the stream), at a target
    rate ``target_bpp`` (bits per pixel, whole file) or a target ``target_psnr`` (dB on the native range,
    peak 2**BitsStored - 1); or exact with ``max_error`` (0: lossless, 1..MAX_ERROR: near-lossless, every
    sample within it, which ``verify`` checks by decoding). ``codec`` may be None for exact coding only.

    Returns a Compressed (the bytes, bits per pixel, ratio to the stored Pixel Data, the quality code).
    Raises DicomInputError (not DICOM, no or damaged Pixel Data), UnsupportedPixelFormatError (a pixel
    format MVMIC does not code), RateTargetError (no, or conflicting, operating points), CodecInputError
    (an image the codec cannot take, e.g. too small for its wavelet levels).
    """
    image = read_dicom(source)
    header_layer = Layer(LayerKind.DICOM_HEADER, 0, zlib.compress(header_bytes(image.header), 9))
    stream = compress_at(codec, image.pixels, image.format, quality, target_bpp, target_psnr, (header_layer,),
                         max_error, verify)
    data = stream.to_bytes()
    pixels = image.pixels.shape[0] * image.pixels.shape[1] * image.pixels.shape[2]
    return Compressed(data, 8 * len(data) / pixels, image.stored_bytes / len(data), stream.quality_code, max_error,
                      image.header)


def mvm_to_dicom(data: bytes, codec: MvmicCodec | None) -> Dataset:
    """The DICOM instance of a .mvm bitstream: the header its DICOM_HEADER layer holds, with Pixel Data decoded
    to the original's stored values (Explicit VR Little Endian; lossless: the original instance, every
    attribute and value; lossy and near-lossless: a derived instance, mvmic.derivative, with a new SOP Instance
    UID and Lossy Image Compression attributes). ``codec`` must be the codec whose weights made a lossy stream
    and may be None for an exact stream (lossless, near-lossless), which decodes without weights.

    Raises BitstreamError (not a .mvm, damaged: bad CRC, fields or layers; its subclass
    WeightsMismatchError for a stream of other weights, or of a model ``codec`` None cannot decode).
    """
    stream = parse_for(data, codec)
    source = _source_header(stream)  # first: its geometry must be the stream's before any pixel is decoded
    pixels = _decompress(stream, codec)
    ratio = pixel_data_bytes(source, pixels.shape[0]) / len(data)
    return _with_pixels(_decoded_header(stream, source, ratio, data), pixels, stream)


def mvm_instance(compressed: Compressed, codec: MvmicCodec | None) -> bytes:
    """The DICOM instance that stores ``compressed``: its header as decoding would give it (lossless: the
    original), Pixel Data the encapsulated .mvm under MVM_TRANSFER_SYNTAX."""
    stream = parse_for(compressed.data, codec)
    dataset = _decoded_header(stream, _source_header(stream), compressed.ratio, compressed.data)  # a fresh object
    dataset.PixelData = encapsulate([compressed.data + b"\x00" * (len(compressed.data) % 2)], has_bot=False)
    dataset["PixelData"].VR = "OB"
    dataset["PixelData"].is_undefined_length = True
    dataset.file_meta.TransferSyntaxUID = MVM_TRANSFER_SYNTAX
    buffer = io.BytesIO()
    dataset.save_as(buffer, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return buffer.getvalue()


def instance_to_dicom(dataset: Dataset, codec: MvmicCodec | None) -> Dataset:
    """An instance made by mvm_instance, decoded: the same header (and SOP Instance UID), Explicit VR
    Little Endian pixels."""
    decoded_elements(dataset)  # pydicom decodes each element on first access: a malformed one is named now
    stream = parse_for(bitstream_of_instance(dataset), codec)
    _check_describes(dataset, stream, "the instance's header", DicomInputError)
    header = copy.deepcopy(dataset)
    del header.PixelData
    check_writable(header)
    return _with_pixels(header, _decompress(stream, codec), stream)


def mvm_instance_dataset(data: bytes) -> Dataset | None:
    """The dataset of ``data`` when it is a DICOM Part 10 file (the 'DICM' prefix at byte 128), else None (a .mvm
    starts with its magic). DicomInputError for a DICOM file that is not an MVMIC instance, or that does not
    parse."""
    if data[128:132] != b"DICM":
        return None
    dataset = read_dataset(data)
    syntax = dataset.get("file_meta", Dataset()).get("TransferSyntaxUID")
    if syntax != MVM_TRANSFER_SYNTAX:
        raise DicomInputError(f"a DICOM instance in transfer syntax {syntax or 'none declared'}, not an MVMIC instance "
                         f"({MVM_TRANSFER_SYNTAX}): it is not compressed by MVMIC")
    return dataset


def bitstream_of_instance(dataset: Dataset) -> bytes:
    """The .mvm inside an instance of MVM_TRANSFER_SYNTAX (its even-length padding removed); DicomInputError for
    another instance, or one without Pixel Data in encapsulated items, BitstreamError for a damaged .mvm."""
    syntax = dataset.get("file_meta", Dataset()).get("TransferSyntaxUID")
    if syntax != MVM_TRANSFER_SYNTAX:
        raise DicomInputError(f"not an MVMIC instance: transfer syntax {syntax}, expected {MVM_TRANSFER_SYNTAX}")
    if "PixelData" not in dataset:
        raise DicomInputError("an MVMIC instance without Pixel Data (a truncated file?): no bitstream to decode")
    try:
        data = b"".join(list(generate_fragments(dataset.PixelData))[1:])  # item 0 is the empty offset table
    except Exception as exc:  # pydicom raises ValueError, struct errors... on items that do not parse
        raise DicomInputError(f"the Pixel Data of an MVMIC instance is not encapsulated items: {first_line(exc)}") \
            from exc
    try:
        Bitstream.from_bytes(data)
    except TrailingDataError:
        if data.endswith(b"\x00"):
            return data[:-1]
        raise
    return data


def _decompress(stream: Bitstream, codec: MvmicCodec | None):
    """Stored values (frames, rows, columns, samples) of a stream checked by parse_for (which let ``codec``
    be None only for an exact stream)."""
    return exact_stream.decompress(stream) if exact_stream.is_exact(stream) else codec.decompress(stream)


def _decoded_header(stream: Bitstream, source: Dataset, ratio: float, data: bytes) -> Dataset:
    """The header of the decoded image: the source's own for lossless, else a lossy derivative's (its UID
    from the source's and the bitstream ``data``: decoding a stream twice gives one instance)."""
    if exact_stream.is_exact(stream):
        max_error = exact_stream.max_error(stream)
    elif any(layer.kind == LayerKind.RESIDUAL for layer in stream.layers):  # the first lossless design
        from mvmic.model.codec import max_error_of

        max_error = max_error_of(stream)
    else:
        max_error = None  # lossy
    if max_error == 0:
        return source  # the original instance, pixel for pixel: same UID, not a derivative
    coded = f"quality code {stream.quality_code}" if max_error is None else f"maximum error {max_error}"
    kind = "Lossy" if max_error is None else "Near-lossless"
    return lossy_derivative(source, ratio, METHOD, f"{kind} compression with {stream.model_id}, {coded}", data)


def _with_pixels(header: Dataset, pixels, stream: Bitstream) -> Dataset:
    return to_dataset(NativeImage(header=header, pixels=pixels, format=stream.pixel_format))


def analyze_mvm(data: bytes, analyzer: Analyzer) -> dict:
    """The analysis document of a bitstream: labelled boxes, and COCO-RLE lesion and organ segmentations
    per frame."""
    stream = parse_for(data, analyzer.codec)
    return analysis_document(stream, analyzer.analyze(stream), analyzer)


def analysis_document(stream: Bitstream, frames: list[FrameAnalysis], analyzer: Analyzer) -> dict:
    """What the analysis found, with the networks that found it: the codec's model, the heads' weights file
    (sha256), their runtime and the ONNX model that ran (Analyzer.provenance), so that a stored result can be
    traced to what made it."""
    return {"model_id": stream.model_id, **analyzer.provenance, "rows": stream.rows, "columns": stream.columns,
            "quality_code": stream.quality_code, "frames": [frame.to_json() for frame in frames]}


def parse_for(data: bytes, codec: MvmicCodec | None) -> Bitstream:
    """A bitstream checked to come from ``codec``'s model and weights. An exact stream needs neither
    (it decodes without weights), and is the only kind that ``codec`` None accepts."""
    stream = Bitstream.from_bytes(data)
    if exact_stream.is_exact(stream):
        return stream
    if codec is None:
        raise WeightsMismatchError(f"a bitstream of model {stream.model_id} needs that model's weights to decode")
    codec.for_stream(stream)  # raises WeightsMismatchError unless the codec (or the weights beside it) made it
    return stream


def decoder_for(data: bytes, weights: Path | None = None) -> MvmicCodec | TableCodec | None:
    """The codec that decodes ``data``, loading no more than it needs: None for an exact stream, the
    torch-free version 3 codec (mvmic.model.table_codec) for a lossy version 3 stream, else mvmic.model.codec's
    (version 2 streams, residual layers). ``weights`` names another weights file."""
    if not needs_weights(data):
        return None
    stream = Bitstream.from_bytes(data)
    from mvmic.model.table_codec import DEFAULT_WEIGHTS, MODEL_ID, TableCodec

    if stream.model_id == MODEL_ID and not any(layer.kind == LayerKind.RESIDUAL for layer in stream.layers):
        return TableCodec.load(weights or DEFAULT_WEIGHTS)
    from mvmic.model.codec import MvmicCodec

    return MvmicCodec.load(weights or DEFAULT_WEIGHTS)


def needs_weights(data: bytes) -> bool:
    """Whether decoding ``data`` needs the codec's weights: every .mvm but an exact stream (format version 2).
    Judged from the version byte alone; parse_for checks the rest."""
    return format_version(data) != EXACT_FORMAT_VERSION


def _source_header(stream: Bitstream) -> Dataset:
    layers = [layer for layer in stream.layers if layer.kind == LayerKind.DICOM_HEADER]
    if not layers:
        raise LayerError("the bitstream carries no DICOM header layer, so no DICOM instance can be rebuilt from it")
    inflater = zlib.decompressobj()
    try:
        header = inflater.decompress(layers[0].payload, MAX_HEADER_BYTES)
        if inflater.unconsumed_tail:
            raise ValueError(f"the DICOM header layer inflates to more than {MAX_HEADER_BYTES} bytes")
        if not inflater.eof or inflater.unused_data:  # zlib's own check (Adler-32) is at the end of the stream
            raise ValueError("its deflated stream is cut short or followed by other bytes")
        source = read_dataset(header)
        decoded_elements(source)
        check_writable(source)
    except (zlib.error, ValueError) as exc:
        raise LayerError(f"the DICOM header layer is damaged: {exc}") from exc
    _check_describes(source, stream, "its DICOM header", LayerError)
    return source


def _check_describes(header: Dataset, stream: Bitstream, whose: str, error: type[ValueError]) -> None:
    """Raise ``error`` (what ``whose`` header belongs to is wrong: the client's instance, or the bitstream) unless ``header`` describes the pixels ``stream`` codes: the same geometry and pixel
    format (YBR_FULL_422: YBR_FULL pixels, in column pairs), in 8- or 16-bit words that hold them. The decoded
    pixels are written under this header: one that declared other pixels would misdescribe them."""
    try:
        photometric = str(header.PhotometricInterpretation)
        declared = (int(header.Rows), int(header.Columns), int(header.get("NumberOfFrames") or 1),
                    int(header.SamplesPerPixel), int(header.BitsStored), bool(int(header.PixelRepresentation)),
                    "YBR_FULL" if photometric == "YBR_FULL_422" else photometric)
        allocated = int(header.BitsAllocated)
    except (AttributeError, TypeError, ValueError) as exc:
        raise error(f"{whose} does not describe the pixels: {exc}") from exc
    coded = (stream.rows, stream.columns, stream.frames, stream.samples_per_pixel, stream.bits_stored, stream.signed,
             stream.photometric)
    if declared != coded:
        raise error(f"the bitstream's geometry {_pixels(coded)} is not {whose}'s {_pixels(declared)}")
    if allocated not in SUPPORTED_BITS_ALLOCATED or allocated < stream.bits_stored:
        raise error(f"{whose} declares BitsAllocated {allocated}, not 8 or 16 bits that hold the stream's "
                         f"{stream.bits_stored} bits stored")
    if photometric == "YBR_FULL_422" and stream.columns % 2:
        raise error(f"{whose} declares YBR_FULL_422, which pairs columns, for {stream.columns} columns")


def _pixels(description: tuple) -> str:
    rows, columns, frames, samples, bits, signed, photometric = description
    return (f"{rows} x {columns}, {frames} frame(s), {samples} sample(s), {bits} bits stored "
            f"{'signed' if signed else 'unsigned'}, {photometric}")
