"""Encoder only: the choice mvmic.model.context_model's encoder makes and writes down for its decoder.

    a plane's coarsest low band --DPCM--> residuals --bits under every coding table--> best_low_index
      --> the plane payload's first byte (mvmic.model.context_model gives the layout)

The decoder reads the index and never searches, so it does not import this module.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mvmic.model.entropy_coder import TABLE_COUNT, CodingTables


def best_low_index(tables: CodingTables, residuals: Tensor) -> int:
    """The index of the table in ``tables`` that codes the low band's DPCM ``residuals`` (flat, int) in the fewest
    bits; the first such table on ties."""
    costs = [float(tables.bits(residuals, torch.full_like(residuals, i, dtype=torch.long)).sum())
             for i in range(TABLE_COUNT)]
    return min(range(TABLE_COUNT), key=costs.__getitem__)
