"""The ``.mvm`` bitstream: the container in which MVMICNet stores one compressed image.

    NativeImage --encoder--> Bitstream(header, layers) --to_bytes--> .mvm bytes
                                                                        |  disk, HTTP, DICOM
    NativeImage <--decoder-- Bitstream <--from_bytes(expected model id, weights fingerprint)

The container knows nothing about entropy coding: each layer's payload is opaque bytes to it
(a base layer packs its planes' payloads with ``pack_payloads``; "Payload of each layer kind"
below says what each kind holds and where it is defined). What it guarantees
is that a decoder only ever sees a complete, uncorrupted bitstream of a format version
it reads, made by the weights it has, with every header field in range.

Byte layout, format version 1 (integers little-endian; varint = unsigned LEB128, minimal,
at most 10 bytes, below 2**64; svarint = zigzag-encoded varint, 0 -1 1 -2 -> 0 1 2 3):

    | bytes  | field               | encoding                 | valid values                          |
    |--------|---------------------|--------------------------|---------------------------------------|
    | 3      | magic               | b"MVM"                   |                                       |
    | 1      | format version      | u8                       | 1; 2 when an EXACT layer is present;  |
    |        |                     |                          | 3 when a RESTORATION layer is present |
    | 1      | model id length n   | u8                       | 1..64                                 |
    | n      | model id            | ASCII                    | printable, no spaces: mvmicnet-w97-v3,|
    |        |                     |                          | mvmicnet-w97-v2, mvmic-exact          |
    | 8      | weights fingerprint | bytes                    | sha256(weights file)[:8]              |
    | 1-3    | rows                | varint                   | 1..65535                              |
    | 1-3    | columns             | varint                   | 1..65535                              |
    | 1-3    | frames              | varint                   | 1..2**20                              |
    | 1      | samples per pixel   | u8                       | 1 (MONOCHROME*, PALETTE COLOR) or 3   |
    | 1      | bits stored         | u8                       | 1..16                                 |
    | 1      | flags               | u8                       | bit 0: signed; bits 1-7: zero         |
    | 1      | photometric         | u8                       | 0 MONOCHROME1, 1 MONOCHROME2,         |
    |        |                     |                          | 2 RGB, 3 YBR_FULL, 4 PALETTE COLOR    |
    |        |                     |                          | (indices; exact layers, lossless only)|
    | 1-5    | offset              | svarint                  | -2**31..2**31-1; see "Header fields"  |
    | 1      | scale_log2          | svarint                  | -32..32; see "Header fields"          |
    | 2      | quality code        | u16                      | lossy: quality code 4..120 (MIN_CODE..|
    |        |                     |                          | MAX_CODE, mvmic.model.quality); exact |
    |        |                     |                          | streams: 0                            |
    | 1-10   | layer count L       | varint                   |                                       |
    |        | L times:            |                          |                                       |
    | 1      |   kind              | u8                       | 0 base, 1 residual, 2 DICOM header,   |
    |        |                     |                          | 3 exact (version 2), 4 restoration    |
    |        |                     |                          | (version 3)                           |
    | 1-3    |   frame index       | varint                   | 0..frames-1                           |
    | 1-10   |   payload length m  | varint                   | at most the bytes left                |
    | m      |   payload           | bytes                    |                                       |
    | 4      | CRC32               | u32                      | zlib.crc32 of every preceding byte    |

A stream holds each (kind, frame index) at most once: a repeated layer is refused, not read.

Version 2 is version 1 plus the EXACT layer kind: lossy streams are still written as version 1, so older
builds keep reading them, and refuse lossless ones by their version number. Version 3 is version 1 plus the
RESTORATION layer kind, for the same reason: a lossy stream without one is still version 1. One stream never
holds both, and a stream whose version is not the one its layers are written with is refused.

Payload of each layer kind. Packed parts use pack_payloads (varint count, then varint length + bytes
each) and pack_integers (varint count, then one svarint each), both below. Each layout is defined
(in full: symbol order, contexts, entropy coder) in the one place the last column names:

    | kind           | payload                                           | defined in                      |
    |----------------|---------------------------------------------------|---------------------------------|
    | 0 BASE         | lossy, one per frame: pack_payloads of one plane  | planes: mvmic.model.colour      |
    |                | payload per plane, 1 (grey) or 3 (colour: the     | (RCT, normalisation)            |
    |                | RCT's luma, B - G, R - G); a plane payload is     |                                 |
    |  model v3      |   [low-band table index: u8] [rANS u16 words LE]  | mvmic.model.table_contexts      |
    |  model v2      |   [low-band table index: u8] [CompressAI rANS]    | mvmic.model.context_model       |
    | 1 RESIDUAL     | first lossless design, one per frame beside its   | mvmic.model.residual_layer;     |
    |                | BASE: pack_payloads([pack_integers([tau, fixed-   | each plane's side information   |
    |                | point band steps]), residual weights fingerprint, | and rANS bytes:                 |
    |                | per sample pack_payloads([pack_integers(side),    | mvmic.model.residual            |
    |                | rANS bytes])])                                    |                                 |
    | 2 DICOM_HEADER | frame 0, at most one: zlib (deflate) of the       | mvmic.transcode (writes, reads) |
    |                | source instance without Pixel Data, as a DICOM    | mvmic.pixels.header_bytes       |
    |                | file in Explicit VR Little Endian                 |                                 |
    | 3 EXACT        | lossless, near-lossless (format version 2), one   | mvmic.model.lossless.layer      |
    |                | per frame, no weights: pack_payloads([pack_inte-  | (the stream around it:          |
    |                | gers([version, tau, stripes, classes]), per plane | mvmic.model.lossless.stream)    |
    |                | LS predictors, per stripe and plane range coder   |                                 |
    |                | bytes])                                           |                                 |
    | 4 RESTORATION  | lossy (format version 3), at most one per frame,  | mvmic.model.restoration         |
    |                | beside its BASE (model v3): pack_payloads of one  | (the encoder's fit:             |
    |                | pack_integers per plane: 0 taps (not filtered),   | mvmic.model.enc_restoration)    |
    |                | the 4 of a 3 x 3 filter, or 12; one plane or more |                                 |
    |                | filtered                                          |                                 |

(model v3: mvmicnet-w97-v3, coded by mvmic.model.table_codec; model v2: mvmicnet-w97-v2, coded by
mvmic.model.cnn_base.)

The model id says which BASE layer format a stream holds; the decoder that reads each is
mvmic.model.codec.MvmicCodec (which dispatches by model id and layer kind), or mvmic.model.table_codec
alone for version 3 lossy streams, or mvmic.model.lossless.stream alone for exact streams.

Header fields. A lossy stream maps a stored value v to (v - offset) / 2**scale_log2 before the
wavelet: offset is 0 for signed images and 2**(BitsStored - 1) for unsigned ones, scale_log2 is
BitsStored (mvmic.model.colour.offset_of). Both are integers so the mapping is exact and the same
on every machine. The decoder computes the mapping from the pixel format and checks the two fields
against it (mvmic.model.colour.check_mapping: InvalidFieldError), so a stream whose fields
disagree is refused as damaged, not decoded with another mapping. Exact streams code the stored
integers themselves: they write offset 0, scale_log2 0, quality code 0 and an all-zero fingerprint; those
written before commit 9a6e937 carry the lossy mapping's offset and scale_log2 (and model id
mvmicnet-w97-v2), and still decode. Their decoder accepts these two layouts only (mvmic.model.lossless.stream).

The fingerprint is 8 bytes, not the full 32 of a sha256, because at 0.02 bits per pixel a
512x512 image has about 650 bytes in all; two different weight files share 8 bytes with
probability 2**-64, which only has to rule out accidents, not forgery (the CRC is not a
signature either).

A 1-frame 512x512 image from model "mvmicnet-w97-v2" with offset 0 and a payload of
128 B to 16 KiB costs 50 bytes beyond its payload; the model id is 16 of them.

Reading checks, in this order: magic, version, CRC over the whole buffer (so damage
anywhere reads as damage, not as a confusing field error), then the fields, then the
expected model and weights. Nothing is allocated from a declared length before the length
is checked against the bytes that are really there.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from mvmic.model.pixel_format import MAX_BITS_STORED, SUPPORTED_SAMPLES, PixelFormat

MAGIC = b"MVM"
FORMAT_VERSION = 1  # written when the layers are those of version 1
EXACT_FORMAT_VERSION = 2  # written when an EXACT layer is present: builds that read only 1 refuse it by name
RESTORATION_FORMAT_VERSION = 3  # written when a RESTORATION layer is present, for the same reason
READ_VERSIONS = (FORMAT_VERSION, EXACT_FORMAT_VERSION, RESTORATION_FORMAT_VERSION)
FINGERPRINT_BYTES = 8
MAX_MODEL_ID_LENGTH = 64
MAX_DIMENSION = 65535  # DICOM Rows and Columns are US: anything larger cannot come from or go back to DICOM
MAX_FRAMES = 1 << 20
OFFSET_RANGE = (-(1 << 31), (1 << 31) - 1)
SCALE_LOG2_RANGE = (-32, 32)
MAX_QUALITY = 0xFFFF
MAX_VARINT_BYTES = 10
FLAG_SIGNED = 0x01
CRC_BYTES = 4
# kind (1) + frame index (>= 1) + payload length (>= 1): lets a layer count be checked
# against the bytes left before anything is read or allocated for it.
MIN_LAYER_BYTES = 3

PHOTOMETRIC_CODES = {"MONOCHROME1": 0, "MONOCHROME2": 1, "RGB": 2, "YBR_FULL": 3, "PALETTE COLOR": 4}
PHOTOMETRIC_NAMES = {code: name for name, code in PHOTOMETRIC_CODES.items()}
PHOTOMETRIC_SAMPLES = {"MONOCHROME1": 1, "MONOCHROME2": 1, "RGB": 3, "YBR_FULL": 3, "PALETTE COLOR": 1}

# Printable ASCII without spaces: model ids end up in error messages and logs verbatim.
_MODEL_ID = re.compile(rb"[\x21-\x7e]+")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


class BitstreamError(ValueError):
    """Not a usable .mvm bitstream; the subclass and message say why."""


class BadMagicError(BitstreamError):
    """The bytes do not start with b"MVM": not an MVM bitstream at all."""


class UnsupportedVersionError(BitstreamError):
    """An MVM bitstream of a format version this build does not read."""

    def __init__(self, version: int) -> None:
        super().__init__(f"unsupported .mvm format version {version} "
                         f"(this build reads {', '.join(map(str, READ_VERSIONS))})")
        self.version = version


class TruncatedError(BitstreamError):
    """The data ends inside a field. The CRC has already failed at this point, so a
    corrupted length that points past the end reads the same way."""


class CorruptedError(BitstreamError):
    """The CRC32 does not match: some byte changed after the bitstream was written."""


class TrailingDataError(BitstreamError):
    """Bytes follow the end of the bitstream (or of a packed payload)."""


class InvalidFieldError(BitstreamError):
    """A field has a value outside the format's range, in an intact bitstream or a new one."""


