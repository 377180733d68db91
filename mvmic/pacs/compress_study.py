"""`mvmic pacs compress-study`: compress a study already in the PACS, in place of its originals.

    QIDO-RS studies/S/instances --> for each instance: WADO-RS as stored
        --> original kept in --originals DIR (unless --discard-originals), before anything changes
        --> storage.prepare_instance (the encoder checks its own bound) --> STOW-RS
        --> lossless: the same SOP Instance UID, so the PACS must replace the original (Orthanc:
            OverwriteInstances); read back as stored to confirm it did
    a run killed at any point and run again: each instance is either still the original in the PACS
        (compressed by the rerun) or already replaced (MVMIC: unchanged); originals are written whole
        or not at all; derivatives' UIDs derive from their source and bitstream (stored again in place)
    --> summary: instances compressed / already compressed or not compressible / failed, bytes before
        and after

Lossy and near-lossless copies are derivatives with new UIDs: they are stored beside the originals,
which DICOMweb cannot delete; the summary says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from mvmic.model.codec import MvmicCodec
from mvmic.model.tasks.analysis import Analyzer
from mvmic.pacs.client import PacsClient, PacsError
from mvmic.pacs.storage import Prepared, StoragePolicy, prepare_instance
from mvmic.pixels import read_dataset
from mvmic.transcode import MVM_TRANSFER_SYNTAX
from mvmic.whole_file import write_whole


@dataclass(frozen=True)
class Outcome:
    """What became of one instance: ``state`` compressed, unchanged (already MVMIC, or nothing MVMIC can code:
    kept as it was) or failed (``reason`` says why); bytes of the instance received and of the one stored."""

    state: str
    reason: str = ""
    bytes_before: int = 0
    bytes_after: int = 0
    sop_instance: str | None = None  # of the instance stored


@dataclass
class StudySummary:
    compressed: int = 0
    unchanged: int = 0  # already MVMIC, or nothing MVMIC can code
    failed: list[str] = field(default_factory=list)  # "SOP UID: reason"
    bytes_before: int = 0  # of the instances compressed
    bytes_after: int = 0

    def add(self, instance: str, outcome: Outcome) -> None:
        if outcome.state == "failed":
            self.failed.append(f"{instance}: {outcome.reason}")
        elif outcome.state == "unchanged":
            self.unchanged += 1
        else:
            self.compressed += 1
            self.bytes_before += outcome.bytes_before
            self.bytes_after += outcome.bytes_after

    def lines(self, in_place: bool) -> list[str]:
        saved = self.bytes_before - self.bytes_after
        share = f" ({100 * saved / self.bytes_before:.1f} %)" if self.bytes_before else ""
        lines = [f"compressed {self.compressed}, unchanged {self.unchanged}, failed {len(self.failed)}",
                 f"bytes {self.bytes_before} -> {self.bytes_after}: {saved} saved{share}"]
        if not in_place and self.compressed:
            lines.append("lossy copies have new UIDs: the originals are still in the PACS")
        return lines + [f"failed {failure}" for failure in self.failed]


def instances_of(pacs: PacsClient, study: str) -> list[tuple[str, str]]:
    """(series, SOP instance) UIDs of the study's instances, from QIDO-RS."""
    answer = pacs.search(f"studies/{study}/instances", "includefield=0020000E")
    if answer.status_code == 204 or (answer.status_code == 200 and not answer.json()):
        raise PacsError(f"the PACS has no instance of study {study}", 404)
    if answer.status_code != 200:
        raise PacsError(f"the PACS answered the search for study {study} with HTTP {answer.status_code}",
                        answer.status_code)
    found = (Dataset.from_json(item) for item in answer.json())
    return [(str(item.SeriesInstanceUID), str(item.SOPInstanceUID)) for item in found]


def compress_study(pacs: PacsClient, study: str, codec: MvmicCodec, policy: StoragePolicy,
                   originals: Path | None, progress=lambda items: items) -> StudySummary:
    summary = StudySummary()
    for series, instance in progress(instances_of(pacs, study)):
        resource = f"studies/{study}/series/{series}/instances/{instance}"
        try:
            [data] = pacs.retrieve(resource)
            outcome = compress_instance(pacs, resource, data, codec, None, policy, originals)
        except PacsError as exc:
            outcome = Outcome("failed", str(exc))
        summary.add(instance, outcome)
    return summary


def compress_instance(pacs: PacsClient, resource: str, data: bytes, codec: MvmicCodec, analyzer: Analyzer | None,
                      policy: StoragePolicy, originals: Path | None) -> Outcome:
    """The instance at ``resource`` (its bytes ``data``, as stored) compressed in place: kept in ``originals``
    (unless None), then stored compressed (with its analysis objects when the policy says so). PacsError when
    the PACS fails a request."""
    prepared = prepare_instance(data, codec, analyzer, policy)
    if prepared.failure is not None:
        return Outcome("failed", prepared.note)
    if prepared.instances == [data]:
        return Outcome("unchanged", prepared.note)
    if originals is not None:
        write_whole(originals / f"{resource.rsplit('/', 1)[1]}.dcm", data)
    return store_prepared(pacs, prepared, resource if policy.max_error == 0 else None)


def store_prepared(pacs: PacsClient, prepared: Prepared, replaces: str | None = None) -> Outcome:
    """STOW-RS of a prepared instance (and its analysis objects), checked: the PACS references the image (and,
    when it ``replaces`` the original at that resource, holds it as MVMIC now). PacsError when the PACS fails
    the request."""
    answer = pacs.store(prepared.instances)
    # Orthanc sends an empty FailedSOPSequence when nothing failed, and references nothing when it stored nothing
    stored = {str(item.ReferencedSOPInstanceUID) for item in answer.get("ReferencedSOPSequence", [])}
    if answer.get("FailedSOPSequence") or prepared.sop_instance not in stored:
        reason = answer.FailedSOPSequence[0].get("FailureReason") if answer.get("FailedSOPSequence") else "none given"
        return Outcome("failed", f"the PACS refused the compressed instance (FailureReason {reason})")
    if replaces is not None and _stored_syntax(pacs, replaces) != MVM_TRANSFER_SYNTAX:
        return Outcome("failed", "the PACS kept its original; it must replace instances stored again under the same "
                                 "UID (Orthanc: OverwriteInstances true)")
    return Outcome("compressed", prepared.note, prepared.original_bytes, len(prepared.instances[0]), prepared.sop_instance)


def _stored_syntax(pacs: PacsClient, resource: str) -> str:
    [data] = pacs.retrieve(resource)
    return str(read_dataset(data).file_meta.TransferSyntaxUID)
