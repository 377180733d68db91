"""Residual layer: near-lossless (every |error| <= tau) and lossless (tau = 0) on top of the base layer.

After Bai et al., "Deep Lossy Plus Residual Coding for Lossless and Near-lossless Image
Compression" (TPAMI 2024), with the base reconstructed in integers (mvmic.model.exact_base):

    stored samples x, exact base b (the same integers in the encoder and the decoder)
      r = x - b --q = sign(r) floor((|r| + tau) / (2 tau + 1))--> q
                   x - b - (2 tau + 1) q lies in [-tau, tau]: the bound holds by construction
      q is coded in passes over ever finer grids (coding_passes), so that all but 1/64 of the
      samples see decoded neighbours, at distance 4, 2 or 1:
          pass 0: (0, 0) every 8th row and column      no neighbours yet
          passes 1-3: (4, 4), (0, 4), (4, 0) of that grid   diagonal, then direct ones at distance 4
          passes 4-6: the same at distance 2, passes 7-9 at distance 1 (the 2 x 2 phases)
          prediction p = round((w_direct * sum of decoded direct neighbours
                                + w_diagonal * sum of decoded diagonal ones) / 2**WEIGHT_SHIFT)
                         (the encoder fits the two weights of each pass by least squares: mvmic.model.enc_residual)
          e = q - p --integer contexts -> IndexNetwork -> table index--> rANS (mvmic.model.entropy_coder)
    decoding: q = e + p, pass by pass -> x' = clip(b + (2 tau + 1) q)

    contexts:  log base level, log |base gradient| --------+
               log sum |decoded q| of the 8 neighbours -----+--> IndexNetwork --> table index
               log |prediction|, pass ---------------------+     (exact integers)
               log2(base step / (2 tau + 1)), in 1/8 ------+

The base level matters because noise does: MR noise grows with the signal, and CT air
outside the body is often a constant.

Every value on the decoder's path is an integer, so decoding is exact on any machine.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from mvmic.model.bitstream import LayerError
from mvmic.model.entropy_coder import TABLE_COUNT, CodingTables, RansReader, TableModule, index_bits
from mvmic.model.integer_net import IndexNetwork

MAX_ERROR = 16  # the largest tau a residual layer may promise
FEATURES = 6  # base level, base gradient, decoded neighbours, prediction, pass, relative step
FEATURE_MAX = 255
LOG_STEPS_PER_OCTAVE = 8  # resolution of integer_log: 0..160 for any 16-bit value or sum of 9 of them
WEIGHT_SHIFT = 8  # prediction weights are multiples of 1/256
MAX_WEIGHT = 1 << (WEIGHT_SHIFT + 2)  # |weight| <= 4 per neighbour sum
HIERARCHY_LEVELS = 3  # grids of stride 8, 4, 2: only 1/64 of the samples are coded without neighbours
PASS_FEATURE_STEP = 24  # the pass index as a feature: 0..216 for 10 passes
RELATIVE_STEP_OFFSET = 96  # keeps 8 log2(step / (2 tau + 1)) of every supported image positive


def quantize_residual(residual: Tensor, max_error: int) -> Tensor:
    """q with |residual - (2 tau + 1) q| <= tau, in integers (tau = 0: q = residual)."""
    width = 2 * max_error + 1
    return torch.sign(residual) * torch.div(residual.abs() + max_error, width, rounding_mode="floor")


def integer_log(values: Tensor) -> Tensor:
    """About LOG_STEPS_PER_OCTAVE * log2(1 + |v|), exactly, in integers: frexp of a float64 that holds
    an integer below 2**53 exactly is exact, and so is the rest."""
    mantissa, exponent = torch.frexp((values.abs() + 1).to(torch.float64))  # 1 + |v| = m 2**e, m in [0.5, 1)
    fraction = torch.floor((2 * mantissa - 1) * LOG_STEPS_PER_OCTAVE).to(torch.int64)
    return LOG_STEPS_PER_OCTAVE * (exponent.to(torch.int64) - 1) + fraction


def relative_step(bits_stored: int, code: int, max_error: int) -> int:
    """8 log2 of the base layer's step in stored units over the residual's quantiser width, offset.
    math.log2 of a small odd integer is nowhere near a rounding boundary, so this integer is the
    same on every machine."""
    return 8 * bits_stored - code - round(8 * math.log2(2 * max_error + 1)) + RELATIVE_STEP_OFFSET


@dataclass(frozen=True)
class PlaneContext:
    """What the residual of one plane is coded against: the exact base (N, H, W), int64, the lowest
    value the samples can take, and the operating point."""

    base: Tensor
    min_value: int
    bits_stored: int
    code: int
    max_error: int

    def static_features(self) -> list[Tensor]:
        """(base level, base gradient, relative step) features, each (N, H, W)."""
        padded = F.pad(self.base[:, None].double(), (1, 1, 1, 1), mode="replicate")[:, 0].to(torch.int64)
        gradient = ((padded[:, 1:-1, 2:] - padded[:, 1:-1, :-2]).abs()
                    + (padded[:, 2:, 1:-1] - padded[:, :-2, 1:-1]).abs())
        step = torch.full_like(self.base, relative_step(self.bits_stored, self.code, self.max_error))
        return [integer_log(self.base - self.min_value), integer_log(gradient), step]


@dataclass(frozen=True)
class CodingPass:
    """One pass: the grid q[row::stride, column::stride], whose neighbours sit ``stride // 2`` away."""

    row: int
    column: int
    stride: int

    @property
    def where(self) -> tuple[slice, ...]:
        return (slice(None), slice(self.row, None, self.stride), slice(self.column, None, self.stride))

    @property
    def distance(self) -> int:
        return max(1, self.stride // 2)


def coding_passes(levels: int = HIERARCHY_LEVELS) -> list[CodingPass]:
    """Coarse to fine: the coarsest grid, then at each level the centres, then the edge midpoints
    of the previous grid's squares (with levels=1, the 2 x 2 phases of mvmic.model.context_model.PHASES)."""
    passes = [CodingPass(0, 0, 2**levels)]
    for level in range(levels, 0, -1):
        stride, half = 2**level, 2 ** (level - 1)
        passes += [CodingPass(half, half, stride), CodingPass(0, half, stride), CodingPass(half, 0, stride)]
    return passes


PASSES = coding_passes()
# The smallest side of a plane the passes code: every pass's grid has a sample (the coarsest centres sit
# 2**(HIERARCHY_LEVELS - 1) = 4 rows and columns in), and the network's features have a row and column
# to spare for their padding. The encoder fails below it, so no residual layer of a smaller image exists.
MIN_SIDE = 2 ** (HIERARCHY_LEVELS - 1) + 1


def decoded_before(shape: torch.Size, index: int, device: torch.device | None = None) -> Tensor:
    """True where the passes before ``index`` have decoded; shape (H, W)."""
    mask = torch.zeros(shape[-2], shape[-1], dtype=torch.bool, device=device)
    for earlier in PASSES[:index]:
        mask[earlier.where[1:]] = True
    return mask


def neighbour_sums(decoded: Tensor, distance: int = 1) -> tuple[Tensor, Tensor]:
    """(sum of the 4 direct neighbours, sum of the 4 diagonal ones) ``distance`` away, of (N, H, W)
    integers, zero outside."""
    d = distance
    p = F.pad(decoded, (d, d, d, d))
    height, width = decoded.shape[-2:]
    at = lambda dy, dx: p[:, d + dy : d + dy + height, d + dx : d + dx + width]
    direct = at(-d, 0) + at(d, 0) + at(0, -d) + at(0, d)
    diagonal = at(-d, -d) + at(-d, d) + at(d, -d) + at(d, d)
    return direct, diagonal


def predict(decoded: Tensor, weights: tuple[int, int], distance: int) -> Tensor:
    direct, diagonal = neighbour_sums(decoded, distance)
    return (weights[0] * direct + weights[1] * diagonal + (1 << (WEIGHT_SHIFT - 1))) >> WEIGHT_SHIFT


class ResidualContextModel(TableModule):
    """Table indexes for the residual's prediction errors, pass by pass (see the module docstring)."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.net = IndexNetwork(FEATURES, hidden, TABLE_COUNT)
        self.set_tables(CodingTables.laplacian())

    @classmethod
    def load(cls, data: bytes) -> ResidualContextModel:
        model = cls()
        model.load_state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
        model.net.snap()
        model.net.freeze()
        return model.eval()

    def passes(self, q: Tensor, context: PlaneContext,
               weights: list[tuple[int, int]]) -> Iterator[tuple[tuple[slice, ...], Tensor, Tensor]]:
        """(where, prediction, features) of each pass: ``q[where]`` is the pass's grid, and prediction
        and features are given on that grid. They come from what is decoded before the pass only, so a
        decoder may hand in its partly decoded q. The network runs on the pass's grid alone; the
        features already summarise the decoded neighbours around each sample."""
        level, gradient, step = context.static_features()
        for index, coding_pass in enumerate(PASSES):
            where = coding_pass.where
            decoded = q * decoded_before(q.shape, index, q.device)
            prediction = predict(decoded, weights[index], coding_pass.distance)[where]
            direct, diagonal = neighbour_sums(decoded.abs(), coding_pass.distance)
            planes = [level[where], gradient[where], integer_log((direct + diagonal)[where]),
                      integer_log(prediction), torch.full_like(prediction, PASS_FEATURE_STEP * index), step[where]]
            features = torch.clamp(torch.stack(planes, dim=1), 0, FEATURE_MAX).to(torch.float32)
            yield where, prediction, features

    # -- training -------------------------------------------------------------------------------
    def bits(self, q: Tensor, context: PlaneContext) -> Tensor:
        """Ideal code length of ``q`` (N, H, W) under Laplacian tables (differentiable in the network)."""
        from mvmic.model.enc_residual import fit_weights  # training fits the weights as the encoder does

        weights = [fit_weights(q, index) for index in range(len(PASSES))]
        total = q.new_zeros((), dtype=torch.float32)
        for where, prediction, features in self.passes(q, context, weights):
            total = total + index_bits((q[where] - prediction).float(), self.net(features))
        return total

    # -- coding (the encoder: mvmic.model.enc_residual.encode_plane) ---------------------------
    def decode(self, side: list[int], data: bytes, context: PlaneContext) -> Tensor:
        """Inverse of mvmic.model.enc_residual.encode_plane: q, (1, H, W) int64; LayerError for side information
        that encoder cannot have written."""
        weight_count = 2 * (len(PASSES) - 1)
        weights, offsets = side[:weight_count], side[weight_count:]
        if (len(offsets) != len(PASSES) or any(abs(w) > MAX_WEIGHT for w in weights)
                or any(abs(o) >= TABLE_COUNT for o in offsets)):
            raise LayerError(f"residual side information {side} is not {weight_count} prediction weights within "
                             f"+-{MAX_WEIGHT} and {len(PASSES)} table offsets within +-{TABLE_COUNT - 1}")
        pairs = [(0, 0)] + [(weights[i], weights[i + 1]) for i in range(0, weight_count, 2)]
        q = torch.zeros_like(context.base)
        reader = RansReader(self.tables, data, q.numel())
        for (where, prediction, features), offset in zip(self.passes(q, context, pairs), offsets, strict=True):
            symbols = reader.read(shifted(self.net.indexes(features).flatten(), offset)).to(torch.int64)
            q[where] = symbols.reshape(prediction.shape) + prediction
        return q


def shifted(indexes: Tensor, offset: int) -> Tensor:
    """Table indexes moved by a pass's offset, clamped to the tables there are."""
    return torch.clamp(indexes + offset, 0, TABLE_COUNT - 1)
