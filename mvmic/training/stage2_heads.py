"""`mvmic train heads` and `mvmic train pixel-reference`: stage 2 (task heads on the frozen codec), the pixel reference.

    train split planes --mvmic.training.samples.training_batch--> crops with lesions (+ organ maps), targets
    stage 2 ("latent"): crop --CDF 9/7, quantise at a random quality code, dequantise,
                        synthesise all but the finest level--> LL1
                        --standardise by the whole plane's LL1 statistics--> LatentHeads --> outputs
    pixel reference:    crop --standardise by the whole plane's statistics--> PixelReference --> outputs
    outputs, targets --mvmic.training.task_loss--> Adam

The codec is frozen in stage 2: its quantised latent is computed without gradients, as
the decoder would see it, at every operating point (quality 1..8) so that one set of
heads serves every rate. Checkpoints and resume work as for the codec (mvmic.training.loop).

Validation scores whole frames, as the benchmark does: the frames of the val split with
lesions inserted from fixed seeds (lesion Dice, at the middle quality for the heads). The
training curve scores whole train frames the same way, and the organ Dice of a fixed set
of train planes with organ maps (no validation volume has organ maps).
"""

from __future__ import annotations

import random
import zlib
from dataclasses import KW_ONLY, asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from mvmic.model.cnn_base import coarse_reconstruction
from mvmic.model.codec import MvmicCodec
from mvmic.model.lifting import analysis
from mvmic.model.quality import QUALITY_CODES, step_of
from mvmic.model.subbands import quantize
from mvmic.model.table_codec import levels_of
from mvmic.model.tasks.evaluation import TaskScores
from mvmic.model.tasks.heads import LatentHeads, PixelReference, plane_statistics, standardise
from mvmic.model.tasks.lesions import LESION_PARAMETERS, insert_lesions
from mvmic.model.tasks.organs import ORGAN_CLASSES
from mvmic.model.tasks.outputs import decode_detections, organ_maps, segmentation_masks
from mvmic.training.loop import (
    TrainConfig,
    descend,
    mixed_precision,
    moving_average,
    resumed_state,
    run_until_deadline,
    seeded,
    write_weights,
)
from mvmic.training.samples import FOREGROUND, TaskBatch, TaskPlane, frame_batch, load_task_planes, training_batch
from mvmic.training.task_loss import task_loss

CODES = (min(QUALITY_CODES.values()), max(QUALITY_CODES.values()))
VALIDATION_CODE = QUALITY_CODES[4]
SKIPPED_LEVELS = 1  # the heads read LL1: every level but the finest
NETWORKS = {"latent": LatentHeads, "pixel": PixelReference}
TRAIN_CHECK_PLANES = 12  # whole train frames with lesions in the training curve
ORGAN_CHECK_PLANES = 8  # train planes with organ maps in the training curve
VARIANTS = 4  # lesion draws per full-size validation frame
CALIBRATION_BATCHES = 32  # fixed training batches that BatchNorm's statistics are measured on


@dataclass
class TaskTrainConfig(TrainConfig):
    network: str  # "latent" (stage 2), "pixel" (the pixel-domain reference) or "joint" (stage 3)
    _: KW_ONLY
    learning_rate: float = 1e-3
    batch: int = 16
    validate_every: int = 250


def lesion_generator(config: TaskTrainConfig, state: dict) -> np.random.Generator:
    """The generator of the lesions and intensity noise of training samples: fresh draws after a resume."""
    return np.random.default_rng([config.seed, state["step"]] if config.resume else config.seed)


def latent_input(images: torch.Tensor, code: int, scales: torch.Tensor | None = None) -> torch.Tensor:
    """What the heads get for (N, 1, H, W) images coded at ``code``: the decoder's LL1, unstandardised."""
    with torch.no_grad():
        levels = levels_of(*images.shape[-2:])
        bands = quantize(analysis(images.double(), levels), step_of(code), scales)
        return coarse_reconstruction(bands, code, SKIPPED_LEVELS, scales).float()


