"""The exact layer: one frame coded losslessly or near-losslessly in the pixel domain.

    frame (rows, columns, samples) stored integers
      --planes: grey v - min; colour G (signed colour, layer version 2: G - min), then R - G', B - G'
               (G' = decoded green, so each sample keeps its own bound)--> int32 planes of values 0..max
      --enc_least_squares: per plane, 24 gradient classes of 18-tap integer predictors (side information)
      --rows cut into independent stripes (each coded alone, so stripes decode on parallel threads)
      --plane_coder.encode_plane (prediction blend, contexts, adaptive binary range coding)--> bytes

Payload of an EXACT layer (mvmic.model.bitstream.pack_payloads / pack_integers):

    [ pack_integers([version, max error tau, stripes, classes]),  version 1, or 2 for signed colour
      per plane:  pack_integers(per class: 0 (the class below's coefficients) or 1, LS_TAPS coefficients),
      per stripe, per plane: the range coder's bytes ]

Every sample decodes within tau of the original (tau = 0: exactly), by construction; the encoder
also decodes its own output (``verify``) and refuses to return a stream that breaks the bound.
Errors: ``ExactLayerError`` (a ValueError) for a payload that does not parse or does not fit the image.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from mvmic.model.bitstream import LayerError, pack_integers, pack_payloads, unpack_integers, unpack_payloads
from mvmic.model.lossless.plane_coder import (
    LS_CLASSES,
    LS_TAPS,
    MAX_COEFFICIENT,
    check_decoder,
    check_encoder,
    decode_plane,
    encode_plane,
)
from mvmic.model.pixel_format import PixelFormat
from mvmic.model.quality import MAX_ERROR

LAYER_VERSION = 1
# Version 2: signed colour codes its green plane as G - min (version 1 coded G itself, which fails on negative
# green: the encoder's own check withheld every such stream). Every other
# image still writes version 1, byte for byte as before.
SIGNED_COLOUR_VERSION = 2
MAX_STRIPES = 64
STRIPE_ROWS = 512  # the encoder's default: one stripe per 512 rows (a stripe costs about 0.5 % in bits)


class ExactLayerError(LayerError):
    """An exact layer that does not parse, or does not fit the image it claims to code."""


def default_stripes(rows: int) -> int:
    """Stripes for an image of ``rows`` rows: one per STRIPE_ROWS (a 1024-row MR gets two, one per core)."""
    return max(1, min(MAX_STRIPES, rows // STRIPE_ROWS))


def _stripe_bounds(rows: int, stripes: int) -> list[tuple[int, int]]:
    cuts = [rows * i // stripes for i in range(stripes + 1)]
    return list(itertools.pairwise(cuts))


def _map(function: Callable, items: list, threads: int) -> list:
    """``function`` over ``items``, on ``threads`` threads (the kernels release the GIL)."""
    if threads <= 1 or len(items) == 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(function, items))


def _ranges(fmt: PixelFormat) -> list[int]:
    """The largest plane value of each plane: grey v - min; colour G, R - G' + peak, B - G' + peak."""
    if fmt.samples_per_pixel == 1:
        return [fmt.max_value - fmt.min_value]
    return [fmt.peak, 2 * fmt.peak, 2 * fmt.peak]


def _code(plane: np.ndarray, max_value: int, tau: int, coefficients: np.ndarray) -> bytes:
    """Encode one stripe of one plane; ``plane`` becomes its reconstruction."""
    size = plane.size + 1024
    while True:
        data = np.zeros(size, dtype=np.uint8)
        work = plane.copy()
        used = encode_plane(work, max_value, tau, data, coefficients)
        if used <= size:
            plane[...] = work
            return data[:used].tobytes()
        size = used  # the coder counted what it needed: code again into a buffer that big


def _decode(data: bytes, shape: tuple[int, int], max_value: int, tau: int, coefficients: np.ndarray) -> np.ndarray:
    plane = np.zeros(shape, dtype=np.int32)
    decode_plane(plane, max_value, tau, np.frombuffer(bytearray(data), dtype=np.uint8), coefficients)
    return plane


def encode_frame(frame: np.ndarray, fmt: PixelFormat, max_error: int, stripes: int | None = None,
                 threads: int = 1) -> bytes:
    """The EXACT layer payload of ``frame`` (rows, columns[, samples]), every sample within ``max_error``
    (0..MAX_ERROR) of the original; ``stripes`` independent row stripes (default_stripes), coded on
    ``threads`` threads (the bytes do not depend on the thread count)."""
    from mvmic.model.lossless.enc_least_squares import fit_predictors  # encoder only: decoding never loads it

    if not 0 <= max_error <= MAX_ERROR:
        raise ValueError(f"maximum error {max_error} out of range 0 (lossless)..{MAX_ERROR}")
    check_encoder()
    rows = frame.shape[0]
    stripes = default_stripes(rows) if stripes is None else stripes
    if not 1 <= stripes <= min(MAX_STRIPES, rows):
        raise ValueError(f"{stripes} stripes for {rows} rows: use 1..{min(MAX_STRIPES, rows)}")
    values = frame.reshape(frame.shape[0], frame.shape[1], -1).astype(np.int64)
    ranges = _ranges(fmt)
    colour = fmt.samples_per_pixel == 3
    version = SIGNED_COLOUR_VERSION if colour and fmt.signed else LAYER_VERSION
    shift = _green_shift(version, fmt)
    first = (values[..., 1] - shift if colour else values[..., 0] - fmt.min_value).astype(np.int32)
    fitted = [fit_predictors(first)]
    if colour:  # the chroma predictors are fitted on the original green; the stripes use the decoded one
        fitted += [fit_predictors((values[..., s] - values[..., 1] + fmt.peak).astype(np.int32)) for s in (0, 2)]
    side = [_predictor_side(plane) for plane in fitted]
    predictors = [_parse_predictors(part) for part in side]  # what the decoder will use, by construction

    def stripe(bounds: tuple[int, int]) -> list[bytes]:
        top, bottom = bounds
        plane = np.ascontiguousarray(first[top:bottom])
        parts = [_code(plane, ranges[0], max_error, predictors[0])]
        if colour:
            green = plane.astype(np.int64) + shift  # reconstructed
            for index, sample in enumerate((0, 2), start=1):
                difference = (values[top:bottom, :, sample] - green + fmt.peak).astype(np.int32)
                parts.append(_code(difference, ranges[index], max_error, predictors[index]))
        return parts

    coded = _map(stripe, _stripe_bounds(rows, stripes), threads)
    header = pack_integers([version, max_error, stripes, LS_CLASSES])
    return pack_payloads([header, *side, *(part for parts in coded for part in parts)])


def _green_shift(version: int, fmt: PixelFormat) -> int:
    """What the green plane of a colour frame is coded less of: min (signed, version 2), else 0."""
    return fmt.min_value if version == SIGNED_COLOUR_VERSION else 0


def layer_max_error(payload: bytes) -> int:
    """The bound an EXACT layer promises."""
    return _read_header(_parts(payload))[1]


def _parts(payload: bytes) -> list[bytes]:
    try:
        return unpack_payloads(payload)
    except ValueError as exc:
        raise ExactLayerError(f"exact layer does not parse: {exc}") from exc


def _read_header(parts: list[bytes]) -> tuple[int, int, int, int]:
    """(version, maximum error, stripes, classes) of a layer's parts."""
    header = unpack_integers(parts[0]) if parts else []
    versions = (LAYER_VERSION, SIGNED_COLOUR_VERSION)
    if len(header) != 4 or header[0] not in versions or not 0 <= header[1] <= MAX_ERROR:
        raise ExactLayerError(f"exact layer header {header[:4]} is not version {' or '.join(map(str, versions))} "
                              f"with a maximum error 0..{MAX_ERROR}")
    return header[0], header[1], header[2], header[3]


