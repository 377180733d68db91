"""`mvmic train contexts`: fitting mvmicnet-w97-v3's lookup-table contexts and coding tables on the train split.

    train split, every frame, each --quality code's step -> integer bands (v2's quantiser, unchanged)
      --mvmic.model.table_contexts.plane_cells--> counts[cell, min(|symbol|, CAP)]
    start: version 2's fitted tables; then ROUNDS times:
      every cell <- the table with the fewest bits for its counts (argmin over all tables)
      every table <- refitted (mvmic.model.entropy_coder.CodingTables.fitted) to the symbols its cells got

Both steps can only lower the training split's bits (a Lloyd iteration). A cell no training symbol
reaches gets the table its (orientation, depth, pass) uses most. Version 2's weights provide the
learned band step scales, so the quantised bands, and the task heads trained on them, are unchanged.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import torch

from mvmic.corpus.manifest import Manifest
from mvmic.model import table_contexts
from mvmic.model.cnn_base import CNN_WEIGHTS
from mvmic.model.codec import MvmicCodec
from mvmic.model.entropy_coder import TABLE_COUNT, CodingTables, table_radius
from mvmic.model.quality import QUALITY_CODES
from mvmic.model.subbands import band_gains
from mvmic.model.table_codec import MAX_LEVELS, MODEL_ID, TableCodec, Weights
from mvmic.training.loop import git_commit, normalised_split_planes, train_groups, write_manifest

CAP = 1023  # magnitudes above this count as CAP in fitting (coding stays exact: escapes)
ROUNDS = 5


def gain_rows() -> np.ndarray:
    """(MAX_LEVELS + 1, 1 + 3 MAX_LEVELS): synthesis gains of the low band and every detail band of an
    L-level decomposition in row L, coarsest first (mvmic.model.subbands.band_gains), zero padded."""
    rows = np.zeros((MAX_LEVELS + 1, 1 + 3 * MAX_LEVELS))
    rows[0, 0] = 1.0  # no level (under 16 pixels a side): the plane is its own low band
    for levels in range(1, MAX_LEVELS + 1):
        low, details = band_gains(levels)
        rows[levels, : 1 + 3 * levels] = [low, *(g for level in details for g in level)]
    return rows


def symbol_counts(codec: TableCodec, corpus_dir: Path, split: str, codes: list[int]) -> np.ndarray:
    """counts[cell, min(|symbol|, CAP)] of every detail coefficient of ``split`` at ``codes``."""
    counts = np.zeros((int(np.prod(table_contexts.LUT_SHAPE)), CAP + 1), np.int64)
    for plane in normalised_split_planes(corpus_dir, split):
        for code in codes:
            bands = codec.quantize(plane, code)
            symbols, cells = table_contexts.plane_cells(bands.flat, bands.starts, bands.rows, bands.columns,
                                                        bands.levels)
            np.add.at(counts, (cells, np.minimum(np.abs(symbols), CAP)), 1)
    return counts


def magnitude_bits(tables: CodingTables) -> np.ndarray:
    """(CAP + 1, TABLE_COUNT): bits of a symbol of each magnitude under each table, both signs averaged."""
    cdfs, lengths, offsets = (np.asarray(v, dtype=np.int64) for v in (tables.cdfs, tables.lengths, tables.offsets))
    magnitudes = np.arange(CAP + 1)
    bits = np.zeros((CAP + 1, len(lengths)))
    for table in range(len(lengths)):
        escape = lengths[table] - 2
        for sign in (1, -1):
            position = sign * magnitudes - offsets[table]
            escaped = (position < 0) | (position >= escape)
            position = np.where(escaped, escape, position)
            frequency = cdfs[table, position + 1] - cdfs[table, position]
            bits[:, table] += 0.5 * (16 - np.log2(frequency) + escaped * (5 + np.log2(2 * magnitudes + 1)))
    return bits


def fit(counts: np.ndarray, tables: CodingTables, rounds: int = ROUNDS) -> tuple[np.ndarray, CodingTables, list[float]]:
    """(LUT (uint8, LUT_SHAPE), refitted tables, training bits after each round)."""
    radius = table_radius(256.0)
    weights = counts.astype(np.float64)
    history = []
    for _ in range(rounds):
        cost = weights @ magnitude_bits(tables)  # (cells, tables)
        lut = cost.argmin(axis=1)
        history.append(float(cost[np.arange(len(lut)), lut].sum()))
        per_table = np.zeros((TABLE_COUNT, CAP + 1))
        np.add.at(per_table, lut, weights)
        symmetric = np.zeros((TABLE_COUNT, 2 * radius + 1))
        symmetric[:, radius] = per_table[:, 0]
        symmetric[:, radius + 1 : radius + 1 + CAP] = per_table[:, 1:] / 2
        symmetric[:, radius - CAP : radius] = per_table[:, :0:-1] / 2
        tables = CodingTables.fitted(torch.from_numpy(symmetric))
    lut = (weights @ magnitude_bits(tables)).argmin(axis=1)
    lut = lut.reshape(table_contexts.LUT_SHAPE[:3] + (-1,))
    seen = counts.sum(axis=1).reshape(lut.shape) > 0
    for index in np.ndindex(*lut.shape[:3]):  # unseen cells: the group's most used table
        group, observed = lut[index], seen[index]
        if observed.any() and not observed.all():
            group[~observed] = np.bincount(group[observed]).argmax()
    return lut.reshape(table_contexts.LUT_SHAPE).astype(np.uint8), tables, history


def export(out: Path, corpus_dir: Path, command: str, v2_weights: Path | None = None) -> str:
    """Fit on the train split and write the weights file (.npz) with its manifest (.json); return its sha256."""
    v2 = MvmicCodec.load(v2_weights or CNN_WEIGHTS)
    if v2.context is None:
        raise ValueError(f"--from {v2.weights.path}: the version 2 (.pt) weights whose band steps v3 keeps are needed")
    scales, gains = v2.scales.detach().numpy().astype(np.float64), gain_rows()
    start = v2.context.tables
    arrays = {"lut": np.zeros(table_contexts.LUT_SHAPE, np.uint8), "cdfs": start.cdfs.numpy(),
              "lengths": start.lengths.numpy(), "offsets": start.offsets.numpy(), "band_scales": scales, "gains": gains}
    probe = TableCodec(Weights(out, "0" * 64), **arrays)
    codes = sorted(QUALITY_CODES.values())
    counts = symbol_counts(probe, corpus_dir, "train", codes)
    lut, tables, history = fit(counts, start)
    buffer = io.BytesIO()
    np.savez(buffer, model_id=np.array(MODEL_ID), context_version=np.array(table_contexts.CONTEXT_VERSION), lut=lut, cdfs=tables.cdfs.numpy(), lengths=tables.lengths.numpy(),
             offsets=tables.offsets.numpy(), band_scales=scales, gains=gains,
             residual_weights=np.array(v2.residual[1].path.name if v2.residual else ""))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(buffer.getvalue())
    sha256 = hashlib.sha256(buffer.getvalue()).hexdigest()
    manifest = Manifest.load(corpus_dir / "manifest.json")
    write_manifest(out, {
        "model_id": MODEL_ID, "file": out.name, "sha256": sha256, "command": command, "git_commit": git_commit(),
        "from_weights": {"file": v2.weights.path.name, "sha256": v2.weights.sha256,
                         "kept": "band step scales (quantiser), residual model"},
        "data": {"corpus_sources": manifest.sources, "split": "train",
                 "train_groups": train_groups(manifest),
                 "quality_codes": codes, "coefficients": int(counts.sum())},
        "fit": {"rounds": ROUNDS, "train_bits_per_round": [round(b) for b in history],
                "cells": int(np.prod(table_contexts.LUT_SHAPE)), "cells_seen": int((counts.sum(axis=1) > 0).sum())},
        "test_metrics": None,  # written by `mvmic bench rd` for these weights
    })
    return sha256