class LayerError(BitstreamError):
    """An intact bitstream (its CRC holds) whose layers cannot be decoded: a layer missing, or a payload that does
    not decode or does not fit the image the bitstream describes (damage the CRC cannot see, or a forged stream)."""


class WeightsMismatchError(BitstreamError):
    """The bitstream was made by other weights than the ones this service decodes with."""


class LayerKind(IntEnum):
    BASE = 0
    RESIDUAL = 1  # refines the base layer of the same frame to a guaranteed maximum error (mvmic.model.residual_layer)
    DICOM_HEADER = 2  # the source instance without Pixel Data, deflated; frame 0; lets decoding rebuild it
    EXACT = 3  # the frame coded losslessly or near-losslessly in the pixel domain (mvmic.model.lossless.layer); version 2
    RESTORATION = 4  # the Wiener filter of the same frame's decoded BASE layer (mvmic.model.restoration); version 3


# The format version each layer kind first appeared in (the others: FORMAT_VERSION).
_KIND_VERSIONS = {LayerKind.EXACT: EXACT_FORMAT_VERSION, LayerKind.RESTORATION: RESTORATION_FORMAT_VERSION}


def _version_of(layers: Sequence[Layer]) -> int:
    """The format version a stream of these layers is written as."""
    return max((_KIND_VERSIONS.get(layer.kind, FORMAT_VERSION) for layer in layers), default=FORMAT_VERSION)


