"""Analysis of a bitstream without reconstructing its pixels: lesion and organ boxes and segmentations.

    .mvm --MvmicCodec.decode_coarse: entropy decoding of every level but the finest,
           first synthesis steps--> LL1 (half resolution) per frame --standardise over the frame-->
      --LatentHeads (in ONNX Runtime: mvmic.model.tasks.runtime)--> heatmaps per class, sizes, offsets
                   --peaks, score >= REPORT_SCORE--> labelled boxes
                   --> lesion logit --x2, > 0, cropped--> lesion mask --> COCO RLE
                   --> organ logits --x2, argmax, cropped--> organ map --> one COCO RLE per organ found
                       (both in ONNX Runtime too: OnnxHeads.masks)

The organ classes (mvmic.model.tasks.organs) were learned on abdominal CT and MR only: elsewhere the
organ output means nothing (README, "Task heads").

The finest wavelet level holds three quarters of the symbols and is never decoded here,
which is where the time saved over decode-then-analyse comes from.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as coco_mask
from torch import Tensor

from mvmic.model.bitstream import Bitstream
from mvmic.model.cnn_base import MODEL_ID
from mvmic.model.codec import MvmicCodec
from mvmic.model.tasks.heads import DETECTION_CLASSES, LatentHeads, standardise
from mvmic.model.tasks.organs import ORGAN_CLASSES
from mvmic.model.tasks.outputs import decode_detections, organ_maps, segmentation_masks
from mvmic.model.tasks.runtime import OnnxHeads, int8_path, load_heads_weights
from mvmic.paths import WEIGHTS_DIR

DEFAULT_HEADS = WEIGHTS_DIR / f"{MODEL_ID}-heads.pt"
REPORT_SCORE = 0.3


@dataclass
class FrameAnalysis:
    frame: int
    boxes: np.ndarray  # (n, 4) x0 y0 x1 y1 in pixels of the original image
    scores: np.ndarray  # (n,)
    classes: np.ndarray  # (n,) int64, index into DETECTION_CLASSES (0: lesion, then the organs)
    mask: np.ndarray  # (rows, columns) bool, lesions
    organs: np.ndarray  # (rows, columns) uint8, 0 background, c: ORGAN_CLASSES[c - 1]

    @property
    def labels(self) -> list[str]:
        return [DETECTION_CLASSES[c] for c in self.classes]

    def to_json(self) -> dict:
        pixels = np.bincount(self.organs.ravel(), minlength=1 + len(ORGAN_CLASSES))
        organs = [{"label": name, "segmentation": coco_rle(self.organs == index), "pixels": int(pixels[index])}
                  for index, name in enumerate(ORGAN_CLASSES, start=1) if pixels[index]]
        return {"frame": self.frame,
                "boxes": [{"box": [round(float(v), 1) for v in box], "score": round(float(score), 4), "label": label}
                          for box, score, label in zip(self.boxes, self.scores, self.labels, strict=True)],
                "segmentation": coco_rle(self.mask), "segmented_pixels": int(self.mask.sum()), "organs": organs}


def coco_rle(mask: np.ndarray) -> dict:
    """COCO's compressed run-length encoding: {"size": [rows, columns], "counts": str}."""
    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


RUNTIMES = ("auto", "onnx", "onnx-int8", "torch")


