"""The residual layer of the first lossless design: a frame's base layer plus a bounded residual.

Streams of this design still decode (mvmic.model.codec); compress_pixels with a max_error still writes them
(mvmic.model.enc_residual). New lossless and near-lossless streams are exact streams (mvmic.model.lossless).

    base layer's integer subbands --exact_base (mvmic.model.exact_base)--> base samples b, int64
                                    (identical in encoder and decoder)
    x - b --quantised, coded by ResidualContextModel (mvmic.model.residual)--> one coded plane per sample
    decoding: b + (2 tau + 1) q (+ green's decoded residual for red and blue), clipped:
              every sample within tau of x, checked by the encoder

RESIDUAL layer payload (mvmic.model.bitstream.pack_payloads / pack_integers), parsed by ResidualLayer:

    [ pack_integers([tau, *fixed-point band steps]),      tau 0..MAX_ERROR; BandStepsFixed of the base layer
      residual weights fingerprint,                        FINGERPRINT_BYTES: sha256 of the residual model's file
      per sample (0, 1, 2 in that order):
          pack_payloads([pack_integers(side information), rANS bytes])   ResidualContextModel's format ]

The samples are coded in sample_coding_order (green first for colour), but stored in their DICOM order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mvmic.model.bitstream import (
    FINGERPRINT_BYTES,
    Bitstream,
    LayerError,
    WeightsMismatchError,
    fingerprint,
    unpack_integers,
    unpack_payloads,
)
from mvmic.model.colour import from_planes, plane_offset
from mvmic.model.errors import CodecInputError
from mvmic.model.exact_base import BandStepsFixed, exact_plane
from mvmic.model.lifting import Subbands
from mvmic.model.pixel_format import PixelFormat
from mvmic.model.residual import MAX_ERROR, MIN_SIDE, PlaneContext, ResidualContextModel
from mvmic.model.table_codec import Weights, levels_of

ANCHOR_SAMPLE = 1  # colour residuals: green (or Cb) first, red and blue relative to it


def residual_weights_path(codec_weights: Path) -> Path:
    """Where the residual model of a codec weights file lives: beside it, named after it."""
    return codec_weights.with_name(f"{codec_weights.stem}-residual.pt")


def load_model(path: Path) -> tuple[ResidualContextModel, Weights]:
    """The residual model of a ``.pt`` file, snapped and frozen, and the file's identity."""
    data = path.read_bytes()
    return ResidualContextModel.load(data), Weights(path, hashlib.sha256(data).hexdigest())


def check_possible(max_error: int, size: tuple[int, int], residual: tuple[ResidualContextModel, Weights] | None,
                   codec_weights: Path) -> None:
    """Raise CodecInputError unless a residual layer with ``max_error`` can be coded for frames of ``size``
    (rows, columns) with the residual model ``residual`` (None: the weights file ``codec_weights`` has none)."""
    if not 0 <= max_error <= MAX_ERROR:
        raise CodecInputError(f"maximum error {max_error} out of range 0 (lossless)..{MAX_ERROR}")
    if min(size) < MIN_SIDE:
        raise CodecInputError(f"residual layers code images of at least {MIN_SIDE} x {MIN_SIDE} "
                              f"pixels, not {size[0]} x {size[1]}")
    if residual is None:
        raise CodecInputError(f"no residual model beside {codec_weights} "
                              f"({residual_weights_path(codec_weights).name}): only lossy coding is possible")


@dataclass(frozen=True)
class ResidualLayer:
    """A parsed residual layer payload (the module docstring gives its layout)."""

    max_error: int
    steps: BandStepsFixed
    residual_fingerprint: bytes
    planes: list[tuple[list[int], bytes]]

    @classmethod
    def parse(cls, payload: bytes, stream: Bitstream) -> ResidualLayer:
        if min(stream.rows, stream.columns) < MIN_SIDE:  # the encoder never made one
            raise LayerError(f"a residual layer for a {stream.rows} x {stream.columns} image: residual layers code "
                             f"images of at least {MIN_SIDE} x {MIN_SIDE} pixels")
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

    def model(self, residual: tuple[ResidualContextModel, Weights] | None,
              codec_weights: Path) -> ResidualContextModel:
        """The residual model that made this layer; WeightsMismatchError if ``residual`` (the one beside the codec
        weights file ``codec_weights``, or None) is not it."""
        if residual is None:
            raise WeightsMismatchError(f"the bitstream has residual layers and {codec_weights} has no "
                                       f"residual model beside it")
        model, weights = residual
        if self.residual_fingerprint != fingerprint(weights.sha256):
            raise WeightsMismatchError(f"residual layer made by residual weights {self.residual_fingerprint.hex()}…, "
                                       f"these are {fingerprint(weights.sha256).hex()}… ({weights.path.name})")
        return model

    def decode(self, model: ResidualContextModel, base: np.ndarray, fmt: PixelFormat, code: int) -> np.ndarray:
        """Stored values (rows, columns, samples) in ``fmt.dtype``: the exact ``base`` (rows, columns, samples) int64
        plus this layer's residuals, clipped to the stored range."""
        width = 2 * self.max_error + 1
        decoded = np.empty_like(base)
        reference = np.zeros(base.shape[:2], dtype=np.int64)
        for sample in sample_coding_order(fmt):
            side, data = self.planes[sample]
            context = plane_context(base, sample, fmt, code, self.max_error)
            refinement = width * model.decode(side, data, context)[0].numpy()
            decoded[..., sample] = base[..., sample] + reference + refinement
            if sample == ANCHOR_SAMPLE:  # only colour images code it first (sample_coding_order)
                reference = refinement
        return np.clip(decoded, fmt.min_value, fmt.max_value).astype(fmt.dtype)


def sample_coding_order(fmt: PixelFormat) -> list[int]:
    """The order in which a frame's samples get their residual: green first for colour."""
    return [ANCHOR_SAMPLE, 0, 2] if fmt.samples_per_pixel == 3 else [0]


def plane_context(base: np.ndarray, sample: int, fmt: PixelFormat, code: int, max_error: int) -> PlaneContext:
    """What one sample's residual is coded against, the same in the encoder and the decoder."""
    return PlaneContext(torch.from_numpy(base[..., sample])[None], fmt.min_value, fmt.bits_stored, code, max_error)


def exact_base(bands: list[Subbands], steps: BandStepsFixed, fmt: PixelFormat) -> np.ndarray:
    """The base samples of one frame, (rows, columns, samples) int64, from its planes' integer subbands:
    the same integers on every machine (mvmic.model.exact_base), clipped to the stored range."""
    planes = [exact_plane(plane, steps, fmt.bits_stored, plane_offset(fmt, index)) for index, plane in enumerate(bands)]
    return from_planes(planes, fmt).astype(np.int64)
