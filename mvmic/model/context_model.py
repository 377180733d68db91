"""Entropy model of the wavelet subbands: integer contexts -> table index -> rANS.

Bands are coded coarse to fine, (LH, HL, HH) within a level, and each band in four
passes over the 2 x 2 phases of its grid, so that three quarters of the coefficients
see decoded neighbours of their own band (a checkerboard would leave half blind):

    pass 0: (even row, even column)   no neighbours yet          . . . .
    pass 1: (odd, odd)                4 diagonal ones            . 0 . 0
    pass 2: (even, odd)               4 direct ones              . . 1 .
    pass 3: (odd, even)               all 8                      . 0 . 0

An integer network per orientation maps the already-decoded context to a table index:

    |parent band| (x2 upsampled) ----+
    |LH|, |HL| of the same level -----+--> IndexNetwork --> index --> table[index] --> rANS
    |decoded coefficients, this band| +        (exact integers)       (mvmic.model.entropy_coder)
    pass, depth, quantiser step ------+

Training sees table i as a Laplacian of scale[i] (differentiable in the index); the
shipped tables are then refitted to the symbols each index really gets.
The coarsest low band is coded as horizontal/vertical differences (DPCM) with one
table index that the encoder picks and writes in front of the stream.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mvmic.model.bitstream import LayerError
from mvmic.model.entropy_coder import TABLE_COUNT, CodingTables, RansReader, RansWriter, TableModule, index_bits
from mvmic.model.integer_net import IndexNetwork
from mvmic.model.lifting import Subbands
from mvmic.model.subbands import BandStepScales

FEATURES = 7  # parent, sibling LH, sibling HL, decoded neighbours, pass, depth, step
FEATURE_MAX = 255
PHASES = ((0, 0), (1, 1), (0, 1), (1, 0))  # (row, column) parity of each pass, in coding order


@dataclass(frozen=True)
class BandPass:
    level: int  # 0 = coarsest detail level
    orientation: int  # 0 LH, 1 HL, 2 HH
    phase: int  # index into PHASES


def coding_order(levels: int) -> Iterator[BandPass]:
    for level in range(levels):
        for orientation in range(3):
            for phase in range(len(PHASES)):
                yield BandPass(level, orientation, phase)


def phase_mask(shape: torch.Size, phase: int, device: torch.device | None = None) -> Tensor:
    """True where (row, column) parity is that of ``phase``; shape (H, W)."""
    rows = torch.arange(shape[-2], device=device)[:, None] % 2
    columns = torch.arange(shape[-1], device=device)[None, :] % 2
    row_parity, column_parity = PHASES[phase]
    return (rows == row_parity) & (columns == column_parity)


def decoded_mask(shape: torch.Size, phase: int, device: torch.device | None = None) -> Tensor:
    """True where the passes before ``phase`` have already decoded the band."""
    mask = torch.zeros(shape[-2], shape[-1], dtype=torch.bool, device=device)
    for earlier in range(phase):
        mask |= phase_mask(shape, earlier, device)
    return mask


class SubbandContextModel(TableModule):
    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.nets = nn.ModuleList([IndexNetwork(FEATURES, hidden, TABLE_COUNT) for _ in range(3)])
        self.set_tables(CodingTables.laplacian())
        self.band_scales = BandStepScales()  # the quantiser's learned band steps travel with these weights

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        if "band_scales.log_scales" not in state_dict:  # weights from before stage 3: unscaled steps
            state_dict = {**state_dict, "band_scales.log_scales": self.band_scales.log_scales.detach()}
        return super().load_state_dict(state_dict, strict, assign)

    # -- contexts ----------------------------------------------------------------------------
    def features(self, q: Subbands, where: BandPass, step_code: int) -> Tensor:
        """Integer context of one band pass, (N, FEATURES, H, W); only decoded values are used."""
        level = [b[:, 0].detach() for b in q.details[where.level]]  # (N, H, W) planes; contexts pass no gradient
        band = level[where.orientation]
        zeros = torch.zeros_like(band)
        parent = q.details[where.level - 1][where.orientation][:, 0].detach() if where.level else None
        parent = _fit_to(_upsample(parent), band) if parent is not None else zeros
        # Odd sizes make LH, HL and HH differ by a row or a column.
        sibling_lh = _fit_to(level[0], band) if where.orientation > 0 else zeros
        sibling_hl = _fit_to(level[1], band) if where.orientation > 1 else zeros
        decoded = band * decoded_mask(band.shape, where.phase, band.device)
        depth = len(q.details) - where.level
        constant = [48.0 * where.phase, 16.0 * depth, float(step_code)]
        planes = [parent.abs(), sibling_lh.abs(), sibling_hl.abs(), decoded.abs()]
        planes += [torch.full_like(band, value) for value in constant]
        return torch.clamp(torch.stack(planes, dim=1), 0, FEATURE_MAX)

    def pass_mask(self, band: Tensor, where: BandPass) -> Tensor:
        """Where this pass codes, broadcast to ``band`` (N, H, W)."""
        return phase_mask(band.shape, where.phase, band.device).expand_as(band)

    # -- training -----------------------------------------------------------------------------
    def detail_bits(self, q: Subbands, step_code: int, values: Subbands | None = None) -> Tensor:
        """Ideal code length in bits of all detail bands under Laplacian tables (differentiable).
        Contexts come from the integers ``q``, as in coding; the bits are those of ``values``
        (default ``q``), e.g. their noisy stand-in when the steps are trained."""
        total = q.low.new_zeros(())
        values = q if values is None else values
        for where in coding_order(len(q.details)):
            band = values.details[where.level][where.orientation][:, 0]
            index = self.nets[where.orientation](self.features(q, where, step_code))
            mask = self.pass_mask(band, where)
            total = total + index_bits(band[mask], index[mask])
        return total

    @torch.no_grad()
    def assigned_indexes(self, q: Subbands, step_code: int) -> Iterator[tuple[Tensor, Tensor]]:
        """(symbols, exact table indexes) of every detail band pass, as coding assigns them."""
        for where in coding_order(len(q.details)):
            band = q.details[where.level][where.orientation][:, 0]
            indexes = self.nets[where.orientation].indexes(self.features(q, where, step_code))
            mask = self.pass_mask(band, where)
            yield band[mask], indexes[mask]

    # -- coding -------------------------------------------------------------------------------
    def encode(self, q: Subbands, step_code: int) -> bytes:
        """One plane's payload: [low-band table index: u8] + rANS bytes of the low band's DPCM residuals, then of
        every detail band pass in coding_order."""
        from mvmic.model.enc_context_model import best_low_index  # encoder only: decoding never loads it

        writer = RansWriter(self.tables)
        low_index = best_low_index(self.tables, _dpcm(q.low).flatten())
        writer.write(_dpcm(q.low).flatten(), torch.full((q.low.numel(),), low_index))
        for symbols, indexes in self.assigned_indexes(q, step_code):
            writer.write(symbols, indexes)
        return bytes([low_index]) + writer.finish()

    def decode(self, data: bytes, shapes: Subbands, step_code: int, levels: int | None = None) -> Subbands:
        """Integer subbands from ``data``; ``shapes`` gives the band sizes (its values are ignored).
        With ``levels``, only the coarsest that many detail levels are decoded (the finer ones come
        later in the stream and stay zero): partial decoding for analysis."""
        if not data:
            raise LayerError("empty subband stream")
        low_index, stream = data[0], data[1:]
        if low_index >= TABLE_COUNT:
            raise LayerError(f"low-band table index {low_index} out of range")
        symbol_count = shapes.low.numel() + sum(band.numel() for level in shapes.details for band in level)
        reader = RansReader(self.tables, stream, symbol_count)
        low = reader.read(torch.full((shapes.low.numel(),), low_index))
        q = Subbands(low=_undo_dpcm(low.reshape(shapes.low.shape)),
                     details=[tuple(torch.zeros_like(b) for b in level) for level in shapes.details])
        for where in coding_order(len(q.details)):
            if levels is not None and where.level >= levels:
                break
            band = q.details[where.level][where.orientation][:, 0]
            indexes = self.nets[where.orientation].indexes(self.features(q, where, step_code))
            mask = self.pass_mask(band, where)
            band[mask] = reader.read(indexes[mask])
        return q

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
