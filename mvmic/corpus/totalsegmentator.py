"""TotalSegmentator's test studies: real abdominal CT and MR with multi-organ masks.

    totalsegmentator 2.18.0 sdist, tests/reference_files/
      example_ct_dicom/CT.* (20-slice 512 x 512 CT series) + example_seg_dicom.nii.gz --> "ct-series"
      example_ct_sm.nii.gz (CT, 30 slices of 3 mm)          + example_seg.nii.gz       --> Volume "ct"
      example_mr_sm.nii.gz (MR, 20 slices of 3 mm)          + example_seg_mr.nii.gz    --> Volume "mr"
      aorta_report/example_ct.nii.gz (CT angiogram, 1.5 mm) every 8th slice, no organ map --> Volume "ct-angio"
        (its masks outline the aorta only, so every other organ would read as background: it
        validates the synthetic-lesion task, on a patient and scanner of its own)
    TotalSegmentator class index --ORGAN_GROUPS--> mvmic.model.tasks.organs.ORGAN_CLASSES index (0: background)

The masks are the output of TotalSegmentator itself (Wasserthal et al., Radiology: AI 2023),
not expert labels. The CT series is kept as the scanner wrote it (one DICOM file per slice),
but its anonymiser emptied every identifier: the corpus takes SOP Class and Instance UID back
from the file meta and gives the patient, study and series deterministic ones. The NIfTI volumes are turned into DICOM slices like the pyradiomics ones (Volume). NIfTI
arrays are indexed (x, y, z) in their own orientation; both are brought to DICOM's LPS
axes: rows toward posterior, columns toward the patient's left, slices toward superior.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from mvmic.corpus.sources import Volume, fetch_source_archive
from mvmic.model.tasks.organs import ORGAN_CLASSES
from mvmic.pixels import NativeImage, read_dicom

TOTALSEGMENTATOR_VERSION = "2.18.0"
TOTALSEGMENTATOR_SHA256 = "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03"
DATASET = "totalsegmentator"
_ROOT = f"totalsegmentator-{TOTALSEGMENTATOR_VERSION}/tests/reference_files"
CT_SERIES = "ct-series"
# case -> (modality, image, mask); the image of the series is the DICOM folder.
STUDIES = {
    CT_SERIES: ("CT", "example_ct_dicom", "example_seg_dicom.nii.gz"),
    "ct": ("CT", "example_ct_sm.nii.gz", "example_seg.nii.gz"),
    "mr": ("MR", "example_mr_sm.nii.gz", "example_seg_mr.nii.gz"),
    "ct-angio": ("CT", "aorta_report/example_ct.nii.gz", None),
}
SLICE_STEP = {"ct-angio": 8}  # 191 slices of 1.5 mm: every 8th, 12 mm apart, 24 slices
# The CT angiogram spans -1094..3343 HU, more than 12 bits hold: 0.16 % of its voxels lie outside
# what a 12-bit CT stores (-1024..3071 HU) and are clipped to it, as such a scanner would.
CT_12_BIT_HU = (-1024, 3071)
# ORGAN_CLASSES name -> TotalSegmentator class indices of the CT task ("total") and of the MR task
# ("total_mr"), from totalsegmentator/map_to_binary.py of the same release.
ORGAN_GROUPS = {
    "liver": ((5,), (5,)),
    "spleen": ((1,), (1,)),
    "kidney": ((2, 3, 23, 24), (2, 3)),  # right, left (and the CT task's kidney cysts)
    "stomach": ((6,), (6,)),
    "vertebra": (tuple(range(26, 51)), (19,)),  # S1, L5 ... C1; the MR task has one vertebra class
    "back muscle": ((86, 87), (46, 47)),  # autochthon left, right
    "aorta": ((52,), (23,)),
}


@dataclass
class SeriesSlice:
    """A slice of the CT series as the scanner stored it, and its organ map."""

    source: str  # file name inside the archive
    image: NativeImage
    organs: np.ndarray  # (rows, columns) uint8


def fetch_totalsegmentator(cache_dir: Path) -> Path:
    return fetch_source_archive("totalsegmentator", TOTALSEGMENTATOR_VERSION, TOTALSEGMENTATOR_SHA256, cache_dir)


def organ_map(classes: np.ndarray, modality: str) -> np.ndarray:
    """TotalSegmentator class indices (any shape) -> ORGAN_CLASSES indices, uint8, 0 elsewhere."""
    lookup = np.zeros(256, dtype=np.uint8)
    for index, name in enumerate(ORGAN_CLASSES, start=1):
        lookup[list(ORGAN_GROUPS[name][modality == "MR"])] = index
    return lookup[classes]


def totalsegmentator_volumes(archive: Path) -> Iterator[Volume]:
    """The NIfTI CT and MR volumes with their organ maps, on DICOM's axes."""
    with tarfile.open(archive) as tar:
        for case, (modality, image_name, mask_name) in STUDIES.items():
            if case != CT_SERIES:
                image, mask = _nifti(tar, image_name), mask_name and _nifti(tar, mask_name)
                if mask and (not np.allclose(image.affine, mask.affine) or image.shape != mask.shape):
                    raise RuntimeError(f"{image_name} and {mask_name} do not share a voxel grid")
                yield _volume(case, modality, image, mask, SLICE_STEP.get(case, 1))


