"""One archive worker: the codec (and the task heads) loaded once, then instance after instance.

    Item --source.read--> bytes (sha256) --storage.prepare_instance (the gateway's own path: the encoder checks
        its bound; what MVMIC cannot code is kept as received)-->
      DEST folder:  the stored instance at DEST/instances/<key>, its SEG and SR at DEST/analysis/<key>/seg.dcm
                    and sr.dcm (output_names), each written whole (mvmic.whole_file, staged in DEST/.partial),
                    read back and hashed (the ledger's result_sha256)
      the PACS:     STOW-RS, checked (compress_study.store_prepared): the PACS references the image and, where
                    it replaces an original under the same UID, holds it as MVMIC; from the PACS itself,
                    the original first kept in ORIGINALS/<SOP Instance UID>.dcm (compress_study.compress_instance)
    --> ledger.Record: compressed | unchanged | failed with its reason; a worker never raises for an instance

The worker runs the same in a Ray actor (mvmic.archive.engine) and in the calling process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from mvmic.archive.ledger import Record
from mvmic.archive.sources import FolderSource, Item, PacsSource
from mvmic.pacs.client import PacsClient, PacsError
from mvmic.pacs.compress_study import Outcome, compress_instance, store_prepared
from mvmic.pacs.storage import Prepared, StoragePolicy, prepare_instance
from mvmic.pixels import read_dataset
from mvmic.whole_file import write_whole

log = logging.getLogger("mvmic.archive")

# A folder job's DEST: instances/ (SOURCE's tree), analysis/ (SEG and SR), the ledger, and .partial/, where
# files are written before they are renamed into place (emptied by the driver at the start of each run).
INSTANCES, ANALYSIS, STAGING = "instances", "analysis", ".partial"


@dataclass(frozen=True)
class PacsAddress:
    root: str  # DICOMweb root
    auth: tuple[str, str] | None = field(default=None, repr=False)
    timeout: float = 120.0

    def client(self) -> PacsClient:
        return PacsClient(self.root, self.auth, self.timeout)


@dataclass(frozen=True)
class WorkerConfig:
    """What every worker of a job needs: where instances come from (``source`` folder, else the PACS), where
    they go (``out`` folder, else the PACS), the storage policy, and where the PACS's originals are kept."""

    policy: StoragePolicy
    source: Path | None = None
    out: Path | None = None
    pacs: PacsAddress | None = None
    originals: Path | None = None  # PACS source only; None: not kept
    heads_runtime: str = "auto"
    studies: tuple[str, ...] = ()  # PACS source: these studies only (default: all)


