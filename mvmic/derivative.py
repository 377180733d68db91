"""The header of a lossy-compressed derivative of a DICOM instance (PS3.3 C.7.6.1.1.5).

    source header --lossy_derivative(ratio, method, content)--> header of the decoded instance
        new SOPInstanceUID (file meta too), the same for the same source and content (a gateway or
            `mvmic pacs compress-study` run twice replaces its derivative, never stores a second one),
        ImageType DERIVED,
        LossyImageCompression "01", ratio and method appended to any earlier ones,
        DerivationCodeSequence (DCM 113040 "Lossy Compression"),
        SourceImageSequence -> the source instance
"""

from __future__ import annotations

import copy
import hashlib

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

LOSSY_COMPRESSION_CODE = ("113040", "DCM", "Lossy Compression")


def lossy_derivative(source: Dataset, ratio: float, method: str, description: str, content: bytes) -> Dataset:
    """The derivative's header; ``content`` is what identifies its pixels (the bitstream that codes them):
    its SOP Instance UID is pydicom's root and a hash of the source's UID and ``content`` (PS3.5 B.2;
    pydicom.uid.generate_uid with entropy sources)."""
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
    header.DerivationDescription = description[:1024]
    header.DerivationCodeSequence = Sequence([_code(*LOSSY_COMPRESSION_CODE)])
    if "SOPClassUID" in source and "SOPInstanceUID" in source:  # a source without them cannot be referenced
        reference = Dataset()
        reference.ReferencedSOPClassUID = source.SOPClassUID
        reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
        reference.PurposeOfReferenceCodeSequence = Sequence([_code("121320", "DCM", "Uncompressed predecessor")])
        header.SourceImageSequence = Sequence([*source.get("SourceImageSequence", []), reference])
    return header


def _values(dataset: Dataset, keyword: str) -> list[str]:
    """An attribute's values as strings: none, one, or several (MultiValue)."""
    value = dataset.get(keyword)
    if value is None or value == "":
        return []
    return [str(v) for v in value] if isinstance(value, MultiValue) else [str(value)]


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item
