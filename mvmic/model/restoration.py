"""The restoration filter of the lossy base layer: a Wiener filter the encoder fits to each decoded plane.

    decoded integer plane p --5 x 5 point-symmetric filter, 12 integer taps c_k (RESTORATION layer)-->
        p + floor((sum_k c_k (p[y+dy, x+dx] + p[y-dy, x-dx] - 2 p[y, x]) + 2**7) / 2**8)

    (dy, dx) of the 12 taps: (0, 1) (0, 2) (1, -2) (1, -1) (1, 0) (1, 1) (1, 2) (2, -2) (2, -1) (2, 0) (2, 1) (2, 2);
    the 3 x 3 filter is the 4 taps at SMALL_POSITIONS, (0, 1) (1, -1) (1, 0) (1, 1), the others 0

The encoder fits the taps by least squares to the original plane (mvmic.model.enc_restoration), keeps them
where the error they remove is worth their bytes, and sends them in a RESTORATION layer beside the frame's
BASE layer (mvmic.model.bitstream). It is the Wiener filter of AV1's loop restoration and of VVC's adaptive
loop filter (one class, a 5 x 5 diamond grown to the square): the taps sum each pair of mirrored neighbours
minus twice the centre, so flat regions pass unchanged and no DC term is needed.

Decoding is integer arithmetic on the decoded integer planes (the compiled ``_table_coder.decoded_plane``, edges
replicated): every machine and thread count gives the same pixels. The residual layer of the first lossless
design is coded against the unfiltered base, so streams with residual layers carry no restoration layer.

Payload (one RESTORATION layer per frame, only where some plane is filtered): pack_payloads with one part per
plane (1 grey, 3 colour, the BASE layer's planes), each pack_integers of 0 taps (plane not filtered), the 4 taps of
the 3 x 3 filter, or all TAPS taps, each within +-MAX_TAP.
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
SMALL_POSITIONS = (0, 3, 4, 5)  # the 3 x 3 filter's taps among the 12: the layer sends these 4 alone when the rest are 0


def sent_taps(taps: list[int] | None) -> list[int]:
    """What a layer holds for one plane's taps (TAPS of them, or None: not filtered): none, the 3 x 3 filter's
    4 taps where the others are 0, or all TAPS."""
    if taps is None:
        return []
    small = all(tap == 0 for position, tap in enumerate(taps) if position not in SMALL_POSITIONS)
    return [taps[position] for position in SMALL_POSITIONS] if small else list(taps)


def decoded_plane(synthesised: np.ndarray, scale: float, offset: int, taps: list[int] | None) -> np.ndarray:
    """The decoder's integer plane: round(synthesised * scale + offset) (half to even, as numpy.round), filtered
    by ``taps`` unless None, in one compiled pass. ``synthesised`` (rows, columns) float64; returns int64. Raises
    ValueError for taps of the wrong count or size."""
    if taps is not None and (len(taps) != TAPS or any(abs(t) > MAX_TAP for t in taps)):
        raise ValueError(f"restoration taps must be {TAPS} integers within +-{MAX_TAP}, got {taps}")
    source = np.ascontiguousarray(synthesised, dtype=np.float64)
    out = np.empty(source.shape, dtype=np.int64)
    _table_coder.decoded_plane(source, source.shape[0], source.shape[1], scale, offset,
                               None if taps is None else np.array(taps, dtype=np.int64), out)
    return out


def pack(taps_per_plane: list[list[int] | None]) -> bytes:
    """A RESTORATION layer's payload: per plane, its TAPS taps or None (not filtered)."""
    return pack_payloads([pack_integers(sent_taps(taps)) for taps in taps_per_plane])


def unpack(payload: bytes, planes: int) -> list[list[int] | None]:
    """Inverse of :func:`pack` for a frame of ``planes`` planes. Raises LayerError for a payload that is not one, or
    not the one pack writes (a layer that filters no plane, all-zero taps, a 3 x 3 filter sent as 12 taps)."""
    try:
        parts = [unpack_integers(part) for part in unpack_payloads(payload)]
    except BitstreamError as exc:
        raise LayerError(f"restoration layer does not parse: {exc}") from None
    if len(parts) != planes:
        raise LayerError(f"restoration layer has {len(parts)} planes, the base layer {planes}")
    planes_taps: list[list[int] | None] = []
    for taps in parts:
        if len(taps) not in (0, len(SMALL_POSITIONS), TAPS) or any(abs(t) > MAX_TAP for t in taps):
            raise LayerError(f"restoration taps {taps} are not 0, {len(SMALL_POSITIONS)} or {TAPS} integers within "
                             f"+-{MAX_TAP}")
        full = None
        if taps:
            full = [0] * TAPS
            for position, tap in zip(SMALL_POSITIONS if len(taps) < TAPS else range(TAPS), taps, strict=True):
                full[position] = tap
            if not any(full) or sent_taps(full) != taps:  # each filter has one encoding: see pack
                raise LayerError(f"restoration taps {taps} are not written so: all 0 is no filter, and a 3 x 3 "
                                 f"filter is its {len(SMALL_POSITIONS)} taps")
        planes_taps.append(full)
    if not any(planes_taps):
        raise LayerError("restoration layer filters no plane: such a frame has no restoration layer")
    return planes_taps
