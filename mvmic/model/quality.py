"""Quality codes: the operating points of the lossy base layer.

The quality code q (MIN_CODE..MAX_CODE) sets the quantiser step 2**(-q / 8) in normalised units;
`--quality 1..8` names eight of them. Torch-free, so rate control imports it without the codec.
"""

from __future__ import annotations

# --quality 1..8 (1 = smallest) -> quality code; spans about 0.02 to 1 bit per pixel on 12-bit CT/MR.
QUALITY_CODES = {1: 12, 2: 20, 3: 28, 4: 36, 5: 44, 6: 52, 7: 60, 8: 70}
MIN_CODE, MAX_CODE = 4, 120  # the range the entropy model was trained on (train.CODE_RANGE) and a margin
MAX_ERROR = 16  # the largest maximum error near-lossless coding promises, in stored units
DEADZONE = 0.3  # the quantiser rounds |c|/step down by this much: small coefficients go to 0
RECONSTRUCTION = 0.3  # decoded |q| sits this far above the integer, nearer the mass of a Laplacian


def step_of(code: int) -> float:
    """The quantiser step of quality code ``code``, in normalised units (before band gains and scales)."""
    return 2.0 ** (-code / 8)
