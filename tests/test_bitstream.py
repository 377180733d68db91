"""Tests for mvmic.model.bitstream: the .mvm container's layout, and that bad bytes never get past it."""

from __future__ import annotations

import dataclasses
import hashlib
import time
import zlib

import numpy as np
import pytest

from mvmic.model.bitstream import (
    FORMAT_VERSION,
    BadMagicError,
    Bitstream,
    BitstreamError,
    CorruptedError,
    InvalidFieldError,
    Layer,
    LayerKind,
    TrailingDataError,
    TruncatedError,
    UnsupportedVersionError,
    WeightsMismatchError,
    fingerprint,
    pack_payloads,
    unpack_payloads,
)
from mvmic.pixels import PixelFormat

WEIGHTS_SHA256 = hashlib.sha256(b"mvmicnet-w97-v1 weights").hexdigest()
OTHER_SHA256 = hashlib.sha256(b"other weights").hexdigest()
FP = fingerprint(WEIGHTS_SHA256)
MODEL_ID = "mvmicnet-w97-v1"


def _random_bytes(rng: np.random.Generator, size: int) -> bytes:
    return rng.integers(0, 256, size, dtype=np.uint8).tobytes()


def _realistic() -> Bitstream:
    """2-frame signed 16-bit image, each frame a base layer holding hyperprior z and y strings."""
    rng = np.random.default_rng(7)
    layers = tuple(
        Layer(LayerKind.BASE, frame, pack_payloads([_random_bytes(rng, 40 + frame), _random_bytes(rng, 300 + frame)]))
        for frame in range(2)
    )
    return Bitstream(
        model_id=MODEL_ID,
        weights_fingerprint=FP,
        rows=512,
        columns=384,
        frames=2,
        samples_per_pixel=1,
        bits_stored=16,
        signed=True,
        photometric="MONOCHROME2",
        offset=-1024,
        scale_log2=12,
        quality_code=5 * 256,
        layers=layers,
    )


def _small() -> Bitstream:
    return Bitstream(MODEL_ID, FP, 4, 4, 1, 1, 8, False, "MONOCHROME2", 0, 8, 256, (Layer(LayerKind.BASE, 0, b"zy"),))


def _with_crc(body: bytes) -> bytes:
    return body + zlib.crc32(body).to_bytes(4, "little")


def _patched(data: bytes, index: int, value: int) -> bytes:
    """``data`` with one byte replaced and the CRC recomputed, so only that byte is wrong."""
    body = bytearray(data[:-4])
    body[index] = value
    return _with_crc(bytes(body))


def test_round_trip_of_a_realistic_bitstream() -> None:
    original = _realistic()
    data = original.to_bytes()

    parsed = Bitstream.from_bytes(data, expected_model_id=MODEL_ID, expected_fingerprint=FP)

    assert parsed == original
    assert parsed.to_bytes() == data
    assert parsed.offset == -1024 and parsed.signed and parsed.bits_stored == 16
    assert [len(p) for layer in parsed.layers for p in unpack_payloads(layer.payload)] == [40, 300, 41, 301]
    assert parsed.pixel_format == PixelFormat(bits_stored=16, signed=True, samples_per_pixel=1)


def test_bytes_match_the_documented_layout() -> None:
    # Assembled by hand from the byte table in the module docstring, not by the code under test.
    layer = Layer(LayerKind.RESIDUAL, 1, b"\xaa" * 130)
    bitstream = Bitstream("m1", FP, 300, 2, 2, 3, 10, True, "YBR_FULL", -3, -2, 0x1234, (layer,))
    expected = _with_crc(
        b"MVM"
        + b"\x01"  # format version
        + b"\x02m1"  # model id length, model id
        + FP
        + b"\xac\x02"  # rows 300 = 0b10_0101100: 0x2c | 0x80, then 0x02
        + b"\x02\x02"  # columns 2, frames 2
        + b"\x03\x0a\x01\x03"  # samples 3, bits stored 10, flags signed, YBR_FULL
        + b"\x05\x03"  # offset -3 -> zigzag 5; scale_log2 -2 -> zigzag 3
        + b"\x34\x12"  # quality code, little-endian
        + b"\x01"  # one layer
        + b"\x01\x01\x82\x01"  # residual, frame 1, length 130 = 0x02 | 0x80, 0x01
        + b"\xaa" * 130
    )
    assert bitstream.to_bytes() == expected
    assert Bitstream.from_bytes(expected) == bitstream


