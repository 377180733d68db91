"""Integer networks: entropy parameters that every machine computes identically.

A context model (mvmic.model.context_model for the wavelet subbands of version 2,
mvmic.model.residual for the residual layer) predicts, for each coded integer, which
CDF table the rANS coder uses. If the encoder and the decoder disagree on one table index, every
symbol after it decodes to garbage; floating-point convolutions differ between
thread counts, libraries and devices, so the index must not come from floats.
After Ballé, Johnston and Minnen, "Integer networks for data compression with
latent-variable models" (ICLR 2019):

    integer features x (e.g. |decoded parent coefficients|, clipped)
      --IntegerConv2d--> acc = sum(w_int * x) + b_int           exact integer sum
                         y   = clip(floor(acc / 2**shift), 0, 2**bits - 1)
                         (fixed point: y / 16 is the real activation)
      --IntegerConv2d ...--> u = floor(acc / 2**shift)          last layer, no clip
      --> table index = clip(u, 0, table_size - 1)

Weights, biases and activations are small integers, so every partial sum is an
integer below 2**24 (then float32 is exact) or at least below 2**53 (float64):
plain matrix products of them are exact in any order, so the result is the same
on any thread count, BLAS or device. Training uses the same code with straight-through
rounding, so the trained network is the one that runs.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

WEIGHT_BITS = 6  # weights are multiples of 1/64, at most 127/64 in magnitude
FRACTION_BITS = 4  # hidden activations are multiples of 1/16 in [0, 16)
# Every integer below these is exactly representable, so integer sums are exact in any order.
FLOAT32_EXACT_LIMIT = 2.0**24
FLOAT64_EXACT_LIMIT = 2.0**53


def _round_ste(x: Tensor) -> Tensor:
    return x + (torch.round(x) - x).detach()


def _floor_ste(x: Tensor) -> Tensor:
    return x + (torch.floor(x) - x).detach()


def _exact_conv(x: Tensor, weight: Tensor) -> Tensor:
    """Convolution as a sum of one small matrix product per kernel tap.

    Convolution libraries may use Winograd or FFT algorithms, whose intermediate
    values are not integers; plain matrix products of small integers are exact in any
    order (and, unlike im2col, this never holds a k*k times larger copy of the input).
    """
    height, width = x.shape[-2] - weight.shape[-2] + 1, x.shape[-1] - weight.shape[-1] + 1
    acc = None
    for dy in range(weight.shape[-2]):
        for dx in range(weight.shape[-1]):
            tap = torch.einsum("oc,nchw->nohw", weight[:, :, dy, dx], x[:, :, dy : dy + height, dx : dx + width])
            acc = tap if acc is None else acc + tap
    return acc


class IntegerConv2d(nn.Module):
    """Convolution with integer weights and a floor-shift requantisation.

    ``weight`` holds real values; the integers used are round(weight * 2**WEIGHT_BITS).
    The accumulator is shifted right by ``out_shift``, which sets the output's
    fixed-point scale; hidden layers clip to [0, 2**bits - 1] (a quantised ReLU).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, out_shift: int,
                 bits: int = 8, clip: bool = True) -> None:
        super().__init__()
        self.out_shift, self.bits, self.clip = out_shift, bits, clip
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.max_weight = 2 ** (bits - 1) - 1
        self.frozen: tuple[Tensor, Tensor] | None = None  # (weight, bias) integers for coding, see freeze()

    def integer_weight(self) -> Tensor:
        return torch.clamp(_round_ste(self.weight * 2**WEIGHT_BITS), -self.max_weight, self.max_weight)

    def integer_bias(self) -> Tensor:
        # In units of the output's fixed point, so a bias of 1.0 means 1.0 in real terms.
        return _round_ste(self.bias * 2 ** (self.out_shift + FRACTION_BITS))

    def integers(self, exact: bool = False) -> tuple[Tensor, Tensor]:
        """(weight, bias) integers in use: the frozen ones when coding (``exact``) after freeze()."""
        if exact and self.frozen is not None:
            return self.frozen
        return self.integer_weight(), self.integer_bias()

    def forward(self, x: Tensor, exact: bool = False) -> Tensor:
        weight, bias = (value.to(x.dtype) for value in self.integers(exact))
        padded = F.pad(x, [self.padding] * 4, mode="replicate")
        acc = _exact_conv(padded, weight) if exact else F.conv2d(padded, weight)
        acc = acc + bias[None, :, None, None]
        y = _floor_ste(acc / 2**self.out_shift)
        if self.clip:
            y = torch.clamp(y, 0, 2**self.bits - 1)
        return y

    @torch.no_grad()
    def snap(self) -> None:
        """Store exactly the integers in use (as dyadic floats), so that tiny float noise
        on the stored values can never round to a different integer."""
        self.weight.copy_(self.integer_weight() / 2**WEIGHT_BITS)
        self.bias.copy_(self.integer_bias() / 2 ** (self.out_shift + FRACTION_BITS))

    @torch.no_grad()
    def freeze(self) -> None:
        """Keep the integers in use as int64 tensors, from which coding computes from now on.

        Stored as floats, a bias of ~42,000 integer units sits within 1e-5 relative of the
        next rounding boundary, so the float parameter would be one noisy copy or dtype cast
        away from another integer; frozen integers cannot drift. Training never freezes."""
        self.frozen = (self.integer_weight().to(torch.int64), self.integer_bias().to(torch.int64))

    def worst_case_sum(self, max_input: float) -> float:
        """Largest |accumulator| this layer can reach for inputs bounded by ``max_input``."""
        weight, bias = self.integers(exact=True)
        weights = weight.detach().abs().sum(dim=(1, 2, 3)).double()
        bias = bias.detach().abs().double()
        return float((weights * max_input + bias).max())


