"""What the gateway does to each instance on its way into the PACS, and on its way out.

    into the PACS (STOW-RS, `mvmic pacs compress-study`):
      Part 10 bytes --read--> not DICOM: failed (0xC000); other study than the request's: failed (0xA900)
        no pixels (SR, KO...), pixels MVMIC does not code or cannot read --> stored as received (never lost)
        the encoder's bound check fails, or an unexpected error while compressing (bugs) --> logged, stored
            as received
        an image --dicom_to_mvm at the storage bound + mvm_instance--> the MVMIC instance
                 [--analysis of the same bitstream--> DICOM SEG + Comprehensive SR]
                 an MVMIC instance no smaller than the received one --> stored as received
    out of the PACS (WADO-RS), in the first acceptable transfer syntax it can be given in:
      stored instance --its own syntax--> as stored (MVMIC's private one only for a client that names it)
                      --* (the server's choice)--> as stored, or decoded when stored as MVMIC
                      --Explicit VR Little Endian--> decoded (MVMIC: instance_to_dicom, else pydicom; a
                           big-endian one swapped: as_little_endian), or NotAcceptableError (406) when it cannot be
                      --anything else--> NotAcceptableError (406)
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from typing import NamedTuple

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from mvmic.model.codec import MvmicCodec
from mvmic.model.errors import BoundViolationError, CodecInputError, TooSmallToAnalyseError
from mvmic.model.tasks.analysis import Analyzer
from mvmic.pacs.analysis_objects import measurement_report, segmentation
from mvmic.pixels import DicomInputError, as_little_endian, first_line, read_dataset
from mvmic.transcode import MVM_TRANSFER_SYNTAX, dicom_to_mvm, instance_to_dicom, mvm_instance, parse_for

log = logging.getLogger("mvmic.pacs")

# PS3.18 / PS3.4 failure reasons of a STOW-RS response's FailedSOPSequence.
PROCESSING_FAILURE = 0x0110
DOES_NOT_MATCH = 0xA900  # the instance is not of the study the request names
CANNOT_UNDERSTAND = 0xC000


class NotAcceptableError(ValueError):
    """The instance cannot be given in the transfer syntax asked for."""


@dataclass(frozen=True)
class StoragePolicy:
    max_error: int | None  # the bound: None lossy, 0 lossless (the default), else near-lossless
    quality: int | None = None  # lossy base quality; None lets rate control pick it
    verify: bool = True
    with_analysis: bool = False


@dataclass
class Prepared:
    """One received instance, ready to store: ``instances`` (the instance as it will be stored, then any
    analysis objects) or a ``failure`` reason code, with ``note`` saying what happened and why."""

    sop_class: str | None
    sop_instance: str | None
    instances: list[bytes] = field(default_factory=list)
    failure: int | None = None
    note: str = ""
    original_bytes: int = 0


def prepare_instance(data: bytes, codec: MvmicCodec, analyzer: Analyzer | None, policy: StoragePolicy,
                     study: str | None = None) -> Prepared:
    try:
        dataset = read_dataset(data)
        identity = _identity(dataset)
    except DicomInputError as exc:
        return Prepared(None, None, failure=CANNOT_UNDERSTAND, note=str(exc), original_bytes=len(data))
    prepared = Prepared(identity.sop_class, identity.sop_instance, original_bytes=len(data))
    if study is not None and identity.study != study:
        prepared.failure, prepared.note = DOES_NOT_MATCH, "the instance is of another study than the request's"
        return prepared
    if "PixelData" not in dataset or identity.transfer_syntax == MVM_TRANSFER_SYNTAX:
        prepared.instances, prepared.note = [data], "stored as received: no pixels to compress, or already MVMIC"
        return prepared
    try:
        return _compressed(data, prepared, codec, analyzer, policy)
    except Exception:  # a bug must not lose the instance nor take the request down with it
        log.exception("unexpected error while compressing an instance; stored as received")
        prepared.instances, prepared.failure = [data], None
        prepared.note = "stored as received: unexpected error while compressing (logged with its traceback)"
        return prepared


def _compressed(data: bytes, prepared: Prepared, codec: MvmicCodec, analyzer: Analyzer | None,
                policy: StoragePolicy) -> Prepared:
    """``prepared`` with the compressed instance (or the received one, or a failure) and its note."""
    try:
        compressed = dicom_to_mvm(data, codec, policy.quality, max_error=policy.max_error, verify=policy.verify)
    except (DicomInputError, CodecInputError) as exc:  # DICOM (it parsed), pixels MVMIC cannot or does not code
        prepared.instances, prepared.note = [data], f"stored as received: {exc}"
        return prepared
    except BoundViolationError as exc:  # never store what would not keep the promised bound: the original does
        log.error("an encoder broke its bound (a bug): %s; stored as received", exc)
        prepared.instances, prepared.note = [data], f"stored as received: {exc}"
        return prepared
    stored = mvm_instance(compressed, codec)
    if len(stored) >= len(data):  # small images, big headers: never store more than came in
        prepared.instances = [data]
        prepared.note = f"stored as received: the MVMIC instance would be {len(stored)} bytes, not fewer than {len(data)}"
        return prepared
    stored_header = read_dataset(stored)
    prepared.instances, prepared.note = [stored], f"compressed {compressed.ratio:.2f}:1"
    prepared.sop_instance = str(stored_header.SOPInstanceUID)  # lossy: a derivative's new UID
    if policy.with_analysis and analyzer is not None:
        prepared.instances += analysis_instances(stored_header, compressed.data, analyzer)
    return prepared


def analysis_instances(stored: Dataset, bitstream: bytes, analyzer: Analyzer) -> list[bytes]:
    """The SEG and SR of a stored instance's analysis; one highdicom refuses (e.g. a CT without a Frame of
    Reference cannot have a SEG) is left out and logged, never failing the image's own storage."""
    try:
        frames = analyzer.analyze(parse_for(bitstream, analyzer.codec))
    except TooSmallToAnalyseError as exc:
        log.info("no analysis objects: %s", exc)
        return []
    objects = []
    for build in (segmentation, measurement_report):
        try:
            objects.append(_part10(build(stored, frames, analyzer.codec.model_id)))
        except ValueError as exc:
            log.warning("no %s for the stored instance: %s", build.__name__, exc)
    return objects