@dataclass(frozen=True)
class Layer:
    """One coded unit of one frame: opaque bytes for the entropy decoder."""

    kind: LayerKind
    frame: int
    payload: bytes

    def __post_init__(self) -> None:
        try:
            kind = LayerKind(self.kind)
        except ValueError:
            raise InvalidFieldError(f"unknown layer kind {self.kind!r} (known: {_kinds()})") from None
        object.__setattr__(self, "kind", kind)  # a plain int becomes the enum, so equality and repr agree
        _check_int("layer frame", self.frame, 0, MAX_FRAMES - 1)
        if not isinstance(self.payload, bytes):
            raise InvalidFieldError(f"layer payload must be bytes, got {type(self.payload).__name__}")


@dataclass(frozen=True)
class Bitstream:
    """One compressed image: what the decoder needs besides the weights, and the layers."""

    model_id: str
    weights_fingerprint: bytes
    rows: int
    columns: int
    frames: int
    samples_per_pixel: int
    bits_stored: int
    signed: bool
    photometric: str
    offset: int
    scale_log2: int
    quality_code: int  # lossy: the base layer's quality code (MIN_CODE..MAX_CODE); exact streams: 0
    layers: tuple[Layer, ...]

    def __post_init__(self) -> None:
        _check_model_id(self.model_id)
        if not isinstance(self.weights_fingerprint, bytes) or len(self.weights_fingerprint) != FINGERPRINT_BYTES:
            raise InvalidFieldError(
                f"weights_fingerprint must be {FINGERPRINT_BYTES} bytes, got {self.weights_fingerprint!r}"
            )
        _check_int("rows", self.rows, 1, MAX_DIMENSION)
        _check_int("columns", self.columns, 1, MAX_DIMENSION)
        _check_int("frames", self.frames, 1, MAX_FRAMES)
        _check_pixel_format(self)
        _check_int("offset", self.offset, *OFFSET_RANGE)
        _check_int("scale_log2", self.scale_log2, *SCALE_LOG2_RANGE)
        _check_int("quality_code", self.quality_code, 0, MAX_QUALITY)
        object.__setattr__(self, "layers", tuple(self.layers))  # a list would make the object unhashable
        for index, layer in enumerate(self.layers):
            if not isinstance(layer, Layer):
                raise InvalidFieldError(f"layer {index} is a {type(layer).__name__}, not a Layer")
            if layer.frame >= self.frames:
                raise InvalidFieldError(f"layer {index} is for frame {layer.frame}, the image has {self.frames} frames")
        seen: set[tuple[int, int]] = set()
        for index, layer in enumerate(self.layers):
            if (layer.kind, layer.frame) in seen:  # a decoder would read one and ignore the other
                raise InvalidFieldError(f"layer {index} repeats the {LayerKind(layer.kind).name} layer of frame "
                                        f"{layer.frame}")
            seen.add((layer.kind, layer.frame))
        if {kind for kind, _ in seen} >= {LayerKind.EXACT, LayerKind.RESTORATION}:
            raise InvalidFieldError("an exact stream has no restoration layer: it holds the frames themselves")

    @property
    def pixel_format(self) -> PixelFormat:
        return PixelFormat(self.bits_stored, self.signed, self.samples_per_pixel, self.photometric)

    def to_bytes(self) -> bytes:
        model_id = self.model_id.encode("ascii")
        out = bytearray(MAGIC)
        version = _version_of(self.layers)
        out += bytes([version, len(model_id)]) + model_id + self.weights_fingerprint
        out += _varint(self.rows) + _varint(self.columns) + _varint(self.frames)
        flags = FLAG_SIGNED if self.signed else 0
        out += bytes([self.samples_per_pixel, self.bits_stored, flags, PHOTOMETRIC_CODES[self.photometric]])
        out += _varint(_zigzag(self.offset)) + _varint(_zigzag(self.scale_log2))
        out += self.quality_code.to_bytes(2, "little")
        out += _varint(len(self.layers))
        for layer in self.layers:
            out += bytes([layer.kind]) + _varint(layer.frame) + _varint(len(layer.payload)) + layer.payload
        out += zlib.crc32(out).to_bytes(CRC_BYTES, "little")
        return bytes(out)

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        expected_model_id: str | None = None,
        expected_fingerprint: bytes | None = None,
    ) -> Bitstream:
        """Parse and check a .mvm bitstream; raise a BitstreamError subclass for anything wrong.

        With ``expected_model_id`` / ``expected_fingerprint``, a bitstream from other
        weights raises WeightsMismatchError naming both sides.
        """
        if not isinstance(data, bytes | bytearray | memoryview):  # bytes(n) would allocate n zeros
            raise TypeError(f"a bitstream is bytes, got {type(data).__name__}")
        if expected_fingerprint is not None and len(expected_fingerprint) != FINGERPRINT_BYTES:
            raise ValueError(f"expected_fingerprint must be {FINGERPRINT_BYTES} bytes (use fingerprint())")
        data = bytes(data)
        _check_magic_and_version(data)
        if len(data) < len(MAGIC) + 1 + CRC_BYTES or not _crc_matches(data):
            raise _diagnose(data)
        reader = _Reader(data, len(MAGIC) + 1, len(data) - CRC_BYTES)
        try:
            fields = _read_fields(reader)
        except _Overrun as exc:  # the CRC matched: the writer declared a length it did not write
            raise InvalidFieldError(f"malformed bitstream: {exc}") from None
        if reader.remaining:
            raise TrailingDataError(f"{reader.remaining} unparsed bytes between the last layer and the CRC32")
        bitstream = cls(**fields)
        if data[len(MAGIC)] != _version_of(bitstream.layers):  # the one version to_bytes writes for these layers
            kinds = ", ".join(sorted({layer.kind.name.lower() for layer in bitstream.layers})) or "no"
            raise InvalidFieldError(f"a version {data[len(MAGIC)]} bitstream with {kinds} layers: streams of "
                                    f"these layers are version {_version_of(bitstream.layers)}")
        bitstream.check_made_by(expected_model_id, expected_fingerprint)
        return bitstream

    def check_made_by(self, model_id: str | None = None, weights_fingerprint: bytes | None = None) -> None:
        """Raise WeightsMismatchError, naming both sides, unless this bitstream was made by ``model_id``
        with the weights of ``weights_fingerprint`` (None: either is accepted)."""
        _check_expected(self, model_id, weights_fingerprint)


