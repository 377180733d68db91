"""Training of the task networks: stage 2 (heads on the frozen codec) and the pixel reference.

    train split plane --random 256 crop (around a real lesion half the time), flips-->
      --synthetic lesions (model.tasks.lesions)--> image, exact mask, boxes
    stage 2 ("latent"):  image --CDF 9/7, quantise at a random quality code, dequantise,
                         synthesise all but the finest level--> LL1 --LatentHeads--> outputs
    pixel reference:     image --PixelReference--> outputs
    outputs, mask, boxes --task_loss--> Adam

The codec is frozen in stage 2: its quantised latent is computed without gradients, as
the decoder would see it, at every operating point (quality 1..8) so that one set of
heads serves every rate. Checkpoints and resume work as for the codec (model.train).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from model.codec import MAX_LEVELS, QUALITY_CODES, MvmicCodec, coarse_reconstruction, normalised_planes, step_of
from model.lifting import analysis, max_levels
from model.subbands import quantize
from model.tasks.heads import LatentHeads, PixelReference
from model.tasks.lesions import LESION_PARAMETERS, boxes_of, insert_lesions
from model.tasks.objectives import segmentation_masks, task_loss
from model.train import descend, load_checkpoint, moving_average, run_until_deadline, write_weights
from mvmic.corpus.manifest import Manifest

CROP = 256
CODES = (min(QUALITY_CODES.values()), max(QUALITY_CODES.values()))
VALIDATION_CODE = QUALITY_CODES[4]
SKIPPED_LEVELS = 1  # the heads read LL1: every level but the finest
NETWORKS = {"latent": LatentHeads, "pixel": PixelReference}


@dataclass
class TaskPlane:
    plane: torch.Tensor  # (H, W) float32, normalised as the codec sees it
    mask: np.ndarray  # (H, W) bool, the expert lesion mask (all False where there is none)


@dataclass
class TaskTrainConfig:
    corpus_dir: Path
    checkpoint: Path
    network: str  # "latent" (stage 2), "pixel" (the pixel-domain reference) or "joint" (stage 3)
    minutes: float
    resume: bool = False
    learning_rate: float = 1e-3
    batch: int = 8
    checkpoint_seconds: float = 120.0
    validate_every: int = 250
    seed: int = 0
    command: str = ""


def load_task_planes(corpus_dir: Path, split: str) -> list[TaskPlane]:
    planes = []
    for entry in Manifest.load(corpus_dir / "manifest.json").select(split):
        image = entry.read(corpus_dir)
        labels = np.load(corpus_dir / entry.label)["mask"] if entry.label else None
        for frame in range(image.frames):
            plane = normalised_planes(image.frame(frame), image.format)[0]  # luma of colour images
            mask = labels if labels is not None else np.zeros(plane.shape, dtype=bool)
            if min(plane.shape) >= 32:
                planes.append(TaskPlane(torch.from_numpy(plane.astype(np.float32)), mask))
    return planes


def task_batch(planes: list[TaskPlane], size: int, rng: random.Random,
               generator: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, list[np.ndarray]]:
    """(N, 1, H, W) images with lesions, their (N, 1, H, W) masks and per-image boxes."""
    chosen = [rng.choice(planes) for _ in range(size)]
    height = min(CROP, *(p.plane.shape[0] for p in chosen))
    width = min(CROP, *(p.plane.shape[1] for p in chosen))
    images, masks, boxes = [], [], []
    for plane in chosen:
        top, left = _crop_origin(plane, height, width, rng)
        crop = plane.plane[top : top + height, left : left + width].numpy()
        real = plane.mask[top : top + height, left : left + width]
        if rng.random() < 0.5:
            crop, real = crop[:, ::-1], real[:, ::-1]
        if rng.random() < 0.5:
            crop, real = crop[::-1], real[::-1]
        lesions = insert_lesions(crop, generator)
        mask = lesions.mask | real
        images.append(lesions.image)
        masks.append(mask)
        boxes.append(np.concatenate([lesions.boxes, boxes_of(real)]))
    return _stacked(images), _stacked(masks), boxes


def _stacked(arrays: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays).astype(np.float32))[:, None]


def _crop_origin(plane: TaskPlane, height: int, width: int, rng: random.Random) -> tuple[int, int]:
    rows, columns = plane.plane.shape
    if plane.mask.any() and rng.random() < 0.5:  # keep real lesions in view
        lesion_rows, lesion_columns = np.nonzero(plane.mask)
        pick = rng.randrange(lesion_rows.size)
        top = min(max(0, lesion_rows[pick] - rng.randrange(height)), rows - height)
        left = min(max(0, lesion_columns[pick] - rng.randrange(width)), columns - width)
        return int(top), int(left)
    return rng.randint(0, rows - height), rng.randint(0, columns - width)


def latent_input(images: torch.Tensor, code: int, scales: torch.Tensor | None = None) -> torch.Tensor:
    """What the heads see for (N, 1, H, W) images coded at ``code``: the decoder's LL1."""
    with torch.no_grad():
        levels = min(MAX_LEVELS, max_levels(*images.shape[-2:]))
        bands = quantize(analysis(images.double(), levels), step_of(code), scales)
        return coarse_reconstruction(bands, code, SKIPPED_LEVELS, scales).float()


