"""Encoder only: the residual layer of a frame (mvmic.model.residual_layer) and the searches that make it.

    stored samples x, exact base b --residual_targets: x - b (- green's decoded residual), quantised--> q per sample
    q --encode_plane: per pass, fit_weights (least-squares prediction weights)
                      and best_offset (the table index offset, by valley_minimum)--> side information, rANS bytes
    --encode_layer--> the RESIDUAL layer payload (its layout: mvmic.model.residual_layer)

Every choice made here is written into the layer as integers, so the decoder (mvmic.model.residual,
mvmic.model.residual_layer) never repeats a search and never imports this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from mvmic.model.bitstream import fingerprint, pack_integers, pack_payloads
from mvmic.model.entropy_coder import TABLE_COUNT, RansWriter
from mvmic.model.exact_base import BandStepsFixed
from mvmic.model.pixel_format import PixelFormat
from mvmic.model.residual import (
    MAX_WEIGHT,
    PASSES,
    WEIGHT_SHIFT,
    PlaneContext,
    ResidualContextModel,
    decoded_before,
    neighbour_sums,
    quantize_residual,
    shifted,
)
from mvmic.model.residual_layer import ANCHOR_SAMPLE, plane_context, sample_coding_order
from mvmic.model.table_codec import Weights


def encode_layer(samples: np.ndarray, base: np.ndarray, steps: BandStepsFixed, fmt: PixelFormat, code: int,
                 max_error: int, residual: tuple[ResidualContextModel, Weights]) -> bytes:
    """The RESIDUAL layer payload of one frame: ``samples`` (rows, columns, samples) stored values against the exact
    ``base`` (rows, columns, samples) int64 of its base layer coded with ``steps`` at quality code ``code``."""
    model, weights = residual
    parts = {}
    for sample, q, context in residual_targets(samples, base, fmt, code, max_error):
        side, data = encode_plane(model, q, context)
        parts[sample] = pack_payloads([pack_integers(side), data])
    header = pack_integers([max_error, *steps.steps])
    return pack_payloads([header, fingerprint(weights.sha256), *(parts[s] for s in sorted(parts))])


def residual_targets(samples: np.ndarray, base: np.ndarray, fmt: PixelFormat, code: int,
                     max_error: int) -> Iterator[tuple[int, torch.Tensor, PlaneContext]]:
    """(sample, quantised residual (1, H, W), context) of each sample of a frame, in coding order.

    Red and blue are coded as what remains after green's decoded residual: the three residuals of
    colour images are alike (of grey ones in RGB, the same), and the decoder knows green's by then.
    The bound holds all the same: each sample's own quantiser sees everything else the decoder adds.
    """
    width = 2 * max_error + 1
    reference = np.zeros(base.shape[:2], dtype=np.int64)
    for sample in sample_coding_order(fmt):
        residual = samples[..., sample].astype(np.int64) - base[..., sample] - reference
        q = quantize_residual(torch.from_numpy(residual)[None], max_error)
        yield sample, q, plane_context(base, sample, fmt, code, max_error)
        if sample == ANCHOR_SAMPLE:  # only colour images code it first (sample_coding_order)
            reference = width * q[0].numpy()


def encode_plane(model: ResidualContextModel, q: Tensor, context: PlaneContext) -> tuple[list[int], bytes]:
    """(side information, rANS bytes) of one plane's q, (1, H, W) int64 (inverse: ResidualContextModel.decode).
    The side information is the prediction weights of every pass but the first, then one table index offset per
    pass that the encoder picks to fit this image: an image unlike the training data (a noisier modality) then
    costs one shifted index per pass, not a mis-scaled table for every sample."""
    weights = [fit_weights(q, index) for index in range(len(PASSES))]
    writer = RansWriter(model.tables)
    offsets = []
    for where, prediction, features in model.passes(q, context, weights):
        symbols, indexes = (q[where] - prediction).flatten(), model.net.indexes(features).flatten()
        offsets.append(best_offset(model, symbols, indexes))
        writer.write(symbols, shifted(indexes, offsets[-1]))
    return [w for pair in weights[1:] for w in pair] + offsets, writer.finish()


def fit_weights(q: Tensor, index: int) -> tuple[int, int]:
    """Least-squares prediction weights of pass ``index`` from the values decoded before it (encoder
    only: the integers it finds are written down, so their float origin does not matter)."""
    if index == 0:
        return 0, 0
    coding_pass = PASSES[index]
    decoded = q * decoded_before(q.shape, index, q.device)
    sums = neighbour_sums(decoded, coding_pass.distance)
    direct, diagonal = (s[coding_pass.where].double().flatten() for s in sums)
    target = q[coding_pass.where].double().flatten()
    design = torch.stack([direct, diagonal], dim=1)
    gram = design.T @ design
    # A small ridge: a neighbour sum that is all zero (no direct neighbours decoded yet) gets weight 0.
    ridge = (1e-6 * float(gram.trace()) + 1e-9) * torch.eye(2, dtype=torch.float64)
    solution = torch.linalg.solve(gram + ridge, design.T @ target)
    scaled = [max(-MAX_WEIGHT, min(MAX_WEIGHT, round(float(w) * 2**WEIGHT_SHIFT))) for w in solution]
    return scaled[0], scaled[1]


def best_offset(model: ResidualContextModel, symbols: Tensor, indexes: Tensor) -> int:
    """The table index offset (within +-(TABLE_COUNT - 1)) that codes ``symbols`` in the fewest bits."""
    cost = lambda offset: float(model.tables.bits(symbols, shifted(indexes, offset)).sum())
    return valley_minimum(cost, 0, 1, 1 - TABLE_COUNT, TABLE_COUNT - 1)


def valley_minimum(cost: Callable[[int], float], start: int, step: int, low: int, high: int) -> int:
    """The argument in low..high (from ``start`` in steps of ``step``) where ``cost`` stops falling:
    walk from ``start`` in the direction that lowers it until it rises. A cost with one valley (the
    code length against a shift of every table's scale) needs a handful of evaluations, not a scan."""
    costs = {start: cost(start)}
    best = start
    for direction in (-step, step):
        candidate = best + direction
        while low <= candidate <= high:
            costs[candidate] = cost(candidate)
            if costs[candidate] >= costs[best]:
                break
            best, candidate = candidate, candidate + direction
        if best != start:
            break  # it moved one way: the other way only climbs the valley's other side
    return best