class IndexNetwork(nn.Module):
    """Integer CNN mapping integer context features to CDF table indexes.

    In training, :meth:`forward` returns the fractional index (straight-through
    rounded to integers), so a scale can be learned through it; at coding time
    :meth:`indexes` returns exact integer indexes in [0, table_size - 1].
    """

    def __init__(self, in_channels: int, hidden: int, table_size: int, layers: int = 3, input_bits: int = 8) -> None:
        super().__init__()
        self.table_size, self.input_bits = table_size, input_bits
        channels = [in_channels] + [hidden] * (layers - 1)
        # Integer inputs -> hidden activations with FRACTION_BITS -> integer index units.
        shifts = [WEIGHT_BITS - FRACTION_BITS] + [WEIGHT_BITS] * (layers - 2)
        blocks: list[nn.Module] = [IntegerConv2d(c_in, c_out, 3, shift)
                                   for (c_in, c_out), shift in zip(itertools.pairwise(channels), shifts, strict=True)]
        last = IntegerConv2d(channels[-1], 1, 3, WEIGHT_BITS + FRACTION_BITS, clip=False)
        with torch.no_grad():  # start near the middle of the table, not at a random edge
            last.weight.mul_(0.1)
            last.bias.fill_(table_size / 2 / 2**FRACTION_BITS)
        blocks.append(last)
        self.blocks = nn.ModuleList(blocks)

    def forward(self, features: Tensor, exact: bool = False) -> Tensor:
        x = torch.clamp(features, 0, 2**self.input_bits - 1)
        for block in self.blocks:
            x = block(x, exact)
        return x[:, 0]

    def snap(self) -> None:
        for block in self.blocks:
            block.snap()

    def freeze(self) -> None:
        """Code from integer tensors from now on (IntegerConv2d.freeze): for loaded, shipped weights."""
        for block in self.blocks:
            block.freeze()

    @torch.no_grad()
    def indexes(self, features: Tensor, strip_rows: int = 64) -> Tensor:
        """Exact table indexes, int32, computed on integer values.

        Large inputs run in strips of rows with a halo as wide as the receptive
        field, so memory stays bounded and the result equals the whole-image one.
        """
        if not torch.equal(features, torch.round(features)):
            raise ValueError("IndexNetwork features must be integers")
        features = features.to(self._exact_dtype())
        halo, rows = len(self.blocks), features.shape[-2]
        strips = []
        for top in range(0, rows, strip_rows):
            start, stop = max(0, top - halo), min(rows, top + strip_rows + halo)
            index = self.forward(features[..., start:stop, :], exact=True)
            strips.append(index[..., top - start : top - start + min(strip_rows, rows - top), :])
        return torch.clamp(torch.cat(strips, dim=-2), 0, self.table_size - 1).to(torch.int32)

    def _exact_dtype(self) -> torch.dtype:
        """float32 when every partial sum stays below 2**24 (faster), else float64 (below 2**53)."""
        bound, worst = 2.0**self.input_bits - 1, 0.0
        for block in self.blocks:
            worst = max(worst, block.worst_case_sum(bound))
            bound = 2.0**block.bits - 1
        if worst < FLOAT32_EXACT_LIMIT:
            return torch.float32
        if worst < FLOAT64_EXACT_LIMIT:
            return torch.float64
        raise RuntimeError("integer network sums could exceed 2**53: results would not be exact")
