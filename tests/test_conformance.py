"""Every kind of DICOM instance MVMIC writes passes dciodvfy (Debian dicom3tools, `make test-tools`) with no
error that its input did not already have: an original's own errors are not ours to fix, and a lossless
decode gives the original back, errors included.

    corpus instance --dicom_to_mvm (lossless, near-lossless, lossy)--> .mvm
        --mvm_to_dicom + save_as-->              decoded   (`mvmic decompress`, /v1/decompress)
        --mvm_instance-->                        stored    (/v1/compress as DICOM, what the gateway stores)
        --storage.render(Explicit VR LE)-->      retrieved (the gateway's WADO-RS default)
        --storage.analysis_instances-->          SEG, SR   (the gateway's analysis objects)
    each --dciodvfy--> "Error" lines, less the original's --> none

dciodvfy cannot read the stored instance as written: it takes any transfer syntax it does not know (ours is
private, MVM_TRANSFER_SYNTAX) for a native one, and stops at the encapsulated Pixel Data with "Error -
Undefined value length of other byte/word element is illegal in non-encapsulated transfer syntax" and
"Error - Dicom dataset read failed". So it checks the same bytes with only the file meta's Transfer Syntax
UID replaced by a standard encapsulated one (RLE Lossless, which constrains neither photometric nor bits).
"""

from __future__ import annotations

import io
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from mvmic.derivative import lossy_derivative
from mvmic.model.codec import MvmicCodec
from mvmic.model.tasks.analysis import Analyzer
from mvmic.pacs.analysis_objects import SHARED_TYPE_2, as_reference, measurement_report, segmentation
from mvmic.pacs.storage import StoragePolicy, analysis_instances, prepare_instance, render
from mvmic.pixels import read_dataset
from mvmic.transcode import MVM_TRANSFER_SYNTAX, dicom_to_mvm, mvm_instance, mvm_to_dicom, parse_for

# (corpus id or a builder's name below, the analysis objects made): every modality and pixel format of the corpus,
# small images
SAMPLE = (
    ("pydicom-CT_small", ("SEG", "SR")),  # CT, 16 bits signed, 128 x 128
    ("pydicom-MR_small", ("SEG", "SR")),  # MR, 16 bits signed, 64 x 64
    ("pydicom-emri_small", ("SR",)),  # Enhanced MR without functional groups, 10 frames, 12 bits; no frame of
    # reference, which a SEG of several frames needs
    ("pydicom-eCT_Supplemental", ("SEG", "SR")),  # Enhanced CT with functional groups, 2 frames of 512 x 512, 16 bits
    ("pydicom-color-pl", ()),  # US, RGB 8 bits; no Patient ID, a SOP Instance UID of a non-conformant root, and a Study
    # Time 11:20:00 (not a TM) that highdicom will not copy into a SEG or SR (logged; the image is stored)
    ("pydicom-JPEG-LL", ("SEG", "SR")),  # NM secondary capture, 16 bits signed, JPEG Lossless; a frame of reference but
    # no position: a SEG on its pixel grid, without one
    ("small-CR", ("SEG", "SR")),  # CR, MONOCHROME1, 10 bits: small_cr
    ("MR-without-patient", ("SEG", "SR")),  # without_patient: the objects copy the Type 2 attributes it lacks, empty
)
MODES = {"lossless": 0, "near-lossless": 2, "lossy": None}
ERROR = "Error - "
# A dciodvfy false positive. PS3.3 C.8.13.4 (MR Pulse Sequence Module) and C.7.6.18.3 (Bulk Motion Synchronization
# Module) make these attributes "Required if Image Type (0008,0008) Value 1 is ORIGINAL or MIXED. May be present
# otherwise." (or "Otherwise may be present if ... DERIVED and ..."); dicom3tools' module tables give them that
# condition without "may be present otherwise" (no mbpo="true" in libsrc/standard/module/mr.tpl and base.tpl), so a
# DERIVED image that keeps its source's values gets, e.g.:
#   Error - Attribute present when condition unsatisfied (which may not be present otherwise) Type 1C
#   Conditional Element=<PulseSequenceName> Module=<MRPulseSequence>
# Ignored only in an instance whose Image Type value 1 is DERIVED, for these two modules.
MAY_BE_PRESENT_OTHERWISE = re.compile(
    r"Error - Attribute present when condition unsatisfied \(which may not be present otherwise\) Type 1C "
    r"Conditional Element=<\w+> Module=<(MRPulseSequence|BulkMotionSynchronization)>$")
