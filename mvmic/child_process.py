"""Servers run as child processes (the service, Orthanc): waited for over HTTP, stopped cleanly."""

from __future__ import annotations

import shlex
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx


def wait_until_answering(process: subprocess.Popen[bytes], url: str, timeout: float, log: Path,
                         error: type[Exception], good: Callable[[httpx.Response], bool] = lambda response: True,
                         auth: tuple[str, str] | None = None) -> None:
    """Poll ``url`` until ``good`` holds for its answer; ``error`` (with the process's log) when the process
    exits or ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise error(f"{shlex.join(process.args[:3])} exited with {process.returncode}:\n{_tail(log)}")
        try:
            if good(httpx.get(url, timeout=5.0, auth=auth)):
                return
        except httpx.TransportError:
            pass  # not accepting connections yet
        time.sleep(0.1)
    raise error(f"{url} not ready after {timeout} s:\n{_tail(log)}")


def stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate, and kill after 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-6000:]
