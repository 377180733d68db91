"""Where an archive job's instances come from: a folder tree of DICOM files, or the studies in a PACS.

    FolderSource(root).items()  every regular file under root, in path order: key = the path relative to root
                                (POSIX), with its size, mtime and ctime (a file changed since it was done, or
                                replaced, even by one of the same size and mtime, is done again)
    FolderSource.read(item)     its bytes
    PacsSource(pacs).items()    QIDO-RS: the studies (all, pages of PAGE, or those named), then each study's
                                instances: key = studies/S/series/R/instances/I, the WADO-RS resource
    PacsSource.read(item)       WADO-RS, as stored
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mvmic.pacs.client import PacsClient, PacsError
from mvmic.pacs.compress_study import instances_of

PAGE = 1000  # studies per QIDO-RS request


@dataclass(frozen=True)
class Item:
    """One source instance: ``key`` names it in the ledger and, for a folder, in DEST."""

    key: str
    size: int | None = None  # bytes, files only
    mtime_ns: int | None = None
    ctime_ns: int | None = None  # changes whenever the file does, also when replaced by one with the same mtime


class FolderSource:
    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise NotADirectoryError(f"{root}: not a folder of DICOM files")
        self.root = root

    def items(self) -> Iterator[Item]:
        for folder, subfolders, files in os.walk(self.root):
            subfolders.sort()
            for name in sorted(files):
                path = Path(folder, name)
                status = path.lstat()
                if path.is_symlink() or not path.is_file():
                    continue  # links and special files are not instances: a link's target is listed where it lies
                yield Item(path.relative_to(self.root).as_posix(), status.st_size, status.st_mtime_ns, status.st_ctime_ns)

    def path(self, item: Item) -> Path:
        return self.root / item.key

    def read(self, item: Item) -> bytes:
        return self.path(item).read_bytes()


class PacsSource:
    def __init__(self, pacs: PacsClient, studies: Sequence[str] = ()) -> None:
        self.pacs = pacs
        self.studies = tuple(studies)

    def items(self) -> Iterator[Item]:
        for study in self.studies or self._all_studies():
            for series, instance in instances_of(self.pacs, study):
                yield Item(f"studies/{study}/series/{series}/instances/{instance}")

    def _all_studies(self) -> Iterator[str]:
        offset = 0
        while True:
            answer = self.pacs.search("studies", f"includefield=0020000D&limit={PAGE}&offset={offset}")
            if answer.status_code == 204:
                return
            if answer.status_code != 200:
                raise PacsError(f"the PACS answered the search for studies with HTTP {answer.status_code}",
                                answer.status_code)
            page = answer.json()
            for study in page:
                yield study["0020000D"]["Value"][0]
            if len(page) < PAGE:
                return
            offset += PAGE

    def read(self, item: Item) -> bytes:
        [data] = self.pacs.retrieve(item.key)
        return data