def latent_statistics(plane: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of a whole plane's LL1 at the middle quality."""
    mean, std = plane_statistics(latent_input(torch.from_numpy(plane)[None, None], VALIDATION_CODE))
    return float(mean), float(std)


def network_input(network: str, batch: TaskBatch, code: int, scales: torch.Tensor | None = None) -> torch.Tensor:
    """The standardised input of ``network`` ("latent" or "pixel") for a batch, the latent at ``code``."""
    if network == "pixel":
        return standardise(batch.images, *batch.pixel_statistics)
    return standardise(latent_input(batch.images, code, scales), *batch.latent_statistics)


def load_planes_for(network: str, corpus_dir: Path, split: str) -> list[TaskPlane]:
    return load_task_planes(corpus_dir, split, latent_statistics if network != "pixel" else None)


def validation_frames(planes: list[TaskPlane]) -> list[tuple[TaskPlane, TaskBatch]]:
    """Whole frames with lesions from fixed seeds (LESION_PARAMETERS, as the benchmark): VARIANTS draws
    of each frame of at least 256 pixels a side, one of each smaller frame."""
    frames = []
    for plane in planes:
        for variant in range(VARIANTS if min(plane.plane.shape) >= 256 else 1):
            generator = np.random.default_rng(zlib.crc32(f"{plane.id}/{variant}".encode()))
            lesions = insert_lesions(plane.plane, generator, LESION_PARAMETERS)
            frames.append((plane, frame_batch(plane, lesions.image, lesions.mask, lesions.boxes)))
    return frames


def train_check_frames(planes: list[TaskPlane]) -> tuple[list, list]:
    """The training curve's frames: TRAIN_CHECK_PLANES whole train frames with lesions (as validation_frames),
    and ORGAN_CHECK_PLANES train frames with organ maps, unmodified."""
    spread = lambda chosen, count: chosen[:: max(1, len(chosen) // count)][:count]
    large = spread([p for p in planes if min(p.plane.shape) >= 256 and p.organs is None], TRAIN_CHECK_PLANES)
    lesion_frames = validation_frames(large)[::VARIANTS]  # one draw of each
    organ_frames = [(p, frame_batch(p, p.plane, np.zeros(p.plane.shape, bool), np.zeros((0, 4))))
                    for p in spread([p for p in planes if p.organs is not None], ORGAN_CHECK_PLANES)]
    return lesion_frames, organ_frames


def frame_scores(model: torch.nn.Module, network: str, frames: list[tuple[TaskPlane, TaskBatch]],
                 code: int = VALIDATION_CODE, scales: torch.Tensor | None = None) -> TaskScores:
    """Scores of ``model`` on whole frames, one at a time."""
    scores = TaskScores()
    model.eval()
    with torch.no_grad():
        for plane, batch in frames:
            outputs = model(network_input(network, batch, code, scales))
            shape = batch.images.shape[-2:]
            truth = batch.targets
            scores.add_frame(segmentation_masks(outputs, shape)[0], truth.lesion[0, 0].numpy() > 0.5,
                             None if plane.organs is None else organ_maps(outputs, shape)[0], plane.organs,
                             decode_detections(outputs, shape)[0], truth.boxes[0])
    model.train()
    return scores


def calibration_inputs(network: str, planes: list[TaskPlane]) -> list[torch.Tensor]:
    """The network inputs of CALIBRATION_BATCHES fixed training batches of 16 crops, drawn once per run."""
    rng, generator = random.Random(CALIBRATION_BATCHES), np.random.default_rng(CALIBRATION_BATCHES)
    return [network_input(network, training_batch(planes, 16, rng, generator), rng.randint(*CODES))
            for _ in range(CALIBRATION_BATCHES)]


def recalibrate_batch_norm(model: torch.nn.Module, inputs: list[torch.Tensor]) -> None:
    """BatchNorm's running statistics measured afresh, as the exact mean over the fixed training batches
    ``inputs`` (calibration_inputs), instead of the moving average of the last few batches. With batches of a few
    crops from very different images, that average moved with whatever the last batches held, and
    whole-frame results with it (a train-frame organ Dice of 0.93 fell to 0.66 at one check and was
    back at the next). Training is unaffected: in training mode BatchNorm uses each batch's own."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average
    device = next(model.parameters()).device
    model.train()
    with torch.no_grad():
        for batch in inputs:
            model(batch.to(device))
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum


def validate(model: torch.nn.Module, network: str, validation: list, train_check: tuple[list, list],
             scales: torch.Tensor | None = None) -> dict:
    """Lesion Dice and AP50 on the validation frames; lesion Dice and mean organ Dice on train frames."""
    lesion = frame_scores(model, network, validation, scales=scales)
    train_lesion, train_organs = (frame_scores(model, network, frames, scales=scales) for frames in train_check)
    return {"val_dice": lesion.lesion.dice, "val_ap50": lesion.lesion.ap50, "train_dice": train_lesion.lesion.dice,
            "train_organ_dice": train_organs.mean_organ_dice()}


def train_tasks(config: TaskTrainConfig) -> dict:
    rng = seeded(config)
    model = NETWORKS[config.network]().to(config.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    state = resumed_state(config, model, optimizer, rng, lambda: {"step": 0, "history": [], "network": config.network})
    generator = lesion_generator(config, state)
    train_planes = load_planes_for(config.network, config.corpus_dir, "train")
    validation = validation_frames(load_planes_for(config.network, config.corpus_dir, "val"))
    train_check = train_check_frames(train_planes)
    calibration = calibration_inputs(config.network, train_planes)
    running = None

    def step() -> dict[str, str]:
        nonlocal running
        batch = training_batch(train_planes, config.batch, rng, generator)
        inputs = network_input(config.network, batch.to(config.device), rng.randint(*CODES))
        with mixed_precision(config.device):
            outputs = model(inputs)
        loss = task_loss(outputs.to("cpu").float(), batch.targets)
        descend(optimizer, loss)
        running = moving_average(running, loss.item())
        return {"loss": f"{running:.3f}"}

    def check() -> dict:
        model.to("cpu")
        recalibrate_batch_norm(model, calibration)  # also what the checkpoint and export keep
        result = validate(model, config.network, validation, train_check)
        model.to(config.device)
        return result

    return run_until_deadline(config, config.network, model, optimizer, rng, state, step, check)


def export_task_weights(checkpoint: Path, out: Path, command: str, corpus_dir: Path) -> str:
    """Write the network of a task checkpoint as a weights file with its manifest; return its sha256."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    network = saved["state"]["network"]
    last = saved["state"]["history"][-1]
    details = {"network": network, "validation": last, "history": saved["state"]["history"],
               "validation_code": VALIDATION_CODE,
               "lesions": asdict(LESION_PARAMETERS), "foreground_crops": FOREGROUND,
               "organ_classes": list(ORGAN_CLASSES), "test_metrics": None}
    if network == "latent":  # the heads learned this codec's latent
        details["codec_weights_sha256"] = MvmicCodec.load().weights.sha256
    return write_weights(saved["model"], out, command, saved["state"], corpus_dir, details)

