"""Coding tables and CompressAI's rANS coder: integer symbols + table indexes <-> bytes.

    table index i --> pmf over -R_i..R_i (+ an escape bin) --> 16-bit integer CDF --> rANS

A table is a discrete distribution of one quantised coefficient. The tables start as
discretised Laplacians of geometric scales and are then refitted to the symbols that
the context model actually assigns to each index in the training data, which also
absorbs what a Laplacian misses (the quantiser's wider zero bin, Gaussian-like noise).
The integer CDFs are stored inside the weights file, so an encoder and a decoder never
rebuild them from floats and cannot disagree. Values outside a table's range take the
escape bin and are then written raw (CompressAI's bypass coding).
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import math
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

PRECISION = 16  # CompressAI's rANS works with CDFs that sum to 2**16
TAIL_MASS = 1e-9  # Laplace mass left outside a table's range
SCALE_MIN, SCALE_MAX, TABLE_COUNT = 0.02, 256.0, 72  # small scales make runs of zeros nearly free
PRIOR_COUNT = 64.0  # pseudo-observations of the Laplacian behind every fitted table


def scale_table() -> list[float]:
    ratio = (SCALE_MAX / SCALE_MIN) ** (1 / (TABLE_COUNT - 1))
    return [SCALE_MIN * ratio**k for k in range(TABLE_COUNT)]


def table_radius(scale: float) -> int:
    """Largest |symbol| a table of this Laplace scale codes without escaping."""
    return max(1, math.ceil(-math.log(TAIL_MASS) * scale))


def laplace_cdf(x: Tensor) -> Tensor:
    """CDF of the unit Laplacian, differentiable (training) and exact at any |x| (tables)."""
    return torch.where(x < 0, 0.5 * torch.exp(torch.clamp(x, max=0)), 1 - 0.5 * torch.exp(-torch.clamp(x, min=0)))


def index_bits(values: Tensor, index: Tensor) -> Tensor:
    """Ideal code length in bits of integer ``values`` under the Laplacian tables their fractional
    table ``index`` points at (training: differentiable in the index and, for noisy values, in them).

    The index is clamped as coding clamps it, but the gradient passes, so an index outside the
    table can still learn its way back."""
    index = index + (torch.clamp(index, 0, TABLE_COUNT - 1) - index).detach()
    scale = torch.exp(math.log(SCALE_MIN) + math.log(SCALE_MAX / SCALE_MIN) / (TABLE_COUNT - 1) * index)
    upper = laplace_cdf((values.abs() + 0.5) / scale)
    lower = laplace_cdf((values.abs() - 0.5) / scale)
    return -torch.log2(torch.clamp(upper - lower, min=1e-9)).sum()


def symbol_counts(pairs: Iterable[tuple[Tensor, Tensor]]) -> Tensor:
    """(TABLE_COUNT, 2 R + 1) counts of the symbols -R..R (R: the widest table's radius) each table
    index receives, from (symbols, indexes) pairs: what CodingTables.fitted takes."""
    radius = table_radius(SCALE_MAX)
    counts = torch.zeros(TABLE_COUNT, 2 * radius + 1, dtype=torch.float64)
    for symbols, indexes in pairs:
        inside = symbols.abs() <= radius
        flat = indexes[inside].long().cpu() * (2 * radius + 1) + symbols[inside].long().cpu() + radius
        counts.view(-1).index_add_(0, flat, torch.ones_like(flat, dtype=torch.float64))
    return counts


def laplace_pmf(scale: float, radius: int) -> np.ndarray:
    """Probabilities of the integers -radius..radius under a Laplacian of ``scale``."""
    edges = torch.arange(-radius, radius + 2, dtype=torch.float64) - 0.5
    return torch.diff(laplace_cdf(edges / scale)).numpy()


def quantized_cdf(pmf: np.ndarray) -> np.ndarray:
    """Integer CDF (length len(pmf) + 2, last entry 2**PRECISION) of ``pmf`` plus an escape bin.

    Every bin gets at least one count, so any symbol stays codable; the rounding slack
    goes to the most probable bin. Pure integer arithmetic after one float scaling.
    """
    total = 1 << PRECISION
    probabilities = np.append(pmf / pmf.sum(), 0.0)  # the escape bin
    bins = len(probabilities)
    if bins >= total:
        raise ValueError(f"a table of {bins} bins does not fit {PRECISION}-bit precision")
    frequencies = np.floor(probabilities * (total - bins)).astype(np.int64) + 1
    frequencies[np.argmax(frequencies)] += total - int(frequencies.sum())
    return np.concatenate([[0], np.cumsum(frequencies)]).astype(np.int32)


@dataclass
class CodingTables:
    """The integer tables rANS codes with, as stored in the weights file."""

    cdfs: Tensor  # int32 (TABLE_COUNT, longest CDF), zero padded
    lengths: Tensor  # int32 (TABLE_COUNT,): CDF length = pmf length + 2
    offsets: Tensor  # int32 (TABLE_COUNT,): the symbol of each pmf's first entry

    @classmethod
    def from_pmfs(cls, pmfs: list[np.ndarray]) -> CodingTables:
        """Tables from symmetric pmfs of odd length (centred on symbol 0)."""
        rows = [quantized_cdf(pmf) for pmf in pmfs]
        cdfs = np.zeros((len(rows), max(len(r) for r in rows)), dtype=np.int32)
        for index, row in enumerate(rows):
            cdfs[index, : len(row)] = row
        return cls(torch.from_numpy(cdfs), torch.tensor([len(r) for r in rows], dtype=torch.int32),
                   torch.tensor([-(len(p) // 2) for p in pmfs], dtype=torch.int32))

    @classmethod
    def laplacian(cls) -> CodingTables:
        return cls.from_pmfs([laplace_pmf(s, table_radius(s)) for s in scale_table()])

    @classmethod
    def fitted(cls, counts: Tensor) -> CodingTables:
        """Tables fitted to symbol counts, (TABLE_COUNT, 2 * R + 1) for symbols -R..R.

        Counts are made symmetric (the sign of a wavelet coefficient is a coin flip)
        and smoothed with PRIOR_COUNT observations of each table's Laplacian, so rare
        large symbols keep a sensible cost.
        """
        counts = counts.double().cpu().numpy()
        centre = counts.shape[1] // 2
        pmfs = []
        for index, scale in enumerate(scale_table()):
            radius = min(table_radius(scale), centre)
            observed = counts[index, centre - radius : centre + radius + 1]
            observed = 0.5 * (observed + observed[::-1])
            prior = laplace_pmf(scale, radius)
            pmfs.append(observed + PRIOR_COUNT * prior / prior.sum())
        return cls.from_pmfs(pmfs)

    def bits(self, symbols: Tensor, indexes: Tensor) -> Tensor:
        """Code length in bits of each symbol under its table (escapes cost their bin plus ~20 bits)."""
        indexes = indexes.long()
        position = symbols.long() - self.offsets.to(symbols.device)[indexes].long()
        last = self.lengths.to(symbols.device)[indexes].long() - 2  # the escape bin
        escaped = (position < 0) | (position >= last)
        position = torch.where(escaped, last, position)
        cdfs = self.cdfs.to(symbols.device)
        frequency = cdfs[indexes, position + 1] - cdfs[indexes, position]
        return PRECISION - torch.log2(frequency.double()) + 20.0 * escaped

    def state(self) -> dict[str, Tensor]:
        return {"cdfs": self.cdfs, "lengths": self.lengths, "offsets": self.offsets}

    def as_lists(self) -> tuple[list[list[int]], list[int], list[int]]:
        """What CompressAI's coder takes; converted once per set of weights (it is slow)."""
        if not hasattr(self, "_lists"):
            lengths = self.lengths.tolist()
            self._lists = ([row[:n] for row, n in zip(self.cdfs.tolist(), lengths, strict=True)],
                           lengths, self.offsets.tolist())
        return self._lists


class TableModule(nn.Module):
    """A model whose coding tables travel in its weights file as buffers (table_cdfs, table_lengths,
    table_offsets), whatever their length."""

    def set_tables(self, tables: CodingTables) -> None:
        self.tables = tables
        for name, value in tables.state().items():
            self.register_buffer(f"table_{name}", value)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        # Fitted tables have their own length: take them as they are, then load the rest.
        self.set_tables(CodingTables(state_dict["table_cdfs"], state_dict["table_lengths"],
                                     state_dict["table_offsets"]))
        return super().load_state_dict(state_dict, strict, assign)


class RansWriter:
    """Symbols with their table indexes in, one rANS byte string out."""

    def __init__(self, tables: CodingTables) -> None:
        self.tables, self.encoder = tables, _compressai_ans().BufferedRansEncoder()

    def write(self, symbols: Tensor, indexes: Tensor) -> None:
        cdfs, lengths, offsets = self.tables.as_lists()
        self.encoder.encode_with_indexes(symbols.to(torch.int32).tolist(), indexes.to(torch.int32).tolist(),
                                         cdfs, lengths, offsets)

    def finish(self) -> bytes:
        return self.encoder.flush()


class RansReader:
    """The inverse of :class:`RansWriter`; ``symbol_count`` bounds the symbols it will be asked for."""

    def __init__(self, tables: CodingTables, stream: bytes, symbol_count: int) -> None:
        self.tables, self.decoder = tables, _compressai_ans().RansDecoder()
        # CompressAI's decoder does not check bounds. A valid stream needs none of this;
        # for garbage, zeros decode as the first table entry (at most one 32-bit refill
        # per symbol), and escapes consume at most a bounded multiple of the stream's bits.
        self.decoder.set_stream(stream + bytes(4 * symbol_count + 32 * len(stream) + 64))

    def read(self, indexes: Tensor) -> Tensor:
        cdfs, lengths, offsets = self.tables.as_lists()
        values = self.decoder.decode_stream(indexes.to(torch.int32).tolist(), cdfs, lengths, offsets)
        return torch.tensor(values, dtype=torch.float64)


@functools.cache
def _compressai_ans() -> ModuleType:
    """CompressAI's C++ rANS coder (the compiled ``compressai.ans``), loaded from its file without
    importing the compressai package, which takes seconds (torchvision, torch_geometric): every
    `mvmic decompress` of a lossy stream paid them. Registered under its own name, so that a later
    ``import compressai`` (training) finds and keeps this module instead of loading the extension twice."""
    if "compressai.ans" in sys.modules:
        return sys.modules["compressai.ans"]
    package = importlib.util.find_spec("compressai")  # locates the package without running it
    if package is None or package.origin is None:
        raise RuntimeError("compressai is not installed: its rANS coder codes the lossy layer")
    path = str(next(Path(package.origin).parent.glob("ans.*.so")))
    loader = importlib.machinery.ExtensionFileLoader("compressai.ans", path)
    module = importlib.util.module_from_spec(importlib.util.spec_from_file_location("compressai.ans", path, loader=loader))
    loader.exec_module(module)
    sys.modules["compressai.ans"] = module
    return module
