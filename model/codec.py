"""MVMICNet codec: stored DICOM pixels <-> .mvm bitstream.

    frame (stored integers) --RCT if colour--> integer planes
      --normalise: (v - offset) / 2**BitsStored--> CDF 9/7 analysis (model.lifting)
      --quantise with the step of the quality code (model.subbands)--> integer subbands
      --SubbandContextModel: integer contexts -> CDF index -> rANS--> payload
      --> Bitstream (model.bitstream): header + one base layer per frame + CRC32

The quality code q (MIN_CODE..MAX_CODE) sets the quantiser step 2**(-q / 8) in normalised units:
one model serves every rate. Decoding mirrors the chain; entropy decoding depends
only on integers, so it is exact on any machine, and the float synthesis only
shapes the lossy reconstruction.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.bitstream import Bitstream, Layer, LayerKind, fingerprint, pack_payloads, unpack_payloads
from model.context_model import SubbandContextModel
from model.lifting import Subbands, analysis, max_levels, synthesis, zero_subbands
from model.subbands import dequantize, quantize
from mvmic.pixels import NativeImage, PixelFormat

MODEL_ID = "mvmicnet-w97-v2"
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / f"{MODEL_ID}.pt"
MAX_LEVELS = 5
# --quality 1..8 (1 = smallest) -> quality code; spans about 0.02 to 1 bit per pixel on 12-bit CT/MR.
QUALITY_CODES = {1: 12, 2: 20, 3: 28, 4: 36, 5: 44, 6: 52, 7: 60, 8: 70}
MIN_CODE, MAX_CODE = 4, 120  # the range the entropy model was trained on (train.CODE_RANGE) and a margin
MAX_SAMPLES_PER_FRAME = 1 << 26  # a forged header must not make the decoder allocate without bound
CODEABLE_PHOTOMETRICS = {"MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL"}


class CodecInputError(ValueError):
    """The image cannot be coded by MVMICNet; the message says why."""


@dataclass(frozen=True)
class Weights:
    path: Path
    sha256: str


def step_of(code: int) -> float:
    return 2.0 ** (-code / 8)


class MvmicCodec:
    model_id = MODEL_ID

    def __init__(self, context: SubbandContextModel, weights: Weights) -> None:
        self.context = context.eval()
        self.weights = weights
        with torch.no_grad():
            self.scales = context.band_scales()  # learned band step multipliers (1 before stage 3)

    @classmethod
    def load(cls, path: Path = DEFAULT_WEIGHTS) -> MvmicCodec:
        data = Path(path).read_bytes()
        context = SubbandContextModel()
        context.load_state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
        for net in context.nets:
            net.snap()  # shipped weights are already snapped; this makes any checkpoint safe too
            net.freeze()
        return cls(context, Weights(Path(path), hashlib.sha256(data).hexdigest()))

    # -- encoding -----------------------------------------------------------------------------------
    def compress(self, image: NativeImage, code: int) -> Bitstream:
        return self.compress_pixels(image.pixels, image.format, code)

    def compress_pixels(self, pixels: np.ndarray, fmt: PixelFormat, code: int) -> Bitstream:
        """Code stored values shaped (frames, rows, columns, samples) at quality code ``code``."""
        _check_codeable(pixels, fmt)
        if not MIN_CODE <= code <= MAX_CODE:
            raise CodecInputError(f"quality code {code} out of range {MIN_CODE}..{MAX_CODE}")
        frames = [pixels[f, ..., 0] if fmt.samples_per_pixel == 1 else pixels[f] for f in range(pixels.shape[0])]
        layers = tuple(Layer(LayerKind.BASE, f, self._encode_frame(frame, fmt, code)) for f, frame in enumerate(frames))
        return Bitstream(
            model_id=self.model_id, weights_fingerprint=fingerprint(self.weights.sha256),
            rows=pixels.shape[1], columns=pixels.shape[2], frames=pixels.shape[0],
            samples_per_pixel=fmt.samples_per_pixel, bits_stored=fmt.bits_stored, signed=fmt.signed,
            photometric=fmt.photometric, offset=_offset(fmt), scale_log2=fmt.bits_stored, quality=code,
            layers=layers,
        )

    def _encode_frame(self, frame: np.ndarray, fmt: PixelFormat, code: int) -> bytes:
        parts = []
        for plane in normalised_planes(frame, fmt):
            bands = quantize(analysis(torch.from_numpy(plane)[None, None], _levels(*plane.shape)), step_of(code),
                             self.scales)
            parts.append(self.context.encode(bands, code))
        return pack_payloads(parts)

    # -- decoding -----------------------------------------------------------------------------------
    def decompress(self, stream: Bitstream) -> np.ndarray:
        """Stored values, (frames, rows, columns, samples), in the image's own dtype."""
        _check_decodable(stream)
        fmt = stream.pixel_format
        frames = [self._decode_frame(layer.payload, stream, fmt) for layer in _base_layers(stream)]
        return np.stack(frames)

    def _decode_frame(self, payload: bytes, stream: Bitstream, fmt: PixelFormat) -> np.ndarray:
        parts = unpack_payloads(payload)
        planes_expected = 3 if fmt.samples_per_pixel == 3 else 1
        if len(parts) != planes_expected:
            raise ValueError(f"frame payload has {len(parts)} planes, expected {planes_expected}")
        shapes = zero_subbands(stream.rows, stream.columns, _levels(stream.rows, stream.columns))
        planes = []
        for index, part in enumerate(parts):
            bands = self.context.decode(part, shapes, stream.quality)
            decoded = synthesis(dequantize(bands, step_of(stream.quality), self.scales))[0, 0].numpy()
            planes.append(np.round(decoded * 2.0**fmt.bits_stored + plane_offset(fmt, index)))
        return from_planes(planes, fmt)


    def decode_coarse(self, stream: Bitstream, skipped_levels: int = 1) -> list[torch.Tensor]:
        """Partial decoding for analysis: per frame, the low band ``skipped_levels`` levels above
        full resolution, (1, 1, H', W') in normalised units, from the first plane (luma for colour).
        The skipped finest levels are not even entropy decoded."""
        _check_decodable(stream)
        levels = _levels(stream.rows, stream.columns)
        if levels < skipped_levels:
            raise ValueError(f"a {stream.rows} x {stream.columns} image has {levels} wavelet levels, "
                             f"too few to skip {skipped_levels}")
        shapes = zero_subbands(stream.rows, stream.columns, levels)
        coarse = []
        for layer in _base_layers(stream):
            bands = self.context.decode(unpack_payloads(layer.payload)[0], shapes, stream.quality,
                                        levels=levels - skipped_levels)
            coarse.append(coarse_reconstruction(bands, stream.quality, skipped_levels, self.scales))
        return coarse


