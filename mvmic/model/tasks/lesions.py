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
EDGE_REACH = 12  # soft-edge widths computed beyond a lesion's boundary


@dataclass
class LesionImage:
    image: np.ndarray  # float64, the input with the lesions added (same units)
    mask: np.ndarray  # bool, rows x columns
    boxes: np.ndarray  # (n, 4) float64, x0 y0 x1 y1


@dataclass(frozen=True)
class ImageRange:
    """What the generator measures lesions against: the 1st/99th percentiles and the extremes of an image."""

    low: float
    high: float
    minimum: float
    maximum: float

    @classmethod
    def of(cls, image: np.ndarray) -> ImageRange:
        low, high = np.percentile(image, [1, 99])
        return cls(float(low), float(high), float(image.min()), float(image.max()))


def insert_lesions(image: np.ndarray, rng: np.random.Generator, parameters: LesionParameters = LESION_PARAMETERS,
                   whole: ImageRange | None = None) -> LesionImage:
    """Add 0..N synthetic lesions to a 2-D image (any units); the caller rounds and clips if needed.
    ``whole``: the range of the whole image when ``image`` is a crop of it, so that a lesion's contrast
    and the body it may lie in are those it would get in the whole image (default: ``image``'s own)."""
    image = np.asarray(image, dtype=np.float64)
    whole = whole or ImageRange.of(image)
    value_range = max(whole.high - whole.low, 1e-12)
    count = rng.choice(len(parameters.count_weights), p=np.asarray(parameters.count_weights))
    free = image > whole.minimum + parameters.body_fraction * (whole.maximum - whole.minimum)
    result, mask, boxes = image.copy(), np.zeros(image.shape, dtype=bool), []
    grow = int(parameters.spacing) + 1
    for _ in range(count):
        lesion = _place_lesion(image.shape, free, rng, parameters)
        if lesion is None:
            break
        window, alpha, lesion_mask = lesion
        sign = 1.0 if rng.random() < parameters.brighter else -1.0
        contrast = np.exp(rng.uniform(*np.log(parameters.contrast))) * value_range
        result[window] += sign * contrast * alpha * _texture(alpha.shape, rng, parameters.texture)
        mask[window] |= lesion_mask
        x0, y0, x1, y1 = _box(lesion_mask)
        top, left = window[0].start, window[1].start
        boxes.append((x0 + left, y0 + top, x1 + left, y1 + top))
        around = _window(image.shape, (y0 + y1) // 2 + top, (x0 + x1) // 2 + left, max(x1 - x0, y1 - y0) + grow)
        free[around] &= ~ndimage.binary_dilation(mask[around], iterations=grow)
    return LesionImage(result, mask, np.asarray(boxes, dtype=np.float64).reshape(-1, 4))


def boxes_of(mask: np.ndarray, min_pixels: int = MIN_LESION_PIXELS) -> np.ndarray:
    """(n, 4) boxes, one per connected component of a mask (8-connectivity) of at least ``min_pixels``."""
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3)))
    boxes = []
    for index, region in enumerate(ndimage.find_objects(labels), start=1):
        if region is not None and (labels[region] == index).sum() >= min_pixels:
            rows, columns = region
            boxes.append((columns.start, rows.start, columns.stop, rows.stop))
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def _place_lesion(shape: tuple[int, ...], free: np.ndarray, rng: np.random.Generator,
                  parameters: LesionParameters) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
    """A soft lesion (alpha in 0..1) and its mask on a window of the image that holds all of its
    soft edge, centred on a free pixel and lying on free pixels."""
    candidates = np.flatnonzero(free)
    for _ in range(20):
        if candidates.size == 0:
            return None
        row, column = np.unravel_index(rng.choice(candidates), shape)
        diameter = min(np.exp(rng.uniform(*np.log(parameters.diameter))), 0.5 * min(shape))
        # The boundary lies within radius * (1 + 3 irregularity); EDGE_REACH widths beyond it alpha < 1e-5.
        reach = diameter / 2 * (1 + 3 * parameters.irregularity) + EDGE_REACH * parameters.edge_width[1]
        window = _window(shape, row, column, int(np.ceil(reach)))
        alpha = _soft_shape(window, (row, column), diameter / 2, rng, parameters)
        lesion_mask = alpha > 0.5
        if lesion_mask.any() and free[window][lesion_mask].all():
            return window, alpha, lesion_mask
    return None


def _window(shape: tuple[int, ...], row: int, column: int, reach: int) -> tuple[slice, slice]:
    return (slice(max(0, row - reach), min(shape[0], row + reach + 1)),
            slice(max(0, column - reach), min(shape[1], column + reach + 1)))


def _soft_shape(window: tuple[slice, slice], centre: tuple[int, int], radius: float, rng: np.random.Generator,
                parameters: LesionParameters) -> np.ndarray:
    rows, columns = np.mgrid[window].astype(np.float64)
    angle = rng.uniform(0, np.pi)
    dy, dx = rows - centre[0], columns - centre[1]
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / rng.uniform(*parameters.axis_ratio)
    theta = np.arctan2(v, u)
    boundary = np.ones(rows.shape)
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
