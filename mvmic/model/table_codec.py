"""The lossy base layer of mvmicnet-w97-v3, torch-free: stored pixels <-> .mvm, compiled end to end.

    frame --RCT if colour, (v - offset) / 2**BitsStored (mvmic.model.colour.normalised_planes)--> planes
      --CDF 9/7 analysis (mvmic.model.lifting_kernels)--> / band step, dead-zone rounding --> integer bands
      --table contexts + rANS (mvmic.model.table_contexts)--> plane payloads --> Bitstream BASE layer per frame
      decoded integer planes --fitted Wiener filter (mvmic.model.restoration), where it pays--> RESTORATION layer

The quantiser is version 2's (mvmic.model.subbands: the same band steps, learned scales, dead zone and
reconstruction offset, so its integer bands and the task heads trained on them are unchanged); the
entropy model is the fitted lookup table that replaced version 2's integer CNN. Decoding needs numpy
and numba only: `mvmic decompress` of a version 3 stream never imports torch.

Weights file (.npz, fitted by mvmic.training.table_fit): ``lut`` (uint8, LUT_SHAPE), the coding tables
``cdfs`` / ``lengths`` / ``offsets`` (as mvmic.model.entropy_coder's), ``band_scales`` (the learned step
multipliers, float64, mvmic.model.subbands.scale_index order), ``gains`` (float64 (MAX_LEVELS + 1,
1 + 3 MAX_LEVELS): row L holds the low band's and each detail band's synthesis gain of an L-level
decomposition, coarsest first), ``model_id`` and ``residual_weights`` (the residual model's file name
beside it, for the residual layer of the first lossless design, or empty).
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from mvmic.model import _table_coder, lifting_kernels, restoration, table_contexts
from mvmic.model.bitstream import (
    Bitstream,
    InvalidFieldError,
    Layer,
    LayerError,
    LayerKind,
    fingerprint,
    pack_payloads,
    unpack_payloads,
)
from mvmic.model.cdf97 import band_shapes, max_levels
from mvmic.model.colour import (
    check_mapping,
    from_planes,
    normalised,
    normalised_planes,
    offset_of,
    plane_offset,
    to_planes,
)
from mvmic.model.errors import CodecInputError, check_codeable, check_decoded_size
from mvmic.model.pixel_format import PixelFormat
from mvmic.model.quality import DEADZONE, MAX_CODE, MIN_CODE, RECONSTRUCTION, step_of
from mvmic.paths import WEIGHTS_DIR

T, R = TypeVar("T"), TypeVar("R")
MODEL_ID = "mvmicnet-w97-v3"
DEFAULT_WEIGHTS = WEIGHTS_DIR / f"{MODEL_ID}.npz"
MAX_LEVELS = 5
TABLE_INDEX_LIMIT = 256  # the low band's table index travels in one byte


@dataclass(frozen=True)
class Weights:
    path: Path
    sha256: str


@dataclass
class PlaneBands:
    """The integer bands of one plane: the coarsest low band and the detail bands in a flat buffer
    (mvmic.model.table_contexts.layout), int64."""

    low: np.ndarray
    flat: np.ndarray
    starts: np.ndarray
    rows: np.ndarray
    columns: np.ndarray

    @property
    def levels(self) -> int:
        return len(self.rows) // 3

    def band(self, level: int, orientation: int) -> np.ndarray:
        index = 3 * level + orientation
        start, rows, columns = self.starts[index], self.rows[index], self.columns[index]
        return self.flat[start : start + rows * columns].reshape(rows, columns)

    def details(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        return [tuple(self.band(level, o) for o in range(3)) for level in range(self.levels)]


def levels_of(rows: int, columns: int) -> int:
    """The decomposition depth of an image: as many levels as keep the low band >= 8 pixels a side,
    at most MAX_LEVELS."""
    return min(MAX_LEVELS, max_levels(rows, columns))


class TableCodec:
    """mvmicnet-w97-v3's lossy codec from its weights file; read-only after loading, so threads share it."""

    model_id = MODEL_ID

    def __init__(self, weights: Weights, lut: np.ndarray, cdfs: np.ndarray, lengths: np.ndarray, offsets: np.ndarray,
                 band_scales: np.ndarray, gains: np.ndarray, residual_weights: str = "") -> None:
        if lut.shape != table_contexts.LUT_SHAPE or lut.max() >= len(lengths) or len(lengths) > TABLE_INDEX_LIMIT:
            raise ValueError(f"{weights.path}: lookup table of shape {lut.shape} or table count {len(lengths)} "
                             f"is not this design's")
        if gains.shape != (MAX_LEVELS + 1, 1 + 3 * MAX_LEVELS) or any(
                not np.all(gains[levels, : 1 + 3 * levels] > 0) for levels in range(MAX_LEVELS + 1)):
            raise ValueError(f"{weights.path}: band gains missing for some decomposition depth")
        self.weights, self.residual_weights = weights, residual_weights
        self.lut = np.ascontiguousarray(lut.ravel(), dtype=np.int32)
        self.cdfs, self.lengths = np.ascontiguousarray(cdfs, dtype=np.int32), np.ascontiguousarray(lengths, dtype=np.int32)
        self.offsets = np.ascontiguousarray(offsets, dtype=np.int32)
        self.tables = (self.cdfs, self.cdfs.shape[1], self.lengths, self.offsets)  # as the kernels take them
        self.band_scales, self.gains = np.asarray(band_scales, dtype=np.float64), np.asarray(gains, dtype=np.float64)
        # Frames coded at once by default: the CLI sets the machine's cores; the service keeps 1, its
        # worker threads already share the cores between requests.
        self.threads = 1

    @classmethod
    def load(cls, path: Path = DEFAULT_WEIGHTS) -> TableCodec:
        """Raises ValueError for a file that is not a version 3 weights file."""
        data = Path(path).read_bytes()
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
            if str(arrays.pop("model_id")) != MODEL_ID:
                raise ValueError("another model's weights")
            version = int(arrays.pop("context_version", 1))
            if version != table_contexts.CONTEXT_VERSION:
                raise ValueError(f"fitted for context definition {version}, this build computes definition "
                                 f"{table_contexts.CONTEXT_VERSION}: fit them again with mvmic train contexts")
            return cls(Weights(Path(path), hashlib.sha256(data).hexdigest()), arrays["lut"], arrays["cdfs"],
                       arrays["lengths"], arrays["offsets"], arrays["band_scales"], arrays["gains"],
                       str(arrays.get("residual_weights", "")))
        except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{path} is not {MODEL_ID} weights ({exc})") from None

    def for_stream(self, stream: Bitstream) -> TableCodec:
        """This codec, if it made ``stream``; else WeightsMismatchError naming both sides."""
        stream.check_made_by(self.model_id, fingerprint(self.weights.sha256))
        return self

    # -- quantiser (mvmic.model.subbands' arithmetic, in the same order) ---------------------------------
    def band_steps(self, levels: int, code: int) -> tuple[float, list[tuple[float, float, float]]]:
        """Quantiser step of the low band and of (LH, HL, HH) per level, coarsest first."""
        step, gains = step_of(code), self.gains[levels]
        details = [tuple(step / gains[1 + 3 * i + o] * self.band_scales[1 + 3 * (levels - i - 1) + o] for o in range(3))
                   for i in range(levels)]
        return step / gains[0] * self.band_scales[0], details

    def quantize(self, plane: np.ndarray, code: int) -> PlaneBands:
        """Integer bands of one normalised plane (rows, columns) float64."""
        levels = levels_of(*plane.shape)
        low, details = lifting_kernels.analysis(plane, levels)
        low_step, steps = self.band_steps(levels, code)
        quantised = [_deadzone_round(band / s) for level, level_steps in zip(details, steps, strict=True)
                     for band, s in zip(level, level_steps, strict=True)]
        starts, rows, columns = table_contexts.layout([tuple(b.shape for b in level) for level in details])
        flat = np.concatenate([q.ravel() for q in quantised]).astype(np.int64) if quantised else np.zeros(0, np.int64)
        return PlaneBands(np.round(low / low_step).astype(np.int64), flat, starts, rows, columns)

    def dequantize(self, bands: PlaneBands, code: int, levels: int | None = None) -> np.ndarray:
        """The plane (or, with ``levels``, the low band of that many synthesis steps), float64."""
        low_step, steps = self.band_steps(bands.levels, code)
        values = np.empty(len(bands.flat))
        _table_coder.dequantize(bands.flat, values, bands.starts + bands.rows * bands.columns,
                                np.array([s for level in steps for s in level], dtype=np.float64), RECONSTRUCTION)
        details = [tuple(values[start : start + rows * columns].reshape(rows, columns)
                         for start, rows, columns in zip(bands.starts[3 * level : 3 * level + 3],
                                                         bands.rows[3 * level : 3 * level + 3],
                                                         bands.columns[3 * level : 3 * level + 3], strict=True))
                   for level in range(bands.levels if levels is None else levels)]
        return lifting_kernels.synthesis(bands.low * low_step, details)

    # -- entropy coding -----------------------------------------------------------------------------
    def encode_bands(self, bands: PlaneBands) -> bytes:
        """One plane's payload: [low-band table index: u8] + rANS words (mvmic.model.table_contexts)."""
        from mvmic.model.enc_table_codec import best_low_table  # encoder only: decoding never loads it

        residual = table_contexts.dpcm(bands.low)
        low_table = best_low_table(residual, self.cdfs, self.lengths, self.offsets)
        return bytes([low_table]) + _table_coder.encode_plane(residual, low_table, bands.flat, bands.starts, bands.rows,
                                                              bands.columns, bands.levels, self.lut, *self.tables)

    def decode_bands(self, payload: bytes, rows: int, columns: int, levels: int | None = None) -> PlaneBands:
        """Inverse of :meth:`encode_bands` for a rows x columns plane; with ``levels``, only the coarsest
        that many detail levels are decoded (the finer ones stay zero). Raises LayerError for a payload
        that cannot be one (damaged payloads decode to wrong values, never crash)."""
        if not payload:
            raise LayerError("empty plane payload")
        if payload[0] >= len(self.lengths) or len(payload) % 2 != 1:  # a table index, then whole words
            raise LayerError(f"plane payload of {len(payload)} bytes with low-band table {payload[0]} is not one")
        all_levels = levels_of(rows, columns)
        low_shape, shapes = band_shapes(rows, columns, all_levels)
        starts, band_rows, band_columns = table_contexts.layout(shapes)
        bands = PlaneBands(np.zeros(low_shape, np.int64), np.zeros(int((band_rows * band_columns).sum()), np.int64),
                           starts, band_rows, band_columns)
        _table_coder.decode_plane(memoryview(payload)[1:], bands.low, low_shape[1], payload[0], bands.flat, starts,
                                  band_rows, band_columns, all_levels,
                                  all_levels if levels is None else min(levels, all_levels), self.lut, *self.tables)
        return bands

    # -- frames and bitstreams ---------------------------------------------------------------------
    def encode_frame(self, frame: np.ndarray, fmt: PixelFormat, code: int) -> tuple[bytes, list[PlaneBands]]:
        """One frame's BASE layer payload and its planes' integer bands."""
        bands, payloads = self._coded_planes(normalised_planes(frame, fmt), code)
        return pack_payloads(payloads), bands

    def encode_restored_frame(self, frame: np.ndarray, fmt: PixelFormat, code: int) -> tuple[bytes, bytes | None]:
        """One frame's BASE layer payload and its RESTORATION layer payload (None: no plane gains from one)."""
        from mvmic.model.enc_restoration import fit, pays, slope_of, taps_bits  # encoder only: decoding never loads it

        originals = to_planes(frame, fmt)
        bands, payloads = self._coded_planes(normalised(originals, fmt), code)
        grey = fmt.samples_per_pixel == 1
        value_range = (fmt.min_value, fmt.max_value) if grey else (-(1 << 62), 1 << 62)
        synthesised = [self.dequantize(plane, code) for plane in bands]
        decoded = _integer_planes(synthesised, fmt)
        taps = [fit(plane, original, 8 * len(payload), value_range)
                for plane, original, payload in zip(decoded, originals, payloads, strict=True)]
        if not grey and any(taps):  # the RCT's planes are clipped as RGB: judge the filters on the frame
            unfiltered, filtered = (float(np.sum((frame.astype(np.int64) - from_planes(planes, fmt)) ** 2))
                                    for planes in (decoded, _integer_planes(synthesised, fmt, taps)))
            if not pays(unfiltered, filtered, slope_of(unfiltered, 8 * sum(map(len, payloads))), sum(map(taps_bits, taps))):
                taps = [None] * len(taps)
        return pack_payloads(payloads), restoration.pack(taps) if any(taps) else None

    def _coded_planes(self, planes: list[np.ndarray], code: int) -> tuple[list[PlaneBands], list[bytes]]:
        """The integer bands of each normalised plane and each plane's payload."""
        bands = [self.quantize(plane, code) for plane in planes]
        return bands, [self.encode_bands(b) for b in bands]

    def compress_pixels(self, pixels: np.ndarray, fmt: PixelFormat, code: int, threads: int | None = None) -> Bitstream:
        """Lossy coding of stored values (frames, rows, columns, samples) at quality code ``code``, frames on
        up to ``threads`` threads (default: self.threads; the kernels release the GIL): a BASE layer per frame,
        and a RESTORATION layer after it where the restoration filter pays for its bytes. Raises
        CodecInputError for pixels this codec cannot code or a code out of range."""
        check_codeable(pixels, fmt)
        if not MIN_CODE <= code <= MAX_CODE:
            raise CodecInputError(f"quality code {code} out of range {MIN_CODE}..{MAX_CODE}")
        coded = _each(lambda index: self.encode_restored_frame(pixels[index], fmt, code), range(pixels.shape[0]),
                      threads or self.threads)
        layers = []
        for index, (payload, restored) in enumerate(coded):
            layers.append(Layer(LayerKind.BASE, index, payload))
            if restored is not None:
                layers.append(Layer(LayerKind.RESTORATION, index, restored))
        return Bitstream(model_id=self.model_id, weights_fingerprint=fingerprint(self.weights.sha256),
                         rows=pixels.shape[1], columns=pixels.shape[2], frames=pixels.shape[0],
                         samples_per_pixel=fmt.samples_per_pixel, bits_stored=fmt.bits_stored, signed=fmt.signed,
                         photometric=fmt.photometric, offset=offset_of(fmt), scale_log2=fmt.bits_stored, quality_code=code,
                         layers=tuple(layers))

    def frame_bands(self, payload: bytes, stream: Bitstream, levels: int | None = None) -> list[PlaneBands]:
        """The integer bands of each plane of one BASE layer payload."""
        check_decodable(stream)
        parts = unpack_payloads(payload)
        if len(parts) != planes_of(stream):
            raise LayerError(f"frame payload has {len(parts)} planes, expected {planes_of(stream)}")
        return [self.decode_bands(part, stream.rows, stream.columns, levels) for part in parts]

    def decoded_planes(self, bands: list[PlaneBands], fmt: PixelFormat, code: int,
                       taps: list[list[int] | None] | None = None) -> list[np.ndarray]:
        """The integer planes (rows, columns) int64 of a frame's bands: stored values, or the RCT's planes for colour;
        each filtered by its restoration taps where ``taps`` has them."""
        return _integer_planes([self.dequantize(plane, code) for plane in bands], fmt, taps)

    def decode_frame(self, payload: bytes, stream: Bitstream, taps: list[list[int] | None] | None = None) -> np.ndarray:
        """Stored values (rows, columns, samples) of one BASE layer, filtered by its planes' restoration ``taps``
        (as :meth:`restoration_taps` gives them) if it has any."""
        fmt = stream.pixel_format
        return from_planes(self.decoded_planes(self.frame_bands(payload, stream), fmt, stream.quality_code, taps), fmt)

    def restoration_taps(self, stream: Bitstream) -> dict[int, list[list[int] | None]]:
        """Each RESTORATION layer's taps per plane, by frame; LayerError for one that does not parse or fit the frame."""
        return {layer.frame: restoration.unpack(layer.payload, planes_of(stream))
                for layer in stream.layers if layer.kind == LayerKind.RESTORATION}

    def decompress(self, stream: Bitstream, threads: int | None = None) -> np.ndarray:
        """Stored values (frames, rows, columns, samples) of a lossy stream, frames on up to ``threads``
        threads (default: self.threads) (BASE layers, filtered by their RESTORATION layers; raises ValueError for a
        frame without a BASE layer, and for residual layers, which need mvmic.model.codec)."""
        if any(layer.kind == LayerKind.RESIDUAL for layer in stream.layers):
            raise ValueError("residual layers decode with mvmic.model.codec's residual model, not here")
        taps = self.restoration_taps(stream)
        return np.stack(_each(lambda layer: self.decode_frame(layer.payload, stream, taps.get(layer.frame)),
                              base_layers(stream), threads or self.threads))


