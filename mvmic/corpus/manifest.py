"""The corpus manifest: one JSON file describing every image and its split.

    data/corpus/
        manifest.json      this module's Manifest
        images/<id>.dcm    uncompressed DICOM, written by mvmic.pixels
        labels/<id>.npz    expert lesion mask ("mask", bool, rows x columns), if any
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mvmic.pixels import NativeImage, read_dicom

# Bump when the recipe changes, so that `mvmic data prepare` rebuilds old corpora.
CORPUS_VERSION = 1
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
    label: str | None = None  # relative path of the expert lesion mask

    def read(self, corpus_dir: Path) -> NativeImage:
        return read_dicom(corpus_dir / self.path)


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
        except FileNotFoundError:
            raise FileNotFoundError(f"no corpus manifest at {path}: run `mvmic data prepare` first") from None
        return cls(
            entries=[CorpusEntry(**entry) for entry in payload["entries"]],
            sources=payload["sources"],
            skipped=payload.get("skipped", []),
            version=payload.get("version", 0),
        )
