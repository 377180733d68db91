"""The CDF 9/7 wavelet's definition shared by the compiled transform (mvmic.model.lifting_kernels) and the
torch one (mvmic.model.lifting), torch-free: the lifting constants (JPEG 2000 Part 1, Annex F; Daubechies and
Sweldens' factorisation) and the geometry of a decomposition."""

ALPHA = -1.586134342059924
BETA = -0.052980118572961
GAMMA = 0.882911075530934
DELTA = 0.443506852043971
KAPPA = 1.230174104914001


def max_levels(height: int, width: int, smallest: int = 8) -> int:
    """Decomposition depth that keeps the low band at least ``smallest`` pixels on each side."""
    levels = 0
    while min(height, width) >= 2 * smallest:
        height, width = (height + 1) // 2, (width + 1) // 2
        levels += 1
    return levels


def band_shapes(rows: int, columns: int, levels: int) -> tuple[tuple[int, int], list[tuple[tuple[int, int], ...]]]:
    """(low band shape, (LH, HL, HH) shapes per level, coarsest first) of a ``levels``-level analysis:
    low bands take the extra sample of an odd length."""
    details = []
    for _ in range(levels):
        low_rows, low_columns, high_rows, high_columns = (rows + 1) // 2, (columns + 1) // 2, rows // 2, columns // 2
        details.append(((high_rows, low_columns), (low_rows, high_columns), (high_rows, high_columns)))
        rows, columns = low_rows, low_columns
    return (rows, columns), details[::-1]