def planes_of(stream: Bitstream) -> int:
    """The planes a lossy stream's frames code: 3 for colour (the RCT's), else 1."""
    return 3 if stream.samples_per_pixel == 3 else 1


def _integer_planes(synthesised: list[np.ndarray], fmt: PixelFormat,
                    taps: list[list[int] | None] | None = None) -> list[np.ndarray]:
    """The decoder's integer planes (rows, columns) int64 of a frame's synthesised planes, each filtered by its
    restoration taps where ``taps`` has them."""
    return [restoration.decoded_plane(plane, 2.0**fmt.bits_stored, plane_offset(fmt, index), taps[index] if taps else None)
            for index, plane in enumerate(synthesised)]


def cpu_cores() -> int:
    """The CPU cores this process may run on: its affinity mask (taskset, a container's cpuset), else the
    machine's count. A CPU quota (docker --cpus) is not seen: set MVMIC_WORKERS there."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _each(work: Callable[[T], R], items: Iterable[T], threads: int) -> list[R]:
    """``work`` of every item, in order; on a thread pool when there are threads and items to share."""
    items = list(items)
    if threads <= 1 or len(items) <= 1:
        return [work(item) for item in items]
    with ThreadPoolExecutor(min(threads, len(items))) as pool:
        return list(pool.map(work, items))


def _deadzone_round(scaled: np.ndarray) -> np.ndarray:
    """mvmic.model.subbands' dead-zone rounding of values in step units, in the same float operations."""
    return np.sign(scaled) * np.floor(np.maximum(np.abs(scaled) + 0.5 - DEADZONE, 0))


def check_decodable(stream: Bitstream) -> None:
    """Raise InvalidFieldError unless a lossy stream's header is one its encoder writes: a quality code in
    MIN_CODE..MAX_CODE, a size the decoders allocate (check_decoded_size), and the offset and scale_log2 of its pixel
    format (mvmic.model.colour.check_mapping)."""
    if not MIN_CODE <= stream.quality_code <= MAX_CODE:
        raise InvalidFieldError(f"quality code {stream.quality_code} out of range {MIN_CODE}..{MAX_CODE}")
    check_decoded_size(stream.frames, stream.rows, stream.columns, stream.samples_per_pixel)
    check_mapping(stream)


def base_layers(stream: Bitstream) -> list[Layer]:
    """The BASE layer of every frame, in frame order; LayerError if one is missing."""
    layers = {layer.frame: layer for layer in stream.layers if layer.kind == LayerKind.BASE}
    missing = [f for f in range(stream.frames) if f not in layers]
    if missing:
        raise LayerError(f"bitstream has no base layer for frame(s) {missing}")
    return [layers[f] for f in range(stream.frames)]
