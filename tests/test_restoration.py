"""The restoration filter of the lossy base layer (mvmic.model.restoration, mvmic.model.enc_restoration): the
integer formula on every machine, kept by the encoder only where it pays, refused when damaged or forged."""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
import pytest

from mvmic.model import restoration
from mvmic.model.bitstream import (
    Bitstream,
    InvalidFieldError,
    Layer,
    LayerError,
    LayerKind,
    pack_integers,
    pack_payloads,
)
from mvmic.model.codec import MvmicCodec
from mvmic.model.enc_restoration import _solve
from mvmic.model.quality import QUALITY_CODES
from mvmic.model.rate_distortion import psnr
from mvmic.model.table_codec import TableCodec, base_layers
from mvmic.pixels import PixelFormat

# (dy, dx) of each tap, as table_coder.c's tap_rows and tap_columns
TAP_OFFSETS = [(0, 1), (0, 2), (1, -2), (1, -1), (1, 0), (1, 1), (1, 2), (2, -2), (2, -1), (2, 0), (2, 1), (2, 2)]


@pytest.fixture(scope="module")
def table() -> TableCodec:
    return TableCodec.load()


def _reference(plane: np.ndarray, taps: list[int]) -> np.ndarray:
    """The filter's definition in numpy integers: edges replicated, floor division by 2**8."""
    padded = np.pad(plane.astype(np.int64), 2, mode="edge")
    rows, columns = plane.shape
    centre = padded[2 : 2 + rows, 2 : 2 + columns]
    total = sum(tap * (padded[2 + dy : 2 + dy + rows, 2 + dx : 2 + dx + columns]
                       + padded[2 - dy : 2 - dy + rows, 2 - dx : 2 - dx + columns] - 2 * centre)
                for tap, (dy, dx) in zip(taps, TAP_OFFSETS, strict=True))
    return plane + ((total + 128) >> 8)


def _image(corpus_dir, corpus_manifest, entry_id: str):
    return next(entry for entry in corpus_manifest.entries if entry.id == entry_id).read(corpus_dir)


def _with_layers(stream: Bitstream, layers: list[Layer]) -> Bitstream:
    return dataclasses.replace(stream, layers=tuple(layers))


def test_the_compiled_filter_is_the_integer_formula() -> None:
    # The decoder rounds the synthesised plane (half to even, as numpy.round) and filters it in one pass.
    rng = np.random.default_rng(21)
    for shape, magnitude in (((64, 65), 4096), ((1, 1), 100), ((2, 9), 1 << 17), ((7, 5), 1 << 18), ((40, 3), 70_000)):
        synthesised = rng.uniform(-magnitude, magnitude, size=shape) / 2**12
        synthesised.flat[:4] = np.array([0.5, 1.5, -0.5, -2.5])[: synthesised.size] / 2**12  # ties go to even
        plane = np.round(synthesised * 2**12 + 3).astype(np.int64)
        assert np.array_equal(restoration.decoded_plane(synthesised, 2.0**12, 3, None), plane)
        for taps in (list(rng.integers(-restoration.MAX_TAP, restoration.MAX_TAP + 1, restoration.TAPS)),
                     [restoration.MAX_TAP] * restoration.TAPS, [-restoration.MAX_TAP] * restoration.TAPS,
                     list(rng.integers(-40, 41, restoration.TAPS))):
            assert np.array_equal(restoration.decoded_plane(synthesised, 2.0**12, 3, taps),
                                  _reference(plane, taps)), (shape, taps)
    # what a damaged stream may decode to: no overflow, no crash
    huge = np.full((6, 6), 2.0**40)
    huge[2, 3] = -(2.0**40)
    assert restoration.decoded_plane(huge, 1.0, 0, [restoration.MAX_TAP] * restoration.TAPS).dtype == np.int64
    for bad in ([1] * 11, [1] * 13, [restoration.MAX_TAP + 1] + [0] * 11):
        with pytest.raises(ValueError, match="restoration taps"):
            restoration.decoded_plane(huge, 1.0, 0, bad)


