"""The restoration filter of the lossy base layer: a Wiener filter the encoder fits to each decoded plane.

    decoded integer plane p --5 x 5 point-symmetric filter, 12 integer taps c_k (RESTORATION layer)-->
        p + floor((sum_k c_k (p[y+dy, x+dx] + p[y-dy, x-dx] - 2 p[y, x]) + 2**7) / 2**8)

The encoder fits the taps by least squares to the original plane (mvmic.model.enc_restoration), keeps them
where the error they remove is worth their bytes, and sends them in a RESTORATION layer beside the frame's
BASE layer (mvmic.model.bitstream). It is the Wiener filter of AV1's loop restoration and of VVC's adaptive
loop filter (one class, a 5 x 5 diamond grown to the square): the taps sum each pair of mirrored neighbours
minus twice the centre, so flat regions pass unchanged and no DC term is needed.

Decoding is integer arithmetic on the decoded integer planes (the compiled ``_table_coder.restore``, edges
replicated): every machine and thread count gives the same pixels. The residual layer of the first lossless
design is coded against the unfiltered base, so streams with residual layers carry no restoration layer.

Payload (one RESTORATION layer per frame, only where some plane is filtered): pack_payloads with one part per
plane (1 grey, 3 colour, the BASE layer's planes), each pack_integers of 0 taps (plane not filtered) or TAPS taps,
each within +-MAX_TAP.
"""

from __future__ import annotations

import numpy as np

from mvmic.model import _table_coder
from mvmic.model.bitstream import (
    BitstreamError,
    LayerError,
    pack_integers,
    pack_payloads,
    unpack_integers,
    unpack_payloads,
)

TAPS = 12  # the 5 x 5 window's offsets after the centre, each with its mirror (table_coder.c: tap_rows, tap_columns)
SHIFT = 8  # taps are in units of 2**-SHIFT
MAX_TAP = (1 << 12) - 1  # |tap| bound: keeps every sum far inside int64 for 16-bit planes


def restore(plane: np.ndarray, taps: list[int]) -> np.ndarray:
    """The filtered plane: ``plane`` (rows, columns) integers, ``taps`` TAPS integers in units of 2**-SHIFT.
    Returns int64 (rows, columns). Raises ValueError for taps of the wrong count or size."""
    if len(taps) != TAPS or any(abs(t) > MAX_TAP for t in taps):
        raise ValueError(f"restoration taps must be {TAPS} integers within +-{MAX_TAP}, got {taps}")
    source = np.ascontiguousarray(plane, dtype=np.int64)
    out = np.empty_like(source)
    _table_coder.restore(source, source.shape[0], source.shape[1], np.array(taps, dtype=np.int64), out)
    return out


def pack(taps_per_plane: list[list[int] | None]) -> bytes:
    """A RESTORATION layer's payload: per plane, its taps or None (not filtered)."""
    return pack_payloads([pack_integers(taps or []) for taps in taps_per_plane])


def unpack(payload: bytes, planes: int) -> list[list[int] | None]:
    """Inverse of :func:`pack` for a frame of ``planes`` planes. Raises LayerError for a payload that is not one."""
    try:
        parts = [unpack_integers(part) for part in unpack_payloads(payload)]
    except BitstreamError as exc:
        raise LayerError(f"restoration layer does not parse: {exc}") from None
    if len(parts) != planes:
        raise LayerError(f"restoration layer has {len(parts)} planes, the base layer {planes}")
    for taps in parts:
        if len(taps) not in (0, TAPS) or any(abs(t) > MAX_TAP for t in taps):
            raise LayerError(f"restoration taps {taps} are not 0 or {TAPS} integers within +-{MAX_TAP}")
    return [taps or None for taps in parts]
