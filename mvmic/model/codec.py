"""MVMICNet codec: stored DICOM pixels <-> .mvm bitstream.

    frame (stored integers) --RCT if colour--> integer planes
      --normalise: (v - offset) / 2**BitsStored--> CDF 9/7 analysis (mvmic.model.lifting)
      --quantise with the step of the quality code (mvmic.model.subbands)--> integer subbands
      --SubbandContextModel: integer contexts -> CDF index -> rANS--> payload
      --> Bitstream (mvmic.model.bitstream): header + one base layer per frame + CRC32

The quality code q (MIN_CODE..MAX_CODE) sets the quantiser step 2**(-q / 8) in normalised units:
one model serves every rate. Decoding mirrors the chain; entropy decoding depends
only on integers, so it is exact on any machine, and the float synthesis only
shapes the lossy reconstruction.

Lossless and near-lossless streams are exact streams (mvmic.model.lossless.stream): no base layer, no
weights. This codec decodes them too, and its analysis reads the decoded frame's bands at
EXACT_ANALYSIS_CODE.

Streams of the first lossless design still decode: a base layer plus a residual layer
(mvmic.model.residual) against the base reconstructed in integers (mvmic.model.exact_base); compress_pixels
with a max_error still writes them:

    base layer's integer subbands --exact_base--> base samples b (identical in encoder and decoder)
    x - b --ResidualContextModel--> residual layer: tau, fixed-point band steps, residual weights
                                    fingerprint, one coded plane per sample
    decoding: b + (2 tau + 1) q, clipped: every sample within tau of x, checked by the encoder
"""

from __future__ import annotations

import hashlib
import io
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from mvmic.model.bitstream import (
    FINGERPRINT_BYTES,
    Bitstream,
    InvalidFieldError,
    Layer,
    LayerError,
    LayerKind,
    WeightsMismatchError,
    fingerprint,
    pack_integers,
    pack_payloads,
    unpack_integers,
    unpack_payloads,
)
from mvmic.model.colour import from_planes
from mvmic.model.context_model import SubbandContextModel
from mvmic.model.errors import (
    CodecInputError,
    TooSmallToAnalyseError,
    check_bound,
    check_codeable,
)
from mvmic.model.exact_base import BandStepsFixed, exact_plane
from mvmic.model.lifting import Subbands, analysis, synthesis, zero_subbands
from mvmic.model.lossless import stream as exact_stream
from mvmic.model.pixel_format import PixelFormat
from mvmic.model.quality import MAX_CODE, MIN_CODE, QUALITY_CODES, step_of
from mvmic.model.residual import MAX_ERROR, PlaneContext, ResidualContextModel, quantize_residual
from mvmic.model.residual import MIN_SIDE as RESIDUAL_MIN_SIDE
from mvmic.model.subbands import dequantize, quantize
from mvmic.model.table_codec import (
    DEFAULT_WEIGHTS,
    PlaneBands,
    TableCodec,
    Weights,
    base_layers,
    check_decodable,
    levels_of,
    normalised_planes,
    offset_of,
    plane_offset,
)
from mvmic.paths import WEIGHTS_DIR

if TYPE_CHECKING:  # the codec reads no DICOM: callers bring the decoded image
    from mvmic.pixels import NativeImage

MODEL_ID = "mvmicnet-w97-v2"  # the integer-CNN context model: what `mvmic train codec` trains and writes
CNN_WEIGHTS = WEIGHTS_DIR / f"{MODEL_ID}.pt"
ANCHOR_SAMPLE = 1  # colour residuals: green (or Cb) first, red and blue relative to it
# The analysis of an exact stream (lossless, near-lossless) quantises the decoded frame's wavelet bands at
# this code, the finest the task heads were trained on (tasks.train).
EXACT_ANALYSIS_CODE = QUALITY_CODES[8]
# Version 2's integer CNN codes about 0.3-0.5 M samples/s on a core, 40x slower than version 3, whatever the
# payload: a few forged bytes declaring 2**28 samples would hold a worker for a quarter of an hour. A stream of
# at most 2**22 samples (every corpus image, e.g. a 2048 x 2048 radiograph) takes some 10 s.
CNN_MAX_SAMPLES = 1 << 22


