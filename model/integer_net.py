"""Integer networks: entropy parameters that every machine computes identically.

A hyperprior or context model predicts, for each latent, which CDF table the rANS
coder uses. If the encoder and the decoder disagree on one table index, every
symbol after it decodes to garbage; floating-point convolutions differ between
thread counts, libraries and devices, so the index must not come from floats.
After Ballé, Johnston and Minnen, "Integer networks for data compression with
latent-variable models" (ICLR 2019):

    integer features x (e.g. |decoded parent coefficients|, clipped)
      --IntegerConv2d--> acc = sum(w_int * x) + b_int           exact integer sum
                         y   = clip(floor(acc / 2**shift), 0, 2**bits - 1)
      --IntegerConv2d ...--> u = floor(acc / 2**shift)          last layer, no clip
      --> table index = clip(u, 0, table_size - 1)

Weights, biases and activations are integers of at most 16 bits and sums have at
most a few thousand terms, so every partial sum is an integer below 2**53 and
float64 arithmetic is exact in any order: the result is the same on any thread
count, BLAS or device. Training uses the same code with straight-through
rounding, so the trained network is the one that runs.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

EXACT_LIMIT = 2.0**53  # float64 represents every integer below this exactly


def _round_ste(x: Tensor) -> Tensor:
    return x + (torch.round(x) - x).detach()


def _floor_ste(x: Tensor) -> Tensor:
    return x + (torch.floor(x) - x).detach()


class IntegerConv2d(nn.Module):
    """Convolution with integer weights and a floor-shift requantisation.

    ``weight`` holds real values; the integers used are round(weight * 2**shift).
    Hidden layers clip their output to [0, 2**bits - 1] (a quantised ReLU).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, shift: int = 6,
                 bits: int = 8, clip: bool = True) -> None:
        super().__init__()
        self.shift, self.bits, self.clip = shift, bits, clip
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.max_weight = 2 ** (bits - 1) - 1

    def integer_weight(self) -> Tensor:
        scaled = self.weight * 2**self.shift
        return torch.clamp(_round_ste(scaled), -self.max_weight, self.max_weight)

    def integer_bias(self) -> Tensor:
        return _round_ste(self.bias * 2 ** (self.shift + self.bits))

    def forward(self, x: Tensor) -> Tensor:
        weight = self.integer_weight().to(x.dtype)
        acc = F.conv2d(F.pad(x, [self.padding] * 4, mode="replicate"), weight) + self.integer_bias().to(x.dtype)[
            None, :, None, None
        ]
        y = _floor_ste(acc / 2**self.shift)
        if self.clip:
            y = torch.clamp(y, 0, 2**self.bits - 1)
        return y

    def worst_case_sum(self, max_input: float) -> float:
        """Largest |accumulator| this layer can reach for inputs bounded by ``max_input``."""
        weights = self.integer_weight().detach().abs().sum(dim=(1, 2, 3))
        bias = self.integer_bias().detach().abs()
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
        blocks: list[nn.Module] = [IntegerConv2d(c_in, c_out, 3) for c_in, c_out in itertools.pairwise(channels)]
        blocks.append(IntegerConv2d(channels[-1], 1, 3, clip=False))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, features: Tensor) -> Tensor:
        x = torch.clamp(features, 0, 2**self.input_bits - 1)
        for block in self.blocks:
            x = block(x)
        return x[:, 0]

    @torch.no_grad()
    def indexes(self, features: Tensor) -> Tensor:
        """Exact table indexes, int32, computed in float64 on integer values."""
        if not torch.equal(features, torch.round(features)):
            raise ValueError("IndexNetwork features must be integers")
        self._check_exact()
        index = self.forward(features.to(torch.float64))
        return torch.clamp(index, 0, self.table_size - 1).to(torch.int32)

    def _check_exact(self) -> None:
        bound = 2.0**self.input_bits - 1
        for block in self.blocks:
            if block.worst_case_sum(bound) >= EXACT_LIMIT:
                raise RuntimeError("integer network sums could exceed 2**53: results would not be exact")
            bound = 2.0**block.bits - 1 if block.clip else bound
