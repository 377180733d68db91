"""Lesion data for the task heads: synthetic lesions in real images, and the real expert ones.

    real image (any plane) --pick centres inside the body, away from each other-->
      per lesion: irregular ellipse (radius r(theta) = r0 (1 + sum_k a_k cos(k theta + phi_k)))
                  soft edge (sigmoid), contrast against the image's range, textured
      --add to the image--> image with lesions, exact mask (soft edge > 1/2), one box per lesion

    expert mask (pyradiomics *_label.nrrd slice) --connected components--> boxes

The generator's parameters are LESION_PARAMETERS below, in pixels of the full-resolution image
and in fractions of the image's 1st-99th percentile range; the README repeats them.
A box is (x0, y0, x1, y1) in pixels, x1/y1 exclusive, as in COCO's [x, y, width, height] + origin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class LesionParameters:
    count_weights: tuple[float, ...] = (0.15, 0.35, 0.25, 0.15, 0.1)  # P(0), P(1), ... lesions per image
    diameter: tuple[float, float] = (4.0, 64.0)  # pixels, drawn log-uniformly
    axis_ratio: tuple[float, float] = (0.55, 1.0)  # minor / major axis
    irregularity: float = 0.15  # largest amplitude a_k of the k = 2, 3, 4 boundary harmonics
    edge_width: tuple[float, float] = (0.3, 2.0)  # pixels, sigmoid width of the boundary
    contrast: tuple[float, float] = (0.04, 0.35)  # |lesion - background| / image range, log-uniform
    brighter: float = 0.7  # probability that a lesion is brighter than its background
    texture: float = 0.25  # relative amplitude of the lesion's smooth internal texture
    body_fraction: float = 0.1  # centres where the image is above min + this fraction of its range
    spacing: float = 3.0  # pixels kept free between lesions


LESION_PARAMETERS = LesionParameters()
MIN_LESION_PIXELS = 3  # smaller components of an expert mask are labelling noise, not lesions


@dataclass
class LesionImage:
    image: np.ndarray  # float64, the input with the lesions added (same units)
    mask: np.ndarray  # bool, rows x columns
    boxes: np.ndarray  # (n, 4) float64, x0 y0 x1 y1


def insert_lesions(image: np.ndarray, rng: np.random.Generator,
                   parameters: LesionParameters = LESION_PARAMETERS) -> LesionImage:
    """Add 0..N synthetic lesions to a 2-D image (any units); the caller rounds and clips if needed."""
    image = np.asarray(image, dtype=np.float64)
    low, high = np.percentile(image, [1, 99])
    value_range = max(high - low, 1e-12)
    count = rng.choice(len(parameters.count_weights), p=np.asarray(parameters.count_weights))
    free = image > image.min() + parameters.body_fraction * (image.max() - image.min())
    result, mask, boxes = image.copy(), np.zeros(image.shape, dtype=bool), []
    for _ in range(count):
        lesion = _place_lesion(image.shape, free, rng, parameters)
        if lesion is None:
            break
        alpha, centre_mask = lesion
        sign = 1.0 if rng.random() < parameters.brighter else -1.0
        contrast = np.exp(rng.uniform(*np.log(parameters.contrast))) * value_range
        result += sign * contrast * alpha * _texture(image.shape, rng, parameters.texture)
        mask |= centre_mask
        boxes.append(_box(centre_mask))
        free &= ~ndimage.binary_dilation(centre_mask, iterations=int(parameters.spacing) + 1)
    return LesionImage(result, mask, np.asarray(boxes, dtype=np.float64).reshape(-1, 4))


def boxes_of(mask: np.ndarray) -> np.ndarray:
    """One box per connected lesion of an expert mask (8-connectivity), tiny specks dropped."""
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3)))
    boxes = []
    for index, region in enumerate(ndimage.find_objects(labels), start=1):
        if region is not None and (labels[region] == index).sum() >= MIN_LESION_PIXELS:
            rows, columns = region
            boxes.append((columns.start, rows.start, columns.stop, rows.stop))
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def _place_lesion(shape: tuple[int, ...], free: np.ndarray, rng: np.random.Generator,
                  parameters: LesionParameters) -> tuple[np.ndarray, np.ndarray] | None:
    """A soft lesion (alpha in 0..1) and its mask, centred on a free pixel and lying on free pixels."""
    candidates = np.flatnonzero(free)
    for _ in range(20):
        if candidates.size == 0:
            return None
        row, column = np.unravel_index(rng.choice(candidates), shape)
        diameter = min(np.exp(rng.uniform(*np.log(parameters.diameter))), 0.5 * min(shape))
        alpha = _soft_shape(shape, (row, column), diameter / 2, rng, parameters)
        lesion_mask = alpha > 0.5
        if lesion_mask.any() and free[lesion_mask].all():
            return alpha, lesion_mask
    return None


def _soft_shape(shape: tuple[int, ...], centre: tuple[int, int], radius: float, rng: np.random.Generator,
                parameters: LesionParameters) -> np.ndarray:
    rows, columns = np.indices(shape, dtype=np.float64)
    angle = rng.uniform(0, np.pi)
    dy, dx = rows - centre[0], columns - centre[1]
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / rng.uniform(*parameters.axis_ratio)
    theta = np.arctan2(v, u)
    boundary = np.ones(shape)
    for k in (2, 3, 4):
        boundary += rng.uniform(0, parameters.irregularity) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    distance = np.hypot(u, v) - radius * boundary  # < 0 inside
    width = rng.uniform(*parameters.edge_width)
    return 1.0 / (1.0 + np.exp(np.clip(distance / width, -50, 50)))


def _texture(shape: tuple[int, ...], rng: np.random.Generator, amplitude: float) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=rng.uniform(1.0, 4.0))
    return 1.0 + amplitude * noise / max(noise.std(), 1e-12)


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, columns = np.nonzero(mask)
    return columns.min(), rows.min(), columns.max() + 1, rows.max() + 1
