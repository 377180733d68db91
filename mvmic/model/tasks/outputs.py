"""What the task heads' outputs mean: boxes with scores and classes, lesion masks and organ maps.

    outputs --sigmoid, 3x3 peak picking per class, top-k--> boxes with scores and classes
            --lesion logit > 0--> lesion mask;  --argmax--> organ map
    (logits at 1/SEGMENTATION_STRIDE resolution are upsampled bilinearly to the frame first)

What the heads learn from, the targets and the task loss L_task, is training's: mvmic.training.task_loss.

Classes of boxes index mvmic.model.tasks.heads.DETECTION_CLASSES (0 lesion, then the organs); organ
maps index background (0) then mvmic.model.tasks.organs.ORGAN_CLASSES.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mvmic.model.tasks.heads import DETECTION_STRIDE, SEGMENTATION_STRIDE, HeadOutputs

MAX_DETECTIONS = 40
MIN_SCORE = 0.05  # kept for precision-recall curves; callers pick their own operating threshold


@dataclass
class Detections:
    boxes: np.ndarray  # (n, 4) x0 y0 x1 y1, full-resolution pixels
    scores: np.ndarray  # (n,)
    classes: np.ndarray  # (n,) int64, index into DETECTION_CLASSES

    def of_class(self, index: int) -> Detections:
        keep = self.classes == index
        return Detections(self.boxes[keep], self.scores[keep], self.classes[keep])


@torch.no_grad()
def decode_detections(outputs: HeadOutputs, shape: tuple[int, int]) -> list[Detections]:
    """Boxes of every image in the batch, all classes, clipped to ``shape`` (rows, columns), best first."""
    scores = torch.sigmoid(outputs.heatmap)
    peaks = scores * (F.max_pool2d(scores, 3, 1, 1) == scores)
    cells = peaks.shape[-2] * peaks.shape[-1]
    result = []
    for n in range(scores.shape[0]):
        flat = peaks[n].flatten()
        top = torch.topk(flat, min(MAX_DETECTIONS, flat.numel()))
        keep = top.values >= MIN_SCORE
        indices, values = top.indices[keep], top.values[keep]
        classes, cell = indices // cells, indices % cells
        rows, columns = cell // peaks.shape[-1], cell % peaks.shape[-1]
        cx = (columns + outputs.offset[n, 0, rows, columns]) * DETECTION_STRIDE
        cy = (rows + outputs.offset[n, 1, rows, columns]) * DETECTION_STRIDE
        width, height = outputs.size[n, 0, rows, columns].exp(), outputs.size[n, 1, rows, columns].exp()
        boxes = torch.stack([cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2], dim=1)
        limits = torch.tensor([shape[1], shape[0], shape[1], shape[0]], dtype=boxes.dtype)
        boxes = torch.minimum(boxes.clamp(min=0), limits)
        result.append(Detections(boxes.numpy().astype(np.float64), values.numpy().astype(np.float64),
                                 classes.numpy().astype(np.int64)))
    return result


def upsampled(logits: Tensor, shape: tuple[int, int]) -> Tensor:
    """(N, C, h, w) logits at 1/SEGMENTATION_STRIDE resolution, bilinearly upsampled to (N, C, *shape)."""
    return F.interpolate(logits, scale_factor=SEGMENTATION_STRIDE, mode="bilinear",
                         align_corners=False)[..., : shape[0], : shape[1]]


@torch.no_grad()
def segmentation_masks(outputs: HeadOutputs, shape: tuple[int, int]) -> np.ndarray:
    """(N, rows, columns) bool lesion masks at full resolution."""
    return (upsampled(outputs.lesion, shape)[:, 0] > 0).numpy()


@torch.no_grad()
def organ_maps(outputs: HeadOutputs, shape: tuple[int, int]) -> np.ndarray:
    """(N, rows, columns) uint8 organ maps at full resolution: 0 background, c: ORGAN_CLASSES[c - 1]."""
    # argmax over the last, contiguous axis: the same first maximum as argmax(dim=1), 2-3x faster on a CPU
    return upsampled(outputs.organs, shape).permute(0, 2, 3, 1).contiguous().argmax(dim=-1).numpy().astype(np.uint8)
