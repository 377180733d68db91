"""Analysis of a bitstream without reconstructing its pixels: lesion and organ boxes and segmentations.

    .mvm --MvmicCodec.decode_coarse: entropy decoding of every level but the finest,
           first synthesis steps--> LL1 (half resolution) per frame --standardise over the frame-->
      --LatentHeads--> heatmaps per class, sizes, offsets --peaks, score >= REPORT_SCORE--> labelled boxes
                   --> lesion logit --x2, > 0, cropped--> lesion mask --> COCO RLE
                   --> organ logits --x2, argmax, cropped--> organ map --> one COCO RLE per organ found

The organ classes (model.tasks.organs) were learned on abdominal CT and MR only: elsewhere the
organ output means nothing (README, "Task heads").

The finest wavelet level holds three quarters of the symbols and is never decoded here,
which is where the time saved over decode-then-analyse comes from.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as coco_mask

from model.bitstream import Bitstream
from model.codec import MODEL_ID, MvmicCodec
from model.tasks.heads import DETECTION_CLASSES, LatentHeads, standardise
from model.tasks.objectives import decode_detections, organ_maps, segmentation_masks
from model.tasks.organs import ORGAN_CLASSES

DEFAULT_HEADS = Path(__file__).resolve().parents[2] / "weights" / f"{MODEL_ID}-heads.pt"
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
        organs = [{"label": name, "segmentation": coco_rle(self.organs == index),
                   "pixels": int((self.organs == index).sum())}
                  for index, name in enumerate(ORGAN_CLASSES, start=1) if (self.organs == index).any()]
        return {"frame": self.frame,
                "boxes": [{"box": [round(float(v), 1) for v in box], "score": round(float(score), 4), "label": label}
                          for box, score, label in zip(self.boxes, self.scores, self.labels, strict=True)],
                "segmentation": coco_rle(self.mask), "segmented_pixels": int(self.mask.sum()), "organs": organs}


def coco_rle(mask: np.ndarray) -> dict:
    """COCO's compressed run-length encoding: {"size": [rows, columns], "counts": str}."""
    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


class Analyzer:
    """Entropy decoding on the CPU (the codec's integer arithmetic), the heads on ``device``."""

    def __init__(self, codec: MvmicCodec, heads: LatentHeads, device: str = "cpu", heads_sha256: str | None = None) -> None:
        self.codec, self.device, self.heads = codec, torch.device(device), heads.eval().to(device)
        self.heads_sha256 = heads_sha256  # of the weights file, which analysis documents name

    @classmethod
    def load(cls, codec: MvmicCodec, path: Path = DEFAULT_HEADS, device: str = "cpu") -> Analyzer:
        """The heads of a weights file (as `mvmic train heads --export` writes it). Raises ValueError for
        a file that is not one (a training checkpoint, another network, not a torch file)."""
        heads, data = LatentHeads(), Path(path).read_bytes()
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            if isinstance(state, dict) and {"model", "optimizer", "state"} <= set(state):
                raise ValueError("it is a training checkpoint: export its weights with `mvmic train heads --resume "
                                 "--minutes 0 --export FILE` first")
            heads.load_state_dict(state)
        except (pickle.UnpicklingError, EOFError):
            raise ValueError(f"{path} is not a torch weights file") from None
        except (RuntimeError, AttributeError, TypeError) as exc:
            raise ValueError(f"{path} holds no task heads of this design ({str(exc).splitlines()[0]})") from None
        except ValueError as exc:
            raise ValueError(f"{path} is not a task heads weights file: {exc}") from None
        return cls(codec, heads, device, hashlib.sha256(data).hexdigest())

    def analyze(self, stream: Bitstream, min_score: float = REPORT_SCORE) -> list[FrameAnalysis]:
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
            planes = standardise(torch.cat([coarse[index][frame].float() for index, frame in members]))
            outputs = self.heads(planes.to(self.device)).to("cpu")
            detections, masks, organs = (decode_detections(outputs, shape), segmentation_masks(outputs, shape),
                                         organ_maps(outputs, shape))
            for (index, frame), found, mask, organ_map in zip(members, detections, masks, organs, strict=True):
                keep = found.scores >= min_score
                results[index][frame] = FrameAnalysis(frame, found.boxes[keep], found.scores[keep],
                                                      found.classes[keep], mask, organ_map)
        return [[frames[f] for f in sorted(frames)] for frames in results]
