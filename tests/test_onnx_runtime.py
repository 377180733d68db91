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

from mvmic.cli import main
from mvmic.corpus.manifest import Manifest
from mvmic.model.cnn_base import coarse_reconstruction
from mvmic.model.codec import MvmicCodec
from mvmic.model.quality import QUALITY_CODES
from mvmic.model.tasks.analysis import DEFAULT_HEADS, REPORT_SCORE, Analyzer, FrameAnalysis
from mvmic.model.tasks.heads import LatentHeads, standardise
from mvmic.model.tasks.lesions import insert_lesions
from mvmic.model.tasks.outputs import decode_detections, organ_maps, segmentation_masks
from mvmic.model.tasks.quantize import FLOAT_NODES, quantize_heads
from mvmic.model.tasks.runtime import (
    PRECISION,
    SOURCE_SHA256,
    OnnxHeads,
    StaleOnnxError,
    export_heads_file,
    int8_path,
    onnx_path,
)
from mvmic.pixels import read_dicom
from mvmic.training.int8_calibration import calibration_planes, export_heads_with_int8

# Measured on the 24 frames below: outputs differ by at most 3e-5 (organ logits), the 946 candidate
# boxes by 3e-5 px, and none of 5.4 million mask and organ map pixels differs; on all 105
# monochrome test frames (compressed at quality 4): 6e-5, 1.2e-4 px, no pixel.
OUTPUT_TOLERANCE = 1e-3
BOX_TOLERANCE = 0.5  # pixels
MIN_EQUAL_PIXELS = 0.999  # per frame; 0.9999 over all frames
# The int8 heads against the float heads on the same 24 frames, measured: lesion masks at least 99.82 % of
# pixels equal per frame (99.95 % over all), organ maps 95.1 % (a lung CT frame, where no organ class applies
# and the near-tied logits' argmax flips; 99.2 % over all), 187 reported boxes against 185.
INT8_MIN_EQUAL_LESION = 0.995  # per frame
INT8_MIN_EQUAL_ORGANS = 0.9  # per frame; 0.98 over all frames


@pytest.fixture(scope="module")
def codec() -> MvmicCodec:
    return MvmicCodec.load()


@pytest.fixture(scope="module")
def analyzers(codec) -> dict[str, Analyzer]:
    return {runtime: Analyzer.load(codec, runtime=runtime) for runtime in ("onnx", "onnx-int8", "torch")}


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


def test_onnx_sessions_give_memory_back_after_a_large_batch(analyzers) -> None:
    # With ONNX Runtime's CPU arena a session keeps the memory of the largest batch it ever ran: the service's
    # RSS stepped up by ~500 MiB for good after one batch of 8 analyses (mvmic bench soak).
    for runtime in ("onnx", "onnx-int8"):
        heads = analyzers[runtime].heads
        for session in (heads.session, heads.decoding):
            assert session.get_session_options().enable_cpu_mem_arena is False, runtime


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


def test_the_shipped_int8_model_is_quantised_from_the_shipped_heads() -> None:
    exported = int8_path(DEFAULT_HEADS)
    model = onnx.load(exported, load_external_data=False)
    metadata = {p.key: p.value for p in model.metadata_props}
    assert metadata[SOURCE_SHA256] == hashlib.sha256(DEFAULT_HEADS.read_bytes()).hexdigest()
    assert metadata[PRECISION] == "int8"
    recorded = json.loads(DEFAULT_HEADS.with_suffix(".json").read_text())["onnx_int8"]
    assert recorded["file"] == exported.name == "mvmicnet-w97-v2-heads.int8.onnx"
    assert recorded["sha256"] == hashlib.sha256(exported.read_bytes()).hexdigest()
    # Integer weights: every convolution but the float ones reads its weights through a DequantizeLinear.
    produced_by = {output: node for node in model.graph.node for output in node.output}
    convolutions = [node for node in model.graph.node if node.op_type == "Conv"]
    quantised = {node.name for node in convolutions if node.input[1] in produced_by
                 and produced_by[node.input[1]].op_type == "DequantizeLinear"}
    assert quantised == {node.name for node in convolutions} - set(FLOAT_NODES) and len(quantised) == 14


