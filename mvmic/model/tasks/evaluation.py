"""Task scores, pooled over a whole image set, per class: Dice and IoU of masks, AP of boxes.

Pooling (summing intersections and sizes over all images before dividing) keeps images
without lesions meaningful: a false positive there still costs Dice. AP follows COCO:
detections of all images ranked by score, each matched greedily to the unmatched true box
of its image with the highest IoU at or above the threshold, area under the monotone
precision envelope (every recall point, as PASCAL VOC 2010+); AP50 at IoU 0.5, mAP the
mean over IoU 0.50, 0.55, ..., 0.95. The organ set is scored per class of ORGAN_CLASSES;
its mean organ Dice averages the classes that occur in the truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mvmic.model.tasks.organs import ORGAN_CLASSES
from mvmic.model.tasks.outputs import Detections

MATCH_IOU = 0.5
COCO_IOUS = tuple(np.round(np.arange(0.5, 0.96, 0.05), 2))


@dataclass
class ClassScores:
    """One class: pooled pixel counts of its masks and the detections of every image."""

    intersection: float = 0.0
    predicted: float = 0.0
    truth: float = 0.0
    images: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)  # boxes, scores, truth

    def add_mask(self, predicted: np.ndarray, truth: np.ndarray) -> None:
        self.intersection += float((predicted & truth).sum())
        self.predicted += float(predicted.sum())
        self.truth += float(truth.sum())

    def add_boxes(self, boxes: np.ndarray, scores: np.ndarray, true_boxes: np.ndarray) -> None:
        self.images.append((boxes.reshape(-1, 4), scores, true_boxes.reshape(-1, 4)))

    @property
    def dice(self) -> float:
        total = self.predicted + self.truth
        return 2 * self.intersection / total if total else 1.0

    @property
    def iou(self) -> float:
        union = self.predicted + self.truth - self.intersection
        return self.intersection / union if union else 1.0

    @property
    def true_boxes(self) -> int:
        return sum(len(truth) for _, _, truth in self.images)

    def ap(self, threshold: float = MATCH_IOU) -> float:
        if not self.true_boxes:
            return float("nan")
        detections = [d for boxes, scores, truth in self.images for d in _matched(boxes, scores, truth, threshold)]
        ranked = sorted(detections, key=lambda d: -d[0])
        hits = np.cumsum([hit for _, hit in ranked], dtype=np.float64)
        precision = hits / np.arange(1, len(ranked) + 1)
        return average_precision(hits / self.true_boxes, precision)

    @property
    def ap50(self) -> float:
        return self.ap(MATCH_IOU)

    @property
    def map(self) -> float:
        """COCO's mAP@[.5:.95] for this class."""
        return float(np.mean([self.ap(t) for t in COCO_IOUS])) if self.true_boxes else float("nan")

    def as_dict(self) -> dict:
        return {"dice": self.dice, "iou": self.iou, "ap50": self.ap50, "map": self.map, "true_boxes": self.true_boxes,
                "truth_pixels": self.truth}


@dataclass
class TaskScores:
    """Both task sets: the lesion class, and the organ classes on frames with organ maps."""

    lesion: ClassScores = field(default_factory=ClassScores)
    organs: dict[str, ClassScores] = field(default_factory=lambda: {name: ClassScores() for name in ORGAN_CLASSES})

    def add_frame(self, lesion: np.ndarray, true_lesion: np.ndarray, organs: np.ndarray | None,
                  true_organs: np.ndarray | None, detections: Detections, true_boxes: np.ndarray) -> None:
        """One frame: (rows, columns) masks, organ maps (None on frames without organ labels: the organ
        classes are not scored there), detections of every class and the (n, 5) true boxes."""
        self.lesion.add_mask(lesion, true_lesion)
        found = detections.of_class(0)
        self.lesion.add_boxes(found.boxes, found.scores, true_boxes[true_boxes[:, 4] == 0, :4])
        if true_organs is None:
            return
        for index, name in enumerate(ORGAN_CLASSES, start=1):
            self.organs[name].add_mask(organs == index, true_organs == index)
            found = detections.of_class(index)
            self.organs[name].add_boxes(found.boxes, found.scores, true_boxes[true_boxes[:, 4] == index, :4])

    def mean_organ_dice(self) -> float:
        present = [scores.dice for scores in self.organs.values() if scores.truth > 0]
        return float(np.mean(present)) if present else float("nan")

    def as_dict(self) -> dict:
        organs = {name: scores.as_dict() for name, scores in self.organs.items() if scores.truth > 0}
        return {"lesion": self.lesion.as_dict(), "organs": organs, "mean_organ_dice": self.mean_organ_dice(),
                "organ_ap50": _mean([o["ap50"] for o in organs.values()]),
                "organ_map": _mean([o["map"] for o in organs.values()])}


def _mean(values: list[float]) -> float:
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


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


def _matched(boxes: np.ndarray, scores: np.ndarray, true_boxes: np.ndarray,
             threshold: float) -> list[tuple[float, bool]]:
    order = np.argsort(-scores)
    overlaps = box_iou(boxes[order], true_boxes) if len(true_boxes) and len(order) else None
    taken = np.zeros(len(true_boxes), dtype=bool)
    result = []
    for rank, index in enumerate(order):
        hit = False
        if overlaps is not None:
            candidates = np.where(taken, -1.0, overlaps[rank])
            best = int(np.argmax(candidates))
            if candidates[best] >= threshold:
                taken[best], hit = True, True
        result.append((float(scores[index]), hit))
    return result
