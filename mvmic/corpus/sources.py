"""Where the corpus pixels come from: real images shipped inside Python packages.

    pydicom + pydicom-data test files --select_pydicom_images--> NativeImage per kept file
    pyradiomics 3.0.1 sdist data/*.nrrd --pyradiomics_volumes--> Volume (CT/MR + lesion mask;
                                                                   head MR: an all-background organ map)
    totalsegmentator 2.18.0 sdist tests/reference_files --mvmic.corpus.totalsegmentator--> CT/MR + organ masks

Selection keeps real patient images only: no test patterns or synthetic colour
charts, no segmentations or dose grids, no thumbnails, nothing that was stored
lossily (it would flatter the codec that made it), and each pixel array once.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nrrd
import numpy as np
from pydicom.data import get_testdata_files
from pydicom.uid import UID

from mvmic.pixels import DicomInputError, NativeImage, read_dicom

PATIENT_MODALITIES = {"CT", "MR", "CR", "DX", "MG", "NM", "PT", "US", "XA", "RF", "ES", "XC"}
MIN_SIDE = 32  # smaller images are icons or thumbnails
LOSSY_SYNTAXES = {
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.51",  # JPEG extended
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
}
# These may be lossless or lossy; only LossyImageCompression = "00" says which.
MAYBE_LOSSY_SYNTAXES = {
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.203",  # HTJ2K
}

PYRADIOMICS_VERSION = "3.0.1"
PYRADIOMICS_SHA256 = "47c57f441d6cb7973fa3b2ea48d3948df78e3348e1c69e1e2ff19001601fc2f5"
# Case -> modality; every case has <case>_image.nrrd and an expert <case>_label.nrrd.
PYRADIOMICS_CASES = {"brain1": "MR", "brain2": "MR", "breast1": "MR", "lung1": "CT", "lung2": "CT"}
# Head MR: none of the organ classes (mvmic.model.tasks.organs) is in view, so the organ map is known, all
# background: the organ task's negative examples (without them its heads name organs in any image).
ORGAN_FREE_CASES = ("brain1", "brain2")


@dataclass
class PydicomImage:
    source: str  # package and file name, e.g. "pydicom-data:MR2_UNCR.dcm"
    group: str  # PatientID, else StudyInstanceUID
    image: NativeImage


@dataclass
class Volume:
    dataset: str  # the package it comes from, e.g. "pyradiomics"; with ``case``, the patient
    case: str
    modality: str
    voxels: np.ndarray  # (slices, rows, columns) int16, in modality units (HU for CT)
    mask: np.ndarray | None  # (slices, rows, columns) bool, expert lesion label
    organs: np.ndarray | None  # (slices, rows, columns) uint8, index into mvmic.model.tasks.organs.ORGAN_CLASSES
    spacing: tuple[float, float, float]  # row, column, slice (mm)
    origin: tuple[float, float, float]
    row_direction: tuple[float, float, float]
    column_direction: tuple[float, float, float]
    slice_direction: tuple[float, float, float]
    slice_thickness: float | None = None  # mm, where it differs from the slice spacing (a subsampled volume)


def select_pydicom_images() -> tuple[list[PydicomImage], list[dict[str, str]]]:
    """Real, losslessly stored, distinct images from pydicom and pydicom-data."""
    readable: list[tuple[str, NativeImage]] = []
    skipped: list[dict[str, str]] = []
    for path in sorted({Path(p) for p in get_testdata_files("**/*") if Path(p).is_file()}):
        try:
            readable.append((_source_name(path), read_dicom(path)))
        except DicomInputError as exc:
            skipped.append({"source": _source_name(path), "reason": f"unreadable: {exc}"})
    # Uncompressed files first, so that of several encodings of the same pixels,
    # the one kept is the plain original.
    readable.sort(key=lambda item: (UID(item[1].header.file_meta.TransferSyntaxUID).is_compressed, item[0]))
    kept: list[PydicomImage] = []
    seen: dict[str, str] = {}  # pixel hash -> source of the kept file
    for source, image in readable:
        reason = _rejection(image) or _duplicate(image, seen, source)
        if reason:
            skipped.append({"source": source, "reason": reason})
            continue
        group = str(image.header.get("PatientID") or image.header.get("StudyInstanceUID") or source)
        kept.append(PydicomImage(source=source, group=group, image=image))
    return kept, skipped


def _source_name(path: Path) -> str:
    package = "pydicom-data" if "data_store" in path.parts else "pydicom"
    return f"{package}:{path.name}"


def _rejection(image: NativeImage) -> str | None:
    header = image.header
    modality = str(header.get("Modality", ""))
    if modality not in PATIENT_MODALITIES:
        return f"not a patient image (Modality {modality or 'missing'})"
    if _stored_lossily(image):
        return "stored lossily"
    if image.format.photometric == "PALETTE COLOR":
        return "palette colour: stored values are indices, not intensities"
    if min(header.Rows, header.Columns) < MIN_SIDE:
        return f"thumbnail ({header.Rows} x {header.Columns})"
    return None


def _stored_lossily(image: NativeImage) -> bool:
    header = image.header
    flag = str(header.get("LossyImageCompression", ""))
    syntax = str(header.file_meta.get("TransferSyntaxUID", ""))
    # read_dicom keeps the file meta as it arrived: it names the stored syntax.
    return flag == "01" or syntax in LOSSY_SYNTAXES or (syntax in MAYBE_LOSSY_SYNTAXES and flag != "00")


def _duplicate(image: NativeImage, seen: dict[str, str], name: str) -> str | None:
    digest = hashlib.sha256(image.pixels.tobytes()).hexdigest()
    if digest in seen:
        return f"same pixels as {seen[digest]}"
    seen[digest] = name
    return None


def fetch_pyradiomics(cache_dir: Path) -> Path:
    """The pyradiomics source archive, downloaded once with pip and checked by sha256."""
    return fetch_source_archive("pyradiomics", PYRADIOMICS_VERSION, PYRADIOMICS_SHA256, cache_dir)


def fetch_source_archive(package: str, release: str, sha256: str, cache_dir: Path) -> Path:
    """``<package>-<release>.tar.gz`` from PyPI (``pip download --no-binary :all:``), downloaded once
    into ``cache_dir`` and checked by sha256. Raises RuntimeError if pip fails or the digest differs."""
    archive = cache_dir / f"{package}-{release}.tar.gz"
    if not archive.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation",
                   "--no-binary", ":all:", f"{package}=={release}", "-d", str(cache_dir)]
        result = subprocess.run(command, check=False, capture_output=True, text=True)
        if result.returncode != 0 or not archive.exists():
            raise RuntimeError(f"could not download {package} {release} with pip:\n{result.stderr[-2000:]}")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != sha256:
        archive.unlink()
        raise RuntimeError(f"{archive.name} has sha256 {digest}, expected {sha256}; removed, run again")
    return archive


def pyradiomics_volumes(archive: Path) -> Iterator[Volume]:
    """The CT and MR volumes of the pyradiomics test data with their expert masks."""
    with tarfile.open(archive) as tar:
        for case, modality in PYRADIOMICS_CASES.items():
            image, header = _read_nrrd(tar, f"pyradiomics-{PYRADIOMICS_VERSION}/data/{case}_image.nrrd")
            label, _ = _read_nrrd(tar, f"pyradiomics-{PYRADIOMICS_VERSION}/data/{case}_label.nrrd")
            yield _volume(case, modality, image, label, header)


def _read_nrrd(tar: tarfile.TarFile, member: str) -> tuple[np.ndarray, dict]:
    stream = tar.extractfile(member)
    if stream is None:
        raise RuntimeError(f"{member} is missing from the pyradiomics archive")
    header = nrrd.read_header(stream)
    data = nrrd.read_data(header, stream)
    return data, header


def _volume(case: str, modality: str, image: np.ndarray, label: np.ndarray, header: dict) -> Volume:
    # NRRD arrays index (x, y, z); DICOM slices are (rows = y, columns = x).
    directions = np.asarray(header["space directions"], dtype=float)
    steps = np.linalg.norm(directions, axis=1)
    unit = directions / steps[:, None]
    return Volume(
        dataset="pyradiomics",
        case=case,
        modality=modality,
        voxels=np.ascontiguousarray(image.transpose(2, 1, 0)).astype(np.int16),
        mask=np.ascontiguousarray(label.transpose(2, 1, 0)) > 0,
        organs=np.zeros(image.shape[::-1], dtype=np.uint8) if case in ORGAN_FREE_CASES else None,
        spacing=(float(steps[1]), float(steps[0]), float(steps[2])),
        origin=tuple(float(v) for v in header["space origin"]),
        row_direction=tuple(float(v) for v in unit[0]),
        column_direction=tuple(float(v) for v in unit[1]),
        slice_direction=tuple(float(v) for v in unit[2]),
    )