def render(data: bytes, acceptable: list[str], codec: MvmicCodec) -> tuple[bytes, str]:
    """A stored instance in the first of the ``acceptable`` transfer syntaxes (a client's order of preference)
    the gateway can give, and that syntax: as stored, decoded to Explicit VR Little Endian, or for '*' (any
    syntax the server chooses) as stored unless that is MVMIC's private one, which only a client that names it
    gets: every other client, a PACS retrieving through the gateway among them, gets the images decoded.
    NotAcceptableError when it can give none of them."""
    dataset = read_dataset(data)
    stored = _identity(dataset).transfer_syntax
    for syntax in acceptable:
        if syntax == stored or (syntax == "*" and stored != MVM_TRANSFER_SYNTAX):
            return data, stored
        if syntax in ("*", ExplicitVRLittleEndian):
            return _decoded(dataset, stored, codec), ExplicitVRLittleEndian
    raise NotAcceptableError(f"an instance is stored as {stored or 'no declared transfer syntax'}; the gateway "
                             f"gives it as stored (transfer-syntax={stored or '*'}, or * for a standard one) or as "
                             f"{ExplicitVRLittleEndian}, not {', '.join(acceptable)}")


def _decoded(dataset: Dataset, stored: str, codec: MvmicCodec) -> bytes:
    """The instance in Explicit VR Little Endian, or NotAcceptableError when it cannot be converted."""
    if stored == MVM_TRANSFER_SYNTAX:
        return _part10(instance_to_dicom(dataset, codec))
    if not stored:
        raise NotAcceptableError("an instance declares no transfer syntax (0002,0010) to convert from; ask for it as "
                                 "stored (transfer-syntax=*)")
    syntax = UID(stored)
    try:
        if syntax.is_compressed:
            dataset.decompress()
        elif not syntax.is_little_endian:
            as_little_endian(dataset)
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        return _part10(dataset)
    except Exception as exc:  # pydicom's decoders and writers raise many types: this gateway cannot convert it
        raise NotAcceptableError(f"an instance is stored as {syntax.name}, which this gateway cannot give as "
                                 f"{ExplicitVRLittleEndian} ({type(exc).__name__}: {first_line(exc)}); ask for it "
                                 f"as stored (transfer-syntax={syntax})") from exc


class _Identity(NamedTuple):
    sop_class: str | None
    sop_instance: str | None
    study: str | None
    transfer_syntax: str  # '' when absent


def _identity(dataset: Dataset) -> _Identity:
    """What identifies an instance (None, or '', where absent); DicomInputError when one of these attributes
    cannot be decoded (pydicom decodes each element on first access)."""
    try:
        uids = [str(dataset.get(keyword, "")) or None for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID")]
        return _Identity(*uids, str(dataset.get("file_meta", Dataset()).get("TransferSyntaxUID", "")))
    except Exception as exc:  # pydicom raises many types
        raise DicomInputError(f"an identifying attribute of the instance cannot be decoded: {first_line(exc)}") from exc


def _part10(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return buffer.getvalue()
