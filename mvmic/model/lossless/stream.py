"""Exact streams: .mvm bitstreams whose every frame is one EXACT layer, made and read without weights.

    stored integers (frames, rows, columns, samples)
      --compress: one EXACT layer per frame (mvmic.model.lossless.layer)--> Bitstream
             model id EXACT_MODEL_ID, no weights fingerprint (all zero), quality 0, format version 2
      --decompress--> the same integers (each within the stream's maximum error)

An exact stream depends on no learned weights, so it decodes with any build that reads format
version 2, whatever weights it serves, and without loading them (or torch): an archive's lossless
copies do not become unreadable when the models change, and `mvmic decompress` starts in a moment.
"""

from __future__ import annotations

import numpy as np

from mvmic.model.bitstream import FINGERPRINT_BYTES, Bitstream, InvalidFieldError, Layer, LayerError, LayerKind
from mvmic.model.colour import check_mapping
from mvmic.model.errors import CodecInputError, check_bound, check_codeable, check_decoded_size
from mvmic.model.pixel_format import PixelFormat
from mvmic.model.quality import MAX_ERROR

EXACT_MODEL_ID = "mvmic-exact"
NO_WEIGHTS = bytes(FINGERPRINT_BYTES)


def is_exact(stream: Bitstream) -> bool:
    """Whether ``stream`` is coded by exact layers (then every frame must have one)."""
    return any(layer.kind == LayerKind.EXACT for layer in stream.layers)


def _layer():
    """The exact layer's coder (numba kernels): imported on first use, so that reading a stream's kind
    (is_exact) costs no JIT start-up."""
    from mvmic.model.lossless import layer

    return layer


def compress(pixels: np.ndarray, fmt: PixelFormat, max_error: int, verify: bool = True,
             stripes: int | None = None, threads: int = 1) -> Bitstream:
    """Code stored values (frames, rows, columns, samples) with every sample within ``max_error``
    (0 lossless, 1..16 near-lossless). ``verify`` decodes the result and raises BoundViolationError if
    any sample is off by more; CodecInputError for an image that cannot be coded."""
    check_codeable(pixels, fmt, minimum=1, lossless=max_error == 0)
    if not 0 <= max_error <= MAX_ERROR:
        raise CodecInputError(f"maximum error {max_error} out of range 0 (lossless)..{MAX_ERROR}")
    layers = tuple(Layer(LayerKind.EXACT, index, _layer().encode_frame(pixels[index], fmt, max_error, stripes,
                                                                          threads))
                   for index in range(pixels.shape[0]))
    stream = Bitstream(
        model_id=EXACT_MODEL_ID, weights_fingerprint=NO_WEIGHTS,
        rows=pixels.shape[1], columns=pixels.shape[2], frames=pixels.shape[0],
        samples_per_pixel=fmt.samples_per_pixel, bits_stored=fmt.bits_stored, signed=fmt.signed,
        photometric=fmt.photometric, offset=0, scale_log2=0, quality_code=0, layers=layers,
    )
    if verify:
        check_bound(pixels, decompress(stream, threads), max_error)
    return stream


def decompress(stream: Bitstream, threads: int = 1) -> np.ndarray:
    """Stored values (frames, rows, columns, samples) in the image's own dtype; LayerError if a frame has no exact
    layer (ExactLayerError if a layer is damaged), InvalidFieldError if it is larger than any decoder here allocates
    or its header's offset and scale_log2 are neither 0 and 0 (what compress writes) nor the lossy mapping's
    (what exact streams wrote before they needed no weights, commit 9a6e937; mvmic.model.colour.check_mapping)."""
    check_decoded_size(stream.frames, stream.rows, stream.columns, stream.samples_per_pixel)
    # The stored integers are coded as they are: the fields declare no mapping. They hold 0 and 0, or, in streams
    # written before, the lossy mapping, checked as a lossy stream's is.
    if stream.scale_log2:
        check_mapping(stream)
    elif stream.offset:
        raise InvalidFieldError(f"offset {stream.offset}: an exact stream codes the stored values themselves; its "
                                "header holds offset 0 and scale_log2 0")
    layers = {layer.frame: layer for layer in stream.layers if layer.kind == LayerKind.EXACT}
    missing = [frame for frame in range(stream.frames) if frame not in layers]
    if missing:
        raise LayerError(f"bitstream has no exact layer for frame(s) {missing}")
    return np.stack([_layer().decode_frame(layers[frame].payload, stream.rows, stream.columns,
                                              stream.pixel_format, threads) for frame in range(stream.frames)])


def max_error(stream: Bitstream) -> int:
    """The error bound an exact stream guarantees for all its frames (0: lossless)."""
    return max(_layer().layer_max_error(layer.payload) for layer in stream.layers if layer.kind == LayerKind.EXACT)