def format_version(data: bytes) -> int | None:
    """The format version byte of what looks like a .mvm (None: no MVM magic, or too short); nothing
    else is checked."""
    return data[len(MAGIC)] if len(data) > len(MAGIC) and data[: len(MAGIC)] == MAGIC else None


def fingerprint(weights_sha256_hex: str) -> bytes:
    """The 8-byte weights fingerprint: the first 8 bytes of the weights file's sha256."""
    if not isinstance(weights_sha256_hex, str) or not _SHA256_HEX.fullmatch(weights_sha256_hex):
        raise ValueError(f"not a sha256 hex digest (64 hex digits): {weights_sha256_hex!r}")
    return bytes.fromhex(weights_sha256_hex[: 2 * FINGERPRINT_BYTES])


def pack_payloads(parts: Sequence[bytes]) -> bytes:
    """Several strings in one layer payload: varint count, then varint length + bytes each."""
    out = bytearray(_varint(len(parts)))
    for part in parts:
        out += _varint(len(part)) + part
    return bytes(out)


def unpack_payloads(data: bytes) -> list[bytes]:
    """Inverse of pack_payloads; a length past the end or bytes left over are errors."""
    reader = _Reader(bytes(data), 0, len(data))
    try:
        count = reader.varint("part count")
        if count > reader.remaining:  # every part takes at least its 1-byte length
            raise _Overrun(f"{count} parts", count, reader.remaining)
        parts = [reader.take(reader.varint(f"part {i} length"), f"part {i}") for i in range(count)]
    except _Overrun as exc:
        raise TruncatedError(f"truncated packed payload: {exc}") from None
    if reader.remaining:
        raise TrailingDataError(f"{reader.remaining} bytes left over after {count} packed parts")
    return parts


