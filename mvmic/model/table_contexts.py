"""The lossy layer's entropy model since mvmicnet-w97-v3: contexts by table lookup, rANS, compiled.

Bands are coded as mvmic.model.context_model codes them (coarse to fine, (LH, HL, HH) within a level, four
passes over the 2 x 2 phases of each band), but the table index of a coefficient comes from a fitted
lookup table instead of an integer CNN run over whole bands:

    own band, decoded neighbours: n = 2 (|up| + |down| + |left| + |right|) + |diagonals|
                                   (only those of earlier passes: none, diagonals, direct, all 8)
    other bands: m = 2 |parent| + (sum of the parent's 4 direct neighbours) // 2
                     + |LH| + |HL| at the same place (the siblings coded before this band)
    cell = (orientation, depth slot, pass, bucket(n), bucket(m)) --LUT--> table index --> rANS

bucket() counts the half-octave thresholds 1, 2, 3, 4, 6, 8, 11, ... 181 at or below its argument
(16 buckets). The depth slot is depth - 1 (1 = finest level) for levels with a parent band, and
COARSEST_SLOT for the coarsest detail level, which has none. The LUT and the tables are fitted to the
training split (mvmic.training.table_fit): each cell takes the table that codes its symbols in the
fewest bits, the tables are then refitted to the symbols their cells receive, a few rounds.

A context costs a handful of integer operations at the coefficients a pass codes and nowhere else,
and the whole plane (contexts, table lookups, rANS) is one compiled call: a 512 x 512 plane decodes
in milliseconds (the CNN of version 2 took ~0.5 s). Every step is integer arithmetic: the same
symbols on every machine. The coarsest low band is coded as in version 2: differences to the left
(first column: to the one above) under one table the encoder picks.

Plane payload: [low-band table index: u8] [rANS words: u16 little-endian]. The rANS coder (Duda,
"Asymmetric numeral systems", arXiv 1311.2540, in the form of Giesen's ryg_rans) keeps a 32-bit state
x in [2**16, 2**32) and moves whole 16-bit words:

    encode (in reverse symbol order):  while x >= freq << 16: emit x & 0xFFFF, x >>= 16
                                       x = (x // freq) << 16 + x % freq + start
    decode (forward):                  slot = x & 0xFFFF -> the bin b with cdf[b] <= slot < cdf[b + 1]
                                       x = freq * (x >> 16) + slot - start; while x < 2**16: x = x << 16 | next word

The stream is the final encoder state as two words (high, low), then the emitted words in decoding
order; words past its end read as 0, so a damaged payload decodes to wrong values, never out of
bounds. A table t codes the symbols offsets[t] .. offsets[t] + lengths[t] - 3 (cdfs[t, :lengths[t]]
is its CDF; the last bin is the escape); a symbol outside takes the escape bin, then its zigzag value
u (0, -1, 1, -2, ... -> 0, 1, 2, 3, ...) follows raw: its bit length in 5 bits, then its bits, the
highest 16 first. |symbol| < 2**30.

The kernels are C (mvmic/model/table_coder.c, built by pip): they release the GIL, and they load in
microseconds, so `mvmic decompress` starts without a JIT compiler.
"""

from __future__ import annotations

import numpy as np

from mvmic.model import _table_coder

CONTEXT_VERSION = 2  # the context definition above, as mvmic/model/table_coder.c computes it; weights name theirs
BUCKETS = 16  # these constants are also mvmic/model/table_coder.c's
THRESHOLDS = (1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 128, 181)
DEPTH_SLOTS = 6  # depth - 1 for levels 1..5 below a parent, then the coarsest level
COARSEST_SLOT = DEPTH_SLOTS - 1
PASSES = 4
LUT_SHAPE = (3, DEPTH_SLOTS, PASSES, BUCKETS, BUCKETS)
CELLS = 3 * DEPTH_SLOTS * PASSES * BUCKETS * BUCKETS
MAX_MAGNITUDE = 2**30  # coefficients must stay below this in magnitude


def layout(shapes: list[tuple[tuple[int, int], ...]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, rows, columns) of the detail bands in coding order, from their (rows, columns) per level
    (coarsest first, (LH, HL, HH) each): where band 3 level + orientation lies in a flat int64 buffer."""
    sizes = np.array([shape for level in shapes for shape in level], dtype=np.int64).reshape(-1, 2)
    counts = sizes[:, 0] * sizes[:, 1]
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64), sizes[:, 0].copy(), sizes[:, 1].copy()


def dpcm(low: np.ndarray) -> np.ndarray:
    """Low-band residuals in raster order, int64: left differences, first column to the one above."""
    low = low.astype(np.int64)
    residual = low.copy()
    residual[:, 1:] = low[:, 1:] - low[:, :-1]
    residual[1:, 0] = low[1:, 0] - low[:-1, 0]
    return residual.ravel()


def plane_cells(flat: np.ndarray, starts: np.ndarray, rows: np.ndarray, columns: np.ndarray,
                levels: int) -> tuple[np.ndarray, np.ndarray]:
    """(symbols, cells) of every detail coefficient in coding order, int64 (what fitting counts)."""
    symbols, cells = np.empty(len(flat), np.int64), np.empty(len(flat), np.int64)
    _table_coder.coding_order(flat, starts, rows, columns, levels, np.arange(CELLS, dtype=np.int32), symbols, cells)
    return symbols, cells
