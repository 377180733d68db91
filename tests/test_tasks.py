"""Task data, scores, partial decoding and stage-2 training, on real corpus images."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from pycocotools import mask as coco_mask
from scipy import ndimage

from mvmic.model.cnn_base import coarse_reconstruction
from mvmic.model.codec import MvmicCodec
from mvmic.model.errors import TooSmallToAnalyseError
from mvmic.model.lifting import analysis, synthesis
from mvmic.model.quality import QUALITY_CODES, step_of
from mvmic.model.subbands import BandStepScales, from_steps, with_uniform_noise
from mvmic.model.tasks.evaluation import ClassScores, TaskScores, average_precision, box_iou
from mvmic.model.tasks.heads import DETECTION_CLASSES, PixelReference, standardise
from mvmic.model.tasks.lesions import LESION_PARAMETERS, boxes_of, insert_lesions
from mvmic.model.tasks.organs import ORGAN_CLASSES, organ_boxes
from mvmic.model.tasks.outputs import Detections
from mvmic.pixels import read_dicom, write_dicom
from mvmic.training.samples import CROP, frame_batch, load_task_planes, training_batch
from mvmic.training.stage2_heads import (
    TaskTrainConfig,
    calibration_inputs,
    network_input,
    recalibrate_batch_norm,
    train_tasks,
)
from mvmic.training.stage3_joint import BETA_MAX, BETA_MIN, STAGE2_CODEC, train_joint
from mvmic.training.task_loss import IGNORE

# Some pydicom test files of the train split are anonymised with hashes where UIDs belong; pydicom warns on reads.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning"),
    pytest.mark.filterwarnings("ignore:The value length .* exceeds the maximum length:UserWarning"),
]


@pytest.fixture(scope="module")
def ct_frame(corpus_dir) -> np.ndarray:
    image = read_dicom(corpus_dir / "images" / "pyradiomics-lung2-010.dcm")  # train split
    return image.pixels[0, ..., 0].astype(np.float64)


def test_synthetic_lesions_have_exact_masks_and_one_box_each(ct_frame) -> None:
    lesion_counts = []
    for seed in range(12):
        result = insert_lesions(ct_frame, np.random.default_rng(seed))
        # Away from the lesions the image is untouched once rounded to stored integers.
        outside = ~ndimage.binary_dilation(result.mask, iterations=30)
        assert np.abs(result.image - ct_frame)[outside].max() < 0.5
        # One box per lesion, each exactly the extent of one connected part of the mask.
        assert sorted(map(tuple, result.boxes.tolist())) == sorted(map(tuple, boxes_of(result.mask).tolist()))
        lesion_counts.append(len(result.boxes))
    assert max(lesion_counts) >= 2 and min(lesion_counts) <= 1
    assert len(LESION_PARAMETERS.count_weights) - 1 >= max(lesion_counts)
    again = insert_lesions(ct_frame, np.random.default_rng(3))
    assert np.array_equal(again.mask, insert_lesions(ct_frame, np.random.default_rng(3)).mask)


def test_boxes_of_an_expert_mask_enclose_each_lesion(corpus_dir) -> None:
    mask = np.load(corpus_dir / "labels" / "pyradiomics-brain2-008.npz")["mask"]  # 227 lesion pixels
    boxes = boxes_of(mask)
    assert len(boxes) >= 1
    covered = np.zeros_like(mask)
    for x0, y0, x1, y1 in boxes.astype(int):
        covered[y0:y1, x0:x1] = True
    assert covered[mask].all()


def test_scores_pool_dice_and_rank_detections_for_ap50_and_map() -> None:
    truth = np.zeros((20, 20), dtype=bool)
    truth[5:10, 5:10] = True
    predicted = np.zeros_like(truth)
    predicted[5:10, 5:15] = True
    true_boxes = np.array([[5, 5, 10, 10], [12, 12, 18, 18]], dtype=float)
    scores = ClassScores()
    scores.add_mask(predicted, truth)
    # A false positive ranked first, then both lesions found, the second with IoU 30/36.
    scores.add_boxes(np.array([[0, 0, 3, 3], [5, 5, 10, 10], [12, 12, 18, 17]], dtype=float),
                     np.array([0.9, 0.8, 0.7]), true_boxes)
    assert scores.dice == pytest.approx(2 * 25 / (50 + 25))
    assert scores.iou == pytest.approx(25 / 50)
    # precision/recall: (0, 0), (1/2, 1/2), (2/3, 1) -> envelope 2/3 over all recall
    assert scores.ap50 == pytest.approx(2 / 3)
    # IoU thresholds 0.5 ... 0.8 (7 of 10) find both; at 0.85 ... 0.95 only the exact one counts: recall 1/2
    # at precision 1/2, AP 1/4 there.
    assert scores.map == pytest.approx((7 * 2 / 3 + 3 * 1 / 4) / 10)
    assert average_precision(np.array([0.5, 1.0]), np.array([1.0, 1.0])) == pytest.approx(1.0)
    assert box_iou(true_boxes[:1], np.array([[5, 5, 10, 15]], dtype=float))[0, 0] == pytest.approx(0.5)


def test_frames_score_lesions_everywhere_and_organs_only_where_they_are_labelled() -> None:
    organs = np.zeros((40, 40), dtype=np.uint8)
    organs[0:20, 0:20] = ORGAN_CLASSES.index("liver") + 1
    organs[25:35, 25:35] = ORGAN_CLASSES.index("aorta") + 1
    lesion = np.zeros((40, 40), dtype=bool)
    truth_boxes = np.concatenate([organ_boxes(organs), [[30, 0, 35, 5, 0]]])
    predicted = organs.copy()
    predicted[25:35, 25:35] = 0  # the aorta missed
    found = Detections(truth_boxes[:, :4], np.array([0.9, 0.8, 0.7]), truth_boxes[:, 4].astype(np.int64))
    scores = TaskScores()
    scores.add_frame(lesion, lesion, predicted, organs, found, truth_boxes)
    scores.add_frame(lesion, lesion, None, None, found, truth_boxes[2:])  # a frame without organ map
    assert scores.organs["liver"].dice == 1.0 and scores.organs["aorta"].dice == 0.0
    assert scores.organs["liver"].true_boxes == 1  # the second frame does not count for organs
    assert scores.lesion.true_boxes == 2 and scores.lesion.ap50 == 1.0
    assert scores.mean_organ_dice() == pytest.approx(0.5)  # classes absent from the truth do not count
    assert set(scores.as_dict()["organs"]) == {"liver", "aorta"}


def test_partial_decoding_gives_the_low_band_of_the_full_decode(corpus_dir) -> None:
    codec = MvmicCodec.load()
    image = read_dicom(corpus_dir / "images" / "pyradiomics-lung1-030.dcm")
    stream = codec.compress(image, QUALITY_CODES[4])
    (coarse,) = codec.decode_coarse(stream)
    full = codec._decode_bands(stream.layers[0].payload, stream)[0]  # every level, as decompress decodes them
    assert coarse.shape[-2:] == (256, 256)
    assert torch.equal(coarse, coarse_reconstruction(full, stream.quality_code, 1, codec.scales))
    with pytest.raises(TooSmallToAnalyseError, match="too small to analyse: it has 5 wavelet levels"):
        codec.decode_coarse(stream, skipped_levels=6)


@pytest.fixture(scope="module")
def train_planes(corpus_dir):
    return load_task_planes(corpus_dir, "train")


def test_training_batches_hold_lesions_organs_and_ignore_expert_lesions(train_planes) -> None:
    batch = training_batch(train_planes, 16, random.Random(1), np.random.default_rng(1), organ_share=0.5)
    targets = batch.targets
    assert batch.images.shape == (16, 1, CROP, CROP) == targets.lesion.shape == targets.lesion_weight.shape
    assert targets.lesion.sum() > 0 and sum((b[:, 4] == 0).sum() for b in targets.boxes) >= 8
    labelled = targets.organ_labelled
    assert 0 < int(labelled.sum()) < 16
    assert (targets.organs[~labelled] == IGNORE).all() and (targets.organs[labelled] <= len(ORGAN_CLASSES)).all()
    for n, boxes in enumerate(targets.boxes):
        assert set(boxes[:, 4].astype(int)) <= ({0} | set(range(1, 8)) if labelled[n] else {0})
        assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()
        assert (boxes[:, :4] >= 0).all() and (boxes[:, [0, 2]] <= CROP).all() and (boxes[:, [1, 3]] <= CROP).all()
    # Expert lesions are for testing: training gives them no weight, whether found or not.
    expert = next(p for p in train_planes if p.lesion.any())
    batch = training_batch([expert] * 16, 16, random.Random(2), np.random.default_rng(2))
    assert (batch.targets.lesion_weight == 0).any()


def test_a_crop_is_standardised_as_the_whole_frame_it_comes_from(train_planes) -> None:
    # BatchNorm at inference and whole-plane statistics: what the network sees of a region is the same
    # in a training crop and in the full frame (per-crop statistics made crops and frames differ).
    plane = next(p for p in train_planes if p.plane.shape == (512, 512))
    whole = frame_batch(plane, plane.plane, np.zeros(plane.plane.shape, bool), np.zeros((0, 4)))
    full_input = network_input("pixel", whole, 0)
    crop = frame_batch(plane, plane.plane[100:228, 200:328], np.zeros((128, 128), bool), np.zeros((0, 4)))
    assert torch.allclose(network_input("pixel", crop, 0), full_input[..., 100:228, 200:328], atol=1e-5)
    assert torch.allclose(standardise(whole.images), full_input, atol=1e-5)


def test_batch_norm_statistics_are_measured_afresh_not_left_to_the_last_batches(train_planes) -> None:
    # Whole-frame results must not depend on what the last training batches held.
    model, inputs = PixelReference(), calibration_inputs("pixel", train_planes)
    norm = model.stem[1]
    recalibrate_batch_norm(model, inputs)
    first = (norm.running_mean.clone(), norm.running_var.clone())
    with torch.no_grad():  # as if the last batches had been odd ones
        norm.running_mean.add_(5.0)
        norm.running_var.mul_(3.0)
    recalibrate_batch_norm(model, inputs)
    assert torch.equal(norm.running_mean, first[0]) and torch.equal(norm.running_var, first[1])
    assert norm.momentum == 0.1 and not torch.equal(first[0], torch.zeros_like(first[0]))


def test_training_resumes(tmp_path, corpus_dir) -> None:
    checkpoint = tmp_path / "heads.pt"
    first = train_tasks(TaskTrainConfig(corpus_dir, checkpoint, "latent", minutes=0.05, batch=2, command="a"))
    second = train_tasks(TaskTrainConfig(corpus_dir, checkpoint, "latent", minutes=0.05, batch=2, resume=True,
                                         learning_rate=1e-4, command="b"))
    assert second["step"] > first["step"] > 0
    assert second["commands"] == ["a", "b"]
    steps = [entry["step"] for entry in second["history"]]
    assert steps == sorted(set(steps)) and steps[-1] == second["step"]  # each step validated once
    # A resumed run uses its own learning rate, not the one saved in the checkpoint.
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)["optimizer"]
    assert [group["lr"] for group in saved["param_groups"]] == [1e-4]


def test_analyze_reads_only_the_bitstream_and_writes_boxes_and_coco_rle(tmp_path, corpus_dir, mvmic) -> None:
    image = read_dicom(corpus_dir / "images" / "pyradiomics-lung1-020.dcm")  # test split
    lesions = insert_lesions(image.pixels[0, ..., 0], np.random.default_rng(5))
    stored = np.clip(np.round(lesions.image), image.format.min_value, image.format.max_value)
    source = tmp_path / "lesions.dcm"
    write_dicom(source, image, stored.astype(image.format.dtype)[None, ..., None])
    run = mvmic("compress", str(source), str(tmp_path / "x.mvm"), "--quality", "6",
                "--analysis", str(tmp_path / "at_compress.json"))
    assert run.returncode == 0, run.stderr
    run = mvmic("analyze", str(tmp_path / "x.mvm"), "--json", str(tmp_path / "analysis.json"))
    assert run.returncode == 0, run.stderr
    document = json.loads((tmp_path / "analysis.json").read_text())
    assert document == json.loads((tmp_path / "at_compress.json").read_text())  # same latent, same analysis
    (frame,) = document["frames"]
    rle = frame["segmentation"]
    assert rle["size"] == [image.pixels.shape[1], image.pixels.shape[2]]
    mask = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
    assert mask.sum() == frame["segmented_pixels"]
    assert (mask & lesions.mask).sum() > 0.5 * lesions.mask.sum()
    for box in frame["boxes"]:
        x0, y0, x1, y1 = box["box"]
        assert 0 <= x0 < x1 <= image.pixels.shape[2] and 0 <= y0 < y1 <= image.pixels.shape[1]
        assert box["label"] in DETECTION_CLASSES and box["score"] >= 0.3
    assert any(box["label"] == "lesion" for box in frame["boxes"])
    for organ in frame["organs"]:
        assert organ["label"] in ORGAN_CLASSES and organ["segmentation"]["size"] == rle["size"]
    broken = mvmic("analyze", str(source))  # a DICOM file is not a bitstream
    assert broken.returncode == 1 and "mvmic: error:" in broken.stderr and "Traceback" not in broken.stderr


def test_stage3_distortion_grows_with_every_band_step(ct_frame) -> None:
    # Straight-through rounding gives a step no distortion cost where coefficients round to 0
    # (most of them at low rates), so stage 3 once learned ever coarser steps. The noisy
    # stand-in must charge every band for a coarser step, at a low and a high rate.
    image = torch.from_numpy(ct_frame[128:256, 128:256] / 4096)[None, None]
    bands = analysis(image, 5)
    for code in (QUALITY_CODES[1], QUALITY_CODES[8]):
        scales = BandStepScales()
        torch.manual_seed(0)
        noisy = with_uniform_noise(bands, step_of(code), scales())
        assert all(float((v - v.round()).detach().abs().max()) <= 0.5 for v in [noisy.low, *noisy.details[0]])
        distortion = torch.mean((synthesis(from_steps(noisy, step_of(code), scales())) - image) ** 2)
        distortion.backward()
        assert (scales.log_scales.grad[: 1 + 3 * 5] > 0).all(), code


def test_stage3_trains_codec_and_heads_together_and_resumes(tmp_path, corpus_dir) -> None:
    checkpoint = tmp_path / "joint.pt"
    first = train_joint(TaskTrainConfig(corpus_dir, checkpoint, "joint", minutes=0.02, learning_rate=1e-4, batch=2,
                                        command="a"))
    assert first["step"] >= 1 and first["task_reference"] > 0
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)["model"]
    start = torch.load(STAGE2_CODEC, map_location="cpu", weights_only=True)
    # The codec's band steps are trained in stage 3; its entropy model stays stage 1's.
    scales = saved["codec.band_scales.log_scales"]
    assert not torch.equal(scales, start.get("band_scales.log_scales", torch.zeros_like(scales)))
    assert all(torch.equal(saved[f"codec.{k}"], v) for k, v in start.items() if k.startswith("nets."))
    second = train_joint(TaskTrainConfig(corpus_dir, checkpoint, "joint", minutes=0.02, learning_rate=1e-4, batch=2,
                                         resume=True, command="b"))
    assert second["step"] > first["step"] and second["commands"] == ["a", "b"]
    assert BETA_MIN <= second["beta"] <= BETA_MAX


def test_the_organ_task_set_is_the_held_out_volumes_with_a_box_per_organ_part(corpus_dir) -> None:
    from mvmic.bench.tasks import organ_cases

    everything = organ_cases(corpus_dir, "test")
    head = [c for c in everything if c.id.startswith("pyradiomics-brain2")]
    cases = [c for c in everything if not c.id.startswith("pyradiomics-brain2")]
    assert len(cases) == 30  # the 3 mm TotalSegmentator CT
    assert len(head) == 23 and all(not c.organs.any() and len(c.boxes) == 0 for c in head)  # head MR: no organ
    assert all(c.organs is not None and len(c.boxes) and (c.boxes[:, 4] >= 1).all() and not c.mask.any()
               for c in cases)
    assert set(np.concatenate([c.boxes[:, 4] for c in cases]).astype(int)) == set(range(1, len(ORGAN_CLASSES) + 1))
    for case in cases:  # every box encloses pixels of its class
        for x0, y0, x1, y1, index in case.boxes.astype(int):
            assert (case.organs[y0:y1, x0:x1] == index).any()


def test_a_mistyped_resume_or_heads_file_is_a_clear_error(tmp_path, corpus_dir, mvmic) -> None:
    missing = tmp_path / "missing.pt"
    run = mvmic("train", "heads", "--resume", "--checkpoint", str(missing), "--minutes", "0")
    assert run.returncode == 1 and "nothing to resume" in run.stderr and not missing.exists()
    stream = tmp_path / "x.mvm"
    assert mvmic("compress", str(corpus_dir / "images" / "pydicom-CT_small.dcm"), str(stream)).returncode == 0
    weights = tmp_path / "weights.pt"
    torch.save(PixelReference().state_dict(), weights)
    for wrong in (stream, weights):  # not a pickle at all; exported weights rather than a checkpoint
        run = mvmic("train", "pixel-reference", "--resume", "--checkpoint", str(wrong), "--minutes", "0")
        assert run.returncode == 1 and "is not a training checkpoint" in run.stderr and "Traceback" not in run.stderr
    for option, value in (("--batch", "0"), ("--minutes", "-1")):
        run = mvmic("train", "heads", option, value, "--checkpoint", str(tmp_path / "new.pt"))
        assert run.returncode == 2 and "at least" in run.stderr and not (tmp_path / "new.pt").exists()
    checkpoint = tmp_path / "heads-checkpoint.pt"
    torch.save({"model": {}, "optimizer": {}, "state": {}}, checkpoint)
    text = tmp_path / "notes.pt"
    text.write_text("hello\n")  # torch.load's unpickler reads "h" as an opcode: a KeyError, not an UnpicklingError
    for heads, reason in ((checkpoint, "training checkpoint"), (corpus_dir / "images" / "pydicom-CT_small.dcm",
                                                                 "not a torch weights file"),
                          (text, "not a torch weights file")):
        run = mvmic("analyze", str(stream), "--heads", str(heads))
        assert run.returncode == 1 and reason in run.stderr and "Traceback" not in run.stderr
    empty = tmp_path / "no-train-split"
    empty.mkdir()
    manifest = json.loads((corpus_dir / "manifest.json").read_text())
    (empty / "manifest.json").write_text(json.dumps({**manifest, "entries": [
        entry for entry in manifest["entries"] if entry["split"] != "train"]}))
    run = mvmic("train", "codec", "--corpus", str(empty), "--checkpoint", str(tmp_path / "c.pt"), "--minutes", "0")
    assert run.returncode == 1 and "no 'train' images" in run.stderr and "Traceback" not in run.stderr
    (empty / "manifest.json").write_text('{"entries": []}')  # no "sources": not one `mvmic data prepare` wrote
    run = mvmic("train", "codec", "--corpus", str(empty), "--checkpoint", str(tmp_path / "c.pt"), "--minutes", "0")
    assert run.returncode == 1 and "is not a corpus manifest" in run.stderr and "Traceback" not in run.stderr