def test_the_served_int8_heads_give_the_float_heads_analysis(analyzers, test_frames) -> None:
    """A CPU serves the int8 heads (runtime "auto"), within measured bounds of the float ones."""
    int8, float_ = analyzers["onnx-int8"], analyzers["onnx"]
    assert int8.heads.precision == "int8" and float_.heads.precision == "float"
    assert Analyzer.load(int8.codec).runtime == "onnx-int8"  # what the service and `mvmic analyze` run here
    lesion_equal = organs_equal = total = 0
    boxes = {"int8": 0, "float": 0}
    for shape, coarse in test_frames.items():
        planes = standardise(coarse.float())
        found, expected = int8.heads(planes), float_.heads(planes)
        for ours, theirs in zip(segmentation_masks(found, shape), segmentation_masks(expected, shape), strict=True):
            assert (ours == theirs).mean() >= INT8_MIN_EQUAL_LESION
            lesion_equal, total = lesion_equal + int((ours == theirs).sum()), total + ours.size
        for ours, theirs in zip(organ_maps(found, shape), organ_maps(expected, shape), strict=True):
            assert (ours == theirs).mean() >= INT8_MIN_EQUAL_ORGANS
            organs_equal += int((ours == theirs).sum())
        for name, outputs in (("int8", found), ("float", expected)):
            boxes[name] += sum(int((d.scores >= REPORT_SCORE).sum()) for d in decode_detections(outputs, shape))
    assert lesion_equal / total >= 0.999 and organs_equal / total >= 0.98
    assert boxes["float"] > 100 and abs(boxes["int8"] - boxes["float"]) <= 0.05 * boxes["float"]


def test_full_resolution_decoding_in_onnx_runtime_gives_the_torch_decoding(analyzers, test_frames) -> None:
    """OnnxHeads.masks (upsampling and organ argmax in ONNX Runtime) against mvmic.model.tasks.outputs in torch, on
    the outputs of both ONNX models: measured, no pixel of the 5.4 million differs."""
    differing = total = 0
    for runtime in ("onnx", "onnx-int8"):
        heads = analyzers[runtime].heads
        for shape, coarse in test_frames.items():
            outputs = heads(standardise(coarse.float()))
            masks, organs = heads.masks(outputs, shape)
            assert masks.dtype == bool and organs.dtype == np.uint8
            assert masks.shape == organs.shape == (len(coarse), *shape)
            differing += int((masks != segmentation_masks(outputs, shape)).sum())
            differing += int((organs != organ_maps(outputs, shape)).sum())
            total += masks.size + organs.size
    assert total > 10_000_000 and differing <= 1e-5 * total  # a rounding tie at most, never a shift


def test_int8_quantisation_refuses_what_it_cannot_calibrate(tmp_path: Path, codec) -> None:
    with pytest.raises(FileNotFoundError, match="mvmic data prepare"):
        calibration_planes(tmp_path, codec)
    with pytest.raises(ValueError, match="no calibration planes"):
        quantize_heads(onnx_path(DEFAULT_HEADS).read_bytes(), [])
    foreign = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["planes"], ["lesion"])], "other",
        [onnx.helper.make_tensor_value_info("planes", onnx.TensorProto.FLOAT, [1, 1, 8, 8])],
        [onnx.helper.make_tensor_value_info("lesion", onnx.TensorProto.FLOAT, [1, 1, 8, 8])]))
    with pytest.raises(ValueError, match="not the heads' ONNX model"):
        quantize_heads(foreign.SerializeToString(), [np.zeros((1, 1, 8, 8), np.float32)])
    assert main(["export-onnx", "--int8", "--corpus", str(tmp_path), "--out", str(tmp_path / "h.onnx")]) == 1


def test_a_stale_onnx_export_is_refused_until_exported_again(tmp_path: Path, corpus_dir, codec, test_frames) -> None:
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


