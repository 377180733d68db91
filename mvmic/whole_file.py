"""Files written whole or not at all: what `compress-study` keeps of an original, what an archive job writes."""

from __future__ import annotations

import os
from pathlib import Path


def write_whole(path: Path, data: bytes) -> None:
    """``data`` at ``path``, whole or not at all (a kill mid-write leaves no truncated file, only a ``.partial``
    beside it that the next write replaces), and on disk (fsync) before this returns. Raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.partial")
    with partial.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)
