"""The organ task set: the classes MVMICNet's organ head segments and boxes.

Index 0 is background; class c is ORGAN_CLASSES[c - 1]. Corpus label files store organ
maps as uint8 indices in this order (mvmic.corpus.totalsegmentator maps TotalSegmentator's
classes onto them). The set is what the abdominal CT and MR studies of the corpus share:
large parenchymal organs, the spine and the aorta.
"""

from __future__ import annotations

ORGAN_CLASSES = ("liver", "spleen", "kidney", "stomach", "vertebra", "back muscle", "aorta")
