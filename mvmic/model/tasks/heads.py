"""Task heads: lesion and organ segmentation, lesion and organ boxes, from MVMICNet's decoded latent.

The heads never see the reconstructed image. They read the entropy-decoded integer
subbands of every level but the finest, put together by the first synthesis steps
(partial decoding, mvmic.model.tasks.analysis): a half-resolution low band LL1, so the
finest level, three quarters of all symbols, need not even be entropy decoded.

    LL1 (H/2 x W/2), standardised over the whole image (standardise) --> e1 (24) ------------+
                                 --stride 2--> e2 (32) ----------------+                        |
                                      --stride 2--> e3 (48) ---+       |                        |
                                            --stride 2--> e4 (64)  |       |                        |
                                                    up + e3 --> d3 (48)     |                        |
                                                            up + e2 --> d2 (32)                    |
                                                                  | up + e1 --> d1 (24)          |
      detection (H/4): heatmap per class (lesion, organs), log size, offset <-+          |
                              lesion logit, organ logits (background + organs) (H/2) <--------+

Detection is CenterNet-style (Zhou et al., "Objects as Points", 2019): a peak per object
centre in its class's heatmap, with the box's log width/height and sub-cell offset read at
the peak. PixelReference is the same trunk behind a stride-2 stem on full-resolution
pixels: the pixel-domain network of similar capacity that the task benchmark compares against.

Normalisation: BatchNorm, which at inference is a fixed affine map per channel, so a frame's
result depends neither on what shares its batch nor on the frame's size; the input is
standardised over the whole image before it reaches the network (in training too, with the
statistics of the whole plane a crop comes from), so crops and full frames look alike.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mvmic.model.tasks.organs import ORGAN_CLASSES

WIDTHS = (24, 32, 48, 64)
DETECTION_STRIDE = 4  # detection cells, in full-resolution pixels
SEGMENTATION_STRIDE = 2
DETECTION_CLASSES = ("lesion", *ORGAN_CLASSES)  # heatmap channels, in this order


@dataclass
class HeadOutputs:
    lesion: Tensor  # (N, 1, H/2, W/2) lesion logits
    organs: Tensor  # (N, 1 + len(ORGAN_CLASSES), H/2, W/2) logits: background, then ORGAN_CLASSES
    heatmap: Tensor  # (N, len(DETECTION_CLASSES), H/4, W/4) logits of an object centre, per class
    size: Tensor  # (N, 2, H/4, W/4) log(width, height) in full-resolution pixels
    offset: Tensor  # (N, 2, H/4, W/4) centre offset within the cell, in cells

    def to(self, device: str | torch.device) -> HeadOutputs:
        return HeadOutputs(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))

    def float(self) -> HeadOutputs:
        return HeadOutputs(*(getattr(self, f.name).float() for f in dataclasses.fields(self)))


def standardise(planes: Tensor, mean: Tensor | None = None, std: Tensor | None = None) -> Tensor:
    """(N, 1, h, w) planes to zero mean, unit variance per image: modalities and bit depths differ
    by orders of magnitude. ``mean``/``std`` (N, 1, 1, 1): statistics of the whole image a crop
    was cut from; by default those of each plane itself."""
    if mean is None or std is None:
        mean, std = plane_statistics(planes)
    return (planes - mean) / std


def plane_statistics(planes: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation (floored at 1e-6) of each (h, w) plane, shaped (N, 1, 1, 1)."""
    return planes.mean(dim=(-2, -1), keepdim=True), planes.std(dim=(-2, -1), keepdim=True).clamp(min=1e-6)


def _block(inputs: int, outputs: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False), nn.BatchNorm2d(outputs),
                         nn.ReLU(inplace=True), nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False),
                         nn.BatchNorm2d(outputs), nn.ReLU(inplace=True))


class Trunk(nn.Module):
    """Encoder-decoder from a half-resolution input (N, ``inputs``, H/2, W/2) to the heads' outputs."""

    def __init__(self, inputs: int = 1) -> None:
        super().__init__()
        w1, w2, w3, w4 = WIDTHS
        self.e1, self.e2, self.e3, self.e4 = _block(inputs, w1), _block(w1, w2, 2), _block(w2, w3, 2), _block(w3, w4, 2)
        self.d3, self.d2, self.d1 = _block(w4 + w3, w3), _block(w3 + w2, w2), _block(w2 + w1, w1)
        self.segmentation = nn.Conv2d(w1, 2 + len(ORGAN_CLASSES), 1)
        classes = len(DETECTION_CLASSES)
        self.detection = nn.Sequential(nn.Conv2d(w2, w2, 3, 1, 1), nn.ReLU(inplace=True), nn.Conv2d(w2, classes + 4, 1))
        nn.init.constant_(self.detection[-1].bias[:classes], -4.0)  # few cells hold a centre: start near p = 0.02
        nn.init.constant_(self.segmentation.bias[:1], -4.0)  # few pixels are lesion

    def forward(self, half: Tensor) -> HeadOutputs:
        e1 = self.e1(half)
        e2 = self.e2(e1)
        e3 = self.e3(e2)
        d3 = self.d3(torch.cat([_up_to(self.e4(e3), e3), e3], 1))
        d2 = self.d2(torch.cat([_up_to(d3, e2), e2], 1))
        d1 = self.d1(torch.cat([_up_to(d2, e1), e1], 1))
        segmentation, detection = self.segmentation(d1), self.detection(d2)
        classes = len(DETECTION_CLASSES)
        return HeadOutputs(segmentation[:, :1], segmentation[:, 1:], detection[:, :classes],
                           detection[:, classes : classes + 2], detection[:, classes + 2 :])


class LatentHeads(Trunk):
    """MVMICNet's task heads: input is the partially decoded latent LL1 (N, 1, H/2, W/2), standardised."""


class PixelReference(nn.Module):
    """The same trunk on full-resolution pixels (N, 1, H, W), standardised, behind a stride-2 stem that
    keeps 24 channels (no one-channel bottleneck: the reference must not be handicapped)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
                                  nn.Conv2d(16, WIDTHS[0], 3, 2, 1))
        self.trunk = Trunk(WIDTHS[0])

    def forward(self, image: Tensor) -> HeadOutputs:
        return self.trunk(self.stem(image))


def _up_to(x: Tensor, like: Tensor) -> Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="nearest")