def residual_weights_path(codec_weights: Path) -> Path:
    """Where the residual model of a codec weights file lives: beside it, named after it."""
    return codec_weights.with_name(f"{codec_weights.stem}-residual.pt")


class MvmicCodec:
    """The lossy codec of a weights file, with the residual layer's model when it has one.

    ``.npz`` weights are mvmicnet-w97-v3 (mvmic.model.table_codec: lookup-table contexts, compiled; what is
    served); ``.pt`` weights are the integer-CNN context model of mvmicnet-w97-v2 (mvmic.model.context_model:
    what stage-1 training writes). Both quantise the same way; streams of the other model decode
    through :meth:`for_stream` when its weights lie beside these."""

    def __init__(self, context: SubbandContextModel | TableCodec, weights: Weights,
                 residual: tuple[ResidualContextModel, Weights] | None = None) -> None:
        self.table = context if isinstance(context, TableCodec) else None
        self.context = None if self.table else context.eval()
        self.model_id = self.table.model_id if self.table else MODEL_ID
        self.weights = weights
        self.residual = residual  # the residual layer's model and its weights file, if there is one
        self._others: dict[str, MvmicCodec] = {}
        with torch.no_grad():  # learned band step multipliers (1 before stage 3)
            self.scales = torch.from_numpy(self.table.band_scales) if self.table else context.band_scales()

    @classmethod
    def load(cls, path: Path = DEFAULT_WEIGHTS, residual_path: Path | None = None) -> MvmicCodec:
        """The codec of a weights file, with the residual model beside it (residual_weights_path)
        unless ``residual_path`` names another; without one, only lossy coding is possible."""
        if Path(path).suffix == ".npz":
            table = TableCodec.load(path)
            default_residual = Path(path).with_name(table.residual_weights) if table.residual_weights else None
            context, weights = table, table.weights
        else:
            data = Path(path).read_bytes()
            context = SubbandContextModel()
            try:
                context.load_state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
            except (EOFError, RuntimeError, KeyError, AttributeError, pickle.UnpicklingError) as exc:
                raise ValueError(f"{path} is not MVMICNet weights (.npz version 3, .pt version 2): "
                                 f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
            for net in context.nets:
                net.snap()  # shipped weights are already snapped; this makes any checkpoint safe too
                net.freeze()
            default_residual, weights = residual_weights_path(Path(path)), Weights(Path(path), hashlib.sha256(data).hexdigest())
        residual_path = Path(residual_path or default_residual or "")
        residual = None
        if residual_path.name and residual_path.is_file():
            residual_data = residual_path.read_bytes()
            residual = (ResidualContextModel.load(residual_data),
                        Weights(residual_path, hashlib.sha256(residual_data).hexdigest()))
        return cls(context, weights, residual)

    def for_stream(self, stream: Bitstream) -> MvmicCodec:
        """The codec that decodes ``stream``: this one, or the one of the other model's weights file
        beside this one (CNN_WEIGHTS' name in the same folder, or the served DEFAULT_WEIGHTS' name),
        loaded once. Raises WeightsMismatchError, naming both sides, when neither made it."""
        if stream.model_id == self.model_id or stream.model_id not in (MODEL_ID, TableCodec.model_id):
            stream.check_made_by(self.model_id, fingerprint(self.weights.sha256))
            return self
        if stream.model_id not in self._others:
            name = CNN_WEIGHTS.name if stream.model_id == MODEL_ID else DEFAULT_WEIGHTS.name
            other = self.weights.path.with_name(name)
            if not other.is_file():
                stream.check_made_by(self.model_id, fingerprint(self.weights.sha256))
            self._others[stream.model_id] = MvmicCodec.load(other)
        codec = self._others[stream.model_id]
        stream.check_made_by(codec.model_id, fingerprint(codec.weights.sha256))
        return codec

    # -- encoding -----------------------------------------------------------------------------------
    def compress(self, image: NativeImage, code: int, max_error: int | None = None) -> Bitstream:
        return self.compress_pixels(image.pixels, image.format, code, max_error)

    def compress_pixels(self, pixels: np.ndarray, fmt: PixelFormat, code: int, max_error: int | None = None,
                        verify: bool = True) -> Bitstream:
        """Code stored values shaped (frames, rows, columns, samples) at quality code ``code``; with
        ``max_error`` (0 lossless, 1..16 near-lossless) add residual layers that bound every sample's
        error, and (``verify``) decode them to check the bound before returning."""
        check_codeable(pixels, fmt)
        self._check_cnn_size(pixels.size, CodecInputError)
        if not MIN_CODE <= code <= MAX_CODE:
            raise CodecInputError(f"quality code {code} out of range {MIN_CODE}..{MAX_CODE}")
        if max_error is not None:
            self._check_residual_possible(max_error, pixels.shape[1:3])
        elif self.table:
            return self.table.compress_pixels(pixels, fmt, code)
        layers = []
        for index in range(pixels.shape[0]):
            payload, bands = self._encode_frame(pixels[index], fmt, code)
            layers.append(Layer(LayerKind.BASE, index, payload))
            if max_error is not None:
                residual = self._encode_residual(pixels[index], bands, fmt, code, max_error)
                layers.append(Layer(LayerKind.RESIDUAL, index, residual))
        stream = Bitstream(
            model_id=self.model_id, weights_fingerprint=fingerprint(self.weights.sha256),
            rows=pixels.shape[1], columns=pixels.shape[2], frames=pixels.shape[0],
            samples_per_pixel=fmt.samples_per_pixel, bits_stored=fmt.bits_stored, signed=fmt.signed,
            photometric=fmt.photometric, offset=offset_of(fmt), scale_log2=fmt.bits_stored, quality=code,
            layers=tuple(layers),
        )
        if max_error is not None and verify:
            self.check_bound(pixels, stream, max_error)
        return stream

    def quantized_planes(self, frame: np.ndarray, fmt: PixelFormat, code: int) -> list[Subbands]:
        """The integer subbands of each plane of one frame (rows, columns[, samples]), as the base layer
        codes them."""
        if self.table:
            return [_subbands(self.table.quantize(plane, code)) for plane in normalised_planes(frame, fmt)]
        return [quantize(analysis(torch.from_numpy(plane)[None, None], levels_of(*plane.shape)), step_of(code),
                         self.scales) for plane in normalised_planes(frame, fmt)]

    def _encode_frame(self, frame: np.ndarray, fmt: PixelFormat, code: int) -> tuple[bytes, list[Subbands]]:
        if self.table:
            payload, planes = self.table.encode_frame(frame, fmt, code)
            return payload, [_subbands(plane) for plane in planes]
        bands = self.quantized_planes(frame, fmt, code)
        return pack_payloads([self.context.encode(plane, code) for plane in bands]), bands

    def base_of(self, bands: list[Subbands], code: int, fmt: PixelFormat) -> tuple[BandStepsFixed, np.ndarray]:
        """(fixed-point band steps, exact base samples (rows, columns, samples) int64) of one frame's
        integer subbands: what its residual layer is coded against."""
        steps = BandStepsFixed.of(len(bands[0].details), step_of(code), self.scales)
        return steps, exact_base(bands, steps, fmt)

    def _check_cnn_size(self, samples: int, error: type[ValueError]) -> None:
        """Raise ``error`` for more than CNN_MAX_SAMPLES samples to code with version 2's integer CNN."""
        if not self.table and samples > CNN_MAX_SAMPLES:
            raise error(f"{samples} samples: {self.model_id} (an integer CNN, 40x slower than "
                        f"{TableCodec.model_id}) codes at most {CNN_MAX_SAMPLES} samples a stream")

    def _check_residual_possible(self, max_error: int, size: tuple[int, int]) -> None:
        if not 0 <= max_error <= MAX_ERROR:
            raise CodecInputError(f"maximum error {max_error} out of range 0 (lossless)..{MAX_ERROR}")
        if min(size) < RESIDUAL_MIN_SIDE:
            raise CodecInputError(f"residual layers code images of at least {RESIDUAL_MIN_SIDE} x {RESIDUAL_MIN_SIDE} "
                                  f"pixels, not {size[0]} x {size[1]}")
        if self.residual is None:
            raise CodecInputError(f"no residual model beside {self.weights.path} "
                                  f"({residual_weights_path(self.weights.path).name}): only lossy coding is possible")

    def _encode_residual(self, samples: np.ndarray, bands: list[Subbands], fmt: PixelFormat, code: int,
                         max_error: int) -> bytes:
        """The residual layer of one frame, ``samples`` (rows, columns, samples) stored values."""
        model, weights = self.residual
        steps, base = self.base_of(bands, code, fmt)
        parts = {}
        for sample, q, context in residual_targets(samples, base, fmt, code, max_error):
            side, data = model.encode(q, context)
            parts[sample] = pack_payloads([pack_integers(side), data])
        header = pack_integers([max_error, *steps.steps])
        return pack_payloads([header, fingerprint(weights.sha256), *(parts[s] for s in sorted(parts))])

    def check_bound(self, pixels: np.ndarray, stream: Bitstream, max_error: int) -> None:
        """Decode ``stream`` and raise BoundViolationError unless every sample is within ``max_error``."""
        check_bound(pixels, self.decompress(stream), max_error)

    # -- decoding -----------------------------------------------------------------------------------
    def decompress(self, stream: Bitstream) -> np.ndarray:
        """Stored values, (frames, rows, columns, samples), in the image's own dtype: an exact stream's
        frames (mvmic.model.lossless.stream), else each frame's base plus its residual layer (every sample
        within its maximum error) where it has one, else its base."""
        if exact_stream.is_exact(stream):
            return exact_stream.decompress(stream)
        if (codec := self.for_stream(stream)) is not self:
            return codec.decompress(stream)
        check_decodable(stream)
        self._check_cnn_size(stream.frames * stream.rows * stream.columns * stream.samples_per_pixel, InvalidFieldError)
        fmt = stream.pixel_format
        residuals = {layer.frame: layer for layer in stream.layers if layer.kind == LayerKind.RESIDUAL}
        if self.table and not residuals:
            return self.table.decompress(stream)
        frames = []
        for layer in base_layers(stream):
            if layer.frame in residuals:
                frames.append(self._decode_with_residual(layer.payload, residuals[layer.frame].payload, stream))
            else:
                frames.append(self._decode_frame(layer.payload, stream, fmt))
        return np.stack(frames)

    def _decode_frame(self, payload: bytes, stream: Bitstream, fmt: PixelFormat) -> np.ndarray:
        planes = []
        for index, bands in enumerate(self._decode_bands(payload, stream)):
            decoded = synthesis(dequantize(bands, step_of(stream.quality), self.scales))[0, 0].numpy()
            planes.append(np.round(decoded * 2.0**fmt.bits_stored + plane_offset(fmt, index)))
        return from_planes(planes, fmt)

    def _decode_bands(self, payload: bytes, stream: Bitstream) -> list[Subbands]:
        if self.table:
            return [_subbands(plane) for plane in self.table.frame_bands(payload, stream)]
        parts = unpack_payloads(payload)
        planes_expected = 3 if stream.samples_per_pixel == 3 else 1
        if len(parts) != planes_expected:
            raise LayerError(f"frame payload has {len(parts)} planes, expected {planes_expected}")
        shapes = zero_subbands(stream.rows, stream.columns, levels_of(stream.rows, stream.columns))
        return [self.context.decode(part, shapes, stream.quality) for part in parts]

    def _decode_with_residual(self, base_payload: bytes, payload: bytes, stream: Bitstream) -> np.ndarray:
        fmt = stream.pixel_format
        layer = ResidualLayer.parse(payload, stream)
        if self.residual is None:
            raise WeightsMismatchError(f"the bitstream has residual layers and {self.weights.path} has no "
                                       f"residual model beside it")
        model, weights = self.residual
        if layer.residual_fingerprint != fingerprint(weights.sha256):
            raise WeightsMismatchError(f"residual layer made by residual weights {layer.residual_fingerprint.hex()}…, "
                                       f"these are {fingerprint(weights.sha256).hex()}… ({weights.path.name})")
        base = exact_base(self._decode_bands(base_payload, stream), layer.steps, fmt)
        width = 2 * layer.max_error + 1
        decoded = np.empty_like(base)
        reference = np.zeros(base.shape[:2], dtype=np.int64)
        for sample in coding_order(fmt):
            side, data = layer.planes[sample]
            context = plane_context(base, sample, fmt, stream.quality, layer.max_error)
            refinement = width * model.decode(side, data, context)[0].numpy()
            decoded[..., sample] = base[..., sample] + reference + refinement
            if sample == ANCHOR_SAMPLE:  # only colour images code it first (coding_order)
                reference = refinement
        return np.clip(decoded, fmt.min_value, fmt.max_value).astype(fmt.dtype)

    def decode_coarse(self, stream: Bitstream, skipped_levels: int = 1) -> list[torch.Tensor]:
        """Partial decoding for analysis: per frame, the low band ``skipped_levels`` levels above
        full resolution, (1, 1, H', W') in normalised units, from the first plane (luma for colour).
        The skipped finest levels are not even entropy decoded."""
        levels = levels_of(stream.rows, stream.columns)
        if levels < skipped_levels:
            raise TooSmallToAnalyseError(f"a {stream.rows} x {stream.columns} image is too small to analyse: it has "
                                         f"{levels} wavelet levels, the task heads read the band {skipped_levels} "
                                         "level(s) above full resolution")
        kept = levels - skipped_levels
        if exact_stream.is_exact(stream):
            # An exact stream has no base layer: its frames decode in milliseconds, and their bands,
            # quantised at EXACT_ANALYSIS_CODE, are what the heads read from a base layer.
            if self.table:
                return [_tensor(self.table.dequantize(self.table.quantize(
                    normalised_planes(frame, stream.pixel_format)[0], EXACT_ANALYSIS_CODE), EXACT_ANALYSIS_CODE, kept))
                        for frame in exact_stream.decompress(stream)]
            return [coarse_reconstruction(self.quantized_planes(frame, stream.pixel_format, EXACT_ANALYSIS_CODE)[0],
                                          EXACT_ANALYSIS_CODE, skipped_levels, self.scales)
                    for frame in exact_stream.decompress(stream)]
        if (codec := self.for_stream(stream)) is not self:
            return codec.decode_coarse(stream, skipped_levels)
        check_decodable(stream)
        self._check_cnn_size(stream.frames * stream.rows * stream.columns * stream.samples_per_pixel, InvalidFieldError)
        shapes = None if self.table else zero_subbands(stream.rows, stream.columns, levels)
        coarse = []
        for layer in base_layers(stream):
            if self.table:  # the compiled synthesis: the same float64 operations as coarse_reconstruction's
                bands = self.table.frame_bands(layer.payload, stream, kept)[0]
                coarse.append(_tensor(self.table.dequantize(bands, stream.quality, kept)))
            else:
                bands = self.context.decode(unpack_payloads(layer.payload)[0], shapes, stream.quality, levels=kept)
                coarse.append(coarse_reconstruction(bands, stream.quality, skipped_levels, self.scales))
        return coarse


@dataclass(frozen=True)
class ResidualLayer:
    """A parsed residual layer payload: pack_payloads of
    [pack_integers([max_error, *fixed-point band steps]), residual weights fingerprint,
     one pack_payloads([pack_integers(side information), rANS bytes]) per sample (ResidualContextModel.encode)]."""

    max_error: int
    steps: BandStepsFixed
    residual_fingerprint: bytes
    planes: list[tuple[list[int], bytes]]

    @classmethod
    def parse(cls, payload: bytes, stream: Bitstream) -> ResidualLayer:
        if min(stream.rows, stream.columns) < RESIDUAL_MIN_SIDE:  # the encoder never made one
            raise LayerError(f"a residual layer for a {stream.rows} x {stream.columns} image: residual layers code "
                             f"images of at least {RESIDUAL_MIN_SIDE} x {RESIDUAL_MIN_SIDE} pixels")
        parts = unpack_payloads(payload)
        if len(parts) != 2 + stream.samples_per_pixel:
            raise LayerError(f"residual layer has {len(parts)} parts, expected {2 + stream.samples_per_pixel}")
        header = unpack_integers(parts[0])
        if not header or not 0 <= header[0] <= MAX_ERROR:
            raise LayerError(f"residual layer maximum error {header[:1]} out of range 0..{MAX_ERROR}")
        try:
            steps = BandStepsFixed(tuple(header[1:]))
        except ValueError as exc:
            raise LayerError(f"residual layer: {exc}") from None
        if steps.levels != levels_of(stream.rows, stream.columns):
            raise LayerError(f"residual layer has steps for {steps.levels} levels, the image has "
                             f"{levels_of(stream.rows, stream.columns)}")
        if len(parts[1]) != FINGERPRINT_BYTES:
            raise LayerError("residual layer weights fingerprint has the wrong length")
        planes = []
        for part in parts[2:]:
            weights, data = unpack_payloads(part)
            planes.append((unpack_integers(weights), data))
        return cls(header[0], steps, parts[1], planes)


def coding_order(fmt: PixelFormat) -> list[int]:
    """The order in which a frame's samples get their residual: green first for colour."""
    return [ANCHOR_SAMPLE, 0, 2] if fmt.samples_per_pixel == 3 else [0]


def residual_targets(samples: np.ndarray, base: np.ndarray, fmt: PixelFormat, code: int,
                     max_error: int) -> Iterator[tuple[int, torch.Tensor, PlaneContext]]:
    """(sample, quantised residual (1, H, W), context) of each sample of a frame, in coding order.

    Red and blue are coded as what remains after green's decoded residual: the three residuals of
    colour images are alike (of grey ones in RGB, the same), and the decoder knows green's by then.
    The bound holds all the same: each sample's own quantiser sees everything else the decoder adds.
    """
    width = 2 * max_error + 1
    reference = np.zeros(base.shape[:2], dtype=np.int64)
    for sample in coding_order(fmt):
        residual = samples[..., sample].astype(np.int64) - base[..., sample] - reference
        q = quantize_residual(torch.from_numpy(residual)[None], max_error)
        yield sample, q, plane_context(base, sample, fmt, code, max_error)
        if sample == ANCHOR_SAMPLE:  # only colour images code it first (coding_order)
            reference = width * q[0].numpy()


def plane_context(base: np.ndarray, sample: int, fmt: PixelFormat, code: int, max_error: int) -> PlaneContext:
    """What one sample's residual is coded against, the same in the encoder and the decoder."""
    return PlaneContext(torch.from_numpy(base[..., sample])[None], fmt.min_value, fmt.bits_stored, code, max_error)


def max_error_of(stream: Bitstream) -> int | None:
    """The error bound a bitstream guarantees for all its frames: None for lossy (some frame has no
    exact or residual layer), 0 for lossless."""
    if exact_stream.is_exact(stream):
        return exact_stream.max_error(stream)
    residuals = {layer.frame: layer for layer in stream.layers if layer.kind == LayerKind.RESIDUAL}
    if len(residuals) < stream.frames:
        return None
    return max(ResidualLayer.parse(layer.payload, stream).max_error for layer in residuals.values())


def exact_base(bands: list[Subbands], steps: BandStepsFixed, fmt: PixelFormat) -> np.ndarray:
    """The base samples of one frame, (rows, columns, samples) int64, from its planes' integer subbands:
    the same integers on every machine (mvmic.model.exact_base), clipped to the stored range."""
    planes = [exact_plane(plane, steps, fmt.bits_stored, plane_offset(fmt, index)) for index, plane in enumerate(bands)]
    return from_planes(planes, fmt).astype(np.int64)


def coarse_reconstruction(bands: Subbands, code: int, skipped_levels: int,
                          scales: torch.Tensor | None = None) -> torch.Tensor:
    """The low band ``skipped_levels`` above full resolution, from integer subbands (first synthesis
    steps). Every band is dequantised with the step of its depth in the full decomposition; the
    skipped levels' values are not used (partial decoding leaves them zero)."""
    coefficients = dequantize(bands, step_of(code), scales)
    kept = len(bands.details) - skipped_levels
    return synthesis(Subbands(coefficients.low, coefficients.details[:kept]))


def _subbands(plane: PlaneBands) -> Subbands:
    """A version 3 plane's integer bands as torch Subbands (N = C = 1), float64 as the torch path has them."""
    return Subbands(low=_tensor(plane.low.astype(np.float64)),
                    details=[tuple(_tensor(b.astype(np.float64)) for b in level) for level in plane.details()])


def _tensor(plane: np.ndarray) -> torch.Tensor:
    """A (H, W) float64 plane as the (1, 1, H, W) tensor the heads' callers take."""
    return torch.from_numpy(plane)[None, None]
