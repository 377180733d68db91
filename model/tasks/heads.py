"""Task heads: lesion segmentation and anchor-free detection from MVMICNet's decoded latent.

The heads never see the reconstructed image. They read the entropy-decoded integer
subbands of every level but the finest, put together by the first synthesis steps
(partial decoding, model.tasks.analysis): a half-resolution low band LL1, so the
finest level, three quarters of all symbols, need not even be entropy decoded.

    LL1 (H/2 x W/2) --z-score per image--> e1 (24) ----------------------------+
                                 --stride 2--> e2 (32) ----------------+         |
                                      --stride 2--> e3 (48) ---+       |         |
                                            --stride 2--> e4 (64)  |       |         |
                                                    up + e3 --> d3 (48)     |         |
                                                            up + e2 --> d2 (32)     |
                                                                  | up + e1 --> d1 (24)
                 detection (H/4 x W/4): heatmap, log size, offset <-+          |
                                      segmentation logits (H/2 x W/2) <--------+

Detection is CenterNet-style (Zhou et al., "Objects as Points", 2019): a peak per
lesion centre, with the box's log width/height and sub-cell offset read at the peak.
PixelReference is the same trunk behind a stride-2 stem on full-resolution pixels:
the pixel-domain network of similar capacity that the task benchmark compares against.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WIDTHS = (24, 32, 48, 64)
DETECTION_STRIDE = 4  # detection cells, in full-resolution pixels
SEGMENTATION_STRIDE = 2


@dataclass
class HeadOutputs:
    segmentation: Tensor  # (N, 1, H/2, W/2) logits
    heatmap: Tensor  # (N, 1, H/4, W/4) logits
    size: Tensor  # (N, 2, H/4, W/4) log(width, height) in full-resolution pixels
    offset: Tensor  # (N, 2, H/4, W/4) centre offset within the cell, in cells

    def to(self, device: str | torch.device) -> HeadOutputs:
        return HeadOutputs(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))


def _block(inputs: int, outputs: int, stride: int = 1) -> nn.Sequential:
    # GroupNorm: without normalisation the pixel reference still had validation Dice 0 after
    # 500 steps; unlike BatchNorm it behaves the same on one image as on a batch.
    return nn.Sequential(nn.Conv2d(inputs, outputs, 3, stride, 1), nn.GroupNorm(8, outputs), nn.ReLU(inplace=True),
                         nn.Conv2d(outputs, outputs, 3, 1, 1), nn.GroupNorm(8, outputs), nn.ReLU(inplace=True))


class Trunk(nn.Module):
    """Encoder-decoder from a half-resolution plane to the two heads' outputs."""

    def __init__(self) -> None:
        super().__init__()
        w1, w2, w3, w4 = WIDTHS
        self.e1, self.e2, self.e3, self.e4 = _block(1, w1), _block(w1, w2, 2), _block(w2, w3, 2), _block(w3, w4, 2)
        self.d3, self.d2, self.d1 = _block(w4 + w3, w3), _block(w3 + w2, w2), _block(w2 + w1, w1)
        self.segmentation = nn.Conv2d(w1, 1, 1)
        self.detection = nn.Sequential(nn.Conv2d(w2, w2, 3, 1, 1), nn.ReLU(inplace=True), nn.Conv2d(w2, 5, 1))
        nn.init.constant_(self.detection[-1].bias[:1], -4.0)  # few cells hold a centre: start near p = 0.02

    def forward(self, half: Tensor) -> HeadOutputs:
        e1 = self.e1(_standardise(half))
        e2 = self.e2(e1)
        e3 = self.e3(e2)
        d3 = self.d3(torch.cat([_up_to(self.e4(e3), e3), e3], 1))
        d2 = self.d2(torch.cat([_up_to(d3, e2), e2], 1))
        d1 = self.d1(torch.cat([_up_to(d2, e1), e1], 1))
        detection = self.detection(d2)
        return HeadOutputs(self.segmentation(d1), detection[:, :1], detection[:, 1:3], detection[:, 3:])


class LatentHeads(Trunk):
    """MVMICNet's task heads: input is the partially decoded latent, LL1 (N, 1, H/2, W/2)."""


class PixelReference(nn.Module):
    """The same trunk on full-resolution pixels (N, 1, H, W), behind a learned stride-2 stem."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, 1, 1), nn.ReLU(inplace=True), nn.Conv2d(8, 1, 3, 2, 1))
        self.trunk = Trunk()

    def forward(self, image: Tensor) -> HeadOutputs:
        return self.trunk(self.stem(_standardise(image)))


def _standardise(planes: Tensor) -> Tensor:
    """Per image zero mean, unit variance: modalities and bit depths differ by orders of magnitude."""
    mean = planes.mean(dim=(-2, -1), keepdim=True)
    std = planes.std(dim=(-2, -1), keepdim=True)
    return (planes - mean) / torch.clamp(std, min=1e-6)


def _up_to(x: Tensor, like: Tensor) -> Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="nearest")