def test_header_overhead_of_a_512_square_12_bit_image() -> None:
    payload = pack_payloads([b"z" * 60, b"y" * 586])  # 650 bytes: about 0.02 bpp at 512x512
    bitstream = Bitstream(
        MODEL_ID, FP, 512, 512, 1, 1, 12, False, "MONOCHROME2", 0, 12, 5 * 256, (Layer(LayerKind.BASE, 0, payload),)
    )
    # magic 3 + version 1 + model id 1 + 15 + fingerprint 8                    = 28
    # rows 512 (2) + columns 512 (2) + frames 1 (1)                           =  5
    # samples 1 + bits stored 1 + flags 1 + photometric 1                     =  4
    # offset 0 (1) + scale_log2 12 -> zigzag 24 (1) + quality code u16 (2)        =  4
    # layer count 1 + kind 1 + frame 1 + length 650 (2)                       =  5
    # CRC32                                                                   =  4
    #                                                                   total = 50
    assert len(payload) == 650
    assert len(bitstream.to_bytes()) - len(payload) == 50


def test_every_truncation_is_reported_as_truncated_quickly() -> None:
    data = _realistic().to_bytes()
    start = time.perf_counter()
    for length in range(len(data)):
        with pytest.raises(TruncatedError, match="truncated"):
            Bitstream.from_bytes(data[:length])
    assert time.perf_counter() - start < 1.0, f"{len(data)} truncations took too long"


def test_every_single_bit_flip_is_rejected() -> None:
    data = _small().to_bytes()
    seen = set()
    for bit in range(8 * len(data)):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(BitstreamError) as info:
            Bitstream.from_bytes(bytes(flipped))
        seen.add(info.type)
        if bit >= 32:  # past magic and version only the CRC-driven diagnosis answers
            assert info.type in (CorruptedError, TruncatedError), (bit, info.value)
    assert {BadMagicError, UnsupportedVersionError, CorruptedError} <= seen


def test_crc_mismatch_message_says_corrupted() -> None:
    data = bytearray(_realistic().to_bytes())
    data[200] ^= 0x10  # inside a payload: structure intact, only the CRC can tell
    with pytest.raises(CorruptedError, match="corrupted bitstream: CRC32 mismatch"):
        Bitstream.from_bytes(bytes(data))


def test_bad_magic() -> None:
    with pytest.raises(BadMagicError, match="not an MVM bitstream"):
        Bitstream.from_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))


@pytest.mark.parametrize("version", [0, 4, 255])
def test_unknown_version_is_named(version: int) -> None:
    data = _patched(_small().to_bytes(), 3, version)
    with pytest.raises(UnsupportedVersionError, match=f"format version {version} \\(this build reads 1, 2, 3\\)") as info:
        Bitstream.from_bytes(data)
    assert info.value.version == version
    assert FORMAT_VERSION == 1


def test_unknown_layer_kind() -> None:
    data = _small().to_bytes()
    kind_at = len(data) - 4 - len(b"zy") - 3  # kind, frame 0, length 2 precede the payload
    assert data[kind_at : kind_at + 3] == b"\x00\x00\x02"
    with pytest.raises(InvalidFieldError, match="unknown layer kind 7"):
        Bitstream.from_bytes(_patched(data, kind_at, 7))


@pytest.mark.parametrize(
    ("index", "value", "message"),
    [
        (4, 0, "model id length 0"),
        (4, 65, "model id length 65"),
        (5, ord(" "), "printable ASCII"),
    ],
)
def test_invalid_model_id_in_an_intact_bitstream(index: int, value: int, message: str) -> None:
    with pytest.raises(InvalidFieldError, match=message):
        Bitstream.from_bytes(_patched(_small().to_bytes(), index, value))


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (b"\xff" * 11, "rows: varint longer than 10 bytes"),
        (b"\xff" * 9 + b"\x02", "rows: varint exceeds 64 bits"),
        (b"\x84\x00", "rows: varint is not minimally encoded"),  # 4 in two bytes: one object, one encoding
        (b"\x80\x80\x04", "rows 65536"),
    ],
)
def test_bad_varints_in_an_intact_bitstream(rows: bytes, message: str) -> None:
    body = _small().to_bytes()[:-4]
    rows_at = 5 + len(MODEL_ID) + 8
    assert body[rows_at] == 4
    with pytest.raises(InvalidFieldError, match=message):
        Bitstream.from_bytes(_with_crc(body[:rows_at] + rows + body[rows_at + 1 :]))


