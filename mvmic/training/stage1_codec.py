"""`mvmic train codec`: stage-1 (rate) training of MVMICNet's entropy model.

    train split frames --random crops, flips, transpose--> a batch of planes (as the codec sees them)
      --CDF 9/7 analysis, quantiser step from a random quality code-->
      integer subbands --SubbandContextModel.detail_bits--> bits per pixel --Adam--> update

With the CDF 9/7 transform fixed, distortion depends only on the quantiser step,
so minimising the ideal code length at random steps is rate-distortion training at
every operating point at once. The loss is log2 of the rate: BD-rate averages log-rate
differences, and a plain bit count would let the high rates (tens of times more bits)
drown the low ones. Checkpoints (model, optimiser, step, RNG) are written
every ``checkpoint_seconds`` and at the end; ``--resume`` continues from one.
Exporting fits the coding tables to the symbols each table index receives on the
train split (mvmic.model.entropy_coder) and writes the weights with their manifest.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mvmic.model.cnn_base import MODEL_ID
from mvmic.model.context_model import SubbandContextModel
from mvmic.model.entropy_coder import CodingTables, symbol_counts
from mvmic.model.lifting import Subbands, analysis
from mvmic.model.quality import step_of
from mvmic.model.subbands import quantize
from mvmic.model.table_codec import levels_of
from mvmic.training.loop import (
    CROP,
    TrainConfig,
    centre_crop,
    descend,
    moving_average,
    normalised_split_planes,
    random_crop,
    resumed_state,
    run_until_deadline,
    seeded,
    write_weights,
)

CODE_RANGE = (4, 100)  # quantiser steps 2**-0.5 .. 2**-12.5 of the native range
VALIDATION_CODES = (40, 64, 88)
RATE_FLOOR = 1e-3  # bits per pixel; keeps the log loss finite on crops of empty background
TABLE_FIT_CODES = tuple(range(4, 101, 12))  # the rates whose symbols the shipped tables are fitted to


def load_planes(corpus_dir: Path, split: str) -> list[torch.Tensor]:
    """Every frame of a split as normalised planes: (value - offset) / 2**BitsStored."""
    return [torch.from_numpy(p.astype(np.float32)) for p in normalised_split_planes(corpus_dir, split)]


def random_batch(planes: list[torch.Tensor], size: int, rng: random.Random) -> torch.Tensor:
    """``size`` random crops, (size, 1, H, W), of one shape: the largest all chosen planes allow."""
    chosen = [rng.choice(planes) for _ in range(size)]
    height = min(CROP, *(p.shape[0] for p in chosen))
    width = min(CROP, *(p.shape[1] for p in chosen))
    transpose = height == width and rng.random() < 0.5
    crops = [random_crop(plane, height, width, rng) for plane in chosen]
    return torch.stack([crop.T if transpose else crop for crop in crops])[:, None].contiguous()


def quantized_subbands(planes: torch.Tensor, code: int, scales: torch.Tensor | None = None) -> Subbands:
    levels = levels_of(*planes.shape[-2:])
    with torch.no_grad():
        return quantize(analysis(planes, levels), step_of(code), scales)


def bits_per_pixel(model: SubbandContextModel, planes: torch.Tensor, code: int) -> torch.Tensor:
    """Mean ideal code length of the detail bands of (N, 1, H, W) planes."""
    return model.detail_bits(quantized_subbands(planes, code, model.band_scales().detach()), code) / planes.numel()


def validate(model: SubbandContextModel, planes: list[torch.Tensor]) -> dict[int, float]:
    """Mean detail-band bits per pixel of the validation planes (centre crops) per quality code."""
    result = {}
    with torch.no_grad():
        for code in VALIDATION_CODES:
            values = [float(bits_per_pixel(model, centre_crop(p)[None, None], code))
                      for p in planes if min(p.shape) >= 16]
            result[code] = sum(values) / len(values)
    return result


def train(config: TrainConfig) -> dict:
    rng = seeded(config)
    device = torch.device(config.device)
    model = SubbandContextModel().to(device)
    optimizer = torch.optim.Adam(model.nets.parameters(), lr=config.learning_rate)  # band scales: stage 3
    state = resumed_state(config, model, optimizer, rng)
    train_planes = [p.to(device) for p in load_planes(config.corpus_dir, "train") if min(p.shape) >= 16]
    val_planes = [p.to(device) for p in load_planes(config.corpus_dir, "val")]
    running = None

    def step() -> dict[str, str]:
        nonlocal running
        planes = random_batch(train_planes, config.batch, rng)
        code = rng.randint(*CODE_RANGE)
        rate = bits_per_pixel(model, planes, code)
        descend(optimizer, torch.log2(rate + RATE_FLOOR))
        running = moving_average(running, rate.item())
        return {"bpp": f"{running:.3f}"}

    return run_until_deadline(config, "codec", model, optimizer, rng, state, step,
                              lambda: {"val_bpp": validate(model, val_planes)})


def fit_tables(model: SubbandContextModel, planes: list[torch.Tensor]) -> CodingTables:
    """Coding tables refitted to the symbols each index gets on ``planes`` at TABLE_FIT_CODES."""
    def pairs():
        for plane in tqdm(planes, desc="fit tables", unit="plane", mininterval=10):
            for code in TABLE_FIT_CODES:
                yield from model.assigned_indexes(quantized_subbands(plane[None, None], code,
                                                                     model.band_scales().detach()), code)

    return CodingTables.fitted(symbol_counts(pairs()))


def export_weights(checkpoint: Path, out: Path, command: str, corpus_dir: Path) -> str:
    """Write the model of a checkpoint, with tables fitted on the train split, as a weights file
    with its manifest; return its sha256."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model = SubbandContextModel()
    model.load_state_dict(saved["model"])
    return export_codec(model, saved["state"], out, command, corpus_dir,
                        {"validation_bits_per_pixel": saved["state"]["history"][-1]["val_bpp"]})


def export_codec(model: SubbandContextModel, training_state: dict, out: Path, command: str, corpus_dir: Path,
                 details: dict) -> str:
    """Snap the integer networks, fit the coding tables on the train split, write weights and manifest."""
    for net in model.nets:
        net.snap()
    model.set_tables(fit_tables(model, [p for p in load_planes(corpus_dir, "train") if min(p.shape) >= 16]))
    return write_weights(model.state_dict(), out, command, training_state, corpus_dir, {
        "model_id": MODEL_ID, **details,
        "band_step_scales": [round(v, 4) for v in model.band_scales().tolist()],
        "test_metrics": None,  # written by `mvmic bench rd` for these weights
    })