def coarse_reconstruction(bands: Subbands, code: int, skipped_levels: int,
                          scales: torch.Tensor | None = None) -> torch.Tensor:
    """The low band ``skipped_levels`` above full resolution, from integer subbands (first synthesis
    steps). Every band is dequantised with the step of its depth in the full decomposition; the
    skipped levels' values are not used (partial decoding leaves them zero)."""
    coefficients = dequantize(bands, step_of(code), scales)
    kept = len(bands.details) - skipped_levels
    return synthesis(Subbands(coefficients.low, coefficients.details[:kept]))


def _check_codeable(pixels: np.ndarray, fmt: PixelFormat) -> None:
    if fmt.photometric not in CODEABLE_PHOTOMETRICS:
        raise CodecInputError(f"PhotometricInterpretation {fmt.photometric} cannot be coded lossily "
                              f"(supported: {', '.join(sorted(CODEABLE_PHOTOMETRICS))})")
    rows, columns = pixels.shape[1:3]
    if min(rows, columns) < 2:
        raise CodecInputError(f"image of {rows} x {columns} pixels is too small (at least 2 x 2)")


def _check_decodable(stream: Bitstream) -> None:
    if not MIN_CODE <= stream.quality <= MAX_CODE:
        raise ValueError(f"quality code {stream.quality} out of range {MIN_CODE}..{MAX_CODE}")
    if stream.rows * stream.columns * stream.samples_per_pixel > MAX_SAMPLES_PER_FRAME:
        raise ValueError(f"frames of {stream.rows} x {stream.columns} x {stream.samples_per_pixel} "
                         f"exceed this decoder's limit of {MAX_SAMPLES_PER_FRAME} samples")


def _levels(rows: int, columns: int) -> int:
    return min(MAX_LEVELS, max_levels(rows, columns))


def _offset(fmt: PixelFormat) -> int:
    """Unsigned values are centred on mid-range before the transform; signed ones already are."""
    return 0 if fmt.signed else 1 << (fmt.bits_stored - 1)


def plane_offset(fmt: PixelFormat, plane: int) -> int:
    return _offset(fmt) if plane == 0 else 0  # the colour differences of the RCT are centred


def to_planes(frame: np.ndarray, fmt: PixelFormat) -> list[np.ndarray]:
    """Integer planes: the frame itself, or JPEG 2000's reversible colour transform of RGB."""
    values = frame.astype(np.int64)
    if fmt.samples_per_pixel == 1:
        return [values.astype(np.float64)]
    red, green, blue = values[..., 0], values[..., 1], values[..., 2]
    luma = (red + 2 * green + blue) >> 2
    return [p.astype(np.float64) for p in (luma, blue - green, red - green)]


def normalised_planes(frame: np.ndarray, fmt: PixelFormat) -> list[np.ndarray]:
    """The planes the wavelet sees: (value - offset) / 2**BitsStored, float64."""
    return [(plane - plane_offset(fmt, index)) / 2.0**fmt.bits_stored for index, plane in enumerate(to_planes(frame, fmt))]


def from_planes(planes: list[np.ndarray], fmt: PixelFormat) -> np.ndarray:
    values = [p.astype(np.int64) for p in planes]
    if fmt.samples_per_pixel == 3:
        luma, blue_diff, red_diff = values
        green = luma - ((blue_diff + red_diff) >> 2)
        values = [red_diff + green, green, blue_diff + green]
    stacked = np.stack(values, axis=-1)
    return np.clip(stacked, fmt.min_value, fmt.max_value).astype(fmt.dtype)


def _base_layers(stream: Bitstream) -> list[Layer]:
    layers = {layer.frame: layer for layer in stream.layers if layer.kind == LayerKind.BASE}
    missing = [f for f in range(stream.frames) if f not in layers]
    if missing:
        raise ValueError(f"bitstream has no base layer for frame(s) {missing}")
    return [layers[f] for f in range(stream.frames)]