def test_header_fields_out_of_range_with_a_valid_crc() -> None:
    data = _small().to_bytes()
    samples_at = 5 + len(MODEL_ID) + 8 + 3  # after model id, fingerprint and 1-byte rows, columns, frames
    assert data[samples_at : samples_at + 4] == b"\x01\x08\x00\x01"
    cases = {
        samples_at: (2, "samples_per_pixel 2"),
        samples_at + 1: (17, "bits_stored 17"),
        samples_at + 2: (0x02, "flags 0x02"),
        samples_at + 3: (5, "unknown photometric code 5"),
    }
    for index, (value, message) in cases.items():
        with pytest.raises(InvalidFieldError, match=message):
            Bitstream.from_bytes(_patched(data, index, value))


@pytest.mark.parametrize("extra", [b"\x00", b"garbage", _small().to_bytes()])
def test_trailing_data_after_the_crc(extra: bytes) -> None:
    data = _small().to_bytes()
    with pytest.raises(TrailingDataError, match=f"{len(extra)} bytes of trailing data"):
        Bitstream.from_bytes(data + extra)


def test_unparsed_bytes_before_the_crc() -> None:
    body = _small().to_bytes()[:-4] + b"\x00"  # covered by a valid CRC, but no field claims it
    with pytest.raises(TrailingDataError, match="1 unparsed bytes"):
        Bitstream.from_bytes(_with_crc(body))


def test_declared_lengths_past_the_end_allocate_nothing() -> None:
    data = _small().to_bytes()
    count_at = len(data) - 4 - len(b"zy") - 4
    assert data[count_at] == 1
    huge = b"\xff" * 8 + b"\x7f"  # 2**63 - 1
    body = data[:-4]
    as_count = _with_crc(body[:count_at] + huge + body[count_at + 1 :])
    as_length = _with_crc(body[: count_at + 3] + huge + body[count_at + 4 :])
    start = time.perf_counter()
    with pytest.raises(InvalidFieldError, match="table of 9223372036854775807 layers"):
        Bitstream.from_bytes(as_count)
    with pytest.raises(InvalidFieldError, match="layer 0 payload \\(needs 9223372036854775807 bytes, 2 left\\)"):
        Bitstream.from_bytes(as_length)
    # Without a valid CRC the same lengths read as truncation, still without allocating.
    with pytest.raises(TruncatedError):
        Bitstream.from_bytes(as_length[:-1] + bytes([as_length[-1] ^ 1]))
    assert time.perf_counter() - start < 0.1


def test_weights_mismatch_names_both_sides() -> None:
    data = _small().to_bytes()
    other = fingerprint(OTHER_SHA256)
    with pytest.raises(WeightsMismatchError) as info:
        Bitstream.from_bytes(data, expected_model_id="mvmicnet-w97-v2", expected_fingerprint=other)
    message = str(info.value)
    assert f"made by model {MODEL_ID} weights {FP.hex()}" in message
    assert f"this service has model mvmicnet-w97-v2 weights {other.hex()}" in message

    with pytest.raises(WeightsMismatchError, match=f"weights {other.hex()}"):
        Bitstream.from_bytes(data, expected_fingerprint=other)  # same model name, retrained weights
    with pytest.raises(WeightsMismatchError, match="this service has model mvmicnet-w97-v2$"):
        Bitstream.from_bytes(data, expected_model_id="mvmicnet-w97-v2")
    assert Bitstream.from_bytes(data, expected_model_id=MODEL_ID, expected_fingerprint=FP) == _small()
    assert issubclass(WeightsMismatchError, BitstreamError) and issubclass(BitstreamError, ValueError)


def test_fingerprint_is_the_sha256_prefix() -> None:
    assert FP == bytes.fromhex(WEIGHTS_SHA256)[:8]
    assert fingerprint(WEIGHTS_SHA256.upper()) == FP
    for bad in ["", WEIGHTS_SHA256[:16], WEIGHTS_SHA256 + "00", "g" * 64]:
        with pytest.raises(ValueError, match="sha256"):
            fingerprint(bad)
    with pytest.raises(ValueError, match="8 bytes"):
        Bitstream.from_bytes(_small().to_bytes(), expected_fingerprint=bytes.fromhex(WEIGHTS_SHA256))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_id": ""}, "model_id"),
        ({"model_id": "x" * 65}, "model_id"),
        ({"model_id": "mvmicnet w97"}, "without spaces"),
        ({"model_id": "mvmicnet-é"}, "ASCII"),
        ({"weights_fingerprint": FP[:7]}, "8 bytes"),
        ({"rows": 0}, "rows 0"),
        ({"columns": 65536}, "columns 65536"),
        ({"frames": 0}, "frames 0"),
        ({"rows": True}, "rows True"),
        ({"samples_per_pixel": 3}, "MONOCHROME2 has 1 samples per pixel, not 3"),
        ({"bits_stored": 0}, "bits_stored 0"),
        ({"signed": 1}, "signed must be a bool"),
        ({"photometric": "PALETTE"}, "'PALETTE' is not one of"),
        ({"offset": 1 << 31}, "offset"),
        ({"scale_log2": 33}, "scale_log2 33"),
        ({"quality_code": -1}, "quality_code -1"),
        ({"layers": (Layer(LayerKind.BASE, 1, b""),)}, "frame 1, the image has 1 frames"),
        ({"layers": (b"zy",)}, "not a Layer"),
        ({"layers": (Layer(LayerKind.BASE, 0, b"a"), Layer(LayerKind.BASE, 0, b"b"))}, "repeats the BASE layer of frame 0"),
    ],
)
def test_construction_rejects_invalid_fields(change: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidFieldError, match=message):
        dataclasses.replace(_small(), **change)