def pack_integers(values: Sequence[int]) -> bytes:
    """Signed integers in a payload: varint count, then one svarint each."""
    return _varint(len(values)) + b"".join(_varint(_zigzag(v)) for v in values)


def unpack_integers(data: bytes) -> list[int]:
    """Inverse of pack_integers; a count past the end or bytes left over are errors."""
    reader = _Reader(bytes(data), 0, len(data))
    try:
        count = reader.varint("integer count")
        if count > reader.remaining:  # every svarint takes at least 1 byte
            raise _Overrun(f"{count} integers", count, reader.remaining)
        values = [_unzigzag(reader.varint(f"integer {i}")) for i in range(count)]
    except _Overrun as exc:
        raise TruncatedError(f"truncated packed integers: {exc}") from None
    if reader.remaining:
        raise TrailingDataError(f"{reader.remaining} bytes left over after {count} packed integers")
    return values


class _Overrun(Exception):
    """A declared size runs past the end of the data; the caller says what that means."""

    def __init__(self, field: str, need: int | None, left: int) -> None:
        needs = f"needs {need} bytes" if need is not None else "needs more bytes"
        super().__init__(f"data ends inside {field} ({needs}, {left} left)")
        self.field = field


class _Reader:
    """Cursor over data[pos:end] that never slices past end."""

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data, self.pos, self.end = data, pos, end

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def take(self, size: int, field: str) -> bytes:
        if size > self.remaining:
            raise _Overrun(field, size, self.remaining)
        self.pos += size
        return self.data[self.pos - size : self.pos]

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def uint(self, size: int, field: str) -> int:
        return int.from_bytes(self.take(size, field), "little")

    def varint(self, field: str) -> int:
        value = 0
        for index in range(MAX_VARINT_BYTES):
            if not self.remaining:
                raise _Overrun(field, None, 0)
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << (7 * index)
            if byte < 0x80:
                # Minimal encodings only, so every object has exactly one byte form.
                if byte == 0 and index > 0:
                    raise InvalidFieldError(f"{field}: varint is not minimally encoded")
                if value >> 64:
                    raise InvalidFieldError(f"{field}: varint exceeds 64 bits")
                return value
        raise InvalidFieldError(f"{field}: varint longer than {MAX_VARINT_BYTES} bytes")


