"""The header of a lossy-compressed derivative of a DICOM instance (PS3.3 C.7.6.1.1.5).

    source header --lossy_derivative(ratio, method, content)--> header of the decoded instance
        new SOPInstanceUID (file meta too), the same for the same source and content (a gateway or
            `mvmic pacs compress-study` run twice replaces its derivative, never stores a second one),
        ImageType DERIVED,
        LossyImageCompression "01", ratio and method appended to any earlier ones,
        the derivation: DerivationDescription, DerivationCodeSequence (DCM 113040 "Lossy Compression"),
        SourceImageSequence -> the source instance;
          in the instance itself (General Image Module), or, for an image with functional groups
          (Enhanced CT, MR...), in a Derivation Image functional group (PS3.3 C.7.6.16.2.6), where
          such IODs define it, with every frame's Frame Type value 1 DERIVED and the source in the
          Source Image Evidence Sequence as well (C.8.15.2, C.8.13.1)
"""

from __future__ import annotations

import copy
import hashlib
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

if TYPE_CHECKING:
    from pydicom.sr.coding import Code

FUNCTIONAL_GROUPS = ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")


def lossy_derivative(source: Dataset, ratio: float, method: str, description: str, content: bytes) -> Dataset:
    """The derivative's header; ``content`` is what identifies its pixels (the bitstream that codes them):
    its SOP Instance UID is pydicom's root and a hash of the source's UID and ``content`` (PS3.5 B.2;
    pydicom.uid.generate_uid with entropy sources)."""
    from pydicom.sr.codedict import codes  # 0.3 s of imports: only where a derivative is made

    header = copy.deepcopy(source)
    header.SOPInstanceUID = generate_uid(entropy_srcs=[str(source.get("SOPInstanceUID", "")),
                                                       hashlib.sha256(content).hexdigest()])
    if hasattr(header, "file_meta"):
        header.file_meta.MediaStorageSOPInstanceUID = header.SOPInstanceUID
    image_type = list(header.get("ImageType", ["DERIVED", "PRIMARY"]))
    header.ImageType = ["DERIVED", *image_type[1:]]
    header.LossyImageCompression = "01"
    header.LossyImageCompressionRatio = [*_values(source, "LossyImageCompressionRatio"), f"{ratio:.4g}"]
    header.LossyImageCompressionMethod = [*_values(source, "LossyImageCompressionMethod"), method]
    derivation = Dataset()
    derivation.DerivationDescription = description[:1024]
    derivation.DerivationCodeSequence = Sequence([_code(codes.DCM.LossyCompression)])
    derivation.SourceImageSequence = Sequence()
    if "SOPClassUID" in source and "SOPInstanceUID" in source:  # a source without them cannot be referenced
        reference = Dataset()
        reference.ReferencedSOPClassUID = source.SOPClassUID
        reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
        reference.PurposeOfReferenceCodeSequence = Sequence([_code(codes.DCM.UncompressedPredecessor)])
        derivation.SourceImageSequence.append(reference)
    if _has_functional_groups(header):
        _derive_frames(header, derivation)
        if derivation.SourceImageSequence and "StudyInstanceUID" in source and "SeriesInstanceUID" in source:
            _add_evidence(header, source)
    else:
        header.DerivationDescription = derivation.DerivationDescription
        header.DerivationCodeSequence = derivation.DerivationCodeSequence
        if derivation.SourceImageSequence:
            header.SourceImageSequence = Sequence([*source.get("SourceImageSequence", []),
                                                   *derivation.SourceImageSequence])
    return header


def _has_functional_groups(header: Dataset) -> bool:
    return bool(header.get("SharedFunctionalGroupsSequence"))


def _derive_frames(header: Dataset, derivation: Dataset) -> None:
    """Marks every frame DERIVED (Frame Type value 1 of each *FrameTypeSequence item, PS3.3 C.7.6.16.2.x) and adds
    ``derivation`` as a Derivation Image functional group: to each frame's own group when the frames already carry
    one (a macro is either shared or per frame, never both), else to the shared group."""
    for keyword in FUNCTIONAL_GROUPS:
        for group in header.get(keyword, []):
            for element in group:
                if element.keyword.endswith("FrameTypeSequence") and element.VR == "SQ":
                    for item in element.value:
                        if item.get("FrameType"):
                            item.FrameType = ["DERIVED", *list(item.FrameType)[1:]]
    per_frame = header.get("PerFrameFunctionalGroupsSequence", [])
    if any("DerivationImageSequence" in group for group in per_frame):
        for number, group in enumerate(per_frame, start=1):
            item = copy.deepcopy(derivation)
            for reference in item.get("SourceImageSequence", []):
                reference.ReferencedFrameNumber = number  # frame n is decoded from the source's frame n
            group.DerivationImageSequence = Sequence([*group.get("DerivationImageSequence", []), item])
    else:
        shared = header.SharedFunctionalGroupsSequence[0]
        shared.DerivationImageSequence = Sequence([*shared.get("DerivationImageSequence", []), derivation])


def _add_evidence(header: Dataset, source: Dataset) -> None:
    """The source in the header's Source Image Evidence Sequence (a Hierarchical SOP Instance Reference:
    study, then series, then instance), beside any evidence the source already named."""
    evidence = header.get("SourceImageEvidenceSequence") or Sequence()
    study = next((item for item in evidence if item.get("StudyInstanceUID") == source.StudyInstanceUID), None)
    if study is None:
        study = Dataset()
        study.StudyInstanceUID = source.StudyInstanceUID
        study.ReferencedSeriesSequence = Sequence()
        evidence.append(study)
    series = next((item for item in study.get("ReferencedSeriesSequence", [])
                   if item.get("SeriesInstanceUID") == source.SeriesInstanceUID), None)
    if series is None:
        series = Dataset()
        series.SeriesInstanceUID = source.SeriesInstanceUID
        series.ReferencedSOPSequence = Sequence()
        study.ReferencedSeriesSequence = Sequence([*study.get("ReferencedSeriesSequence", []), series])
    instance = Dataset()
    instance.ReferencedSOPClassUID = source.SOPClassUID
    instance.ReferencedSOPInstanceUID = source.SOPInstanceUID
    series.ReferencedSOPSequence = Sequence([*series.get("ReferencedSOPSequence", []), instance])
    header.SourceImageEvidenceSequence = evidence


def _values(dataset: Dataset, keyword: str) -> list[str]:
    """An attribute's values as strings: none, one, or several (MultiValue)."""
    value = dataset.get(keyword)
    if value is None or value == "":
        return []
    return [str(v) for v in value] if isinstance(value, MultiValue) else [str(value)]


def _code(code: Code) -> Dataset:
    """A code sequence item of a pydicom ``Code`` (pydicom.sr.codedict.codes: DCM 113040, 121320...)."""
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code.value, code.scheme_designator, code.meaning
    return item
