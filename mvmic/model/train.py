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

import hashlib
import json
import pickle
import random
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mvmic.corpus.manifest import Manifest
from mvmic.model.codec import MODEL_ID, normalised_planes, step_of
from mvmic.model.context_model import SubbandContextModel
from mvmic.model.entropy_coder import CodingTables, symbol_counts
from mvmic.model.lifting import Subbands, analysis
from mvmic.model.subbands import quantize
from mvmic.model.table_codec import levels_of

CROP = 256
CODE_RANGE = (4, 100)  # quantiser steps 2**-0.5 .. 2**-12.5 of the native range
VALIDATION_CODES = (40, 64, 88)
RATE_FLOOR = 1e-3  # bits per pixel; keeps the log loss finite on crops of empty background
TABLE_FIT_CODES = tuple(range(4, 101, 12))  # the rates whose symbols the shipped tables are fitted to


@dataclass
class TrainConfig:
    corpus_dir: Path
    checkpoint: Path
    minutes: float
    resume: bool = False
    learning_rate: float = 2e-3
    batch: int = 1
    device: str = "cpu"
    checkpoint_seconds: float = 120.0
    validate_every: int = 500
    seed: int = 0
    command: str = ""  # recorded in the checkpoint, so the weights manifest lists every run


def load_planes(corpus_dir: Path, split: str) -> list[torch.Tensor]:
    """Every frame of a split as normalised planes: (value - offset) / 2**BitsStored."""
    planes = []
    for entry in Manifest.load(corpus_dir / "manifest.json").select(split):
        image = entry.read(corpus_dir)
        for frame in range(image.frames):
            planes += [torch.from_numpy(p.astype(np.float32)) for p in normalised_planes(image.frame(frame), image.format)]
    return planes


def random_batch(planes: list[torch.Tensor], size: int, rng: random.Random) -> torch.Tensor:
    """``size`` random crops, (size, 1, H, W), of one shape: the largest all chosen planes allow."""
    chosen = [rng.choice(planes) for _ in range(size)]
    height = min(CROP, *(p.shape[0] for p in chosen))
    width = min(CROP, *(p.shape[1] for p in chosen))
    transpose = height == width and rng.random() < 0.5
    crops = []
    for plane in chosen:
        top, left = rng.randint(0, plane.shape[0] - height), rng.randint(0, plane.shape[1] - width)
        crop = plane[top : top + height, left : left + width]
        if rng.random() < 0.5:
            crop = crop.flip(-1)
        if rng.random() < 0.5:
            crop = crop.flip(-2)
        crops.append(crop.T if transpose else crop)
    return torch.stack(crops)[:, None].contiguous()


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
            values = [float(bits_per_pixel(model, _centre_crop(p)[None, None], code))
                      for p in planes if min(p.shape) >= 16]
            result[code] = sum(values) / len(values)
    return result