# A derivative names its source by its SOP Instance UID: where the original's UID is not conformant, dciodvfy says
# so again of the reference; the same error as the original's of (0008,0018), so not ours.
REFERENCE = re.compile(r"\(0x0008,0x1155\) (UI )?Referenced SOP Instance UID")


@dataclass(frozen=True)
class Verdict:
    errors: list[str]  # the Error lines
    text: str  # all dciodvfy said


def dciodvfy(path: Path) -> Verdict:
    executable = shutil.which("dciodvfy")
    if executable is None:
        pytest.fail("dciodvfy is not installed: make test-tools (Debian dicom3tools)")
    run = subprocess.run([executable, str(path)], capture_output=True, text=True, timeout=120, check=False)
    text = run.stdout + run.stderr
    return Verdict([line for line in text.splitlines() if line.startswith(ERROR)], text)


def introduced(ours: Verdict, dataset: Dataset, original: Verdict, source: Dataset) -> list[str]:
    """The errors of ``ours`` (an instance written from ``source``) that ``original`` (source's) does not have."""
    theirs, uid = set(original.errors), str(source.get("SOPInstanceUID", ""))
    image_type = dataset.get("ImageType") or [""]
    derived = (image_type if isinstance(image_type, str) else image_type[0]) == "DERIVED"
    return [line for line in ours.errors if line not in theirs
            and not (uid and uid in line and REFERENCE.sub(r"(0x0008,0x0018) \1SOP Instance UID", line) in theirs)
            and not (derived and MAY_BE_PRESENT_OTHERWISE.match(line))]


def with_standard_syntax(data: bytes) -> bytes:
    """``data`` (a Part 10 file of MVM_TRANSFER_SYNTAX) with RLE Lossless as its transfer syntax, nothing else changed:
    the file meta rewritten (its group length follows), the data set's bytes as they were."""
    meta = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
    assert meta.TransferSyntaxUID == MVM_TRANSFER_SYNTAX
    meta.TransferSyntaxUID = RLELossless
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return data[:132] + buffer.getvalue() + data[meta_end(data):]


def meta_end(data: bytes) -> int:
    """Where the data set of a Part 10 file begins: after its File Meta Information (its group length)."""
    assert data[128:132] == b"DICM" and data[132:136] == b"\x02\x00\x00\x00", "no File Meta Information Group Length"
    return 144 + struct.unpack("<I", data[140:144])[0]


