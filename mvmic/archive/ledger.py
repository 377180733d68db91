"""The archive job's ledger: one SQLite file that says, for every instance of the source, what became of it.

    job        (one row)  what the job does: source, destination, mode and bound, analysis; a rerun with other
                          settings is refused, so one destination never mixes two policies
    runs       one row per invocation: started, finished (NULL: killed or still running), command, counts
    instances  one row per source instance once it is finished: key (the path relative to SOURCE, or the PACS
               resource), sha256 of the source bytes, state (compressed | unchanged | failed), SOP Instance UID,
               what was written (result) and its sha256, bytes before and after, error or note (why an
               instance was kept as it was), the run that finished it, and the source's size, mtime and
               ctime (a file changed or replaced since is done again)

One job at a time: the driver holds an exclusive lock (flock on <ledger>.lock, released by the kernel when
the process ends, even by kill -9); a second job on the same ledger is refused while the first runs.

Only the driver writes it (one writer), a row per finished instance, each in its own transaction (WAL,
synchronous=FULL): a `kill -9` loses at most the rows of instances whose results were not yet recorded; their
output was written whole (or not at all) under a name that depends on the source only, and the rerun writes
it again in place, so nothing is lost and nothing is duplicated. Failed instances are tried again by a rerun.
"""

from __future__ import annotations

import fcntl
import json
import sqlite3
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Self

DONE = ("compressed", "unchanged")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS job (settings TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run INTEGER PRIMARY KEY, started TEXT NOT NULL, finished TEXT, command TEXT NOT NULL,
    compressed INTEGER, unchanged INTEGER, failed INTEGER, skipped INTEGER);
CREATE TABLE IF NOT EXISTS instances (
    key TEXT PRIMARY KEY, sha256 TEXT, state TEXT NOT NULL CHECK (state IN ('compressed', 'unchanged', 'failed')),
    sop_instance_uid TEXT, result TEXT, result_sha256 TEXT, bytes_before INTEGER, bytes_after INTEGER, error TEXT,
    note TEXT,
    run INTEGER NOT NULL REFERENCES runs (run), finished TEXT NOT NULL, source_size INTEGER, source_mtime_ns INTEGER,
    source_ctime_ns INTEGER);
"""


class LedgerError(ValueError):
    """The ledger cannot be used for this job: another job's, or not a ledger."""


@dataclass(frozen=True)
class Record:
    """What became of one source instance (a row of ``instances``). ``result``: the destination's name of what
    was written (paths relative to DEST, or 'stored' in the PACS), ``result_sha256`` the sha256 of the instance
    written (folder destinations), ``error`` the reason of a failure, ``note`` what happened otherwise."""

    key: str
    state: str
    sha256: str | None = None
    sop_instance_uid: str | None = None
    result: str | None = None
    result_sha256: str | None = None
    bytes_before: int = 0
    bytes_after: int = 0
    error: str | None = None
    note: str | None = None  # what happened: the ratio, or why an instance was kept as it was
    source_size: int | None = None
    source_mtime_ns: int | None = None
    source_ctime_ns: int | None = None


class Ledger:
    """The ledger at ``path`` (created if absent) of the job with ``settings`` (JSON-serialisable), held open
    by one driver. LedgerError when ``path`` is another job's ledger or not a ledger, or another job holds it."""

    def __init__(self, path: Path, settings: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = exclusive(path.with_name(f"{path.name}.lock"), f"the ledger {path}")
        try:
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._check_job(settings)
        except sqlite3.DatabaseError as exc:
            self._lock.close()
            raise LedgerError(f"{path} is not an archive ledger: {exc}") from exc
        except LedgerError:
            self._lock.close()
            raise
        self.run: int | None = None

    def _check_job(self, settings: dict) -> None:
        row = self._db.execute("SELECT settings FROM job").fetchone()
        if row is None:
            self._db.execute("INSERT INTO job (settings) VALUES (?)", (json.dumps(settings, sort_keys=True),))
        else:
            same_job(json.loads(row[0]), settings, f"{self.path} is the ledger")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()
        self._lock.close()  # and with it the lock

    def start_run(self, command: str) -> int:
        cursor = self._db.execute("INSERT INTO runs (started, command) VALUES (?, ?)", (_now(), command))
        self.run = cursor.lastrowid
        return self.run

    def finish_run(self, counts: dict[str, int]) -> None:
        self._db.execute("UPDATE runs SET finished = ?, compressed = ?, unchanged = ?, failed = ?, skipped = ? "
                         "WHERE run = ?", (_now(), counts.get("compressed", 0), counts.get("unchanged", 0),
                                           counts.get("failed", 0), counts.get("skipped", 0), self.run))

    def record(self, record: Record) -> None:
        """Records one finished instance, durably, replacing what an earlier run recorded of it."""
        row = asdict(record)
        columns = ", ".join([*row, "run", "finished"])
        self._db.execute(f"INSERT OR REPLACE INTO instances ({columns}) VALUES ({', '.join('?' * (len(row) + 2))})",
                         (*row.values(), self.run, _now()))

    def done(self) -> dict[str, Record]:
        """The instances finished (compressed or unchanged) by any run, by key."""
        fields = list(Record.__dataclass_fields__)
        rows = self._db.execute(f"SELECT {', '.join(fields)} FROM instances WHERE state IN (?, ?)", DONE)
        return {row[0]: Record(*row) for row in rows}



def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def exclusive(lock: Path, what: str) -> IO:
    """An exclusive lock (flock) on the file ``lock``, held until the returned file is closed or the process
    ends (kill -9 included); LedgerError when another process holds it."""
    handle = lock.open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        handle.close()
        raise LedgerError(f"another archive job is running with {what}: wait for it to end") from exc
    return handle


def same_job(recorded: dict, settings: dict, whose: str) -> None:
    """LedgerError naming every setting that differs, unless ``settings`` are the ``recorded`` job's."""
    differing = sorted(name for name in {*recorded, *settings} if recorded.get(name) != settings.get(name))
    if differing:
        differences = ", ".join(f"{name} {recorded.get(name)!r}, not {settings.get(name)!r}" for name in differing)
        raise LedgerError(f"{whose} of another job ({differences}); run it with the same settings, or give "
                          "another --out or --ledger")