def _centre_crop(plane: torch.Tensor) -> torch.Tensor:
    rows, columns = plane.shape
    top, left = max(0, (rows - CROP) // 2), max(0, (columns - CROP) // 2)
    return plane[top : top + CROP, left : left + CROP]


def train(config: TrainConfig) -> dict:
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    model = SubbandContextModel().to(device)
    optimizer = torch.optim.Adam(model.nets.parameters(), lr=config.learning_rate)  # band scales: stage 3
    state = {"step": 0, "history": []}
    if config.resume:
        state = load_checkpoint(config.checkpoint, model, optimizer, rng)
    for group in optimizer.param_groups:  # a resumed run may continue with a smaller step
        group["lr"] = config.learning_rate
    state.setdefault("commands", []).append(config.command)
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


def descend(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def moving_average(average: float | None, value: float) -> float:
    return value if average is None else 0.98 * average + 0.02 * value


def run_until_deadline(config, name: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                       rng: random.Random, state: dict, step: Callable[[], dict[str, str]],
                       validate: Callable[[], dict]) -> dict:
    """The loop every training stage shares: ``step`` trains on one batch and returns what the
    progress bar shows; ``validate`` goes into state["history"] every ``config.validate_every``
    steps and at the end; checkpoints every ``config.checkpoint_seconds`` and at the end."""
    deadline, last_save = time.monotonic() + 60 * config.minutes, time.monotonic()
    progress = tqdm(desc=f"train {name}", unit="step", initial=state["step"], mininterval=10)
    while time.monotonic() < deadline:
        shown = step()
        state["step"] += 1
        progress.update()
        progress.set_postfix(shown, refresh=False)
        if state["step"] % config.validate_every == 0:
            state["history"].append({"step": state["step"], **validate()})
            progress.write(f"step {state['step']}: {state['history'][-1]}")
        if time.monotonic() - last_save > config.checkpoint_seconds:
            save_checkpoint(config.checkpoint, model, optimizer, rng, state)
            last_save = time.monotonic()
    progress.close()
    if not state["history"] or state["history"][-1]["step"] != state["step"]:
        state["history"].append({"step": state["step"], **validate()})
    save_checkpoint(config.checkpoint, model, optimizer, rng, state)
    return state


def save_checkpoint(path: Path, model, optimizer, rng: random.Random, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": state,
                "rng": rng.getstate(), "torch_rng": torch.get_rng_state()}, partial)
    partial.replace(path)  # never leave a half-written checkpoint


def load_checkpoint(path: Path, model, optimizer, rng: random.Random) -> dict:
    """Restore model, optimiser and RNG from a checkpoint; return the training state. Raises
    FileNotFoundError if there is none (a mistyped --resume path must not start a fresh run) and
    ValueError if it holds another network."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"nothing to resume at {path}: train without --resume to start afresh")
    try:
        checkpoint = torch.load(path, map_location=next(model.parameters()).device, weights_only=False)
    except (pickle.UnpicklingError, EOFError, RuntimeError) as exc:
        raise ValueError(f"{path} is not a training checkpoint ({str(exc).splitlines()[0]})") from None
    if not isinstance(checkpoint, dict) or not {"model", "optimizer", "state"} <= set(checkpoint):
        raise ValueError(f"{path} is not a training checkpoint (an exported weights file? resume from checkpoints/)")
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as exc:  # another network, or one of an older design
        raise ValueError(f"{path} holds a network this command does not train ({str(exc).splitlines()[0]}); "
                         "start afresh without --resume, or name another --checkpoint") from None
    rates = [group["lr"] for group in optimizer.param_groups]
    optimizer.load_state_dict(checkpoint["optimizer"])
    for group, rate in zip(optimizer.param_groups, rates, strict=True):
        group["lr"] = rate  # this run's --learning-rate, not the one saved with the moments
    rng.setstate(checkpoint["rng"])
    torch.set_rng_state(checkpoint["torch_rng"].cpu())
    return checkpoint["state"]


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


def write_weights(state_dict: dict, out: Path, command: str, training_state: dict, corpus_dir: Path,
                  details: dict) -> str:
    """Save ``state_dict`` as a weights file with its JSON manifest beside it; return its sha256."""
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, out)
    sha256 = hashlib.sha256(out.read_bytes()).hexdigest()
    manifest = Manifest.load(corpus_dir / "manifest.json")
    record = {
        "file": out.name,
        "sha256": sha256,
        "command": command,
        "training_commands": training_state.get("commands", []),
        "git_commit": _git_commit(),
        "trained_steps": training_state["step"],
        "data": {"corpus_sources": manifest.sources,
                 "train_groups": sorted({e.group for e in manifest.select("train")}),
                 "train_slices": sum(e.frames for e in manifest.select("train")),
                 "validation_groups": sorted({e.group for e in manifest.select("val")})},
        **details,
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    return sha256


def _git_commit() -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, check=False).stdout
    return result.stdout.strip() + ("-dirty" if dirty.strip() else "") if result.returncode == 0 else "unknown"
