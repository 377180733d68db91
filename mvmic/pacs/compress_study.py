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

import os
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from model.codec import MvmicCodec
from mvmic.pacs.client import PacsClient, PacsError
from mvmic.pacs.storage import StoragePolicy, prepare_instance
from mvmic.pixels import read_dataset
from mvmic.transcode import MVM_TRANSFER_SYNTAX


@dataclass
class StudySummary:
    compressed: int = 0
    unchanged: int = 0  # already MVMIC, or nothing MVMIC can code
    failed: list[str] = field(default_factory=list)  # "SOP UID: reason"
    bytes_before: int = 0  # of the instances compressed
    bytes_after: int = 0

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
            _compress_one(pacs, resource, codec, policy, originals, summary)
        except PacsError as exc:
            summary.failed.append(f"{instance}: {exc}")
    return summary


def _compress_one(pacs: PacsClient, resource: str, codec: MvmicCodec, policy: StoragePolicy,
                  originals: Path | None, summary: StudySummary) -> None:
    [data] = pacs.retrieve(resource)
    instance = resource.rsplit("/", 1)[1]
    prepared = prepare_instance(data, codec, None, policy)
    if prepared.failure is not None:
        summary.failed.append(f"{instance}: {prepared.note}")
        return
    if prepared.instances == [data]:
        summary.unchanged += 1
        return
    if originals is not None:
        _keep(originals / f"{instance}.dcm", data)
    answer = pacs.store(prepared.instances)
    # Orthanc sends an empty FailedSOPSequence when nothing failed, and references nothing when it stored nothing
    stored = {str(item.ReferencedSOPInstanceUID) for item in answer.get("ReferencedSOPSequence", [])}
    if answer.get("FailedSOPSequence") or prepared.sop_instance not in stored:
        reason = answer.FailedSOPSequence[0].get("FailureReason") if answer.get("FailedSOPSequence") else "none given"
        summary.failed.append(f"{instance}: the PACS refused the compressed instance (FailureReason {reason})")
        return
    if policy.max_error == 0 and _stored_syntax(pacs, resource) != MVM_TRANSFER_SYNTAX:
        summary.failed.append(f"{instance}: the PACS kept its original; it must replace instances stored again "
                              "under the same UID (Orthanc: OverwriteInstances true)")
        return
    summary.compressed += 1
    summary.bytes_before += len(data)
    summary.bytes_after += len(prepared.instances[0])


def _keep(path: Path, data: bytes) -> None:
    """``data`` at ``path`` whole or not at all (a kill mid-write leaves no truncated original), and on disk
    before the PACS is asked to replace it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.partial")
    with partial.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)


def _stored_syntax(pacs: PacsClient, resource: str) -> str:
    [data] = pacs.retrieve(resource)
    return str(read_dataset(data).file_meta.TransferSyntaxUID)
