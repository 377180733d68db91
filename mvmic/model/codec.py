"""MVMICNet codec facade: the codec of a weights file, stored pixels <-> .mvm bitstream.

    MvmicCodec.load(weights) --.npz--> version 3 base layer (mvmic.model.table_codec: lookup-table contexts, compiled)
                             --.pt---> version 2 base layer (mvmic.model.cnn_base: integer-CNN context model)
                             + the residual model beside it, if any (mvmic.model.residual_layer)
    compress_pixels(pixels, fmt, code[, max_error]) --> Bitstream (mvmic.model.bitstream: the format, every layer kind)
    decompress(stream) --by what the stream holds--> exact layers: mvmic.model.lossless.stream (no weights)
                                                  base layers: this model's, or the other model's beside it
                                                  + residual layers: mvmic.model.residual_layer

The quality code q (MIN_CODE..MAX_CODE, mvmic.model.quality) sets the quantiser step 2**(-q / 8) in normalised
units: one model serves every rate. Entropy decoding depends only on integers, so it is exact on any machine;
the float synthesis only shapes the lossy reconstruction. The encoders' searches live in enc_* modules
(mvmic.model.enc_residual, enc_table_codec, enc_context_model), imported only when encoding, so decoding
never loads them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mvmic.model import cnn_base
from mvmic.model.bitstream import Bitstream, InvalidFieldError, Layer, LayerError, LayerKind, fingerprint
from mvmic.model.cnn_base import CNN_WEIGHTS, MODEL_ID, coarse_reconstruction
from mvmic.model.colour import normalised_planes, offset_of
from mvmic.model.context_model import SubbandContextModel
from mvmic.model.errors import CodecInputError, TooSmallToAnalyseError, check_bound, check_codeable
from mvmic.model.exact_base import BandStepsFixed
from mvmic.model.lifting import Subbands
from mvmic.model.lossless import stream as exact_stream
from mvmic.model.pixel_format import PixelFormat, StoredImage
from mvmic.model.quality import MAX_CODE, MIN_CODE, QUALITY_CODES, step_of
from mvmic.model.residual import ResidualContextModel
from mvmic.model.residual_layer import ResidualLayer, check_possible, exact_base, load_model, residual_weights_path
from mvmic.model.table_codec import (
    DEFAULT_WEIGHTS,
    PlaneBands,
    TableCodec,
    Weights,
    base_layers,
    check_decodable,
    levels_of,
)

__all__ = ["EXACT_ANALYSIS_CODE", "MvmicCodec", "max_error_of"]

# The analysis of an exact stream (lossless, near-lossless) quantises the decoded frame's wavelet bands at
# this code, the finest the task heads were trained on (mvmic.training.stage2_heads).
EXACT_ANALYSIS_CODE = QUALITY_CODES[8]


class MvmicCodec:
    """The lossy codec of a weights file, with the residual layer's model when it has one; it decodes every
    stream kind (lossy, residual, exact).

    ``.npz`` weights are mvmicnet-w97-v3 (mvmic.model.table_codec: lookup-table contexts, compiled; what is
    served); ``.pt`` weights are the integer-CNN context model of mvmicnet-w97-v2 (mvmic.model.cnn_base:
    what stage-1 training writes). Both quantise the same way; streams of the other model decode
    through :meth:`for_stream` when its weights lie beside these.

    Images are stored values: arrays (frames, rows, columns, samples) of the pixel format's dtype
    (PixelFormat.dtype: uint8/uint16/int16/..., BitsStored bits, signed as PixelRepresentation says), samples
    1 (grey) or 3 (RGB, YBR_FULL). The lossy chain follows JPEG 2000 Part 1 (ITU-T T.800) where it can: the
    reversible colour transform (Annex G), the CDF 9/7 wavelet by lifting (Annex F), dead-zone scalar
    quantisation with steps weighted by each band's synthesis gain (Annex E); the entropy coder is rANS
    (Duda, arXiv 1311.2540) driven by integer contexts (Ballé et al., "Integer networks for data compression
    with latent-variable models", ICLR 2019, for version 2). The residual layer follows Bai et al., "Deep
    Lossy Plus Residual Coding for Lossless and Near-lossless Image Compression" (TPAMI 2024).

    Errors: CodecInputError (HTTP 415) for an image or operating point this codec cannot code;
    mvmic.model.bitstream.BitstreamError subclasses (HTTP 400; WeightsMismatchError 409) for a stream it
    cannot decode; TooSmallToAnalyseError (422) from :meth:`decode_coarse`; ValueError from :meth:`load`
    for a file that is not weights."""

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
        """The codec of a weights file (``.npz``: version 3, else ``.pt``: version 2), with the residual model
        beside it (residual_weights_path) unless ``residual_path`` names another; without one, only lossy coding
        is possible. Raises ValueError for a file that is not MVMICNet weights, OSError for one that cannot be
        read."""
        if Path(path).suffix == ".npz":
            table = TableCodec.load(path)
            default_residual = Path(path).with_name(table.residual_weights) if table.residual_weights else None
            context, weights = table, table.weights
        else:
            context, weights = cnn_base.load(path)
            default_residual = residual_weights_path(Path(path))
        residual_path = Path(residual_path or default_residual or "")
        residual = None
        if residual_path.name and residual_path.is_file():
            residual = load_model(residual_path)
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
    def compress(self, image: StoredImage, code: int, max_error: int | None = None) -> Bitstream:
        """:meth:`compress_pixels` of an image's stored values and format (e.g. mvmic.pixels.NativeImage)."""
        return self.compress_pixels(image.pixels, image.format, code, max_error)

    def compress_pixels(self, pixels: np.ndarray, fmt: PixelFormat, code: int, max_error: int | None = None,
                        verify: bool = True) -> Bitstream:
        """Code stored values ``pixels`` (frames, rows, columns, samples), integers in ``fmt.dtype``, at quality
        code ``code`` (MIN_CODE..MAX_CODE: the quantiser step is 2**(-code / 8) of the normalised range, so +8 halves
        it). With ``max_error`` (0 lossless, 1..MAX_ERROR near-lossless, in stored units) add a residual layer per
        frame that bounds every sample's error (the first lossless design; new lossless streams are exact streams,
        mvmic.model.rate_control.compress_at), and (``verify``) decode them to check the bound before returning.

        Returns the Bitstream: one BASE layer per frame (and a RESIDUAL layer after each with ``max_error``), header
        fields as mvmic.model.bitstream documents. Raises CodecInputError for pixels this codec cannot code
        (photometric interpretation, fewer than 2 rows or columns, more samples than the decoders take, version 2
        above CNN_MAX_SAMPLES), a code or maximum error out of range, or residual layers without a residual model or
        for frames under MIN_SIDE; BoundViolationError if ``verify`` finds a sample off by more than ``max_error``
        (a bug: no stream is returned)."""
        check_codeable(pixels, fmt)
        self._check_cnn_size(pixels.size, CodecInputError)
        if not MIN_CODE <= code <= MAX_CODE:
            raise CodecInputError(f"quality code {code} out of range {MIN_CODE}..{MAX_CODE}")
        if max_error is not None:
            check_possible(max_error, pixels.shape[1:3], self.residual, self.weights.path)
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
            photometric=fmt.photometric, offset=offset_of(fmt), scale_log2=fmt.bits_stored, quality_code=code,
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
        return cnn_base.quantized_planes(frame, fmt, code, self.scales)

    def _encode_frame(self, frame: np.ndarray, fmt: PixelFormat, code: int) -> tuple[bytes, list[Subbands]]:
        if self.table:
            payload, planes = self.table.encode_frame(frame, fmt, code)
            return payload, [_subbands(plane) for plane in planes]
        bands = self.quantized_planes(frame, fmt, code)
        return cnn_base.encode_frame(self.context, bands, code), bands

    def base_of(self, bands: list[Subbands], code: int, fmt: PixelFormat) -> tuple[BandStepsFixed, np.ndarray]:
        """(fixed-point band steps, exact base samples (rows, columns, samples) int64) of one frame's
        integer subbands: what its residual layer is coded against."""
        steps = BandStepsFixed.of(len(bands[0].details), step_of(code), self.scales)
        return steps, exact_base(bands, steps, fmt)

    def _check_cnn_size(self, samples: int, error: type[ValueError]) -> None:
        """Raise ``error`` for more than CNN_MAX_SAMPLES samples to code with version 2's integer CNN."""
        if not self.table:
            cnn_base.check_size(samples, error)

    def _encode_residual(self, samples: np.ndarray, bands: list[Subbands], fmt: PixelFormat, code: int,
                         max_error: int) -> bytes:
        """The residual layer of one frame, ``samples`` (rows, columns, samples) stored values."""
        from mvmic.model.enc_residual import encode_layer  # encoder only: decoding never loads it

        steps, base = self.base_of(bands, code, fmt)
        return encode_layer(samples, base, steps, fmt, code, max_error, self.residual)

    def check_bound(self, pixels: np.ndarray, stream: Bitstream, max_error: int) -> None:
        """Decode ``stream`` and raise BoundViolationError unless every sample is within ``max_error``."""
        check_bound(pixels, self.decompress(stream), max_error)

    # -- decoding -----------------------------------------------------------------------------------
    def decompress(self, stream: Bitstream) -> np.ndarray:
        """Stored values (frames, rows, columns, samples) in the stream's pixel format's dtype
        (``stream.pixel_format.dtype``): an exact stream's frames (mvmic.model.lossless.stream), else each frame's
        base plus its residual layer (every sample within its maximum error) where it has one, else its base.

        Raises (all mvmic.model.bitstream.BitstreamError): WeightsMismatchError if the stream was made by other
        weights (and the other model's file is not beside these) or its residual layers by another residual model;
        InvalidFieldError for a header its encoder does not write (quality code out of range, offset or
        scale_log2 other than the pixel format's, more samples than the decoders allocate); LayerError for a
        missing layer or a payload that does not parse or fit the image (ExactLayerError for an exact one)."""
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
        if any(layer.kind == LayerKind.RESTORATION for layer in stream.layers):
            raise LayerError("a restoration layer filters a version 3 base layer without residual layers; "
                             "this stream has " + ("residual layers" if residuals else f"model {stream.model_id}"))
        frames = []
        for layer in base_layers(stream):
            if layer.frame in residuals:
                frames.append(self._decode_with_residual(layer.payload, residuals[layer.frame].payload, stream))
            else:
                frames.append(self._decode_frame(layer.payload, stream, fmt))
        return np.stack(frames)

    def _decode_frame(self, payload: bytes, stream: Bitstream, fmt: PixelFormat) -> np.ndarray:
        return cnn_base.reconstruct_frame(self._decode_bands(payload, stream), fmt, stream.quality_code, self.scales)

    def _decode_bands(self, payload: bytes, stream: Bitstream) -> list[Subbands]:
        if self.table:
            return [_subbands(plane) for plane in self.table.frame_bands(payload, stream)]
        return cnn_base.decode_bands(self.context, payload, stream)

    def _decode_with_residual(self, base_payload: bytes, payload: bytes, stream: Bitstream) -> np.ndarray:
        fmt = stream.pixel_format
        layer = ResidualLayer.parse(payload, stream)
        model = layer.model(self.residual, self.weights.path)
        base = exact_base(self._decode_bands(base_payload, stream), layer.steps, fmt)
        return layer.decode(model, base, fmt, stream.quality_code)

    def decode_coarse(self, stream: Bitstream, skipped_levels: int = 1) -> list[torch.Tensor]:
        """Partial decoding for analysis: per frame, the low band ``skipped_levels`` levels above
        full resolution, a (1, 1, H', W') float64 tensor in normalised units (stored value - offset, over
        2**BitsStored), from the first plane (luma for colour). The skipped finest levels are not even entropy
        decoded; an exact stream is decoded in full and its bands quantised at EXACT_ANALYSIS_CODE. Raises
        TooSmallToAnalyseError for an image with fewer wavelet levels than ``skipped_levels``, and what
        :meth:`decompress` raises for a stream it cannot decode."""
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
        if self.table:  # analysis skips the restoration filter, but refuses a damaged one as decompress does
            self.table.restoration_taps(stream)
        coarse = []
        for layer in base_layers(stream):
            if self.table:  # the compiled synthesis: the same float64 operations as coarse_reconstruction's
                bands = self.table.frame_bands(layer.payload, stream, kept)[0]
                coarse.append(_tensor(self.table.dequantize(bands, stream.quality_code, kept)))
            else:
                coarse.append(cnn_base.decode_coarse(self.context, layer.payload, stream, skipped_levels, self.scales))
        return coarse


def max_error_of(stream: Bitstream) -> int | None:
    """The error bound a bitstream guarantees for all its frames: None for lossy (some frame has no
    exact or residual layer), 0 for lossless; LayerError for a residual layer that does not parse."""
    if exact_stream.is_exact(stream):
        return exact_stream.max_error(stream)
    residuals = {layer.frame: layer for layer in stream.layers if layer.kind == LayerKind.RESIDUAL}
    if len(residuals) < stream.frames:
        return None
    return max(ResidualLayer.parse(layer.payload, stream).max_error for layer in residuals.values())


def _subbands(plane: PlaneBands) -> Subbands:
    """A version 3 plane's integer bands as torch Subbands (N = C = 1), float64 as the torch path has them."""
    return Subbands(low=_tensor(plane.low.astype(np.float64)),
                    details=[tuple(_tensor(b.astype(np.float64)) for b in level) for level in plane.details()])


def _tensor(plane: np.ndarray) -> torch.Tensor:
    """A (H, W) float64 plane as the (1, 1, H, W) tensor the heads' callers take."""
    return torch.from_numpy(plane)[None, None]