def network_input(network: str, images: torch.Tensor, code: int, scales: torch.Tensor | None = None) -> torch.Tensor:
    return latent_input(images, code, scales) if network == "latent" else images


def validate(model: torch.nn.Module, network: str, planes: list[TaskPlane], scales: torch.Tensor | None = None) -> float:
    """Dice over the validation planes (synthetic lesions from a fixed seed) at the middle quality;
    ``scales``: the codec's band step multipliers, for heads trained jointly with it (stage 3)."""
    rng, generator = random.Random(1), np.random.default_rng(1)
    overlap = total = 0.0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(planes), 8):
            images, masks, _ = task_batch(planes[start : start + 8], min(8, len(planes) - start), rng, generator)
            inputs = network_input(network, images, VALIDATION_CODE, scales)
            predicted = segmentation_masks(model(inputs), images.shape[-2:])
            truth = masks[:, 0].numpy() > 0.5
            overlap += 2 * (predicted & truth).sum()
            total += predicted.sum() + truth.sum()
    model.train()
    return float(overlap / max(total, 1.0))


def train_tasks(config: TaskTrainConfig) -> dict:
    rng, generator = random.Random(config.seed), np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    model = NETWORKS[config.network]()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    state = {"step": 0, "history": [], "network": config.network}
    if config.resume and config.checkpoint.exists():
        state = load_checkpoint(config.checkpoint, model, optimizer, rng)
        generator = np.random.default_rng([config.seed, state["step"]])  # fresh lesions after a resume
    for group in optimizer.param_groups:
        group["lr"] = config.learning_rate
    state.setdefault("commands", []).append(config.command)
    train_planes = load_task_planes(config.corpus_dir, "train")
    val_planes = load_task_planes(config.corpus_dir, "val")
    running = None

    def step() -> dict[str, str]:
        nonlocal running
        images, masks, boxes = task_batch(train_planes, config.batch, rng, generator)
        loss = task_loss(model(network_input(config.network, images, rng.randint(*CODES))), masks, boxes)
        descend(optimizer, loss)
        running = moving_average(running, loss.item())
        return {"loss": f"{running:.3f}"}

    return run_until_deadline(config, config.network, model, optimizer, rng, state, step,
                              lambda: {"val_dice": validate(model, config.network, val_planes)})


def export_task_weights(checkpoint: Path, out: Path, command: str, corpus_dir: Path) -> str:
    """Write the network of a task checkpoint as a weights file with its manifest; return its sha256."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    network = saved["state"]["network"]
    details = {"network": network, "validation_dice": saved["state"]["history"][-1]["val_dice"],
               "validation_code": VALIDATION_CODE, "lesions": asdict(LESION_PARAMETERS), "test_metrics": None}
    if network == "latent":  # the heads learned this codec's latent
        details["codec_weights_sha256"] = MvmicCodec.load().weights.sha256
    return write_weights(saved["model"], out, command, saved["state"], corpus_dir, details)
