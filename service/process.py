"""A real service process on 127.0.0.1, started and stopped from Python (the tests and `mvmic bench
service` talk to it over HTTP, as a PACS would).

    running_service(log, environment) --uvicorn service.app:create_app --factory on a free port-->
        wait for GET /healthz, then for GET /readyz = 200 (models resident) --> yield the base URL
        --> terminate (kill after 10 s)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_S = 20.0
READY_TIMEOUT_S = 120.0


class ServiceStartError(RuntimeError):
    """The service did not come up; the message carries its log."""


def free_port() -> int:
    # The OS picks an unused port; there is a tiny race until uvicorn binds it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_service(log: Path, environment: dict[str, str] | None = None, port: int | None = None) -> Iterator[str]:
    """Base URL of a uvicorn process serving the app factory, once its models are resident. Its output
    goes to ``log`` (a file, not a pipe, so a chatty server can never block)."""
    port = port or free_port()
    base_url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "uvicorn", "service.app:create_app", "--factory",
               "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(environment or {})})
    try:
        _wait_for(process, f"{base_url}/healthz", STARTUP_TIMEOUT_S, log, lambda r: True)
        _wait_for(process, f"{base_url}/readyz", READY_TIMEOUT_S, log, lambda r: r.status_code == 200)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for(process: subprocess.Popen[bytes], url: str, timeout: float, log: Path, good) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServiceStartError(f"uvicorn exited with {process.returncode}:\n{log.read_text()}")
        try:
            if good(httpx.get(url, timeout=5.0)):
                return
        except httpx.TransportError:
            pass  # not accepting connections yet
        time.sleep(0.1)
    raise ServiceStartError(f"{url} not ready after {timeout} s:\n{log.read_text()}")
