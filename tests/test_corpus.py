"""Tests for the real-image corpus that `mvmic data prepare` builds at data/corpus."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import subprocess
import sys
import tarfile
import time
from collections import defaultdict
from functools import cache
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from mvmic.corpus.manifest import CorpusEntry, Manifest
from mvmic.corpus.sources import ORGAN_FREE_CASES
from mvmic.model.tasks.organs import ORGAN_CLASSES
from mvmic.pixels import NativeImage, read_dicom

REPO_ROOT = Path(__file__).resolve().parent.parent
PYRADIOMICS_ARCHIVE = REPO_ROOT / "data" / "cache" / "pyradiomics-3.0.1.tar.gz"
PYRADIOMICS_CASES = ("brain1", "brain2", "breast1", "lung1", "lung2")
TOTALSEGMENTATOR_ARCHIVE = REPO_ROOT / "data" / "cache" / "totalsegmentator-2.18.0.tar.gz"
TOTALSEGMENTATOR_FILES = "totalsegmentator-2.18.0/tests/reference_files"
TEST_MODALITIES = {"CT", "MR", "CR", "NM", "US"}
# Transfer syntaxes that are lossy, or may be unless LossyImageCompression says "00".
LOSSY_SYNTAXES = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81"}
MAYBE_LOSSY_SYNTAXES = {"1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.203"}
# A slice source looks like "pyradiomics-3.0.1:lung1_image.nrrd[z=12]".
SLICE_SOURCE = re.compile(r"^pyradiomics-3\.0\.1:(?P<case>\w+)_image\.nrrd\[z=(?P<z>\d+)\]$")

# Some pydicom test files are anonymised with hashes where UIDs belong; pydicom warns on every read.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning"),
    pytest.mark.filterwarnings("ignore:The value length .* exceeds the maximum length:UserWarning"),
]


@cache
def _image(path: Path) -> NativeImage:
    # Several tests look at every corpus image; decode each once.
    return read_dicom(path)


@cache
def _header(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


def _by_case(manifest: Manifest) -> dict[str, list[CorpusEntry]]:
    """pyradiomics entries by volume, in slice order, from the source each names (not from its group)."""
    cases: dict[str, list[tuple[int, CorpusEntry]]] = defaultdict(list)
    for entry in manifest.entries:
        if entry.source.startswith("pyradiomics"):
            match = SLICE_SOURCE.match(entry.source)
            assert match, f"{entry.id}: unexpected source {entry.source!r}"
            cases[match["case"]].append((int(match["z"]), entry))
    return {case: [e for _, e in sorted(slices, key=lambda s: s[0])] for case, slices in cases.items()}


def _mvmic(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mvmic.cli", *args]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)


# ---------------------------------------------------------------- 1. size and coverage


def test_manifest_size_and_modalities(corpus_manifest: Manifest) -> None:
    entries = corpus_manifest.entries
    assert sum(e.frames for e in entries) >= 150
    assert len({e.modality for e in entries}) >= 4
    assert {e.split for e in entries} <= {"train", "val", "test"}
    test_modalities = {e.modality for e in corpus_manifest.select("test")}
    assert TEST_MODALITIES <= test_modalities, f"test split lacks {TEST_MODALITIES - test_modalities}"
    assert {"train", "val", "test"} == {e.split for e in entries}


def test_manifest_summary_matches_entries(corpus_dir: Path, corpus_manifest: Manifest) -> None:
    # The slice counts a reader sees at the top of manifest.json must agree with the entries below them.
    payload = json.loads((corpus_dir / "manifest.json").read_text())
    assert payload["slices"]["total"] == sum(e.frames for e in corpus_manifest.entries)
    assert payload["slices"]["by_modality"] == corpus_manifest.slice_counts("modality")
    assert payload["slices"]["by_split"] == corpus_manifest.slice_counts("split")
    assert len({e.id for e in corpus_manifest.entries}) == len(corpus_manifest.entries)


# ---------------------------------------------------------------- 2. split by group


def test_no_group_in_two_splits(corpus_manifest: Manifest) -> None:
    splits: dict[str, set[str]] = defaultdict(set)
    for entry in corpus_manifest.entries:
        splits[entry.group].add(entry.split)
    assert {g: s for g, s in splits.items() if len(s) > 1} == {}


def test_groups_are_patients_and_studies_do_not_leak(corpus_dir: Path, corpus_manifest: Manifest) -> None:
    # The group must be the file's own patient (or study, where the patient is anonymous),
    # and no patient or study may reach two splits under another group name.
    by_patient: dict[str, set[str]] = defaultdict(set)
    by_study: dict[str, set[str]] = defaultdict(set)
    for entry in corpus_manifest.entries:
        header = _header(corpus_dir / entry.path)
        patient = str(header.get("PatientID") or "")
        assert entry.group == (patient or str(header.StudyInstanceUID)), entry.id
        if patient:
            by_patient[patient].add(entry.split)
        by_study[str(header.StudyInstanceUID)].add(entry.split)
    assert {p: s for p, s in by_patient.items() if len(s) > 1} == {}
    assert {u: s for u, s in by_study.items() if len(s) > 1} == {}


def test_each_pyradiomics_volume_is_one_split(corpus_manifest: Manifest) -> None:
    cases = _by_case(corpus_manifest)
    assert set(cases) == set(PYRADIOMICS_CASES)
    for case, entries in cases.items():
        assert len({e.split for e in entries}) == 1, f"{case} is split across {({e.split for e in entries})}"
        assert len(entries) > 1, f"{case} has a single slice"
    assert cases["lung1"][0].split == cases["brain2"][0].split == "test"


def test_every_manifest_file_exists(corpus_dir: Path, corpus_manifest: Manifest) -> None:
    paths = [e.path for e in corpus_manifest.entries] + [e.label for e in corpus_manifest.entries if e.label]
    assert [p for p in paths if not (corpus_dir / p).is_file()] == []
    # And nothing unlisted: a stale file from an older build would be silently left out of every split.
    listed = {(corpus_dir / p).resolve() for p in paths}
    on_disk = {p.resolve() for sub in ("images", "labels") for p in (corpus_dir / sub).iterdir()}
    assert on_disk - listed == set()


# ---------------------------------------------------------------- 3. entries agree with their files


def test_entries_agree_with_their_files(corpus_dir: Path, corpus_manifest: Manifest) -> None:
    mismatches = []
    for entry in corpus_manifest.entries:
        image = _image(corpus_dir / entry.path)
        fmt = image.format
        actual = (image.pixels.shape[1], image.pixels.shape[2], image.frames, fmt.bits_stored, fmt.signed,
                  fmt.samples_per_pixel, fmt.photometric, str(image.header.Modality))
        expected = (entry.rows, entry.columns, entry.frames, entry.bits_stored, entry.signed,
                    entry.samples_per_pixel, entry.photometric, entry.modality)
        if actual != expected:
            mismatches.append(f"{entry.id}: file {actual} != manifest {expected}")
    assert mismatches == []


# ---------------------------------------------------------------- 4. nothing lossy, synthetic or duplicated


def test_nothing_stored_lossily(corpus_dir: Path, corpus_manifest: Manifest) -> None:
    for entry in corpus_manifest.entries:
        assert str(_header(corpus_dir / entry.path).get("LossyImageCompression", "")) != "01", entry.id
        if not entry.source.startswith("pydicom"):
            continue
        # The corpus file is uncompressed whatever its origin: the original tells how it was stored.
        original = pydicom.dcmread(get_testdata_file(entry.source.split(":", 1)[1]), stop_before_pixels=True)
        syntax, flag = str(original.file_meta.TransferSyntaxUID), str(original.get("LossyImageCompression", ""))
        assert flag != "01", entry.source
        assert syntax not in LOSSY_SYNTAXES, entry.source
        assert syntax not in MAYBE_LOSSY_SYNTAXES or flag == "00", entry.source


def test_only_patient_images(corpus_dir: Path, corpus_manifest: Manifest) -> None:
    for entry in corpus_manifest.entries:
        header = _header(corpus_dir / entry.path)
        assert header.Modality not in {"OT", "SEG", "RTDOSE", "RTSTRUCT", "RTPLAN", "SR"}, entry.id
        assert header.Modality == entry.modality, entry.id
        assert entry.photometric != "PALETTE COLOR", entry.id  # palette indices are not intensities
        assert min(entry.rows, entry.columns) >= 32, f"{entry.id} is a thumbnail"


def test_no_duplicate_pixel_arrays(corpus_dir: Path, corpus_manifest: Manifest) -> None:
    seen: dict[str, str] = {}
    duplicates = []
    for entry in corpus_manifest.entries:
        pixels = _image(corpus_dir / entry.path).pixels
        digest = hashlib.sha256(f"{pixels.shape}{pixels.dtype}".encode() + pixels.tobytes()).hexdigest()
        if digest in seen:
            duplicates.append(f"{entry.id} == {seen[digest]}")
        seen.setdefault(digest, entry.id)
    assert duplicates == []


# ---------------------------------------------------------------- 5. lesion labels


def test_label_files_match_their_images(corpus_dir: Path, corpus_manifest: Manifest) -> None:
    # pyradiomics slices carry an expert lesion mask (head MR an organ map too), TotalSegmentator slices
    # an organ map (but the CT angiogram, whose masks outline the aorta only), others nothing.
    for entry in corpus_manifest.entries:
        dataset = entry.source.split("-", 1)[0]
        expected = {"pyradiomics": ["mask"], "totalsegmentator": ["organs"]}.get(dataset)
        if ":ct-angio[" in entry.source:
            expected = None
        if expected is None:
            assert entry.label is None, entry.id
            continue
        if any(f":{case}_image.nrrd[" in entry.source for case in ORGAN_FREE_CASES):
            expected = ["mask", "organs"]
        assert entry.label, f"{entry.id} has no label"
        with np.load(corpus_dir / entry.label) as npz:
            assert sorted(npz) == expected, entry.id
            arrays = {name: npz[name] for name in npz}
        for name, array in arrays.items():
            assert array.dtype == {"mask": np.bool_, "organs": np.uint8}[name], entry.id
            assert array.shape == (entry.rows, entry.columns), entry.id
        if "organs" in arrays:
            assert arrays["organs"].max() <= len(ORGAN_CLASSES), entry.id
            if dataset == "pyradiomics":  # head MR: no organ class in view
                assert not arrays["organs"].any(), entry.id


@pytest.mark.parametrize("case", PYRADIOMICS_CASES)
def test_every_volume_has_lesion_pixels(case: str, corpus_dir: Path, corpus_manifest: Manifest) -> None:
    lesion = 0
    for entry in _by_case(corpus_manifest)[case]:
        with np.load(corpus_dir / str(entry.label)) as npz:
            lesion += int(npz["mask"].sum())
    assert lesion > 0, f"{case}: no lesion pixel in any slice"


def _read_nrrd(tar: tarfile.TarFile, member: str) -> tuple[np.ndarray, dict]:
    stream = tar.extractfile(f"pyradiomics-3.0.1/data/{member}")
    assert stream is not None, member
    header = nrrd.read_header(stream)
    return nrrd.read_data(header, stream), header


@pytest.mark.parametrize("case", PYRADIOMICS_CASES)
def test_slices_match_the_source_volume(case: str, corpus_dir: Path, corpus_manifest: Manifest) -> None:
    # Independent check of the NRRD -> DICOM conversion against the downloaded archive: pynrrd indexes
    # (x, y, z) and DICOM frames (row = y, column = x), so slice z must hold voxels[:, :, z].T in modality
    # units once rescaled, its mask labels[:, :, z].T, and pixel (y, x) must lie where the NRRD puts voxel (x, y, z).
    if not PYRADIOMICS_ARCHIVE.is_file():
        pytest.fail(f"{PYRADIOMICS_ARCHIVE} is missing: `mvmic data prepare` downloads it")
    with tarfile.open(PYRADIOMICS_ARCHIVE) as tar:
        voxels, header = _read_nrrd(tar, f"{case}_image.nrrd")
        labels, _ = _read_nrrd(tar, f"{case}_label.nrrd")
    entries = _by_case(corpus_manifest)[case]
    assert len(entries) == voxels.shape[2]
    directions = np.asarray(header["space directions"], dtype=float)
    origin = np.asarray(header["space origin"], dtype=float)
    for z, entry in enumerate(entries):
        image = _image(corpus_dir / entry.path)
        ds = image.header
        values = image.frame(0).astype(np.int64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert np.array_equal(values, voxels[:, :, z].T), entry.id
        with np.load(corpus_dir / str(entry.label)) as npz:
            assert np.array_equal(npz["mask"], labels[:, :, z].T > 0), entry.id
        # Patient position of pixel (row, column) by DICOM's rules vs. the NRRD's for voxel (column, row, z).
        row_dir, col_dir = np.asarray(ds.ImageOrientationPatient[:3]), np.asarray(ds.ImageOrientationPatient[3:])
        row_spacing, col_spacing = map(float, ds.PixelSpacing)
        for row, column in ((0, 0), (entry.rows - 1, 0), (0, entry.columns - 1), (entry.rows // 2, entry.columns // 3)):
            dicom = np.asarray(ds.ImagePositionPatient, float) + column * col_spacing * row_dir + row * row_spacing * col_dir
            expected = origin + directions.T @ np.array([column, row, z], dtype=float)
            np.testing.assert_allclose(dicom, expected, atol=1e-3, err_msg=f"{entry.id} pixel ({row}, {column})")


# ---------------------------------------------------------------- 5b. organ maps (TotalSegmentator's output)


def _organ_entries(manifest: Manifest, case: str) -> list[CorpusEntry]:
    return sorted((e for e in manifest.entries if re.fullmatch(rf"totalsegmentator-{case}-\d+", e.id)), key=lambda e: e.id)


def test_organ_studies_are_split_by_volume(corpus_manifest: Manifest) -> None:
    splits = {case: {(e.group, e.split) for e in _organ_entries(corpus_manifest, case)} for case in ("ct-series", "ct", "mr")}
    assert [len(_organ_entries(corpus_manifest, c)) for c in ("ct-series", "ct", "mr")] == [20, 30, 20]
    assert all(len(groups) == 1 for groups in splits.values()), splits
    assert [next(iter(splits[c]))[1] for c in ("ct-series", "ct", "mr")] == ["train", "test", "train"]


def test_held_out_organ_volume_holds_every_class(corpus_dir: Path, corpus_manifest: Manifest) -> None:
    counts = sum(np.bincount(e.labels(corpus_dir).organs.ravel(), minlength=len(ORGAN_CLASSES) + 1)
                 for e in _organ_entries(corpus_manifest, "ct"))
    assert (counts[1:] > 0).all(), dict(zip(ORGAN_CLASSES, counts[1:].tolist(), strict=True))


@pytest.mark.parametrize(("case", "image", "mask"), [("ct", "example_ct_sm.nii.gz", "example_seg.nii.gz"),
                                                     ("mr", "example_mr_sm.nii.gz", "example_seg_mr.nii.gz")])
def test_organ_slices_match_the_source_volume(case: str, image: str, mask: str, corpus_dir: Path,
                                              corpus_manifest: Manifest) -> None:
    # Independent of the conversion: every pixel's patient position by DICOM's rules, taken back to a
    # NIfTI voxel through the volume's own affine (RAS), must hold the pixel's value and its liver label
    # (class 5 in both TotalSegmentator tasks).
    if not TOTALSEGMENTATOR_ARCHIVE.is_file():
        pytest.fail(f"{TOTALSEGMENTATOR_ARCHIVE} is missing: `mvmic data prepare` downloads it")
    with tarfile.open(TOTALSEGMENTATOR_ARCHIVE) as tar:
        volume, labels = (nib.Nifti1Image.from_bytes(gzip.decompress(tar.extractfile(
            f"{TOTALSEGMENTATOR_FILES}/{name}").read())) for name in (image, mask))
    voxels, classes, inverse = np.asanyarray(volume.dataobj), np.asanyarray(labels.dataobj), np.linalg.inv(volume.affine)
    entries = _organ_entries(corpus_manifest, case)
    assert len(entries) == voxels.shape[2]
    liver = ORGAN_CLASSES.index("liver") + 1
    for entry in entries:
        image_ = _image(corpus_dir / entry.path)
        ds = image_.header
        rows, columns = np.meshgrid(np.arange(entry.rows), np.arange(entry.columns), indexing="ij")
        row_dir, col_dir = np.asarray(ds.ImageOrientationPatient[:3], float), np.asarray(ds.ImageOrientationPatient[3:], float)
        lps = (np.asarray(ds.ImagePositionPatient, float)[:, None, None] + columns * float(ds.PixelSpacing[1])
               * row_dir[:, None, None] + rows * float(ds.PixelSpacing[0]) * col_dir[:, None, None])
        ijk = np.rint(np.tensordot(inverse, np.stack([-lps[0], -lps[1], lps[2], np.ones(rows.shape)]), axes=1)[:3])
        i, j, k = ijk.astype(int)
        values = image_.frame(0).astype(np.int64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert np.array_equal(values, voxels[i, j, k]), entry.id
        organs = entry.labels(corpus_dir).organs
        assert np.array_equal(organs == liver, classes[i, j, k] == 5), entry.id


# ---------------------------------------------------------------- 6. the prepare command


def test_prepare_again_is_a_quick_no_op(corpus_dir: Path) -> None:
    manifest = corpus_dir / "manifest.json"
    before, mtime = manifest.read_bytes(), manifest.stat().st_mtime_ns
    start = time.monotonic()
    result = _mvmic("data", "prepare", "--out", str(corpus_dir))
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    assert "already prepared" in result.stdout
    assert manifest.read_bytes() == before
    assert manifest.stat().st_mtime_ns == mtime
    assert elapsed < 30, f"a no-op prepare took {elapsed:.1f} s"


def _unwritable_outs(tmp_path: Path) -> dict[str, list[str]]:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder\n")
    cache = str(REPO_ROOT / "data" / "cache")
    return {
        "proc": ["--out", "/proc/forbidden", "--cache", cache],
        "below-a-file": ["--out", str(a_file / "corpus"), "--cache", cache],
        "cache-below-a-file": ["--out", str(tmp_path / "corpus"), "--cache", str(a_file / "cache")],
    }


@pytest.mark.parametrize("where", ["proc", "below-a-file", "cache-below-a-file"])
def test_prepare_into_an_unwritable_place_is_a_clean_error(where: str, tmp_path: Path) -> None:
    result = _mvmic("data", "prepare", *_unwritable_outs(tmp_path)[where])
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, f"uncaught exception:\n{result.stderr[-800:]}"
    assert "mvmic: error:" in result.stderr, result.stderr[-800:]


def test_validation_has_ct_frames_of_the_test_frames_kind(corpus_manifest: Manifest) -> None:
    # A CT angiogram of a patient of its own validates the lesion task (the other validation images are mostly tiny).
    angio = [e for e in corpus_manifest.entries if e.group == "totalsegmentator:ct-angio"]
    assert len(angio) == 24 and {e.split for e in angio} == {"val"}
    assert {(e.rows, e.columns, e.modality) for e in angio} == {(167, 233, "CT")}
    assert all(e.label is None for e in angio)  # its masks outline the aorta only: no organ map