def _check_magic_and_version(data: bytes) -> None:
    if data[: len(MAGIC)] != MAGIC[: len(data)]:
        raise BadMagicError(f"not an MVM bitstream: starts with {data[:8]!r}, not {MAGIC!r}")
    if len(data) <= len(MAGIC):
        raise TruncatedError(f"truncated bitstream ({len(data)} bytes): data ends before the format version byte")
    if data[len(MAGIC)] not in READ_VERSIONS:
        raise UnsupportedVersionError(data[len(MAGIC)])


def _crc_matches(data: bytes) -> bool:
    body = memoryview(data)[:-CRC_BYTES]
    return zlib.crc32(body) == int.from_bytes(data[-CRC_BYTES:], "little")


def _diagnose(data: bytes) -> BitstreamError:
    """Why the CRC failed: cut short, extra bytes after an intact bitstream, or damaged.

    Trailing bytes are told apart because they are a common, harmless-looking mistake
    (a DICOM value padded to even length, files concatenated): the bitstream parses to
    its end and the CRC found there matches.
    """
    reader = _Reader(data, len(MAGIC) + 1, len(data))
    try:
        _read_fields(reader)
        crc_at = reader.pos
        stored = reader.uint(CRC_BYTES, "the CRC32")
    except _Overrun as exc:
        return TruncatedError(f"truncated bitstream ({len(data)} bytes): {exc}")
    except BitstreamError:
        stored, crc_at = None, len(data) - CRC_BYTES
    if reader.remaining and stored is not None and zlib.crc32(memoryview(data)[:crc_at]) == stored:
        return TrailingDataError(
            f"{reader.remaining} bytes of trailing data after the end of an intact {reader.pos}-byte bitstream"
        )
    computed = zlib.crc32(memoryview(data)[: max(len(data) - CRC_BYTES, 0)])
    return CorruptedError(
        f"corrupted bitstream: CRC32 mismatch (stored {int.from_bytes(data[-CRC_BYTES:], 'little'):08x}, "
        f"computed {computed:08x} over {len(data) - CRC_BYTES} bytes)"
    )


