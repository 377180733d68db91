"""What the task heads learn and what their outputs mean: targets, the task loss, decoding.

    lesion mask (H x W) -------------------------------> BCE + soft Dice on the upsampled logits
    lesion boxes --centres on the H/4 x W/4 grid-->
        Gaussian heatmap ------------------------------> penalty-reduced focal loss (CenterNet)
        log width/height, sub-cell offset at centres --> L1
    outputs --sigmoid, 3x3 peak picking, top-k--> boxes with scores; logits > 0 --> mask
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from model.tasks.heads import DETECTION_STRIDE, SEGMENTATION_STRIDE, HeadOutputs

SIZE_WEIGHT = 0.1
MAX_DETECTIONS = 20
MIN_SCORE = 0.05  # kept for precision-recall curves; callers pick their own operating threshold


@dataclass
class DetectionTargets:
    heatmap: Tensor  # (N, 1, h, w) in 0..1, 1 at centres
    size: Tensor  # (N, 2, h, w) log(width, height), valid at centres
    offset: Tensor  # (N, 2, h, w)
    centres: Tensor  # (N, 1, h, w) bool


@dataclass
class Detections:
    boxes: np.ndarray  # (n, 4) x0 y0 x1 y1, full-resolution pixels
    scores: np.ndarray  # (n,)


def detection_targets(boxes: list[np.ndarray], grid: tuple[int, int]) -> DetectionTargets:
    count = len(boxes)
    heatmap = torch.zeros(count, 1, *grid)
    size, offset = torch.zeros(count, 2, *grid), torch.zeros(count, 2, *grid)
    centres = torch.zeros(count, 1, *grid, dtype=torch.bool)
    rows, columns = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    for n, image_boxes in enumerate(boxes):
        for x0, y0, x1, y1 in image_boxes:
            cx, cy = (x0 + x1) / 2 / DETECTION_STRIDE, (y0 + y1) / 2 / DETECTION_STRIDE
            column, row = min(int(cx), grid[1] - 1), min(int(cy), grid[0] - 1)
            sigma = max(0.6, 0.15 * max(x1 - x0, y1 - y0) / DETECTION_STRIDE)
            gaussian = torch.exp(-((rows - row) ** 2 + (columns - column) ** 2) / (2 * sigma**2))
            heatmap[n, 0] = torch.maximum(heatmap[n, 0], gaussian)
            size[n, :, row, column] = torch.tensor([np.log(x1 - x0), np.log(y1 - y0)], dtype=torch.float32)
            offset[n, :, row, column] = torch.tensor([cx - column, cy - row], dtype=torch.float32)
            centres[n, 0, row, column] = True
    return DetectionTargets(heatmap, size, offset, centres)


def task_loss(outputs: HeadOutputs, masks: Tensor, boxes: list[np.ndarray]) -> Tensor:
    """Segmentation (BCE + soft Dice) plus detection (focal + L1) for (N, 1, H, W) masks and
    per-image boxes, the detection targets laid on the grid of ``outputs``."""
    targets = detection_targets(boxes, (outputs.heatmap.shape[-2], outputs.heatmap.shape[-1]))
    logits = F.interpolate(outputs.segmentation, scale_factor=SEGMENTATION_STRIDE, mode="bilinear",
                           align_corners=False)[..., : masks.shape[-2], : masks.shape[-1]]
    probability = torch.sigmoid(logits)
    dice = 1 - (2 * (probability * masks).sum() + 1) / (probability.sum() + masks.sum() + 1)
    segmentation = F.binary_cross_entropy_with_logits(logits, masks) + dice
    return segmentation + _focal(outputs.heatmap, targets) + _regression(outputs, targets)


def _focal(logits: Tensor, targets: DetectionTargets) -> Tensor:
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    positive = targets.centres.float()
    loss = -(positive * (1 - p) ** 2 * torch.log(p)
             + (1 - positive) * (1 - targets.heatmap) ** 4 * p**2 * torch.log(1 - p))
    return loss.sum() / positive.sum().clamp(min=1)


def _regression(outputs: HeadOutputs, targets: DetectionTargets) -> Tensor:
    centres = targets.centres.expand_as(targets.size)
    if not centres.any():
        return outputs.size.sum() * 0
    size = F.l1_loss(outputs.size[centres], targets.size[centres])
    offset = F.l1_loss(outputs.offset[centres], targets.offset[centres])
    return SIZE_WEIGHT * size + offset


@torch.no_grad()
def decode_detections(outputs: HeadOutputs, shape: tuple[int, int]) -> list[Detections]:
    """Boxes of every image in the batch, clipped to ``shape`` (rows, columns), best first."""
    scores = torch.sigmoid(outputs.heatmap)
    peaks = scores * (F.max_pool2d(scores, 3, 1, 1) == scores)
    result = []
    for n in range(scores.shape[0]):
        flat = peaks[n, 0].flatten()
        top = torch.topk(flat, min(MAX_DETECTIONS, flat.numel()))
        keep = top.values >= MIN_SCORE
        cells, values = top.indices[keep], top.values[keep]
        rows, columns = cells // peaks.shape[-1], cells % peaks.shape[-1]
        cx = (columns + outputs.offset[n, 0, rows, columns]) * DETECTION_STRIDE
        cy = (rows + outputs.offset[n, 1, rows, columns]) * DETECTION_STRIDE
        width, height = outputs.size[n, 0, rows, columns].exp(), outputs.size[n, 1, rows, columns].exp()
        boxes = torch.stack([cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2], dim=1)
        limits = torch.tensor([shape[1], shape[0], shape[1], shape[0]], dtype=boxes.dtype)
        boxes = torch.minimum(boxes.clamp(min=0), limits)
        result.append(Detections(boxes.numpy().astype(np.float64), values.numpy().astype(np.float64)))
    return result


@torch.no_grad()
def segmentation_masks(outputs: HeadOutputs, shape: tuple[int, int]) -> np.ndarray:
    """(N, rows, columns) bool masks at full resolution."""
    logits = F.interpolate(outputs.segmentation, scale_factor=SEGMENTATION_STRIDE, mode="bilinear",
                           align_corners=False)
    return (logits[:, 0, : shape[0], : shape[1]] > 0).numpy()