def totalsegmentator_series(archive: Path) -> list[SeriesSlice]:
    """The 20-slice CT series, by slice position, each with the organ map sampled on its pixels."""
    with tarfile.open(archive) as tar:
        modality, folder, mask_name = STUDIES[CT_SERIES]
        mask = _nifti(tar, mask_name)
        members = sorted(m.name for m in tar.getmembers() if m.isfile() and m.name.startswith(f"{_ROOT}/{folder}/"))
        slices = []
        for name in members:
            image = read_dicom(io.BytesIO(tar.extractfile(name).read()))
            _restore_identifiers(image.header)
            classes = _sample_on_slice(mask, image)
            slices.append(SeriesSlice(name.rsplit("/", 1)[1], image, organ_map(classes, modality)))
    return sorted(slices, key=lambda s: float(s.image.header.ImagePositionPatient[2]))


def _restore_identifiers(header: Dataset) -> None:
    header.SOPClassUID = header.file_meta.MediaStorageSOPClassUID
    header.SOPInstanceUID = header.file_meta.MediaStorageSOPInstanceUID
    header.PatientID = f"{DATASET}:{CT_SERIES}"
    header.PatientName = f"{DATASET}^{CT_SERIES}"
    header.StudyInstanceUID = generate_uid(entropy_srcs=["mvmic-corpus", header.PatientID, "study"])
    header.SeriesInstanceUID = generate_uid(entropy_srcs=["mvmic-corpus", header.PatientID, "series"])


def _nifti(tar: tarfile.TarFile, name: str) -> nib.Nifti1Image:
    data = tar.extractfile(f"{_ROOT}/{name}").read()
    return nib.Nifti1Image.from_bytes(gzip.decompress(data))


def _lps_array(image: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    """(slices, rows, columns) voxels on DICOM's axes, and the LPS position (mm) of voxel (0, 0, 0)."""
    ras = nib.as_closest_canonical(image)  # axes toward right, anterior, superior
    data = np.asanyarray(ras.dataobj)[::-1, ::-1, :]  # toward left, posterior, superior
    corner = ras.affine @ np.array([data.shape[0] - 1, data.shape[1] - 1, 0, 1.0])
    return np.ascontiguousarray(data.transpose(2, 1, 0)), np.array([-corner[0], -corner[1], corner[2]])


def _volume(case: str, modality: str, image: nib.Nifti1Image, mask: nib.Nifti1Image | None, step: int) -> Volume:
    """Every ``step``-th slice of the volume (from the first) and of its organ map, if it has one."""
    voxels, origin = _lps_array(image)
    if case == "ct-angio":
        voxels = np.clip(voxels, *CT_12_BIT_HU)
    organs = None if mask is None else organ_map(_lps_array(mask)[0][::step].astype(np.uint8), modality)
    x, y, z = (float(v) for v in nib.as_closest_canonical(image).header.get_zooms()[:3])
    return Volume(dataset=DATASET, case=case, modality=modality, voxels=voxels[::step].astype(np.int16), mask=None,
                  organs=organs, spacing=(y, x, z * step), slice_thickness=z,
                  origin=tuple(float(v) for v in origin), row_direction=(1.0, 0.0, 0.0),
                  column_direction=(0.0, 1.0, 0.0), slice_direction=(0.0, 0.0, 1.0))


def _sample_on_slice(mask: nib.Nifti1Image, image: NativeImage) -> np.ndarray:
    """The mask's class at every pixel centre of a DICOM slice (nearest voxel); the slice's pixels
    must fall on the mask's voxel centres (RuntimeError otherwise)."""
    ds = image.header
    rows, columns = int(ds.Rows), int(ds.Columns)
    row_direction, column_direction = np.asarray(ds.ImageOrientationPatient[:3], float), np.asarray(
        ds.ImageOrientationPatient[3:], float)
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    r, c = np.meshgrid(np.arange(rows), np.arange(columns), indexing="ij")
    lps = (np.asarray(ds.ImagePositionPatient, float)[:, None, None] + c * column_spacing * row_direction[:, None, None]
           + r * row_spacing * column_direction[:, None, None])
    ras = np.stack([-lps[0], -lps[1], lps[2], np.ones_like(lps[0])])
    ijk = np.tensordot(np.linalg.inv(mask.affine), ras, axes=1)[:3]
    index = np.rint(ijk).astype(np.int64)
    if np.abs(ijk - index).max() > 0.01 or (index < 0).any() or any(
            (index[a] >= mask.shape[a]).any() for a in range(3)):
        raise RuntimeError(f"slice at {list(ds.ImagePositionPatient)} does not lie on the mask's voxel grid")
    return np.asanyarray(mask.dataobj)[index[0], index[1], index[2]].astype(np.uint8)