def _read_fields(reader: _Reader) -> dict[str, Any]:
    """Everything between the version and the CRC, as Bitstream keyword arguments."""
    model_id_length = reader.u8("the model id length")
    if not 1 <= model_id_length <= MAX_MODEL_ID_LENGTH:
        raise InvalidFieldError(f"model id length {model_id_length} is not 1..{MAX_MODEL_ID_LENGTH}")
    model_id = reader.take(model_id_length, "the model id")
    if not _MODEL_ID.fullmatch(model_id):
        raise InvalidFieldError(f"model id {model_id!r} is not printable ASCII without spaces")
    fields: dict[str, Any] = {"model_id": model_id.decode("ascii")}
    fields["weights_fingerprint"] = reader.take(FINGERPRINT_BYTES, "the weights fingerprint")
    for name in ("rows", "columns", "frames"):
        fields[name] = reader.varint(name)
    fields["samples_per_pixel"] = reader.u8("samples per pixel")
    fields["bits_stored"] = reader.u8("bits stored")
    flags = reader.u8("the flags")
    if flags & ~FLAG_SIGNED:
        raise InvalidFieldError(f"flags {flags:#04x} set bits this version does not define (only bit 0, signed)")
    fields["signed"] = bool(flags & FLAG_SIGNED)
    code = reader.u8("the photometric code")
    if code not in PHOTOMETRIC_NAMES:
        raise InvalidFieldError(f"unknown photometric code {code} (known: {PHOTOMETRIC_NAMES})")
    fields["photometric"] = PHOTOMETRIC_NAMES[code]
    fields["offset"] = _unzigzag(reader.varint("offset"))
    fields["scale_log2"] = _unzigzag(reader.varint("scale_log2"))
    fields["quality_code"] = reader.uint(2, "quality code")
    fields["layers"] = _read_layers(reader)
    return fields


