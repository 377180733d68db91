"""The task heads through ONNX Runtime give the torch heads' analysis; a stale ONNX export is refused."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from model.codec import QUALITY_CODES, MvmicCodec, coarse_reconstruction
from model.tasks.analysis import DEFAULT_HEADS, Analyzer, FrameAnalysis
from model.tasks.heads import LatentHeads, standardise
from model.tasks.lesions import insert_lesions
from model.tasks.objectives import decode_detections, organ_maps, segmentation_masks
from model.tasks.runtime import SOURCE_SHA256, OnnxHeads, StaleOnnxError, export_heads_file, onnx_path
from mvmic.cli import main
from mvmic.corpus.manifest import Manifest
from mvmic.pixels import read_dicom

# Measured on the 24 frames below: outputs differ by at most 3e-5 (organ logits), the 946 candidate
# boxes by 3e-5 px, and none of 5.4 million mask and organ map pixels differs; on all 105
# monochrome test frames (compressed at quality 4): 6e-5, 1.2e-4 px, no pixel.
OUTPUT_TOLERANCE = 1e-3
BOX_TOLERANCE = 0.5  # pixels
MIN_EQUAL_PIXELS = 0.999  # per frame; 0.9999 over all frames


@pytest.fixture(scope="module")
def codec() -> MvmicCodec:
    return MvmicCodec.load()


@pytest.fixture(scope="module")
def analyzers(codec) -> dict[str, Analyzer]:
    return {runtime: Analyzer.load(codec, runtime=runtime) for runtime in ("onnx", "torch")}


@pytest.fixture(scope="module")
def test_frames(corpus_dir, codec) -> dict[tuple[int, int], torch.Tensor]:
    """LL1 planes of 24 test-split frames as the decoder gives them at quality 4, by frame size: lung CT
    with synthetic lesions (512 x 512), brain MR (256 x 256), abdominal CT with organs (101 x 122), a head
    CT and a 1024 x 256 NM image."""
    every = {"pyradiomics:lung1": 8, "pyradiomics:brain2": 3, "totalsegmentator:ct": 4, "CQ500-CT-310": 1,
             "8NM1": 1}
    seen: dict[str, int] = defaultdict(int)
    code, by_size = QUALITY_CODES[4], defaultdict(list)
    for entry in Manifest.load(corpus_dir / "manifest.json").select("test"):
        if entry.group not in every or seen[entry.group] % every[entry.group] or entry.samples_per_pixel != 1:
            seen[entry.group] += 1
            continue
        seen[entry.group] += 1
        image = read_dicom(corpus_dir / entry.path)
        frame = image.frame(0)  # (rows, columns)
        if entry.group == "pyradiomics:lung1":  # lesions for the lesion channel and boxes
            lesions = insert_lesions(frame, np.random.default_rng(seen[entry.group]))
            frame = np.clip(np.round(lesions.image), image.format.min_value, image.format.max_value)
        bands = codec.quantized_planes(frame, image.format, code)[0]
        by_size[(entry.rows, entry.columns)].append(coarse_reconstruction(bands, code, 1, codec.scales))
    frames = {shape: torch.cat(planes) for shape, planes in by_size.items()}
    assert sum(len(planes) for planes in frames.values()) >= 20
    return frames


def test_the_shipped_onnx_model_is_exported_from_the_shipped_heads() -> None:
    exported = onnx_path(DEFAULT_HEADS)
    assert exported.is_file() and exported.stat().st_size < 20 * 2**20
    metadata = {p.key: p.value for p in onnx.load(exported, load_external_data=False).metadata_props}
    assert metadata[SOURCE_SHA256] == hashlib.sha256(DEFAULT_HEADS.read_bytes()).hexdigest()
    # The heads' manifest names the export, as every shipped weights file is named by a manifest.
    recorded = json.loads(DEFAULT_HEADS.with_suffix(".json").read_text())["onnx"]
    assert recorded["file"] == exported.name
    assert recorded["sha256"] == hashlib.sha256(exported.read_bytes()).hexdigest()


def test_onnx_runtime_and_torch_heads_give_the_same_analysis(analyzers, test_frames) -> None:
    onnx_analyzer, torch_analyzer = analyzers["onnx"], analyzers["torch"]
    assert onnx_analyzer.runtime == "onnx" and onnx_analyzer.heads.providers == ["CPUExecutionProvider"]
    assert onnx_analyzer.heads_sha256 == torch_analyzer.heads_sha256 == hashlib.sha256(
        DEFAULT_HEADS.read_bytes()).hexdigest()  # the .pt's: what analysis documents and the service report
    differing = total = boxes = 0
    for shape, coarse in test_frames.items():
        planes = standardise(coarse.float())
        with torch.no_grad():
            expected = torch_analyzer.heads(planes)
        found = onnx_analyzer.heads(planes)
        for name in ("lesion", "organs", "heatmap", "size", "offset"):
            assert getattr(found, name).dtype == torch.float32
            torch.testing.assert_close(getattr(found, name), getattr(expected, name), atol=OUTPUT_TOLERANCE, rtol=0)
        # Every candidate box (score >= MIN_SCORE, not only the reported ones), masks and organ maps, decoded
        # as Analyzer.analyze_latent decodes them (the bitstream test below goes through it).
        pairs = zip(decode_detections(found, shape), decode_detections(expected, shape), strict=True)
        for ours, theirs in pairs:
            assert ours.classes.tolist() == theirs.classes.tolist()
            assert np.abs(ours.boxes - theirs.boxes).max(initial=0) <= BOX_TOLERANCE
            assert np.abs(ours.scores - theirs.scores).max(initial=0) <= OUTPUT_TOLERANCE
            boxes += len(ours.boxes)
        for decode in (segmentation_masks, organ_maps):
            for a, b in zip(decode(found, shape), decode(expected, shape), strict=True):
                assert (a == b).mean() >= MIN_EQUAL_PIXELS
                differing, total = differing + int((a != b).sum()), total + a.size
    assert 1 - differing / total >= 0.9999
    assert boxes > 100  # the comparison is not vacuous: lesions and organs were found


def test_a_bitstream_is_analysed_alike_by_both_runtimes(corpus_dir, codec, analyzers) -> None:
    stream = codec.compress(read_dicom(corpus_dir / "images" / "pyradiomics-lung1-030.dcm"), QUALITY_CODES[4])
    (ours,), (theirs,) = (analyzers[runtime].analyze(stream) for runtime in ("onnx", "torch"))
    assert isinstance(ours, FrameAnalysis) and ours.labels == theirs.labels
    assert np.abs(ours.boxes - theirs.boxes).max(initial=0) <= BOX_TOLERANCE
    assert (ours.mask == theirs.mask).mean() >= MIN_EQUAL_PIXELS
    assert (ours.organs == theirs.organs).mean() >= MIN_EQUAL_PIXELS


def test_a_stale_onnx_export_is_refused_until_exported_again(tmp_path: Path, codec, test_frames) -> None:
    weights = tmp_path / "heads.pt"
    heads = LatentHeads().eval()
    torch.save(heads.state_dict(), weights)
    # Without an .onnx beside them the weights are exported in memory.
    assert not onnx_path(weights).exists()
    assert Analyzer.load(codec, weights).heads.source_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert export_heads_file(weights) == onnx_path(weights)
    Analyzer.load(codec, weights)
    with torch.no_grad():
        heads.segmentation.bias.add_(1.0)  # retrained weights, the old .onnx left beside them
    torch.save(heads.state_dict(), weights)
    with pytest.raises(StaleOnnxError, match=f"mvmic export-onnx {weights}"):
        Analyzer.load(codec, weights)
    Analyzer.load(codec, weights, runtime="torch")  # torch reads the weights themselves
    assert main(["export-onnx", str(weights)]) == 0
    coarse = test_frames[(256, 256)][:2]
    planes = standardise(coarse.float())
    with torch.no_grad():
        expected = heads(planes).lesion
    torch.testing.assert_close(Analyzer.load(codec, weights).heads(planes).lesion, expected, atol=OUTPUT_TOLERANCE,
                               rtol=0)
    onnx_path(weights).write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not an ONNX model of the heads"):
        OnnxHeads.for_weights(weights)
    with pytest.raises(ValueError, match="runtime 'tensorrt'"):
        Analyzer.load(codec, weights, runtime="tensorrt")
