"""The base layer of mvmicnet-w97-v2: the torch quantiser and the integer-CNN context model.

    frame --RCT if colour, (v - offset) / 2**BitsStored (mvmic.model.colour)--> planes
      --CDF 9/7 analysis (mvmic.model.lifting, torch)--> quantise at the step of the quality code
        (mvmic.model.subbands)--> integer Subbands
      --SubbandContextModel (mvmic.model.context_model): integer contexts -> table index -> rANS--> plane payload
      BASE layer payload: pack_payloads of one plane payload per plane (1 grey, 3 colour)

    decoding: plane payloads --SubbandContextModel.decode--> integer Subbands
      --dequantise, synthesis (reconstruct_frame)--> round(x 2**BitsStored + offset), inverse RCT --> stored values

The ``.pt`` weights `mvmic train codec` writes; the served codec is version 3 (mvmic.model.table_codec), which
quantises the same way. The torch reconstruction here (reconstruct_frame, coarse_reconstruction) takes integer
Subbands of either version: mvmic.model.codec uses it for version 3 frames too where torch bands are needed
(analysis of exact streams, frames of a residual stream without a residual layer). Entropy decoding depends
only on integers, so it is exact on any machine; the float synthesis only shapes the lossy reconstruction.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path

import numpy as np
import torch

from mvmic.model.bitstream import Bitstream, LayerError, pack_payloads, unpack_payloads
from mvmic.model.colour import from_planes, normalised_planes, plane_offset
from mvmic.model.context_model import SubbandContextModel
from mvmic.model.lifting import Subbands, analysis, synthesis, zero_subbands
from mvmic.model.pixel_format import PixelFormat
from mvmic.model.quality import step_of
from mvmic.model.subbands import dequantize, quantize
from mvmic.model.table_codec import MODEL_ID as TABLE_MODEL_ID
from mvmic.model.table_codec import Weights, levels_of
from mvmic.paths import WEIGHTS_DIR

MODEL_ID = "mvmicnet-w97-v2"  # the integer-CNN context model: what `mvmic train codec` trains and writes
CNN_WEIGHTS = WEIGHTS_DIR / f"{MODEL_ID}.pt"
# Version 2's integer CNN codes about 0.3-0.5 M samples/s on a core, 40x slower than version 3, whatever the
# payload: a few forged bytes declaring 2**28 samples would hold a worker for a quarter of an hour. A stream of
# at most 2**22 samples (every corpus image, e.g. a 2048 x 2048 radiograph) takes some 10 s.
CNN_MAX_SAMPLES = 1 << 22


def load(path: Path) -> tuple[SubbandContextModel, Weights]:
    """The context model of a ``.pt`` weights file, snapped and frozen, and the file's identity; ValueError for a
    file that is not version 2 weights."""
    data = Path(path).read_bytes()
    context = SubbandContextModel()
    try:
        context.load_state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
    except (EOFError, KeyError, IndexError, pickle.UnpicklingError):  # torch.load's unpickler on other bytes
        raise ValueError(f"{path} is not MVMICNet weights (.npz version 3, .pt version 2): not a torch weights "
                         "file") from None
    except (RuntimeError, AttributeError) as exc:
        raise ValueError(f"{path} is not MVMICNet weights (.npz version 3, .pt version 2): "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    for net in context.nets:
        net.snap()  # shipped weights are already snapped; this makes any checkpoint safe too
        net.freeze()
    return context, Weights(Path(path), hashlib.sha256(data).hexdigest())


def check_size(samples: int, error: type[ValueError]) -> None:
    """Raise ``error`` for more than CNN_MAX_SAMPLES samples to code with version 2's integer CNN."""
    if samples > CNN_MAX_SAMPLES:
        raise error(f"{samples} samples: {MODEL_ID} (an integer CNN, 40x slower than "
                    f"{TABLE_MODEL_ID}) codes at most {CNN_MAX_SAMPLES} samples a stream")


def quantized_planes(frame: np.ndarray, fmt: PixelFormat, code: int, scales: torch.Tensor) -> list[Subbands]:
    """The integer subbands (float64 tensors, N = C = 1) of each plane of one frame (rows, columns[, samples])."""
    return [quantize(analysis(torch.from_numpy(plane)[None, None], levels_of(*plane.shape)), step_of(code), scales)
            for plane in normalised_planes(frame, fmt)]


def encode_frame(context: SubbandContextModel, bands: list[Subbands], code: int) -> bytes:
    """The BASE layer payload of one frame's planes' integer subbands."""
    return pack_payloads([context.encode(plane, code) for plane in bands])


def decode_bands(context: SubbandContextModel, payload: bytes, stream: Bitstream) -> list[Subbands]:
    """The integer subbands of each plane of one BASE layer payload; LayerError for a payload that cannot be one."""
    parts = unpack_payloads(payload)
    planes_expected = 3 if stream.samples_per_pixel == 3 else 1
    if len(parts) != planes_expected:
        raise LayerError(f"frame payload has {len(parts)} planes, expected {planes_expected}")
    shapes = zero_subbands(stream.rows, stream.columns, levels_of(stream.rows, stream.columns))
    return [context.decode(part, shapes, stream.quality_code) for part in parts]


def decode_coarse(context: SubbandContextModel, payload: bytes, stream: Bitstream, skipped_levels: int,
                  scales: torch.Tensor) -> torch.Tensor:
    """The first plane's low band ``skipped_levels`` above full resolution (coarse_reconstruction), entropy decoding
    only the levels it needs."""
    levels = levels_of(stream.rows, stream.columns)
    shapes = zero_subbands(stream.rows, stream.columns, levels)
    bands = context.decode(unpack_payloads(payload)[0], shapes, stream.quality_code, levels=levels - skipped_levels)
    return coarse_reconstruction(bands, stream.quality_code, skipped_levels, scales)


def reconstruct_frame(bands: list[Subbands], fmt: PixelFormat, code: int, scales: torch.Tensor) -> np.ndarray:
    """Stored values (rows, columns, samples) in ``fmt.dtype`` of one frame's planes' integer subbands."""
    planes = []
    for index, plane in enumerate(bands):
        decoded = synthesis(dequantize(plane, step_of(code), scales))[0, 0].numpy()
        planes.append(np.round(decoded * 2.0**fmt.bits_stored + plane_offset(fmt, index)))
    return from_planes(planes, fmt)


def coarse_reconstruction(bands: Subbands, code: int, skipped_levels: int,
                          scales: torch.Tensor | None = None) -> torch.Tensor:
    """The low band ``skipped_levels`` above full resolution, from integer subbands (first synthesis
    steps). Every band is dequantised with the step of its depth in the full decomposition; the
    skipped levels' values are not used (partial decoding leaves them zero)."""
    coefficients = dequantize(bands, step_of(code), scales)
    kept = len(bands.details) - skipped_levels
    return synthesis(Subbands(coefficients.low, coefficients.details[:kept]))