def part10(dataset: Dataset) -> bytes:
    """As `mvmic decompress` and /v1/decompress write a decoded instance."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def small_cr(corpus_dir: Path) -> bytes:
    """The middle 256 x 256 of the corpus's CR (1760 x 1760, too slow to code three ways in a test), its header as
    it was but for Rows and Columns."""
    dataset = pydicom.dcmread(corpus_dir / "images" / "pydicom-RG3_UNCR.dcm")
    middle = dataset.pixel_array[752:1008, 752:1008]
    dataset.Rows, dataset.Columns = middle.shape
    dataset.PixelData = np.ascontiguousarray(middle).tobytes()
    return part10(dataset)


def without_patient(corpus_dir: Path) -> bytes:
    """pydicom-MR_small without the Type 2 patient and study attributes that the analysis objects copy."""
    dataset = pydicom.dcmread(corpus_dir / "images" / "pydicom-MR_small.dcm")
    for keyword in SHARED_TYPE_2:
        delattr(dataset, keyword)
    return part10(dataset)


def original_of(name: str, corpus_dir: Path) -> bytes:
    builders = {"small-CR": small_cr, "MR-without-patient": without_patient}
    return builders[name](corpus_dir) if name in builders else (corpus_dir / "images" / f"{name}.dcm").read_bytes()


@pytest.fixture(scope="module")
def codec() -> MvmicCodec:
    return MvmicCodec.load()


@pytest.fixture(scope="module")
def analyzer(codec) -> Analyzer:
    return Analyzer.load(codec)


def written(original: bytes, codec: MvmicCodec, analyzer: Analyzer) -> dict[str, bytes]:
    """Every instance MVMIC writes from ``original``, by kind."""
    instances = {}
    for mode, max_error in MODES.items():
        compressed = dicom_to_mvm(original, codec, max_error=max_error)
        instances[f"{mode} decoded"] = part10(mvm_to_dicom(compressed.data, codec))
        stored = mvm_instance(compressed, codec)
        instances[f"{mode} stored"] = stored
        instances[f"{mode} retrieved"] = render(stored, [ExplicitVRLittleEndian], codec)[0]
        if mode != "near-lossless":  # the analysis objects of the original's header and of a derivative's
            for instance in analysis_instances(read_dataset(stored), compressed.data, analyzer):
                instances[f"{mode} {pydicom.dcmread(io.BytesIO(instance)).Modality}"] = instance
    return instances


@pytest.mark.parametrize(("name", "analysis"), SAMPLE, ids=[name for name, _ in SAMPLE])
def test_what_mvmic_writes_passes_dciodvfy(name: str, analysis: tuple[str, ...], corpus_dir, codec, analyzer,
                                           tmp_path) -> None:
    original = original_of(name, corpus_dir)
    (tmp_path / "original.dcm").write_bytes(original)
    theirs, source = dciodvfy(tmp_path / "original.dcm"), read_dataset(original)
    instances = written(original, codec, analyzer)
    expected = {f"{mode} {kind}" for mode in MODES for kind in ("decoded", "stored", "retrieved")}
    expected |= {f"{mode} {kind}" for mode in ("lossless", "lossy") for kind in analysis}
    assert set(instances) == expected
    failures = []
    for kind, data in instances.items():
        path = tmp_path / f"{kind.replace(' ', '-')}.dcm"
        path.write_bytes(with_standard_syntax(data) if kind.endswith("stored") else data)
        ours = dciodvfy(path)
        new = introduced(ours, pydicom.dcmread(path, stop_before_pixels=True), theirs, source)
        if new:
            failures.append(f"--- {kind}: {len(new)} error(s) the original has not:\n" + "\n".join(new)
                            + f"\n--- dciodvfy of {kind}:\n{ours.text}")
    assert not failures, "\n".join(failures) + f"\n--- dciodvfy of the original:\n{theirs.text}"


def test_the_check_sees_errors(tmp_path, corpus_dir) -> None:
    """The comparison finds an error we would introduce: a Type 1 attribute emptied."""
    original = (corpus_dir / "images" / "pydicom-CT_small.dcm").read_bytes()
    broken = read_dataset(original)
    broken.Modality = None
    (tmp_path / "original.dcm").write_bytes(original)
    (tmp_path / "broken.dcm").write_bytes(part10(broken))
    new = introduced(dciodvfy(tmp_path / "broken.dcm"), broken, dciodvfy(tmp_path / "original.dcm"), broken)
    assert any("<Modality>" in line for line in new), new


def test_the_stored_instance_is_checked_byte_for_byte(corpus_dir) -> None:
    """What dciodvfy reads of a stored instance differs from it in the file meta's Transfer Syntax UID only."""
    stored = mvm_instance(dicom_to_mvm(corpus_dir / "images" / "pydicom-CT_small.dcm", None, max_error=0), None)
    checked = with_standard_syntax(stored)
    assert read_dataset(checked).file_meta.TransferSyntaxUID == RLELossless
    assert checked[meta_end(checked):] == stored[meta_end(stored):]


