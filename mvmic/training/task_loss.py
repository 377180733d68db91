"""The task loss L_task: what the heads learn, in stage 2 (task heads) and stage 3 (L_task of R + lambda D + beta L_task).

    lesion mask (H x W), weight (0: unknown) --------------> weighted BCE + soft Dice on the upsampled logit
    organ map (H x W, IGNORE where an image has none) -----> cross-entropy + mean per-class soft Dice
    boxes (x0 y0 x1 y1 class) --centres on the H/4 x W/4 grid-->
        Gaussian heatmap in the class's channel -------------> penalty-reduced focal loss (CenterNet),
                                                               organ channels only on images with organ maps
        log width/height, sub-cell offset at centres ----------> L1

Classes of boxes index mvmic.model.tasks.heads.DETECTION_CLASSES (0 lesion, then the organs); organ
maps index background (0) then mvmic.model.tasks.organs.ORGAN_CLASSES. What the outputs mean at run time
(boxes, masks, organ maps) is mvmic.model.tasks.outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mvmic.model.tasks.heads import DETECTION_CLASSES, DETECTION_STRIDE, HeadOutputs
from mvmic.model.tasks.organs import ORGAN_CLASSES
from mvmic.model.tasks.outputs import upsampled

SIZE_WEIGHT = 0.1
IGNORE = 255  # organ map value where an image has no organ labels


@dataclass
class TaskTargets:
    lesion: Tensor  # (N, 1, H, W) float, 1 inside a lesion
    lesion_weight: Tensor  # (N, 1, H, W) float, 0 where the truth is not known (expert lesions in training)
    organs: Tensor  # (N, H, W) int64, 0 background, c: ORGAN_CLASSES[c - 1], IGNORE without organ map
    boxes: list[np.ndarray]  # per image (n, 5) float64: x0 y0 x1 y1 (pixels, x1/y1 exclusive), class

    @property
    def organ_labelled(self) -> Tensor:
        """(N,) bool: the images that have an organ map."""
        return (self.organs != IGNORE).flatten(1).all(dim=1)


@dataclass
class DetectionTargets:
    heatmap: Tensor  # (N, C, h, w) in 0..1, 1 at centres
    size: Tensor  # (N, 2, h, w) log(width, height), valid at centres
    offset: Tensor  # (N, 2, h, w)
    centres: Tensor  # (N, C, h, w) bool


def detection_targets(boxes: list[np.ndarray], grid: tuple[int, int]) -> DetectionTargets:
    count, classes = len(boxes), len(DETECTION_CLASSES)
    heatmap = torch.zeros(count, classes, *grid)
    size, offset = torch.zeros(count, 2, *grid), torch.zeros(count, 2, *grid)
    centres = torch.zeros(count, classes, *grid, dtype=torch.bool)
    rows, columns = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    for n, image_boxes in enumerate(boxes):
        for x0, y0, x1, y1, label in image_boxes:
            c = int(label)
            cx, cy = (x0 + x1) / 2 / DETECTION_STRIDE, (y0 + y1) / 2 / DETECTION_STRIDE
            column, row = min(int(cx), grid[1] - 1), min(int(cy), grid[0] - 1)
            sigma = max(0.6, 0.15 * max(x1 - x0, y1 - y0) / DETECTION_STRIDE)
            gaussian = torch.exp(-((rows - row) ** 2 + (columns - column) ** 2) / (2 * sigma**2))
            heatmap[n, c] = torch.maximum(heatmap[n, c], gaussian)
            size[n, :, row, column] = torch.tensor([np.log(x1 - x0), np.log(y1 - y0)], dtype=torch.float32)
            offset[n, :, row, column] = torch.tensor([cx - column, cy - row], dtype=torch.float32)
            centres[n, c, row, column] = True
    return DetectionTargets(heatmap, size, offset, centres)


def task_loss(outputs: HeadOutputs, targets: TaskTargets) -> Tensor:
    """Lesion segmentation + organ segmentation (on images with organ maps) + detection, a scalar."""
    shape = targets.lesion.shape[-2:]
    loss = _lesion_loss(upsampled(outputs.lesion, shape), targets.lesion, targets.lesion_weight)
    labelled = targets.organ_labelled
    if labelled.any():
        loss = loss + _organ_loss(upsampled(outputs.organs[labelled], shape), targets.organs[labelled])
    detection = detection_targets(targets.boxes, tuple(outputs.heatmap.shape[-2:]))
    valid = torch.ones_like(outputs.heatmap[:, :, :1, :1], dtype=torch.bool)
    valid[:, 1:] = labelled[:, None, None, None]  # organ channels count only where organs are labelled
    return loss + _focal(outputs.heatmap, detection, valid) + _regression(outputs, detection)


def _lesion_loss(logits: Tensor, truth: Tensor, weight: Tensor) -> Tensor:
    bce = F.binary_cross_entropy_with_logits(logits, truth, reduction="none")
    probability = torch.sigmoid(logits) * weight
    dice = 1 - (2 * (probability * truth).sum() + 1) / (probability.sum() + (truth * weight).sum() + 1)
    return (bce * weight).sum() / weight.sum().clamp(min=1) + dice


def _organ_loss(logits: Tensor, truth: Tensor) -> Tensor:
    probability = F.softmax(logits, dim=1)[:, 1:]
    one_hot = F.one_hot(truth, 1 + len(ORGAN_CLASSES)).permute(0, 3, 1, 2)[:, 1:].float()
    overlap, total = (probability * one_hot).sum(dim=(0, 2, 3)), (probability + one_hot).sum(dim=(0, 2, 3))
    return F.cross_entropy(logits, truth) + (1 - (2 * overlap + 1) / (total + 1)).mean()


def _focal(logits: Tensor, targets: DetectionTargets, valid: Tensor) -> Tensor:
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    positive = targets.centres.float()
    loss = -(positive * (1 - p) ** 2 * torch.log(p)
             + (1 - positive) * (1 - targets.heatmap) ** 4 * p**2 * torch.log(1 - p))
    return (loss * valid).sum() / (positive * valid).sum().clamp(min=1)


def _regression(outputs: HeadOutputs, targets: DetectionTargets) -> Tensor:
    centres = targets.centres.any(dim=1, keepdim=True).expand_as(targets.size)
    if not centres.any():
        return outputs.size.sum() * 0
    size = F.l1_loss(outputs.size[centres], targets.size[centres])
    offset = F.l1_loss(outputs.offset[centres], targets.offset[centres])
    return SIZE_WEIGHT * size + offset