def test_layer_validation() -> None:
    assert Layer(1, 0, b"").kind is LayerKind.RESIDUAL
    with pytest.raises(InvalidFieldError, match="unknown layer kind 5"):
        Layer(5, 0, b"")
    with pytest.raises(InvalidFieldError, match="layer frame -1"):
        Layer(LayerKind.BASE, -1, b"")
    with pytest.raises(InvalidFieldError, match="bytes"):
        Layer(LayerKind.BASE, 0, "zy")  # type: ignore[arg-type]
    assert dataclasses.replace(_small(), layers=[Layer(0, 0, b"")]).layers == (Layer(LayerKind.BASE, 0, b""),)


@pytest.mark.parametrize("parts", [[], [b""], [b"z" * 5, b"y" * 200], [b"\x00", b"", b"\xff" * 128]])
def test_pack_unpack_round_trip(parts: list[bytes]) -> None:
    assert unpack_payloads(pack_payloads(parts)) == parts


def test_pack_layout() -> None:
    assert pack_payloads([b"ab", b"c" * 128]) == b"\x02\x02ab\x80\x01" + b"c" * 128


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b"", TruncatedError, "part count"),
        (b"\x02\x01a", TruncatedError, "part 1 length"),
        (b"\x01\x05abc", TruncatedError, "part 0 \\(needs 5 bytes, 3 left\\)"),
        (b"\x01\x01ab", TrailingDataError, "1 bytes left over"),
        (b"\x00\x00", TrailingDataError, "1 bytes left over"),
        (b"\xff" * 8 + b"\x7f" + b"ab", TruncatedError, "parts"),  # 2**63 - 1 parts, nothing allocated
        (b"\x01" + b"\xff" * 9 + b"\x01", TruncatedError, "needs 18446744073709551615 bytes"),
        (b"\xff" * 11, InvalidFieldError, "longer than 10 bytes"),
        (b"\xff" * 9 + b"\x02", InvalidFieldError, "exceeds 64 bits"),
        (b"\x81\x00", InvalidFieldError, "not minimally encoded"),
    ],
)
def test_unpack_rejects_malformed(data: bytes, error: type[BitstreamError], message: str) -> None:
    with pytest.raises(error, match=message):
        unpack_payloads(data)


def test_random_bytes_are_rejected() -> None:
    rng = np.random.default_rng(2026)
    for index in range(2000):
        data = _random_bytes(rng, int(rng.integers(0, 201)))
        if index % 4 == 1:
            data = b"MVM\x01" + data
        elif index % 4 == 2:  # valid CRC too: only the fields can reject it
            data = _with_crc(b"MVM\x01" + data)
        with pytest.raises(BitstreamError):
            Bitstream.from_bytes(data)


def test_mutations_with_a_valid_crc_are_rejected_or_reencode_exactly() -> None:
    # A mutated byte may still give a legal bitstream (a payload byte, say); then it must be
    # the one and only encoding of what it decodes to.
    rng = np.random.default_rng(11)
    original = _realistic().to_bytes()
    body_length = len(original) - 4
    accepted = 0
    for _ in range(2000):
        body = bytearray(original[:-4])
        for index in rng.integers(0, min(body_length, 80), int(rng.integers(1, 4))):  # mostly header bytes
            body[index] = int(rng.integers(0, 256))
        data = _with_crc(bytes(body))
        try:
            parsed = Bitstream.from_bytes(data)
        except BitstreamError:
            continue
        accepted += 1
        assert parsed.to_bytes() == data
    assert 0 < accepted < 2000
