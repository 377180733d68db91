"""Quality codes: the operating points of the lossy base layer.

The quality code q (MIN_CODE..MAX_CODE) sets the quantiser step 2**(-q / 8) in normalised units;
`--quality 1..8` names eight of them. Torch-free, so rate control imports it without the codec.
"""

from __future__ import annotations

# --quality 1..8 (1 = smallest) -> quality code; spans about 0.02 to 1 bit per pixel on 12-bit CT/MR.
QUALITY_CODES = {1: 12, 2: 20, 3: 28, 4: 36, 5: 44, 6: 52, 7: 60, 8: 70}
MIN_CODE, MAX_CODE = 4, 120  # the range the entropy model was trained on (train.CODE_RANGE) and a margin