def test_a_3x3_filter_travels_as_its_4_taps() -> None:
    small = [3, 0, 0, -2, 5, 1] + [0] * 6  # nonzero at SMALL_POSITIONS only
    full = [3, 0, 0, -2, 5, 1, 0, 0, 0, 0, 0, 7]
    payload = restoration.pack([small, None, full])
    assert restoration.unpack(payload, 3) == [small, None, full]
    assert len(payload) == len(restoration.pack([None, None, full])) + 4  # 4 one-byte taps, not 12


def test_the_encoder_keeps_the_filter_where_it_pays(table, corpus_dir, corpus_manifest) -> None:
    # A real lung CT slice of the test split: the filter raises PSNR by more than its bytes cost, and the
    # decoder's pixels are the encoder's base layer filtered by the sent taps.
    image = _image(corpus_dir, corpus_manifest, "pyradiomics-lung1-030")
    fmt = image.format
    stream = table.compress_pixels(image.pixels, fmt, QUALITY_CODES[5])
    assert [layer.kind for layer in stream.layers] == [LayerKind.BASE, LayerKind.RESTORATION]
    data = stream.to_bytes()
    assert data[3] == 3  # format version 3: builds without the layer kind refuse it by its version
    base = _with_layers(stream, base_layers(stream))
    assert base.to_bytes()[3] == 1
    filtered, unfiltered = table.decompress(Bitstream.from_bytes(data)), table.decompress(base)
    gain = psnr(image.pixels, filtered, fmt.peak) - psnr(image.pixels, unfiltered, fmt.peak)
    extra_bits = 8 * (len(data) - len(base.to_bytes()))
    assert gain > 0.1 and extra_bits < 0.01 * 8 * len(data), (gain, extra_bits)
    taps = restoration.unpack(stream.layers[1].payload, 1)[0]
    planes = table.decoded_planes(table.frame_bands(stream.layers[0].payload, stream), fmt, stream.quality_code)
    expected = np.clip(_reference(planes[0], taps), fmt.min_value, fmt.max_value)
    assert np.array_equal(filtered[0, ..., 0], expected)
    # The facade decodes it the same way, and a colour image filters each of its planes.
    assert np.array_equal(MvmicCodec.load().decompress(stream), filtered)
    colour = _image(corpus_dir, corpus_manifest, "pydicom-examples_rgb_color")
    colour_stream = table.compress_pixels(colour.pixels, colour.format, QUALITY_CODES[6])
    decoded = table.decompress(colour_stream)
    assert psnr(colour.pixels, decoded, 255) >= psnr(colour.pixels, table.decompress(
        _with_layers(colour_stream, base_layers(colour_stream))), 255)


def test_the_filter_is_judged_on_the_clipped_output(table, corpus_dir, corpus_manifest) -> None:
    # Found by a tester: an 8-bit image that fills its range, and colour, whose planes the decoder clips (colour
    # after the inverse RCT), kept filters that lowered the decoded PSNR. Filtering never makes a frame worse now.
    checkerboard = (np.indices((128, 128)).sum(axis=0) % 2 * 255).astype(np.uint8)
    cases = [(np.repeat(checkerboard[None, ..., None], 3, axis=3), PixelFormat(8, False, 3, "RGB"), 12)]
    ultrasound = _image(corpus_dir, corpus_manifest, "pydicom-JPGLosslessP14SV1_1s_1f_8b")
    cases += [(ultrasound.pixels, ultrasound.format, code) for code in (12, 19)]
    colour = _image(corpus_dir, corpus_manifest, "pydicom-US1_UNCR")
    cases.append((colour.pixels[:1], colour.format, 12))
    for pixels, fmt, code in cases:
        stream = table.compress_pixels(pixels, fmt, code)
        unfiltered = table.decompress(_with_layers(stream, base_layers(stream)))
        assert psnr(pixels, table.decompress(stream), fmt.peak) >= psnr(pixels, unfiltered, fmt.peak), (fmt, code)


