"""What every training stage shares, once: settings, seeding and resume, the loop, checkpoints, crops, the
corpus, and the weights file with its manifest.

    seeded(config) --> rng (and torch's generator seeded)       the stage builds its model and optimiser
    resumed_state(config, model, optimizer, rng) --> state      a fresh state, or the checkpoint's (--resume)
    run_until_deadline(config, name, ..., step, validate)      step() per batch until config.minutes pass;
        validate() into state["history"] every config.validate_every steps and at the end;
        a checkpoint (model, optimiser, state, both RNGs) every config.checkpoint_seconds and at the end
    write_weights(state_dict, out, ...) --> out + out.json      sha256, commands, git commit, split, metrics

A checkpoint is torch.save of {"model", "optimizer", "state", "rng", "torch_rng"}; the state holds
"step", "history" (the validations) and "commands" (every run that trained it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import pickle
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import KW_ONLY, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mvmic.corpus.manifest import CorpusEntry, Manifest
from mvmic.model.colour import normalised_planes

CROP = 256  # pixels a side of the codec's and the residual's training and validation crops


@dataclass
class TrainConfig:
    """The settings of a training run; stages with other defaults subclass it (stage2_heads.TaskTrainConfig)."""
    corpus_dir: Path
    checkpoint: Path
    _: KW_ONLY
    minutes: float
    resume: bool = False
    learning_rate: float = 2e-3
    batch: int = 1
    device: str = "cpu"
    checkpoint_seconds: float = 120.0
    validate_every: int = 500
    seed: int = 0
    command: str = ""  # recorded in the checkpoint, so the weights manifest lists every run


def seeded(config: TrainConfig) -> random.Random:
    """The run's Python RNG, torch's global one seeded alike: call before building the model."""
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    return rng


def resumed_state(config: TrainConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  rng: random.Random, fresh: Callable[[], dict] = lambda: {"step": 0, "history": []}) -> dict:
    """The training state: the checkpoint's with --resume (model, optimiser and RNGs restored; errors as
    load_checkpoint's), else ``fresh()``; this run's command appended to state["commands"]."""
    state = load_checkpoint(config.checkpoint, model, optimizer, rng) if config.resume else fresh()
    state.setdefault("commands", []).append(config.command)
    return state


def descend(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def moving_average(average: float | None, value: float) -> float:
    return value if average is None else 0.98 * average + 0.02 * value


def mixed_precision(device: str | torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 autocast where the hardware computes in it natively (CUDA; CPUs with AMX or AVX-512
    BF16, where the task networks train 2.7x faster measured on this project's 2-core machine),
    else nothing. Training only: inference stays float32."""
    kind = torch.device(device).type
    native = kind == "cuda" or (kind == "cpu" and any(
        getattr(torch.cpu, check, lambda: False)() for check in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")))
    return torch.autocast(kind, dtype=torch.bfloat16) if native else contextlib.nullcontext()


def run_until_deadline(config: TrainConfig, name: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
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
    """Restore model, optimiser and RNG from a checkpoint; return the training state. The optimiser keeps
    this run's learning rates. Raises FileNotFoundError if there is none (a mistyped --resume path must not
    start a fresh run) and ValueError if it holds another network."""
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


def random_crop(plane, height: int, width: int, rng: random.Random):
    """A random ``height`` x ``width`` window of ``plane`` (rows and columns first: a torch tensor or a numpy
    array), each axis flipped with probability 1/2 (columns first), for augmentation."""
    flip = (lambda a, axis: a.flip(axis)) if isinstance(plane, torch.Tensor) else np.flip
    top, left = rng.randint(0, plane.shape[0] - height), rng.randint(0, plane.shape[1] - width)
    crop = plane[top : top + height, left : left + width]
    if rng.random() < 0.5:
        crop = flip(crop, 1)
    if rng.random() < 0.5:
        crop = flip(crop, 0)
    return crop


def centre_crop(plane, size: int = CROP):
    """The central ``size`` x ``size`` window of ``plane`` (rows and columns first), all of a smaller one."""
    rows, columns = plane.shape[:2]
    top, left = max(0, (rows - size) // 2), max(0, (columns - size) // 2)
    return plane[top : top + size, left : left + size]


def split_images(corpus_dir: Path, split: str) -> Iterator[tuple[CorpusEntry, object]]:
    """(entry, image) of every image of ``split`` ("train", "val", "test") of the corpus, in manifest order;
    the image as CorpusEntry.read gives it (mvmic.pixels.NativeImage)."""
    entries = Manifest.load(corpus_dir / "manifest.json").select(split)
    if not entries:
        raise ValueError(f"the corpus at {corpus_dir} has no {split!r} images to train on (see `mvmic data prepare`)")
    for entry in entries:
        yield entry, entry.read(corpus_dir)


def normalised_split_planes(corpus_dir: Path, split: str) -> Iterator[np.ndarray]:
    """Every plane of every frame of ``split`` as the wavelet sees it: (H, W) float64,
    (value - offset) / 2**BitsStored (mvmic.model.codec.normalised_planes)."""
    for _, image in split_images(corpus_dir, split):
        for frame in range(image.frames):
            yield from normalised_planes(image.frame(frame), image.format)


def write_weights(state_dict: dict, out: Path, command: str, training_state: dict, corpus_dir: Path,
                  details: dict) -> str:
    """Save ``state_dict`` as a weights file with its JSON manifest beside it; return its sha256."""
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, out)
    sha256 = hashlib.sha256(out.read_bytes()).hexdigest()
    manifest = Manifest.load(corpus_dir / "manifest.json")
    write_manifest(out, {
        "file": out.name,
        "sha256": sha256,
        "command": command,
        "training_commands": training_state.get("commands", []),
        "git_commit": git_commit(),
        "trained_steps": training_state["step"],
        "data": {"corpus_sources": manifest.sources,
                 "train_groups": train_groups(manifest),
                 "train_slices": sum(e.frames for e in manifest.select("train")),
                 "validation_groups": sorted({e.group for e in manifest.select("val")})},
        **details,
    })
    return sha256


def write_manifest(weights: Path, record: dict) -> None:
    """The JSON manifest of a weights file, beside it (suffix .json)."""
    weights.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")


def train_groups(manifest: Manifest) -> list[str]:
    """The patients and volumes of the train split, sorted: what weights manifests record as trained on."""
    return sorted({e.group for e in manifest.select("train")})


def git_commit() -> str:
    """The checked-out commit, with "-dirty" if the tree has changes; "unknown" outside a git checkout."""
    result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, check=False).stdout
    return result.stdout.strip() + ("-dirty" if dirty.strip() else "") if result.returncode == 0 else "unknown"