class Analyzer:
    """Entropy decoding on the CPU (the codec's integer arithmetic), the heads on ``device``: through ONNX
    Runtime (OnnxHeads, what the service and `mvmic analyze` use) or torch (LatentHeads, as trained)."""

    def __init__(self, codec: MvmicCodec, heads: LatentHeads | OnnxHeads, device: str = "cpu",
                 heads_sha256: str | None = None) -> None:
        self.codec, self.device = codec, torch.device(device)
        self.heads = heads if isinstance(heads, OnnxHeads) else heads.eval().to(device)
        self.runtime = ("torch" if not isinstance(heads, OnnxHeads) else
                        "onnx-int8" if heads.precision == "int8" else "onnx")
        self.heads_sha256 = heads_sha256  # of the torch weights file, which analysis documents name

    @property
    def provenance(self) -> dict:
        """What an analysis document names of the heads that made it: the weights file's sha256, the runtime
        (int8 and float results differ slightly) and the sha256 of the ONNX model that ran (None in torch)."""
        return {"heads_sha256": self.heads_sha256, "heads_runtime": self.runtime,
                "heads_model_sha256": getattr(self.heads, "model_sha256", None)}

    @classmethod
    def load(cls, codec: MvmicCodec, path: Path = DEFAULT_HEADS, device: str = "cpu", runtime: str = "auto",
             threads: int | None = None) -> Analyzer:
        """The heads of a weights file (as `mvmic train heads --export` writes it). ``runtime`` "onnx": the
        ONNX export beside it (mvmic.model.tasks.runtime; ``threads``: ONNX Runtime's intra-op threads);
        "onnx-int8": its int8 export (mvmic.model.tasks.quantize); "auto": the int8 export on a CPU where there is
        one, the float export otherwise (CUDA runs float); "torch": the weights themselves. Raises ValueError
        for a file that is not one (a training checkpoint, another network, not a torch file),
        StaleOnnxError for an export of other weights, FileNotFoundError for "onnx-int8" without an export."""
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
        if runtime == "auto":
            runtime = "onnx-int8" if torch.device(device).type == "cpu" and int8_path(path).is_file() else "onnx"
        data = Path(path).read_bytes()
        heads = (load_heads_weights(path, data) if runtime == "torch"
                 else OnnxHeads.for_weights(path, device, threads, data, int8=runtime == "onnx-int8"))
        return cls(codec, heads, device, hashlib.sha256(data).hexdigest())

    @torch.no_grad()
    def analyze_latent(self, coarse: Tensor, shape: tuple[int, int], min_score: float = REPORT_SCORE
                       ) -> list[FrameAnalysis]:
        """The analysis of decoded LL1 planes (N, 1, h, w) of frames of ``shape`` (rows, columns), numbered
        0..N-1 in order: each standardised over itself, the heads, boxes and masks cropped to ``shape``."""
        planes = standardise(coarse.float())
        onnx = isinstance(self.heads, OnnxHeads)
        outputs = self.heads(planes if onnx else planes.to(self.device)).to("cpu")
        detections = decode_detections(outputs, shape)
        masks, organs = (self.heads.masks(outputs, shape) if onnx
                         else (segmentation_masks(outputs, shape), organ_maps(outputs, shape)))
        frames = []
        for frame, (found, mask, organ_map) in enumerate(zip(detections, masks, organs, strict=True)):
            keep = found.scores >= min_score
            frames.append(FrameAnalysis(frame, found.boxes[keep], found.scores[keep], found.classes[keep], mask,
                                        organ_map))
        return frames

    def analyze(self, stream: Bitstream, min_score: float = REPORT_SCORE) -> list[FrameAnalysis]:
        """What the task heads see in each frame of ``stream``, read from its coded bands without decoding
        pixels (lossy: the base layer's quantised wavelet bands; exact streams: the decoded frame's bands at
        EXACT_ANALYSIS_CODE): one FrameAnalysis per frame, boxes in pixels of the original image
        (x0, y0, x1, y1, float32) with scores in 0..1 at least ``min_score``, the lesion mask and organ map at
        the frame's full size (rows, columns).

        Raises WeightsMismatchError (a stream of other weights), TooSmallToAnalyseError (a frame smaller
        than the heads' receptive field; the stream itself is fine), BitstreamError (a damaged stream).
        """
        return self.analyze_many([stream], min_score)[0]

    @torch.no_grad()
    def analyze_many(self, streams: list[Bitstream], min_score: float = REPORT_SCORE) -> list[list[FrameAnalysis]]:
        """analyze() of several bitstreams at once: the frames of images of one size go through the heads
        as one batch (the service batches concurrent requests this way); each frame is standardised
        over itself and BatchNorm is a fixed map at inference, so no result depends on its batch."""
        coarse = [self.codec.decode_coarse(stream) for stream in streams]
        by_size: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
        for index, stream in enumerate(streams):
            by_size[(stream.rows, stream.columns)] += [(index, frame) for frame in range(len(coarse[index]))]
        results: list[dict[int, FrameAnalysis]] = [{} for _ in streams]
        for shape, members in by_size.items():
            found = self.analyze_latent(torch.cat([coarse[index][frame] for index, frame in members]), shape, min_score)
            for (index, frame), analysis in zip(members, found, strict=True):
                results[index][frame] = dataclasses.replace(analysis, frame=frame)
        return [[frames[f] for f in sorted(frames)] for frames in results]
