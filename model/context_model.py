"""Entropy model of the wavelet subbands: integer contexts -> CDF table -> rANS.

Bands are coded coarse to fine, (LH, HL, HH) within a level, and each band in two
checkerboard passes: anchors (row + column even) first, then the rest, which also
see their decoded anchor neighbours. An integer network per orientation maps the
already-decoded context to a scale index of a Laplacian table:

    |parent band| (x2 upsampled) ----+
    |LH|, |HL| of the same level -----+--> IndexNetwork --> index --> Laplace(0, scale[index])
    |anchors| (second pass) ----------+        (exact integers)          |
    pass, depth, quantiser step ------+                                   v
                                                            CompressAI rANS (one stream per frame)

The coarsest low band is coded as horizontal/vertical differences (DPCM) with one
scale index that the encoder picks and writes in front of the stream.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from compressai.ans import BufferedRansEncoder, RansDecoder
from compressai.entropy_models import GaussianConditional
from torch import Tensor, nn

from model.integer_net import IndexNetwork
from model.lifting import Subbands

SCALE_MIN, SCALE_MAX, SCALE_COUNT = 0.02, 256.0, 72  # small scales make runs of zeros nearly free
FEATURES = 7  # parent, sibling LH, sibling HL, anchors, pass, depth, step
FEATURE_MAX = 255


def scale_table() -> list[float]:
    ratio = (SCALE_MAX / SCALE_MIN) ** (1 / (SCALE_COUNT - 1))
    return [SCALE_MIN * ratio**k for k in range(SCALE_COUNT)]


class LaplaceConditional(GaussianConditional):
    """CompressAI's conditional entropy model with a Laplacian instead of a Gaussian.

    Wavelet coefficients are heavy-tailed; a Laplacian fits them better at equal scale.
    """

    def _standardized_cumulative(self, inputs: Tensor) -> Tensor:
        return torch.where(inputs < 0, 0.5 * torch.exp(inputs), 1 - 0.5 * torch.exp(-inputs))

    @staticmethod
    def _standardized_quantile(quantile: float) -> float:
        return math.log(2 * quantile) if quantile < 0.5 else -math.log(2 * (1 - quantile))


@dataclass(frozen=True)
class BandPass:
    level: int  # 0 = coarsest detail level
    orientation: int  # 0 LH, 1 HL, 2 HH
    second: bool  # False: anchors, True: the other half of the checkerboard


def coding_order(levels: int) -> Iterator[BandPass]:
    for level in range(levels):
        for orientation in range(3):
            yield BandPass(level, orientation, False)
            yield BandPass(level, orientation, True)


def anchor_mask(shape: torch.Size) -> Tensor:
    rows = torch.arange(shape[-2])[:, None]
    columns = torch.arange(shape[-1])[None, :]
    return (rows + columns) % 2 == 0


class SubbandContextModel(nn.Module):
    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.nets = nn.ModuleList([IndexNetwork(FEATURES, hidden, SCALE_COUNT) for _ in range(3)])
        self.conditional = LaplaceConditional(scale_table())
        self.conditional.update_scale_table(torch.tensor(scale_table()), force=True)
        self.log_min = math.log(SCALE_MIN)
        self.log_ratio = math.log(SCALE_MAX / SCALE_MIN) / (SCALE_COUNT - 1)

    # -- contexts ----------------------------------------------------------------------------
    def features(self, q: Subbands, where: BandPass, step_code: int) -> Tensor:
        """Integer context of one band pass, (N, FEATURES, H, W); only decoded values are used."""
        level = [b[:, 0] for b in q.details[where.level]]  # (N, H, W) planes
        band = level[where.orientation]
        zeros = torch.zeros_like(band)
        parent = q.details[where.level - 1][where.orientation][:, 0] if where.level else None
        parent = _fit_to(_upsample(parent), band) if parent is not None else zeros
        # Odd sizes make LH, HL and HH differ by a row or a column.
        sibling_lh = _fit_to(level[0], band) if where.orientation > 0 else zeros
        sibling_hl = _fit_to(level[1], band) if where.orientation > 1 else zeros
        anchors = band * anchor_mask(band.shape) if where.second else zeros
        depth = len(q.details) - where.level
        constant = [64.0 * where.second, 16.0 * depth, float(step_code)]
        planes = [parent.abs(), sibling_lh.abs(), sibling_hl.abs(), anchors.abs()]
        planes += [torch.full_like(band, value) for value in constant]
        return torch.clamp(torch.stack(planes, dim=1), 0, FEATURE_MAX)

    def pass_mask(self, band: Tensor, where: BandPass) -> Tensor:
        mask = anchor_mask(band.shape)
        return ~mask if where.second else mask

    # -- training -----------------------------------------------------------------------------
    def detail_bits(self, q: Subbands, step_code: int) -> Tensor:
        """Ideal code length in bits of all detail bands (differentiable in the networks)."""
        total = q.low.new_zeros(())
        for where in coding_order(len(q.details)):
            band = q.details[where.level][where.orientation][:, 0]
            index = self.nets[where.orientation](self.features(q, where, step_code))
            # Clamped as coding clamps it, but the gradient passes, so an index outside
            # the table can still learn its way back.
            index = index + (torch.clamp(index, 0, SCALE_COUNT - 1) - index).detach()
            scale = torch.exp(self.log_min + self.log_ratio * index)
            mask = self.pass_mask(band, where).expand_as(band)
            total = total + _laplace_bits(band[mask], scale[mask])
        return total

    # -- coding -------------------------------------------------------------------------------
    def encode(self, q: Subbands, step_code: int) -> bytes:
        encoder = BufferedRansEncoder()
        low_index = self._best_low_index(q.low)
        self._encode_symbols(encoder, _dpcm(q.low).flatten(), torch.full((q.low.numel(),), low_index))
        for where in coding_order(len(q.details)):
            band = q.details[where.level][where.orientation]
            indexes = self.nets[where.orientation].indexes(self.features(q, where, step_code))
            mask = self.pass_mask(band[:, 0], where).expand_as(band[:, 0])
            self._encode_symbols(encoder, band[:, 0][mask], indexes[mask])
        return bytes([low_index]) + encoder.flush()

    def decode(self, data: bytes, shapes: Subbands, step_code: int) -> Subbands:
        """Integer subbands from ``data``; ``shapes`` gives the band sizes (its values are ignored)."""
        if not data:
            raise ValueError("empty subband stream")
        low_index, stream = data[0], data[1:]
        if low_index >= SCALE_COUNT:
            raise ValueError(f"low-band scale index {low_index} out of range")
        decoder = RansDecoder()
        decoder.set_stream(stream + bytes(_guard_bytes(stream, shapes)))
        low = self._decode_symbols(decoder, torch.full((shapes.low.numel(),), low_index))
        q = Subbands(low=_undo_dpcm(low.reshape(shapes.low.shape)),
                     details=[tuple(torch.zeros_like(b) for b in level) for level in shapes.details])
        for where in coding_order(len(q.details)):
            band = q.details[where.level][where.orientation]
            indexes = self.nets[where.orientation].indexes(self.features(q, where, step_code))
            mask = self.pass_mask(band[:, 0], where).expand_as(band[:, 0])
            band[:, 0][mask] = self._decode_symbols(decoder, indexes[mask])
        return q

    def _tables(self) -> tuple[list[list[int]], list[int], list[int]]:
        """The rANS tables as Python lists, converted once per set of weights (it is slow)."""
        c = self.conditional
        key = (c._quantized_cdf.data_ptr(), c._quantized_cdf._version)
        if getattr(self, "_table_key", None) != key:
            self._table_lists = (c._quantized_cdf.tolist(), c._cdf_length.reshape(-1).int().tolist(),
                                 c._offset.reshape(-1).int().tolist())
            self._table_key = key
        return self._table_lists

    def _encode_symbols(self, encoder: BufferedRansEncoder, symbols: Tensor, indexes: Tensor) -> None:
        cdfs, lengths, offsets = self._tables()
        encoder.encode_with_indexes(symbols.to(torch.int32).tolist(), indexes.to(torch.int32).tolist(),
                                    cdfs, lengths, offsets)

    def _decode_symbols(self, decoder: RansDecoder, indexes: Tensor) -> Tensor:
        cdfs, lengths, offsets = self._tables()
        values = decoder.decode_stream(indexes.to(torch.int32).tolist(), cdfs, lengths, offsets)
        return torch.tensor(values, dtype=torch.float64)

    def _best_low_index(self, low: Tensor) -> int:
        residuals = _dpcm(low).flatten().to(torch.float64)
        costs = [float(_laplace_bits(residuals, torch.full_like(residuals, s))) for s in scale_table()]
        return min(range(SCALE_COUNT), key=costs.__getitem__)


def _guard_bytes(stream: bytes, shapes: Subbands) -> int:
    """Zeros to append so that a damaged stream can never make rANS read past its buffer.

    CompressAI's decoder does not check bounds. A valid stream needs none of this; for
    garbage, zeros decode as the first table entry (at most one 32-bit refill per
    symbol), and escapes can consume at most a bounded multiple of the stream's own bits.
    """
    symbols = shapes.low.numel() + sum(band.numel() for level in shapes.details for band in level)
    return 4 * symbols + 32 * len(stream) + 64


def _laplace_bits(values: Tensor, scale: Tensor) -> Tensor:
    upper = _laplace_cdf((values.abs() + 0.5) / scale)
    lower = _laplace_cdf((values.abs() - 0.5) / scale)
    return -torch.log2(torch.clamp(upper - lower, min=1e-9)).sum()


def _laplace_cdf(x: Tensor) -> Tensor:
    return torch.where(x < 0, 0.5 * torch.exp(torch.clamp(x, max=0)), 1 - 0.5 * torch.exp(-torch.clamp(x, min=0)))


def _upsample(plane: Tensor) -> Tensor:
    return plane.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)


def _fit_to(plane: Tensor, band: Tensor) -> Tensor:
    """``plane`` cropped or edge-extended to the shape of ``band`` (both (N, H, W))."""
    plane = plane[..., : band.shape[-2], : band.shape[-1]]
    pad_rows, pad_columns = band.shape[-2] - plane.shape[-2], band.shape[-1] - plane.shape[-1]
    if pad_rows or pad_columns:
        plane = torch.nn.functional.pad(plane[:, None], [0, pad_columns, 0, pad_rows], mode="replicate")[:, 0]
    return plane


def _dpcm(low: Tensor) -> Tensor:
    """Differences to the left neighbour, first column to the one above: exact and invertible."""
    residual = low.clone()
    residual[..., 1:] = low[..., 1:] - low[..., :-1]
    residual[..., 1:, 0] = low[..., 1:, 0] - low[..., :-1, 0]
    return residual


def _undo_dpcm(residual: Tensor) -> Tensor:
    low = residual.clone()
    low[..., :, 0] = torch.cumsum(residual[..., :, 0], dim=-1)
    return torch.cumsum(low, dim=-1)
