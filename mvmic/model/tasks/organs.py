"""The organ task set: the classes MVMICNet's organ head segments and boxes.

Index 0 is background; class c is ORGAN_CLASSES[c - 1], and also the index of its boxes
in mvmic.model.tasks.heads.DETECTION_CLASSES (whose class 0 is the lesion). Corpus label files
store organ maps as uint8 indices in this order (mvmic.corpus.totalsegmentator maps
TotalSegmentator's classes onto them). The set is what the abdominal CT and MR studies of
the corpus share: large parenchymal organs, the spine and the aorta.

A box is one connected component of a class on a slice (so left and right kidney, or the
two back muscles, are two boxes), at least MIN_ORGAN_PIXELS large.
"""

from __future__ import annotations

import numpy as np

from mvmic.model.tasks.lesions import boxes_of

ORGAN_CLASSES = ("liver", "spleen", "kidney", "stomach", "vertebra", "back muscle", "aorta")
MIN_ORGAN_PIXELS = 16


def organ_boxes(organs: np.ndarray) -> np.ndarray:
    """(n, 5) boxes x0 y0 x1 y1 class of a (rows, columns) organ map, class as in DETECTION_CLASSES."""
    boxes = [np.column_stack([found, np.full(len(found), index)])
             for index in range(1, len(ORGAN_CLASSES) + 1)
             for found in [boxes_of(organs == index, MIN_ORGAN_PIXELS)]]
    return np.concatenate(boxes).astype(np.float64) if boxes else np.zeros((0, 5))
