"""Encoder only: the choices mvmic.model.table_codec's encoder makes and writes down for its decoder.

    a plane's coarsest low band --dpcm (mvmic.model.table_contexts)--> residuals
      --table_bits under every coding table--> best_low_table: the table that codes them in the fewest bits
      --> the plane payload's first byte (mvmic.model.table_contexts gives the layout)

The decoder reads the index and never searches, so it does not import this module.
"""

from __future__ import annotations

import numpy as np


def best_low_table(residual: np.ndarray, cdfs: np.ndarray, lengths: np.ndarray, offsets: np.ndarray) -> int:
    """The index of the coding table (cdfs, lengths, offsets as mvmic.model.entropy_coder's) that codes the low band's
    DPCM ``residual`` (int64) in the fewest bits; the first such table on ties."""
    return int(np.argmin(table_bits(residual, cdfs, lengths, offsets)))


def table_bits(symbols: np.ndarray, cdfs: np.ndarray, lengths: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Code length in bits of all ``symbols`` under each table (escapes: their bin plus the raw bits)."""
    position = symbols[None, :].astype(np.int64) - offsets[:, None]
    escape = (lengths - 2)[:, None].astype(np.int64)
    escaped = (position < 0) | (position >= escape)
    position = np.where(escaped, escape, position)
    frequency = np.take_along_axis(cdfs, position + 1, axis=1) - np.take_along_axis(cdfs, position, axis=1)
    raw = escaped * (5 + np.log2(2.0 * np.abs(symbols)[None, :] + 1))
    return (16 - np.log2(frequency) + raw).sum(axis=1)
