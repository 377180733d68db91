"""Stage-1 training on the real train split: checkpoints, resume, and coding tables fitted to data."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from mvmic.model.cnn_base import CNN_WEIGHTS
from mvmic.model.codec import MvmicCodec
from mvmic.model.colour import normalised_planes
from mvmic.model.context_model import SubbandContextModel
from mvmic.model.entropy_coder import CodingTables
from mvmic.pixels import read_dicom
from mvmic.training.stage1_codec import TABLE_FIT_CODES, TrainConfig, fit_tables, quantized_subbands, train


def test_training_writes_checkpoints_and_resumes_where_it_stopped(tmp_path: Path, corpus_dir: Path) -> None:
    checkpoint = tmp_path / "codec.pt"
    shutil.copy(Path(__file__).resolve().parents[1] / "checkpoints" / "codec.pt", checkpoint)
    before = torch.load(checkpoint, map_location="cpu", weights_only=False)["state"]["step"]
    first = train(TrainConfig(corpus_dir, checkpoint, minutes=0.05, resume=True, batch=2, command="first"))
    assert first["step"] > before
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert saved["state"]["step"] == first["step"]
    second = train(TrainConfig(corpus_dir, checkpoint, minutes=0.05, resume=True, command="second"))
    assert second["step"] > first["step"]
    assert second["commands"][-2:] == ["first", "second"]
    assert set(second["history"][-1]["val_bpp"]) == {40, 64, 88}


def _bits(model: SubbandContextModel, tables: CodingTables, plane: torch.Tensor) -> float:
    total = 0.0
    for code in TABLE_FIT_CODES:
        for symbols, indexes in model.assigned_indexes(quantized_subbands(plane[None, None], code), code):
            total += float(tables.bits(symbols, indexes).sum())
    return total


def test_fitted_tables_code_real_subbands_in_fewer_bits_than_laplacians(corpus_dir: Path) -> None:
    model = MvmicCodec.load(CNN_WEIGHTS).context  # v2: the model stage-1 training fits tables for
    image = read_dicom(corpus_dir / "images" / "pyradiomics-lung1-030.dcm")  # test split: unseen in fitting
    # its central 256 x 256 (chest and lungs): the whole 512 x 512 plane takes a minute of the suite for the same
    # finding (held-out 0.982 and fitted 0.965 of the Laplacians' bits here)
    plane = torch.from_numpy(normalised_planes(image.frame(0), image.format)[0])[128:384, 128:384]
    laplacian = _bits(model, CodingTables.laplacian(), plane)
    # The shipped tables were fitted on the train split and must carry over to a held-out CT...
    assert _bits(model, model.tables, plane) < 0.99 * laplacian
    # ... and fitting reaches below the Laplacians on the data it is fitted to.
    assert _bits(model, fit_tables(model, [plane]), plane) < 0.98 * laplacian
