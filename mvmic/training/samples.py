"""Samples for the task networks: real corpus planes, synthetic lesions, organ maps, crops.

    corpus plane (normalised as the codec sees it) + expert lesion mask + organ map (if any)
      statistics of the whole plane: pixel mean/std, and the mean/std of its LL1 (what the heads
      standardise by at inference, where they see the whole image)
    training sample: a patient (or volume) drawn uniformly, then one of its planes (a 61-slice lung CT
                     must not outweigh a single radiograph: the network would learn that one chest)
      plane --random window, resized to about WINDOW x WINDOW: organ planes at fine pixel spacing
              shrunk to a random spacing up to MAX_SPACING mm, others zoomed by a random factor in ZOOM-->
            --left-right flip (planes without organs in view)-->
            --intensity: gamma in GAMMA over the plane's 1st-99th percentile range, Gaussian noise of
              up to NOISE of that range (other protocols, windows and doses than the few patients')-->
            --synthetic lesions (mvmic.model.tasks.lesions: the benchmark's generator, contrast and body
              threshold from the whole plane, as the benchmark draws them)--> image, lesion mask, boxes
            --CROP x CROP crop, centred near a lesion in FOREGROUND of the samples (nnU-Net's foreground
              oversampling: lesions are under 1 % of the pixels)--> padded with the plane's minimum
      targets: lesion mask with weight 0 on expert lesions (they test, they do not train),
               organ map (IGNORE without one), lesion boxes (class 0) + organ boxes (class 1..)
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mvmic.model.colour import normalised_planes
from mvmic.model.tasks.lesions import LESION_PARAMETERS, ImageRange, insert_lesions
from mvmic.model.tasks.organs import organ_boxes
from mvmic.training.loop import split_images
from mvmic.training.task_loss import IGNORE, TaskTargets

CROP = 128
WINDOW = 256
MIN_SIDE = 32  # smaller planes are skipped
MAX_SPACING = 3.5  # mm: organ planes are shrunk to a pixel spacing in [their own, this]
FOREGROUND = 1 / 3
ZOOM = (0.7, 1.4)  # log-uniform
GAMMA = (0.7, 1.4)  # log-uniform
NOISE = 0.02  # largest noise standard deviation, in units of the plane's 1st-99th percentile range


@dataclass
class TaskPlane:
    id: str
    group: str  # the patient or volume (mvmic.corpus): training draws patients uniformly
    plane: np.ndarray  # (H, W) float64, normalised as the codec sees it (mvmic.model.codec.normalised_planes)
    lesion: np.ndarray  # (H, W) bool, expert lesions
    organs: np.ndarray | None  # (H, W) uint8 organ map, None where the source has none
    spacing: float | None  # mm between pixels (PixelSpacing's row value), None where unknown
    pixel_statistics: tuple[float, float]  # mean, std of the whole plane
    latent_statistics: tuple[float, float]  # mean, std of the whole plane's LL1
    range: ImageRange  # of the whole plane: lesions in a window get the contrast they would get in it


@dataclass
class TaskBatch:
    images: torch.Tensor  # (N, 1, h, w) float32, normalised planes with lesions
    targets: TaskTargets
    pixel_statistics: tuple[torch.Tensor, torch.Tensor]  # (N, 1, 1, 1) mean, std of each whole plane
    latent_statistics: tuple[torch.Tensor, torch.Tensor]

    def to(self, device: str | torch.device) -> TaskBatch:
        """The network inputs (images and statistics) on ``device``; the targets stay where they are."""
        moved = lambda pair: tuple(t.to(device) for t in pair)
        return TaskBatch(self.images.to(device), self.targets, moved(self.pixel_statistics),
                         moved(self.latent_statistics))


def load_task_planes(corpus_dir: Path, split: str, latent_statistics=None) -> list[TaskPlane]:
    """Every frame of the split (luma of colour images) with at least MIN_SIDE pixels a side.
    ``latent_statistics``: plane (H, W) -> (mean, std) of its LL1, for the latent heads."""
    planes = []
    for entry, image in split_images(corpus_dir, split):
        labels = entry.labels(corpus_dir)
        spacing = image.header.get("PixelSpacing")
        for frame in range(image.frames):
            plane = normalised_planes(image.frame(frame), image.format)[0]
            if min(plane.shape) < MIN_SIDE:
                continue
            planes.append(TaskPlane(f"{entry.id}/{frame}", entry.group, plane, labels.lesion, labels.organs,
                                    float(spacing[0]) if spacing else None,
                                    (float(plane.mean()), max(float(plane.std()), 1e-6)),
                                    latent_statistics(plane) if latent_statistics else (0.0, 1.0),
                                    ImageRange.of(plane)))
    return planes


def training_batch(planes: list[TaskPlane], size: int, rng: random.Random, generator: np.random.Generator,
                   organ_share: float = 0.25) -> TaskBatch:
    """``size`` training samples; a share ``organ_share`` of them from planes with an organ map."""
    with_organs, others = _by_group([p for p in planes if p.organs is not None]), _by_group(
        [p for p in planes if p.organs is None])
    chosen = [rng.choice(rng.choice(with_organs if with_organs and (rng.random() < organ_share or not others)
                                    else others)) for _ in range(size)]
    return _stacked([_training_sample(plane, rng, generator) for plane in chosen], chosen)


def _by_group(planes: list[TaskPlane]) -> list[list[TaskPlane]]:
    groups: dict[str, list[TaskPlane]] = {}
    for plane in planes:
        groups.setdefault(plane.group, []).append(plane)
    return list(groups.values())


def frame_batch(plane: TaskPlane, image: np.ndarray, lesion: np.ndarray, lesion_boxes: np.ndarray) -> TaskBatch:
    """One whole frame (validation and benchmark): ``image`` the plane with its lesions."""
    boxes = _with_class(lesion_boxes, 0)
    if plane.organs is not None:
        boxes = np.concatenate([boxes, organ_boxes(plane.organs)])
    return _stacked([(image, lesion, np.ones(lesion.shape, bool), plane.organs, boxes)], [plane])


def _training_sample(plane: TaskPlane, rng: random.Random, generator: np.random.Generator):
    image, expert, organs = plane.plane, plane.lesion, plane.organs
    in_view = organs is not None and organs.any()  # organs that a flip would move to the wrong side
    if in_view and plane.spacing and plane.spacing < MAX_SPACING:
        factor = plane.spacing / rng.uniform(plane.spacing, MAX_SPACING)
    else:
        factor = float(np.exp(rng.uniform(*np.log(ZOOM))))
    side = int(np.ceil(WINDOW / factor))  # the window, cut before it is resized to about WINDOW
    top, left = rng.randint(0, max(0, image.shape[0] - side)), rng.randint(0, max(0, image.shape[1] - side))
    window = (slice(top, top + side), slice(left, left + side))
    image, expert, organs = _resized(image[window], expert[window], organs[window] if organs is not None else None,
                                     factor)
    if not in_view and rng.random() < 0.5:  # flipped organs would move the liver to the other side
        image, expert = image[:, ::-1], expert[:, ::-1]
        organs = organs[:, ::-1] if organs is not None else None
    image = _intensity(image, plane.range, rng, generator)
    lesions = insert_lesions(image, generator, LESION_PARAMETERS, plane.range)
    top, left = _crop_origin(lesions.image.shape, lesions.boxes, rng)
    crop = (slice(top, top + CROP), slice(left, left + CROP))
    image, lesion = lesions.image[crop], lesions.mask[crop]
    boxes = _clipped(_with_class(lesions.boxes, 0), top, left, image.shape)
    if organs is not None:
        organs = organs[crop]
        boxes = np.concatenate([boxes, organ_boxes(organs)])
    return image, lesion, ~expert[crop], organs, boxes


def _clipped(boxes: np.ndarray, top: int, left: int, shape: tuple[int, int]) -> np.ndarray:
    """Boxes moved into a crop at (top, left) of ``shape``; boxes left with under 2 pixels a side dropped."""
    moved = boxes.copy()
    moved[:, [0, 2]] = np.clip(moved[:, [0, 2]] - left, 0, shape[1])
    moved[:, [1, 3]] = np.clip(moved[:, [1, 3]] - top, 0, shape[0])
    return moved[(moved[:, 2] - moved[:, 0] >= 2) & (moved[:, 3] - moved[:, 1] >= 2)]


def _crop_origin(shape: tuple[int, int], boxes: np.ndarray, rng: random.Random) -> tuple[int, int]:
    rows, columns = shape
    if len(boxes) and rng.random() < FOREGROUND:
        x0, y0, x1, y1 = boxes[rng.randrange(len(boxes))]
        top = int((y0 + y1) / 2) - CROP // 2 + rng.randint(-CROP // 3, CROP // 3)
        left = int((x0 + x1) / 2) - CROP // 2 + rng.randint(-CROP // 3, CROP // 3)
    else:
        top, left = rng.randint(0, max(0, rows - CROP)), rng.randint(0, max(0, columns - CROP))
    return min(max(0, top), max(0, rows - CROP)), min(max(0, left), max(0, columns - CROP))


def _resized(image: np.ndarray, expert: np.ndarray, organs: np.ndarray | None, factor: float):
    """Image (bilinear, antialiased), expert mask and organ map (nearest) scaled by ``factor``."""
    size = (max(MIN_SIDE, round(image.shape[0] * factor)), max(MIN_SIDE, round(image.shape[1] * factor)))
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    image = F.interpolate(as_tensor(image), size=size, mode="bilinear", antialias=True, align_corners=False)
    expert = F.interpolate(as_tensor(expert), size=size, mode="nearest-exact")
    if organs is not None:
        organs = F.interpolate(as_tensor(organs), size=size, mode="nearest-exact")[0, 0].numpy().astype(np.uint8)
    return image[0, 0].double().numpy(), expert[0, 0].numpy() > 0.5, organs


def _intensity(image: np.ndarray, whole: ImageRange, rng: random.Random, generator: np.random.Generator) -> np.ndarray:
    """Gamma over the whole plane's 1st-99th percentile range (values outside it keep their offset)
    and Gaussian noise: other contrasts and doses than the training patients' own."""
    span = max(whole.high - whole.low, 1e-12)
    relative = np.clip((image - whole.low) / span, 0, 1)
    gamma = float(np.exp(rng.uniform(*np.log(GAMMA))))
    image = image + span * (relative**gamma - relative)
    return image + generator.normal(0, rng.uniform(0, NOISE) * span, image.shape)