def test_int8_exports_follow_their_weights(tmp_path: Path, corpus_dir, codec) -> None:
    weights = tmp_path / "heads.pt"
    heads = LatentHeads().eval()
    torch.save(heads.state_dict(), weights)
    assert Analyzer.load(codec, weights).runtime == "onnx"  # no int8 export: the float one
    with pytest.raises(FileNotFoundError, match=f"mvmic export-onnx {weights} --int8"):
        Analyzer.load(codec, weights, runtime="onnx-int8")
    assert main(["export-onnx", str(weights), "--int8", "--corpus", str(corpus_dir)]) == 0
    assert Analyzer.load(codec, weights).runtime == "onnx-int8"
    assert Analyzer.load(codec, weights, runtime="onnx").runtime == "onnx"
    with torch.no_grad():
        heads.segmentation.bias.add_(1.0)
    torch.save(heads.state_dict(), weights)
    export_heads_with_int8(weights, corpus_dir, tmp_path / "elsewhere.onnx")
    with pytest.raises(StaleOnnxError, match=f"mvmic export-onnx {weights} --int8"):
        Analyzer.load(codec, weights)  # exports elsewhere do not replace the ones analysis reads
    assert (tmp_path / "elsewhere.int8.onnx").is_file()
    # A float model where the int8 export belongs, or an empty file (an interrupted export), is refused.
    int8_path(weights).write_bytes(onnx_path(weights).read_bytes())
    with pytest.raises(ValueError, match="a float model where the int8 export belongs"):
        Analyzer.load(codec, weights, runtime="onnx-int8")
    int8_path(weights).write_bytes(b"")
    with pytest.raises(ValueError, match="not an ONNX model of the heads"):
        Analyzer.load(codec, weights, runtime="onnx-int8")
    # The float export alone removes the int8 one beside it, now stale: auto falls back to float.
    export_heads_file(weights)
    assert not int8_path(weights).exists() and Analyzer.load(codec, weights).runtime == "onnx"
    with pytest.raises(ValueError, match="would overwrite the weights"):
        export_heads_file(weights, weights)


def test_export_records_in_the_manifest_only_what_lies_beside_the_weights(tmp_path: Path, corpus_dir) -> None:
    weights = tmp_path / "heads.pt"
    torch.save(LatentHeads().eval().state_dict(), weights)
    manifest = weights.with_suffix(".json")
    manifest.write_text(json.dumps({"file": weights.name}))
    assert main(["export-onnx", str(weights), "--int8", "--corpus", str(corpus_dir)]) == 0
    recorded = json.loads(manifest.read_text())
    assert recorded["onnx"]["file"] == "heads.onnx" and recorded["onnx_int8"]["file"] == "heads.int8.onnx"
    assert recorded["onnx_int8"]["sha256"] == hashlib.sha256(int8_path(weights).read_bytes()).hexdigest()
    assert main(["export-onnx", str(weights), "--out", str(tmp_path / "copy.onnx")]) == 0
    assert json.loads(manifest.read_text()) == recorded
    assert main(["export-onnx", str(weights)]) == 0  # float alone: the int8 export and its record go
    assert "onnx_int8" not in json.loads(manifest.read_text()) and not int8_path(weights).exists()


def test_the_cli_names_the_heads_runtime_it_ran(tmp_path: Path, corpus_dir, codec) -> None:
    stream = codec.compress(read_dicom(corpus_dir / "images" / "pyradiomics-brain2-010.dcm"), QUALITY_CODES[4])
    (tmp_path / "b.mvm").write_bytes(stream.to_bytes())
    for runtime in ("auto", "onnx", "torch"):
        assert main(["analyze", str(tmp_path / "b.mvm"), "--heads-runtime", runtime, "--json",
                     str(tmp_path / f"{runtime}.json")]) == 0
    documents = {runtime: json.loads((tmp_path / f"{runtime}.json").read_text()) for runtime in ("auto", "onnx", "torch")}
    assert [documents[r]["heads_runtime"] for r in ("auto", "onnx", "torch")] == ["onnx-int8", "onnx", "torch"]
    assert documents["auto"]["heads_model_sha256"] == hashlib.sha256(int8_path(DEFAULT_HEADS).read_bytes()).hexdigest()
    assert documents["torch"]["heads_model_sha256"] is None
    assert main(["analyze", str(tmp_path / "b.mvm"), "--heads-runtime", "tensorrt"]) == 1
