"""`mvmic train joint`, stage 3: codec and heads fine-tuned together with the task-aware loss R + lambda D + beta L_task.

    crops with lesions and organ maps (mvmic.training.samples.training_batch), random quality code q, step = 2**(-q/8)
      --CDF 9/7--> bands --/ (step / gain_b * s_b)--> bands in step units
         + uniform noise --> y_b --SubbandContextModel.detail_bits (contexts from q_b)--> R (bits per pixel)
                             y_b --* steps, synthesis--> reconstruction --MSE against the crop--> D
         straight-through deadzone rounding --> q_b (what the decoder gets)
                             q_b --dequantise, first synthesis steps--> LL1 --standardise--> LatentHeads--> L_task
      J = log2(R + lambda(q) D + floor) + beta L_task

What the codec learns here: the band step multipliers s_b (mvmic.model.subbands.BandStepScales,
shipped in the weights), which move bits between bands for distortion and for the tasks.
Its entropy model stays as stage 1 trained it on real integers (the noisy stand-in would
teach it wider distributions than coding meets); export refits its tables to the symbols
the new steps produce. lambda(q) = 6 / (ln 2 step**2) is the slope at which
a uniform quantiser is rate-distortion optimal at high rate, so with beta = 0 the
multipliers stay near 1 and the codec keeps its R-D; the log makes every rate count
alike, as in stage 1.

beta is balanced by dual ascent on a constraint, "the task loss may not exceed what
the stage-2 heads reach": L_ref is the stage-2 task loss on the first REFERENCE_BATCHES
batches (before any update), and after every step

    beta <- clip(beta * exp(BETA_RATE * (ema(L_task) / L_ref - 1)), BETA_MIN, BETA_MAX)

so beta grows while the tasks are worse than after stage 2 and shrinks (handing bits back
to rate and distortion) while they are better.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mvmic.model.cnn_base import CNN_WEIGHTS, coarse_reconstruction
from mvmic.model.context_model import SubbandContextModel
from mvmic.model.lifting import analysis, synthesis
from mvmic.model.quality import step_of
from mvmic.model.subbands import from_steps, quantize_straight_through, with_uniform_noise
from mvmic.model.table_codec import levels_of
from mvmic.model.tasks.analysis import DEFAULT_HEADS
from mvmic.model.tasks.heads import LatentHeads, standardise
from mvmic.model.tasks.organs import ORGAN_CLASSES
from mvmic.training.loop import (
    descend,
    mixed_precision,
    moving_average,
    resumed_state,
    run_until_deadline,
    seeded,
    write_weights,
)
from mvmic.training.samples import TaskBatch, training_batch
from mvmic.training.stage1_codec import RATE_FLOOR, export_codec
from mvmic.training.stage2_heads import (
    CODES,
    SKIPPED_LEVELS,
    TaskTrainConfig,
    lesion_generator,
    load_planes_for,
    train_check_frames,
    validate,
    validation_frames,
)
from mvmic.training.task_loss import task_loss

# Stage 3 starts from the served stage-1 codec and stage-2 heads and writes to STAGE3_DIR: its codec is
# not served yet (see README, "Stage 3").
STAGE2_CODEC, STAGE2_HEADS = CNN_WEIGHTS, DEFAULT_HEADS
STAGE3_DIR = CNN_WEIGHTS.parent / "stage3"
STAGE3_CODEC, STAGE3_HEADS = STAGE3_DIR / CNN_WEIGHTS.name, STAGE3_DIR / DEFAULT_HEADS.name
BETA_START, BETA_MIN, BETA_MAX, BETA_RATE = 0.1, 1e-3, 10.0, 0.02
REFERENCE_BATCHES = 8


class JointModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.codec = SubbandContextModel()
        self.heads = LatentHeads()

    def forward(self, batch: TaskBatch, code: int):
        """(rate bpp, distortion MSE, head outputs) of a batch of normalised crops at ``code``."""
        images = batch.images
        bands = analysis(images.double(), levels_of(*images.shape[-2:]))
        scales = self.codec.band_scales()
        q = quantize_straight_through(bands, step_of(code), scales)
        noisy = with_uniform_noise(bands, step_of(code), scales)
        rate = self.codec.detail_bits(q, code, values=noisy) / images.numel()
        reconstruction = synthesis(from_steps(noisy, step_of(code), scales))
        distortion = torch.mean((reconstruction - images.double()) ** 2)
        latent = coarse_reconstruction(q, code, SKIPPED_LEVELS, scales).float()
        with mixed_precision(images.device):
            outputs = self.heads(standardise(latent, *batch.latent_statistics))
        return rate, distortion, outputs.float()


def lagrange_multiplier(code: int) -> float:
    return 6.0 / (math.log(2) * step_of(code) ** 2)


def _start(model: JointModel) -> None:
    """Stage 3 starts from the stage-1 codec and the stage-2 heads."""
    for part, path in ((model.codec, STAGE2_CODEC), (model.heads, STAGE2_HEADS)):
        if not path.exists():
            raise FileNotFoundError(f"stage 3 starts from {path}: export stage 2 there first (README)")
        part.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def train_joint(config: TaskTrainConfig) -> dict:
    rng, generator = seeded(config), np.random.default_rng(config.seed)
    model = JointModel()
    _start(model)
    model.codec.nets.requires_grad_(False)
    optimizer = torch.optim.Adam([
        {"params": model.heads.parameters(), "lr": config.learning_rate},
        {"params": model.codec.band_scales.parameters(), "lr": config.learning_rate},
    ])
    train_planes = load_planes_for("latent", config.corpus_dir, "train")
    validation = validation_frames(load_planes_for("latent", config.corpus_dir, "val"))
    train_check = train_check_frames(train_planes)
    state = resumed_state(config, model, optimizer, rng, lambda: {
        "step": 0, "history": [], "network": "joint", "beta": BETA_START,
        "task_reference": _task_reference(model, train_planes, rng, generator)})  # draws from generator
    if config.resume:
        generator = lesion_generator(config, state)
    task_average = state["task_reference"]
    model.to(config.device)

    def step() -> dict[str, str]:
        nonlocal task_average
        batch = training_batch(train_planes, config.batch, rng, generator)
        code = rng.randint(*CODES)
        rate, distortion, outputs = model(batch.to(config.device), code)
        task = task_loss(outputs.to("cpu"), batch.targets)
        rd = torch.log2(rate + lagrange_multiplier(code) * distortion + RATE_FLOOR).cpu()
        descend(optimizer, rd + state["beta"] * task)
        task_average = moving_average(task_average, task.item())
        state["beta"] = min(BETA_MAX, max(BETA_MIN, state["beta"] * math.exp(
            BETA_RATE * (task_average / state["task_reference"] - 1))))
        return {"rd": f"{rd.item():.2f}", "task": f"{task_average:.3f}", "beta": f"{state['beta']:.3f}"}

    def check() -> dict:
        model.to("cpu")
        result = _validation(state, model, validation, train_check)
        model.to(config.device)
        return result

    return run_until_deadline(config, "joint", model, optimizer, rng, state, step, check)


def _task_reference(model: JointModel, planes, rng: random.Random, generator: np.random.Generator) -> float:
    losses = []
    with torch.no_grad():
        for _ in range(REFERENCE_BATCHES):
            batch = training_batch(planes, 8, rng, generator)
            _, _, outputs = model(batch, rng.randint(*CODES))
            losses.append(task_loss(outputs, batch.targets))
    return float(torch.stack(losses).mean())


def _validation(state: dict, model: JointModel, validation, train_check) -> dict:
    scales = model.codec.band_scales().detach()
    scores = validate(model.heads, "latent", validation, train_check, scales)  # as stage 2, with these steps
    return {**scores, "beta": state["beta"], "band_step_scales": [round(v, 3) for v in scales.tolist()]}


def export_joint_weights(checkpoint: Path, codec_out: Path, heads_out: Path, command: str, corpus_dir: Path) -> str:
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model = JointModel()
    model.load_state_dict(saved["model"])
    last = saved["state"]["history"][-1]
    codec_sha = export_codec(model.codec, saved["state"], codec_out, command, corpus_dir,
                             {"stage": 3, "validation": last})
    write_weights(model.heads.state_dict(), heads_out, command, saved["state"], corpus_dir,
                  {"network": "latent", "stage": 3, "codec_weights_sha256": codec_sha, "validation": last,
                   "history": saved["state"]["history"], "organ_classes": list(ORGAN_CLASSES), "test_metrics": None})
    return codec_sha