def _with_class(boxes: np.ndarray, index: int) -> np.ndarray:
    return np.column_stack([boxes.reshape(-1, 4), np.full(len(boxes), float(index))])


def _stacked(samples: list[tuple], planes: list[TaskPlane]) -> TaskBatch:
    """Samples padded to the largest of them (with their plane's minimum, as background) and stacked."""
    height, width = max(s[0].shape[0] for s in samples), max(s[0].shape[1] for s in samples)
    images, lesions, weights, organs, boxes = [], [], [], [], []
    for (image, lesion, weight, organ_map, image_boxes), plane in zip(samples, planes, strict=True):
        pad = ((0, height - image.shape[0]), (0, width - image.shape[1]))
        images.append(np.pad(image, pad, constant_values=plane.plane.min()))
        lesions.append(np.pad(lesion, pad))
        weights.append(np.pad(weight, pad, constant_values=True))
        organs.append(np.full((height, width), IGNORE, np.uint8) if organ_map is None else np.pad(organ_map, pad))
        boxes.append(image_boxes)
    as_tensor = lambda arrays: torch.from_numpy(np.stack(arrays).astype(np.float32))[:, None]
    statistics = lambda name: tuple(torch.tensor([getattr(p, name)[i] for p in planes], dtype=torch.float32)
                                    .view(-1, 1, 1, 1) for i in (0, 1))
    targets = TaskTargets(as_tensor(lesions), as_tensor(weights), torch.from_numpy(np.stack(organs).astype(np.int64)),
                          boxes)
    return TaskBatch(as_tensor(images), targets, statistics("pixel_statistics"), statistics("latent_statistics"))