def test_where_the_filter_cannot_pay_there_is_no_layer(table) -> None:
    fmt = PixelFormat(bits_stored=12, signed=False)
    flat = np.full((1, 64, 64, 1), 1000, dtype=np.uint16)
    stream = table.compress_pixels(flat, fmt, QUALITY_CODES[3])
    assert [layer.kind for layer in stream.layers] == [LayerKind.BASE] and stream.to_bytes()[3] == 1
    noise = np.random.default_rng(4).integers(0, 4096, size=(1, 16, 16, 1)).astype(np.uint16)
    # 16 x 16 of white noise at the lowest quality: the taps would cost more than the error they remove
    assert [layer.kind for layer in table.compress_pixels(noise, fmt, QUALITY_CODES[1]).layers] == [LayerKind.BASE]


def test_damaged_or_forged_restoration_layers_are_refused(table, corpus_dir, corpus_manifest) -> None:
    image = _image(corpus_dir, corpus_manifest, "pyradiomics-lung1-030")
    stream = table.compress_pixels(image.pixels, image.format, QUALITY_CODES[5])
    base = stream.layers[0]
    served = MvmicCodec.load()
    for payload in (restoration.pack([None, None]), restoration.pack([[1] * 5]), restoration.pack([[5000] + [0] * 11]),
                    b"\x01\x05garbage", b"",
                    # each filter has one encoding (found by a tester): a layer that filters nothing, all-zero
                    # taps, a 3 x 3 filter sent as 12 taps
                    restoration.pack([None]), pack_payloads([pack_integers([0] * 12)]),
                    pack_payloads([pack_integers([0] * 4)]), pack_payloads([pack_integers([3, 0, 0, -2, 5, 1] + [0] * 6)])):
        forged = _with_layers(stream, [base, Layer(LayerKind.RESTORATION, 0, payload)])
        for decoder in (table, served):
            with pytest.raises(LayerError, match="restoration"):
                decoder.decompress(forged)
    # Analysis reads the BASE layer only, but refuses what decompress refuses (found by a tester).
    with pytest.raises(LayerError, match="restoration"):
        served.decode_coarse(_with_layers(stream, [base, Layer(LayerKind.RESTORATION, 0, b"\x01\x05garbage")]))
    assert len(served.decode_coarse(stream)) == 1
    # A version 1 stream cannot hold one, nor a version 3 stream lack it: each stream has one encoding.
    data = bytearray(stream.to_bytes())
    for version, layers in ((1, "base, restoration"), (2, "base, restoration")):
        data[3] = version
        with pytest.raises(InvalidFieldError, match=f"version {version} bitstream with {layers} layers"):
            Bitstream.from_bytes(bytes(data[:-4]) + zlib.crc32(bytes(data[:-4])).to_bytes(4, "little"))
    plain = bytearray(_with_layers(stream, [base]).to_bytes())
    plain[3] = 3
    with pytest.raises(InvalidFieldError, match="version 3 bitstream with base layers"):
        Bitstream.from_bytes(bytes(plain[:-4]) + zlib.crc32(bytes(plain[:-4])).to_bytes(4, "little"))
    # Beside an exact layer, or beside the first lossless design's residual layers, it filters nothing.
    with pytest.raises(InvalidFieldError, match="exact stream has no restoration layer"):
        _with_layers(stream, [Layer(LayerKind.EXACT, 0, b"\x00"), stream.layers[1]])
    residual = served.compress_pixels(image.pixels[:, :64, :64], image.format, QUALITY_CODES[5], max_error=2)
    with pytest.raises(LayerError, match="restoration layer"):
        served.decompress(_with_layers(residual, [*residual.layers, Layer(LayerKind.RESTORATION, 0,
                                                                          restoration.pack([[1] * 12]))]))


def test_the_taps_are_solved_in_plain_floats() -> None:
    rng = np.random.default_rng(8)
    for _ in range(5):
        basis = rng.normal(size=(40, restoration.TAPS))
        matrix, vector = basis.T @ basis, rng.normal(size=restoration.TAPS)
        expected = np.linalg.solve(matrix, vector)
        assert np.allclose(_solve(matrix.tolist(), vector.tolist()), expected, rtol=1e-6, atol=1e-9)
    assert _solve([[0.0] * restoration.TAPS] * restoration.TAPS, [0.0] * restoration.TAPS) is None