def test_a_seg_needs_a_slice_thickness_in_a_frame_of_reference(corpus_dir, codec, analyzer) -> None:
    """A CT with position but an empty Slice Thickness (Type 2) gets an SR, and no SEG: one in its frame of
    reference would lack the Slice Thickness of its Pixel Measures (Type 1C)."""
    source = read_dataset(corpus_dir / "images" / "pydicom-CT_small.dcm")
    source.SliceThickness = None
    frames = analyzer.analyze(parse_for(dicom_to_mvm(part10(source), None, max_error=0).data, None))
    with pytest.raises(ValueError, match="no Slice Thickness"):
        segmentation(source, frames, codec.model_id)
    assert measurement_report(source, frames, codec.model_id).Modality == "SR"


def test_the_source_is_left_as_it_was(corpus_dir) -> None:
    """as_reference fills the Type 2 attributes the source lacks (empty) in its own copy, never in the source."""
    source = read_dataset(corpus_dir / "images" / "pydicom-color-pl.dcm")
    source.file_meta.TransferSyntaxUID = MVM_TRANSFER_SYNTAX
    reference = as_reference(source)
    assert reference.PatientID is None and "PatientID" not in source
    assert reference.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert source.file_meta.TransferSyntaxUID == MVM_TRANSFER_SYNTAX
    del source.StudyInstanceUID
    with pytest.raises(ValueError, match="StudyInstanceUID"):
        as_reference(source)


def test_a_source_the_objects_cannot_copy_is_still_stored_compressed(corpus_dir, codec, analyzer, caplog) -> None:
    """pydicom-color-pl lacks a Patient ID (highdicom raised AttributeError, which took the instance's own
    compression down with it: stored as received) and has a Study Time that is not a TM (ValueError): the
    image is stored compressed, without SEG and SR, and the log says why."""
    data = (corpus_dir / "images" / "pydicom-color-pl.dcm").read_bytes()
    prepared = prepare_instance(data, codec, analyzer, StoragePolicy(max_error=0, with_analysis=True))
    assert prepared.failure is None and prepared.note.startswith("compressed"), prepared.note
    assert len(prepared.instances) == 1 and read_dataset(prepared.instances[0]).file_meta.TransferSyntaxUID \
        == MVM_TRANSFER_SYNTAX
    assert "no segmentation for the stored instance" in caplog.text and "TM" in caplog.text


def test_a_derivative_with_functional_groups_says_so_per_frame(corpus_dir) -> None:
    """An Enhanced CT's derivative: every frame DERIVED, the derivation in a Derivation Image functional group
    (shared, or each frame's own where the source has them per frame) and the source in the Source Image
    Evidence Sequence, none of it at the top level, where the IOD has no place for it."""
    source = read_dataset(corpus_dir / "images" / "pydicom-eCT_Supplemental.dcm")
    source.SharedFunctionalGroupsSequence[0].CTImageFrameTypeSequence[0].FrameType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    header = lossy_derivative(source, 12.5, "MVMICNET", "lossy", b"bitstream")
    shared = header.SharedFunctionalGroupsSequence[0]
    assert header.ImageType[0] == "DERIVED" and list(shared.CTImageFrameTypeSequence[0].FrameType)[:2] == \
        ["DERIVED", "PRIMARY"]
    (derivation,) = shared.DerivationImageSequence
    assert derivation.DerivationCodeSequence[0].CodeValue == "113040"
    assert derivation.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    evidence = header.SourceImageEvidenceSequence[0]
    assert evidence.StudyInstanceUID == source.StudyInstanceUID
    assert evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert not {"SourceImageSequence", "DerivationCodeSequence", "DerivationDescription"} & set(header.dir())
    for group in source.PerFrameFunctionalGroupsSequence:  # frames derived one by one already
        group.DerivationImageSequence = [Dataset()]
    header = lossy_derivative(source, 12.5, "MVMICNET", "lossy", b"bitstream")
    assert "DerivationImageSequence" not in header.SharedFunctionalGroupsSequence[0]
    for number, group in enumerate(header.PerFrameFunctionalGroupsSequence, start=1):
        assert len(group.DerivationImageSequence) == 2
        assert group.DerivationImageSequence[1].SourceImageSequence[0].ReferencedFrameNumber == number