def _read_layers(reader: _Reader) -> tuple[Layer, ...]:
    count = reader.varint("the layer count")
    if count * MIN_LAYER_BYTES > reader.remaining:
        raise _Overrun(f"the table of {count} layers", count * MIN_LAYER_BYTES, reader.remaining)
    layers = []
    for index in range(count):
        kind = reader.u8(f"layer {index} kind")
        if kind not in LayerKind._value2member_map_:
            raise InvalidFieldError(f"layer {index}: unknown layer kind {kind} (known: {_kinds()})")
        frame = reader.varint(f"layer {index} frame index")  # Layer() checks its range
        payload = reader.take(reader.varint(f"layer {index} payload length"), f"layer {index} payload")
        layers.append(Layer(LayerKind(kind), frame, payload))
    return tuple(layers)


def _check_expected(bitstream: Bitstream, model_id: str | None, weights: bytes | None) -> None:
    model_differs = model_id is not None and model_id != bitstream.model_id
    weights_differ = weights is not None and bytes(weights) != bitstream.weights_fingerprint
    if model_differs or weights_differ:
        ours = " ".join(
            part
            for part in (
                f"model {model_id}" if model_id is not None else "",
                f"weights {bytes(weights).hex()}…" if weights is not None else "",
            )
            if part
        )
        raise WeightsMismatchError(
            f"bitstream was made by model {bitstream.model_id} weights {bitstream.weights_fingerprint.hex()}…; "
            f"this service has {ours}"
        )


def _check_model_id(model_id: object) -> None:
    if not isinstance(model_id, str):
        raise InvalidFieldError(f"model_id must be a str, got {type(model_id).__name__}")
    if not 1 <= len(model_id) <= MAX_MODEL_ID_LENGTH or not model_id.isascii():
        raise InvalidFieldError(f"model_id {model_id!r} must be 1..{MAX_MODEL_ID_LENGTH} ASCII characters")
    if not _MODEL_ID.fullmatch(model_id.encode("ascii")):
        raise InvalidFieldError(f"model_id {model_id!r} must be printable ASCII without spaces")


def _check_pixel_format(bitstream: Bitstream) -> None:
    _check_int("bits_stored", bitstream.bits_stored, 1, MAX_BITS_STORED)
    if not isinstance(bitstream.signed, bool):
        raise InvalidFieldError(f"signed must be a bool, got {bitstream.signed!r}")
    if bitstream.photometric not in PHOTOMETRIC_CODES:
        raise InvalidFieldError(f"photometric {bitstream.photometric!r} is not one of {list(PHOTOMETRIC_CODES)}")
    if bitstream.samples_per_pixel not in SUPPORTED_SAMPLES:
        raise InvalidFieldError(f"samples_per_pixel {bitstream.samples_per_pixel!r} is not 1 or 3")
    if bitstream.samples_per_pixel != PHOTOMETRIC_SAMPLES[bitstream.photometric]:
        raise InvalidFieldError(
            f"{bitstream.photometric} has {PHOTOMETRIC_SAMPLES[bitstream.photometric]} samples per pixel, "
            f"not {bitstream.samples_per_pixel}"
        )


def _check_int(name: str, value: object, low: int, high: int) -> None:
    # bool is an int subclass; True as a row count is a bug, not 1.
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidFieldError(f"{name} {value!r} is not an integer in {low}..{high}")


def _kinds() -> str:
    return ", ".join(f"{kind.value} {kind.name}" for kind in LayerKind)


def _varint(value: int) -> bytes:
    if not 0 <= value < 1 << 64:
        raise InvalidFieldError(f"varint value {value} is outside 0..2**64-1")
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _zigzag(value: int) -> int:
    return value << 1 if value >= 0 else (-value << 1) - 1


def _unzigzag(value: int) -> int:
    return value >> 1 if not value & 1 else -((value + 1) >> 1)