def decode_frame(payload: bytes, rows: int, columns: int, fmt: PixelFormat, threads: int = 1) -> np.ndarray:
    """Stored values (rows, columns, samples) in ``fmt.dtype`` from an EXACT layer payload."""
    check_decoder()
    parts = _parts(payload)
    version, max_error, stripes, classes = _read_header(parts)
    planes = fmt.samples_per_pixel
    if version == SIGNED_COLOUR_VERSION and not (planes == 3 and fmt.signed):
        raise ExactLayerError(f"exact layer version {version} codes signed colour, not {planes}-sample "
                              f"{'signed' if fmt.signed else 'unsigned'} frames")
    shift = _green_shift(version, fmt)
    if not 1 <= stripes <= min(MAX_STRIPES, rows) or classes != LS_CLASSES:
        raise ExactLayerError(f"exact layer has {stripes} stripes and {classes} predictor classes for {rows} rows")
    if len(parts) != 1 + planes + stripes * planes:
        raise ExactLayerError(f"exact layer has {len(parts)} parts, expected {1 + planes + stripes * planes}")
    predictors = [_parse_predictors(part) for part in parts[1: 1 + planes]]
    ranges = _ranges(fmt)
    coded = parts[1 + planes:]

    def stripe(numbered: tuple[int, tuple[int, int]]) -> np.ndarray:
        index, (top, bottom) = numbered
        shape = (bottom - top, columns)
        mine = coded[index * planes: (index + 1) * planes]
        first = _decode(mine[0], shape, ranges[0], max_error, predictors[0]).astype(np.int64)
        if planes == 1:
            return (first + fmt.min_value)[..., None]
        first += shift
        red, blue = (_decode(mine[i], shape, ranges[i], max_error, predictors[i]) - fmt.peak + first
                     for i in (1, 2))
        return np.stack([red, first, blue], axis=-1)

    frame = np.concatenate(_map(stripe, list(enumerate(_stripe_bounds(rows, stripes))), threads), axis=0)
    return np.clip(frame, fmt.min_value, fmt.max_value).astype(fmt.dtype)


def _predictor_side(fitted: list[np.ndarray | None]) -> bytes:
    """One plane's predictors as the layer sends them: per class, 0 (use the class below's; class 0:
    all zero) or 1 and LS_TAPS coefficients."""
    integers = []
    for coefficients in fitted:
        integers += [0] if coefficients is None else [1, *coefficients.tolist()]
    return pack_integers(integers)


def _parse_predictors(part: bytes) -> np.ndarray:
    """(LS_CLASSES, LS_TAPS) int64 coefficients from _predictor_side's bytes."""
    integers = unpack_integers(part)
    coefficients = np.zeros((LS_CLASSES, LS_TAPS), dtype=np.int64)
    position = 0
    for c in range(LS_CLASSES):
        if position >= len(integers) or integers[position] not in (0, 1):
            raise ExactLayerError(f"exact layer predictor class {c}: flag missing or not 0/1")
        if integers[position] == 1:
            values = integers[position + 1: position + 1 + LS_TAPS]
            if len(values) != LS_TAPS or any(abs(v) > MAX_COEFFICIENT for v in values):
                raise ExactLayerError(f"exact layer predictor class {c}: {len(values)} coefficients")
            coefficients[c] = values
            position += 1 + LS_TAPS
        else:
            if c:
                coefficients[c] = coefficients[c - 1]
            position += 1
    if position != len(integers):
        raise ExactLayerError("exact layer predictors: integers left over")
    return coefficients
