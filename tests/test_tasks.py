"""Task data, scores, partial decoding and stage-2 training, on real corpus images."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from pycocotools import mask as coco_mask
from scipy import ndimage

from model.bitstream import unpack_payloads
from model.codec import QUALITY_CODES, MvmicCodec, coarse_reconstruction, step_of
from model.lifting import analysis, synthesis, zero_subbands
from model.subbands import BandStepScales, from_steps, with_uniform_noise
from model.tasks.evaluation import TaskScores, average_precision, box_iou
from model.tasks.joint import BETA_MAX, BETA_MIN, STAGE2_CODEC, train_joint
from model.tasks.lesions import LESION_PARAMETERS, boxes_of, insert_lesions
from model.tasks.train import TaskTrainConfig, load_task_planes, task_batch, train_tasks
from mvmic.pixels import read_dicom, write_dicom


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


def test_scores_pool_dice_and_rank_detections_for_ap50() -> None:
    truth = np.zeros((20, 20), dtype=bool)
    truth[5:10, 5:10] = True
    predicted = np.zeros_like(truth)
    predicted[5:10, 5:15] = True
    true_boxes = np.array([[5, 5, 10, 10], [12, 12, 18, 18]], dtype=float)
    scores = TaskScores()
    # A false positive ranked first, then both lesions found.
    scores.add(predicted, truth, np.array([[0, 0, 3, 3], [5, 5, 10, 10], [12, 12, 18, 17]], dtype=float),
               np.array([0.9, 0.8, 0.7]), true_boxes)
    assert scores.dice == pytest.approx(2 * 25 / (50 + 25))
    assert scores.iou == pytest.approx(25 / 50)
    # precision/recall: (0, 0), (1/2, 1/2), (2/3, 1) -> envelope 2/3 over all recall
    assert scores.ap50 == pytest.approx(2 / 3)
    assert average_precision(np.array([0.5, 1.0]), np.array([1.0, 1.0])) == pytest.approx(1.0)
    assert box_iou(true_boxes[:1], np.array([[5, 5, 10, 15]], dtype=float))[0, 0] == pytest.approx(0.5)


def test_partial_decoding_gives_the_low_band_of_the_full_decode(corpus_dir) -> None:
    codec = MvmicCodec.load()
    image = read_dicom(corpus_dir / "images" / "pyradiomics-lung1-030.dcm")
    stream = codec.compress(image, QUALITY_CODES[4])
    (coarse,) = codec.decode_coarse(stream)
    levels = 5
    shapes = zero_subbands(stream.rows, stream.columns, levels)
    full = codec.context.decode(unpack_payloads(stream.layers[0].payload)[0], shapes, stream.quality)
    assert coarse.shape[-2:] == (256, 256)
    assert torch.equal(coarse, coarse_reconstruction(full, stream.quality, 1, codec.scales))
    with pytest.raises(ValueError, match="too few"):
        codec.decode_coarse(stream, skipped_levels=6)


def test_task_batches_carry_lesions_and_training_resumes(tmp_path, corpus_dir) -> None:
    planes = load_task_planes(corpus_dir, "train")
    assert any(p.mask.any() for p in planes)  # the expert lesions of the train split are used
    images, masks, boxes = task_batch(planes, 4, random.Random(0), np.random.default_rng(0))
    assert images.shape == masks.shape and images.shape[1] == 1
    assert sum(len(b) for b in boxes) >= 1 and masks.sum() > 0
    checkpoint = tmp_path / "heads.pt"
    first = train_tasks(TaskTrainConfig(corpus_dir, checkpoint, "latent", minutes=0.05, batch=2, command="a"))
    second = train_tasks(TaskTrainConfig(corpus_dir, checkpoint, "latent", minutes=0.05, batch=2, resume=True,
                                         learning_rate=1e-4, command="b"))
    assert second["step"] > first["step"] > 0
    assert second["commands"] == ["a", "b"]
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
    # The heads are weak yet (README: Dice about 0.23 at quality 4), but their mask does touch the lesions.
    assert (mask & lesions.mask).any()
    for box in frame["boxes"]:
        x0, y0, x1, y1 = box["box"]
        assert 0 <= x0 < x1 <= image.pixels.shape[2] and 0 <= y0 < y1 <= image.pixels.shape[1]
        assert box["label"] == "lesion" and box["score"] >= 0.3
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
