"""A real service process on 127.0.0.1, started and stopped from Python (the tests and `mvmic bench
service` talk to it over HTTP, as a PACS would).

    running_service(log, environment) --start_service: uvicorn mvmic.service.app:create_app --factory on a
        free port, wait for GET /healthz, then for GET /readyz = 200 (models resident)--> yield the base
        URL --> terminate (kill after 10 s)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mvmic.child_process import stop, wait_until_answering
from mvmic.paths import REPO_ROOT

STARTUP_TIMEOUT_S = 20.0
READY_TIMEOUT_S = 120.0


class ServiceStartError(RuntimeError):
    """The service did not come up; the message carries its log."""


def free_port() -> int:
    # The OS picks an unused port; there is a tiny race until uvicorn binds it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_service(log: Path, environment: dict[str, str] | None = None,
                  port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """A uvicorn process serving the app factory and its base URL, once its models are resident; the
    caller stops it. Its output goes to ``log`` (a file, not a pipe, so a chatty server can never block).
    ServiceStartError (with the log) when it exits or is not ready in time; it is stopped then."""
    port = port or free_port()
    base_url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "uvicorn", "mvmic.service.app:create_app", "--factory",
               "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(environment or {})})
    try:
        wait_until_answering(process, f"{base_url}/healthz", STARTUP_TIMEOUT_S, log, ServiceStartError)
        wait_until_answering(process, f"{base_url}/readyz", READY_TIMEOUT_S, log, ServiceStartError,
                             lambda response: response.status_code == 200)
    except BaseException:
        stop(process)
        raise
    return process, base_url


@contextmanager
def running_service(log: Path, environment: dict[str, str] | None = None, port: int | None = None) -> Iterator[str]:
    """Base URL of a service started by start_service, stopped when the block ends."""
    process, base_url = start_service(log, environment, port)
    try:
        yield base_url
    finally:
        stop(process)

