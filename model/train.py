"""`mvmic train codec`: stage-1 (rate) training of MVMICNet's entropy model.

    train split frames --random crop, flip, transpose--> planes (as the codec sees them)
      --CDF 9/7 analysis, quantiser step from a random quality code-->
      integer subbands --SubbandContextModel.detail_bits--> bits per pixel --Adam--> update

With the CDF 9/7 transform fixed, distortion depends only on the quantiser step,
so minimising the ideal code length at random steps is rate-distortion training at
every operating point at once. Checkpoints (model, optimiser, step, RNG) are written
every ``checkpoint_seconds`` and at the end; ``--resume`` continues from one.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from model.codec import MAX_LEVELS, MODEL_ID, plane_offset, to_planes
from model.context_model import SubbandContextModel
from model.lifting import analysis, max_levels
from model.subbands import quantize
from mvmic.corpus.manifest import Manifest

CROP = 256
CODE_RANGE = (4, 100)  # quantiser steps 2**-0.5 .. 2**-12.5 of the native range
VALIDATION_CODES = (40, 64, 88)


@dataclass
class TrainConfig:
    corpus_dir: Path
    checkpoint: Path
    minutes: float
    resume: bool = False
    learning_rate: float = 2e-3
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
            for index, plane in enumerate(to_planes(image.frame(frame), image.format)):
                normalised = (plane - plane_offset(image.format, index)) / 2.0**image.format.bits_stored
                planes.append(torch.from_numpy(normalised.astype(np.float32)))
    return planes


def random_crop(plane: torch.Tensor, rng: random.Random) -> torch.Tensor:
    rows, columns = plane.shape
    height, width = min(rows, CROP), min(columns, CROP)
    top, left = rng.randint(0, rows - height), rng.randint(0, columns - width)
    crop = plane[top : top + height, left : left + width]
    if rng.random() < 0.5:
        crop = crop.flip(-1)
    if rng.random() < 0.5:
        crop = crop.flip(-2)
    if rng.random() < 0.5:
        crop = crop.T
    return crop.contiguous()


def bits_per_pixel(model: SubbandContextModel, plane: torch.Tensor, code: int) -> torch.Tensor:
    levels = min(MAX_LEVELS, max_levels(*plane.shape))
    with torch.no_grad():
        q = quantize(analysis(plane[None, None], levels), 2.0 ** (-code / 8))
    return model.detail_bits(q, code) / plane.numel()


def validate(model: SubbandContextModel, planes: list[torch.Tensor]) -> dict[int, float]:
    """Mean detail-band bits per pixel of the validation planes (centre crops) per quality code."""
    result = {}
    with torch.no_grad():
        for code in VALIDATION_CODES:
            values = [float(bits_per_pixel(model, _centre_crop(p), code)) for p in planes if min(p.shape) >= 16]
            result[code] = sum(values) / len(values)
    return result


def _centre_crop(plane: torch.Tensor) -> torch.Tensor:
    rows, columns = plane.shape
    top, left = max(0, (rows - CROP) // 2), max(0, (columns - CROP) // 2)
    return plane[top : top + CROP, left : left + CROP]


def train(config: TrainConfig) -> dict:
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    model = SubbandContextModel()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    state = {"step": 0, "history": []}
    if config.resume and config.checkpoint.exists():
        state = _load_checkpoint(config.checkpoint, model, optimizer, rng)
    for group in optimizer.param_groups:  # a resumed run may continue with a smaller step
        group["lr"] = config.learning_rate
    state.setdefault("commands", []).append(config.command)
    train_planes = [p for p in load_planes(config.corpus_dir, "train") if min(p.shape) >= 16]
    val_planes = load_planes(config.corpus_dir, "val")
    deadline = time.monotonic() + 60 * config.minutes
    last_save = time.monotonic()
    progress = tqdm(desc="train codec", unit="step", initial=state["step"], mininterval=10)
    running = None
    while time.monotonic() < deadline:
        plane = random_crop(rng.choice(train_planes), rng)
        code = rng.randint(*CODE_RANGE)
        loss = bits_per_pixel(model, plane, code)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        state["step"] += 1
        running = float(loss) if running is None else 0.98 * running + 0.02 * float(loss)
        progress.update()
        progress.set_postfix(bpp=f"{running:.3f}")
        if state["step"] % config.validate_every == 0:
            state["history"].append({"step": state["step"], "val_bpp": validate(model, val_planes)})
            progress.write(f"step {state['step']}: validation bpp {state['history'][-1]['val_bpp']}")
        if time.monotonic() - last_save > config.checkpoint_seconds:
            _save_checkpoint(config.checkpoint, model, optimizer, rng, state)
            last_save = time.monotonic()
    progress.close()
    state["history"].append({"step": state["step"], "val_bpp": validate(model, val_planes)})
    _save_checkpoint(config.checkpoint, model, optimizer, rng, state)
    return state


def _save_checkpoint(path: Path, model, optimizer, rng: random.Random, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": state,
                "rng": rng.getstate(), "torch_rng": torch.get_rng_state()}, partial)
    partial.replace(path)  # never leave a half-written checkpoint


def _load_checkpoint(path: Path, model, optimizer, rng: random.Random) -> dict:
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    rng.setstate(checkpoint["rng"])
    torch.set_rng_state(checkpoint["torch_rng"])
    return checkpoint["state"]


def export_weights(checkpoint: Path, out: Path, command: str, corpus_dir: Path) -> str:
    """Write the model of a checkpoint as a weights file with its manifest; return its sha256."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model = SubbandContextModel()
    model.load_state_dict(saved["model"])
    for net in model.nets:
        net.snap()
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    sha256 = hashlib.sha256(out.read_bytes()).hexdigest()
    manifest = Manifest.load(corpus_dir / "manifest.json")
    record = {
        "model_id": MODEL_ID,
        "file": out.name,
        "sha256": sha256,
        "command": command,
        "training_commands": saved["state"].get("commands", []),
        "git_commit": _git_commit(),
        "trained_steps": saved["state"]["step"],
        "data": {"corpus_sources": manifest.sources,
                 "train_groups": sorted({e.group for e in manifest.select("train")}),
                 "train_slices": sum(e.frames for e in manifest.select("train")),
                 "validation_groups": sorted({e.group for e in manifest.select("val")})},
        "validation_bits_per_pixel": saved["state"]["history"][-1]["val_bpp"],
        "test_metrics": None,  # written by `mvmic bench rd` for these weights
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    return sha256


def _git_commit() -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, check=False).stdout
    return result.stdout.strip() + ("-dirty" if dirty.strip() else "") if result.returncode == 0 else "unknown"
