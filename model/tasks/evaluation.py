"""Task scores, pooled over a whole image set: Dice and IoU of masks, AP50 of boxes.

Pooling (summing intersections and sizes over all images before dividing) keeps
images without lesions meaningful: a false positive there still costs Dice.
AP50 follows PASCAL VOC 2010+: detections of all images ranked by score, each
matched greedily to the unmatched true box of its image with IoU >= 0.5,
area under the monotone precision envelope of the precision-recall curve.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MATCH_IOU = 0.5


@dataclass
class TaskScores:
    intersection: float = 0.0
    predicted: float = 0.0
    truth: float = 0.0
    detections: list[tuple[float, bool]] = field(default_factory=list)  # (score, true positive)
    true_boxes: int = 0

    def add(self, predicted_mask: np.ndarray, true_mask: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
            true_boxes: np.ndarray) -> None:
        self.intersection += float((predicted_mask & true_mask).sum())
        self.predicted += float(predicted_mask.sum())
        self.truth += float(true_mask.sum())
        self.detections += _matched(boxes, scores, true_boxes)
        self.true_boxes += len(true_boxes)

    @property
    def dice(self) -> float:
        total = self.predicted + self.truth
        return 2 * self.intersection / total if total else 1.0

    @property
    def iou(self) -> float:
        union = self.predicted + self.truth - self.intersection
        return self.intersection / union if union else 1.0

    @property
    def ap50(self) -> float:
        if not self.true_boxes:
            return float("nan")
        ranked = sorted(self.detections, key=lambda d: -d[0])
        hits = np.cumsum([hit for _, hit in ranked], dtype=np.float64)
        precision = hits / np.arange(1, len(ranked) + 1)
        recall = hits / self.true_boxes
        return average_precision(recall, precision)

    def as_dict(self) -> dict:
        return {"dice": self.dice, "iou": self.iou, "ap50": self.ap50, "true_boxes": self.true_boxes}


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[0.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the monotone envelope
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def box_iou(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """(n, m) IoU of x0 y0 x1 y1 boxes."""
    x0 = np.maximum(boxes[:, None, 0], others[None, :, 0])
    y0 = np.maximum(boxes[:, None, 1], others[None, :, 1])
    x1 = np.minimum(boxes[:, None, 2], others[None, :, 2])
    y1 = np.minimum(boxes[:, None, 3], others[None, :, 3])
    intersection = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return intersection / (area(boxes)[:, None] + area(others)[None, :] - intersection)


def _matched(boxes: np.ndarray, scores: np.ndarray, true_boxes: np.ndarray) -> list[tuple[float, bool]]:
    order = np.argsort(-scores)
    overlaps = box_iou(boxes[order], true_boxes) if len(true_boxes) and len(order) else None
    taken = np.zeros(len(true_boxes), dtype=bool)
    result = []
    for rank, index in enumerate(order):
        hit = False
        if overlaps is not None:
            candidates = np.where(taken, -1.0, overlaps[rank])
            best = int(np.argmax(candidates))
            if candidates[best] >= MATCH_IOU:
                taken[best], hit = True, True
        result.append((float(scores[index]), hit))
    return result