class ArchiveWorker:
    def __init__(self, config: WorkerConfig, device: str = "cpu") -> None:
        from mvmic.model.codec import MvmicCodec

        self.config = config
        self.codec = MvmicCodec.load()
        self.analyzer = None
        if config.policy.with_analysis:
            from mvmic.model.tasks.analysis import Analyzer

            self.analyzer = Analyzer.load(self.codec, device=device, runtime=config.heads_runtime, threads=1)
        self.pacs = config.pacs.client() if config.pacs is not None else None
        self.source = FolderSource(config.source) if config.source is not None else PacsSource(self.pacs, config.studies)

    def process(self, item: Item) -> Record:
        """What became of ``item``; never raises (a failure is a record with its reason)."""
        try:
            data = self.source.read(item)
        except (OSError, PacsError) as exc:
            return Record(item.key, "failed", error=f"cannot read it: {exc}")
        sha256 = hashlib.sha256(data).hexdigest()
        try:
            record = self._store(item, data)
        except (OSError, PacsError) as exc:
            record = Record(item.key, "failed", error=str(exc))
        except Exception as exc:  # a bug must fail this instance, not the job
            log.exception("unexpected error on an instance")
            record = Record(item.key, "failed", error=f"unexpected error ({type(exc).__name__}: {exc})")
        return dataclasses.replace(record, sha256=record.sha256 or sha256, bytes_before=record.bytes_before or len(data),
                                   source_size=item.size, source_mtime_ns=item.mtime_ns, source_ctime_ns=item.ctime_ns,
                                   bytes_after=len(data) if record.state == "unchanged" else record.bytes_after)

    def _store(self, item: Item, data: bytes) -> Record:
        config = self.config
        if config.source is None:  # from the PACS, back into it in place
            outcome = compress_instance(self.pacs, item.key, data, self.codec, self.analyzer, config.policy,
                                        config.originals)
            uid = outcome.sop_instance or item.key.rsplit("/", 1)[1]
            kept = config.originals / f"{uid}.dcm" if config.originals is not None else None
            if outcome.state == "unchanged" and kept is not None and kept.is_file():
                return self._compressed_before(item, uid, kept, len(data))
            return _record(item, outcome, uid, "stored" if outcome.state == "compressed" else None)
        prepared = prepare_instance(data, self.codec, self.analyzer, config.policy)
        if prepared.failure is not None:
            return Record(item.key, "failed", sop_instance_uid=prepared.sop_instance, error=prepared.note)
        state = "unchanged" if prepared.instances == [data] else "compressed"
        if config.out is not None:
            return self._write(item, prepared, state)
        outcome = store_prepared(self.pacs, prepared, _resource(prepared) if config.policy.max_error == 0 else None)
        if outcome.state == "failed":
            return _record(item, outcome, prepared.sop_instance, None)
        return Record(item.key, state, sop_instance_uid=prepared.sop_instance, result="stored",
                      bytes_after=len(prepared.instances[0]), note=prepared.note)

    @staticmethod
    def _compressed_before(item: Item, uid: str, kept: Path, stored_bytes: int) -> Record:
        """The record of an instance a killed run compressed in place before it could record it: the PACS holds
        it as MVMIC, and its original is the one kept."""
        original = kept.read_bytes()
        return Record(item.key, "compressed", hashlib.sha256(original).hexdigest(), uid, "stored",
                      bytes_before=len(original), bytes_after=stored_bytes,
                      note=f"compressed by an earlier run that was stopped before it recorded it; original in {kept}")

    def _write(self, item: Item, prepared: Prepared, state: str) -> Record:
        out = self.config.out
        names = output_names(item.key, [read_dataset(extra).Modality for extra in prepared.instances[1:]])
        for name, instance in zip(names, prepared.instances, strict=True):
            write_whole(out / name, instance, staging=out / STAGING)
        written = (out / names[0]).read_bytes()
        if written != prepared.instances[0]:
            raise OSError(f"DEST/{names[0]} does not read back as written")
        return Record(item.key, state, sop_instance_uid=prepared.sop_instance, result="\n".join(names),
                      result_sha256=hashlib.sha256(written).hexdigest(), bytes_after=len(written), note=prepared.note)


def output_names(key: str, analysis_modalities: list[str]) -> list[str]:
    """Where a folder job writes a source file's instance and its analysis objects, relative to DEST: the
    instance at instances/<key>, its SEG and SR at analysis/<key>/seg.dcm and analysis/<key>/sr.dcm. Trees
    apart from the ledger and the staging folder; and as every key is a file of SOURCE, no key is a folder
    on another's path, so no source file's output can land on another's, nor need a folder where one is."""
    return [f"{INSTANCES}/{key}", *(f"{ANALYSIS}/{key}/{modality.lower()}.dcm" for modality in analysis_modalities)]


def _record(item: Item, outcome: Outcome, sop_instance: str | None, result: str | None) -> Record:
    failed = outcome.state == "failed"
    return Record(item.key, outcome.state, sop_instance_uid=sop_instance, result=result,
                  bytes_after=outcome.bytes_after, error=outcome.reason if failed else None,
                  note=None if failed else outcome.reason)


def _resource(prepared: Prepared) -> str:
    """The WADO-RS resource of a prepared image, which replaces the original stored under its UID."""
    header = read_dataset(prepared.instances[0])
    return f"studies/{header.StudyInstanceUID}/series/{header.SeriesInstanceUID}/instances/{prepared.sop_instance}"
