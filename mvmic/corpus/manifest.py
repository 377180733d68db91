"""The corpus manifest: one JSON file describing every image and its split.

    data/corpus/
        manifest.json      this module's Manifest
        images/<id>.dcm    uncompressed DICOM, written by mvmic.pixels
        labels/<id>.npz    expert lesion mask ("mask", bool, rows x columns) and/or organ map
                           ("organs", uint8 index into mvmic.model.tasks.organs.ORGAN_CLASSES), if any
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mvmic.pixels import NativeImage, read_dicom

# Bump when the recipe changes, so that `mvmic data prepare` rebuilds old corpora.
# 2: TotalSegmentator's CT and MR studies with organ maps. 3: head MR with an all-background organ map;
# a CT angiogram (TotalSegmentator's aorta report example) to validate on.
CORPUS_VERSION = 3
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class CorpusEntry:
    """One DICOM file of the corpus; a file may hold several frames (slices)."""

    id: str
    path: str  # relative to the corpus folder
    source: str  # where the pixels come from, e.g. "pydicom-data:MR2_UNCR.dcm"
    modality: str
    group: str  # patient or volume: the unit of the split
    split: str
    rows: int
    columns: int
    frames: int
    samples_per_pixel: int
    bits_stored: int
    signed: bool
    photometric: str
    label: str | None = None  # relative path of the label file (lesion mask and/or organ map)

    def read(self, corpus_dir: Path) -> NativeImage:
        return read_dicom(corpus_dir / self.path)

    def labels(self, corpus_dir: Path) -> Labels:
        """The entry's lesion mask (all False where it has none) and organ map (None where it has none)."""
        lesion, organs = np.zeros((self.rows, self.columns), dtype=bool), None
        if self.label:
            with np.load(corpus_dir / self.label) as npz:
                lesion, organs = npz.get("mask", lesion), npz.get("organs")
        return Labels(lesion, organs)


@dataclass(frozen=True)
class Labels:
    lesion: np.ndarray  # (rows, columns) bool, expert lesions
    organs: np.ndarray | None  # (rows, columns) uint8, 0 background, c: ORGAN_CLASSES[c - 1]


@dataclass
class Manifest:
    entries: list[CorpusEntry]
    sources: dict[str, str]  # source name -> version or checksum
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"source", "reason"}
    version: int = CORPUS_VERSION

    def select(self, split: str | None = None) -> list[CorpusEntry]:
        return [entry for entry in self.entries if split in (None, entry.split)]

    def slice_counts(self, key: str) -> dict[str, int]:
        """Number of slices (frames) by an entry attribute such as "modality" or "split"."""
        counts: dict[str, int] = {}
        for entry in self.entries:
            value = getattr(entry, key)
            counts[value] = counts.get(value, 0) + entry.frames
        return dict(sorted(counts.items()))

    def save(self, path: Path) -> None:
        payload = {
            "version": self.version,
            "sources": self.sources,
            "slices": {"total": sum(e.frames for e in self.entries),
                       "by_modality": self.slice_counts("modality"),
                       "by_split": self.slice_counts("split")},
            "entries": [asdict(entry) for entry in self.entries],
            "skipped": self.skipped,
        }
        path.write_text(json.dumps(payload, indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> Manifest:
        try:
            payload = json.loads(path.read_text())
            return cls(
                entries=[CorpusEntry(**entry) for entry in payload["entries"]],
                sources=payload["sources"],
                skipped=payload.get("skipped", []),
                version=payload.get("version", 0),
            )
        except FileNotFoundError:
            raise FileNotFoundError(f"no corpus manifest at {path}: run `mvmic data prepare` first") from None
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path} is not a corpus manifest as `mvmic data prepare` writes it "
                             f"({type(exc).__name__}: {exc})") from None
