"""`mvmic data prepare`: build the corpus folder from the packaged sources.

    pydicom files ----select----> images/pydicom-<name>.dcm ---+
    pyradiomics volumes --slice--> images/pyradiomics-<case>-<z>.dcm --+--> manifest.json
                                   labels/pyradiomics-<case>-<z>.npz --+    (lesion "mask")
    TotalSegmentator CT series, CT and MR volumes
                  --as stored / slice--> images/totalsegmentator-<case>-<z>.dcm --+
                                         labels/totalsegmentator-<case>-<z>.npz --+  ("organs")

Idempotent: a corpus whose manifest has the current CORPUS_VERSION and whose files
are all present is left as it is.
"""

from __future__ import annotations

import re
import shutil
import warnings
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np

from mvmic.corpus.manifest import CORPUS_VERSION, CorpusEntry, Manifest
from mvmic.corpus.sources import (
    PYRADIOMICS_SHA256,
    Volume,
    fetch_pyradiomics,
    pyradiomics_volumes,
    select_pydicom_images,
)
from mvmic.corpus.split import split_of
from mvmic.corpus.totalsegmentator import (
    CT_SERIES,
    DATASET,
    TOTALSEGMENTATOR_SHA256,
    TOTALSEGMENTATOR_VERSION,
    fetch_totalsegmentator,
    totalsegmentator_series,
    totalsegmentator_volumes,
)
from mvmic.corpus.volume_dicom import slice_image
from mvmic.pixels import NativeImage, write_dicom

MANIFEST_NAME = "manifest.json"


@dataclass
class PrepareResult:
    manifest: Manifest
    built: bool  # False when an existing corpus was reused


def prepare_corpus(out_dir: Path, cache_dir: Path, force: bool = False) -> PrepareResult:
    manifest_path = out_dir / MANIFEST_NAME
    if not force and _is_complete(out_dir, manifest_path):
        return PrepareResult(Manifest.load(manifest_path), built=False)
    # First: the steps that can fail for outside reasons.
    archive, organs_archive = fetch_pyradiomics(cache_dir), fetch_totalsegmentator(cache_dir)
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "images").mkdir(parents=True)
    (staging / "labels").mkdir()
    with warnings.catch_warnings():
        # pydicom's test files are malformed on purpose, and it warns about each one.
        warnings.simplefilter("ignore", UserWarning)
        images, skipped = select_pydicom_images()
        entries = [_add_image(staging, _pydicom_id(p.source), p.source, p.group, p.image) for p in images]
    for volume in [*pyradiomics_volumes(archive), *totalsegmentator_volumes(organs_archive)]:
        entries.extend(_add_volume(staging, volume))
    for index, item in enumerate(totalsegmentator_series(organs_archive)):
        source = f"{DATASET}-{TOTALSEGMENTATOR_VERSION}:{item.source}"
        entry = _add_image(staging, f"{DATASET}-{CT_SERIES}-{index:03d}", source, f"{DATASET}:{CT_SERIES}", item.image)
        entries.append(_with_label(staging, entry, organs=item.organs))
    manifest = Manifest(
        entries=entries,
        sources={
            "pydicom": version("pydicom"),
            "pydicom-data": version("pydicom-data"),
            "pyradiomics": f"3.0.1 sdist sha256 {PYRADIOMICS_SHA256}",
            "totalsegmentator": f"{TOTALSEGMENTATOR_VERSION} sdist sha256 {TOTALSEGMENTATOR_SHA256}",
        },
        skipped=skipped,
    )
    manifest.save(staging / MANIFEST_NAME)
    # Swap in the finished corpus at once, so an interrupted run never leaves half a corpus.
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    return PrepareResult(manifest, built=True)


def _is_complete(out_dir: Path, manifest_path: Path) -> bool:
    if not manifest_path.exists():
        return False
    try:
        manifest = Manifest.load(manifest_path)
    except (ValueError, KeyError, TypeError):
        return False
    paths = [e.path for e in manifest.entries] + [e.label for e in manifest.entries if e.label]
    return manifest.version == CORPUS_VERSION and all((out_dir / p).is_file() for p in paths)


def _add_volume(staging: Path, volume: Volume) -> list[CorpusEntry]:
    group = f"{volume.dataset}:{volume.case}"
    entries = []
    for index in range(volume.voxels.shape[0]):
        entry_id = f"{volume.dataset}-{volume.case}-{index:03d}"
        entry = _add_image(staging, entry_id, _slice_source(volume, index), group, slice_image(volume, index))
        entries.append(_with_label(staging, entry, mask=None if volume.mask is None else volume.mask[index],
                                   organs=None if volume.organs is None else volume.organs[index]))
    return entries


def _slice_source(volume: Volume, index: int) -> str:
    if volume.dataset == "pyradiomics":
        return f"pyradiomics-3.0.1:{volume.case}_image.nrrd[z={index}]"
    return f"{volume.dataset}-{TOTALSEGMENTATOR_VERSION}:{volume.case}[z={index}]"


def _with_label(staging: Path, entry: CorpusEntry, mask: np.ndarray | None = None,
                organs: np.ndarray | None = None) -> CorpusEntry:
    """The entry with its label file: the lesion ``mask`` and/or the ``organs`` map, whichever exist
    (neither: the entry as it is, without a label file)."""
    label = f"labels/{entry.id}.npz"
    arrays = {name: array for name, array in (("mask", mask), ("organs", organs)) if array is not None}
    if not arrays:
        return entry
    np.savez_compressed(staging / label, **arrays)
    return CorpusEntry(**{**entry.__dict__, "label": label})


def _add_image(staging: Path, entry_id: str, source: str, group: str, image: NativeImage) -> CorpusEntry:
    path = f"images/{entry_id}.dcm"
    if (staging / path).exists():
        raise RuntimeError(f"two corpus images would be named {entry_id}")
    write_dicom(staging / path, image)
    header, fmt = image.header, image.format
    return CorpusEntry(
        id=entry_id,
        path=path,
        source=source,
        modality=str(header.Modality),
        group=group,
        split=split_of(group),
        rows=int(header.Rows),
        columns=int(header.Columns),
        frames=image.frames,
        samples_per_pixel=fmt.samples_per_pixel,
        bits_stored=fmt.bits_stored,
        signed=fmt.signed,
        photometric=fmt.photometric,
    )


def _pydicom_id(source: str) -> str:
    """pydicom-data:MR2_UNCR.dcm -> pydicom-MR2_UNCR"""
    stem = Path(source.split(":", 1)[1]).stem
    return "pydicom-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)
