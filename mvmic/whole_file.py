"""Files written whole or not at all: what `compress-study` keeps of an original, what an archive job writes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_whole(path: Path, data: bytes, staging: Path | None = None) -> None:
    """``data`` at ``path``, whole or not at all, and on disk (fsync) before this returns. The bytes are first
    written to a temporary file, then renamed over ``path``: a kill mid-write leaves no truncated file at ``path``.
    The temporary is ``<path>.partial`` (the next write replaces one left behind), or, with ``staging`` (a folder
    on the same filesystem that holds nothing else), a new name there that no other file can have. The file's
    mode is what open() gives under the umask. Raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if staging is None:
        partial = path.with_name(f"{path.name}.partial")
        out = partial.open("wb")
    else:
        staging.mkdir(parents=True, exist_ok=True)
        descriptor, name = tempfile.mkstemp(dir=staging, suffix=".partial")  # O_EXCL: never an existing file
        os.fchmod(descriptor, 0o666 & ~_umask())  # mkstemp's 0600 would hide the file from other readers
        partial, out = Path(name), os.fdopen(descriptor, "wb")
    with out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
