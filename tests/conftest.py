import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_S = 20.0


def _free_port() -> int:
    # The OS picks an unused port; there is a tiny race until uvicorn binds it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"uvicorn exited with {proc.returncode}:\n{log.read_text()}")
        try:
            httpx.get(url, timeout=1.0)
            return  # any HTTP answer means the server is accepting requests
        except httpx.TransportError:
            time.sleep(0.1)
    pytest.fail(f"uvicorn not up after {STARTUP_TIMEOUT_S} s:\n{log.read_text()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def mvmic() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Runs the `mvmic` command line in a subprocess, as a user would."""
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mvmic.cli", *args], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=600, check=False)
    return run


@pytest.fixture(scope="session")
def service_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a real uvicorn process serving the app factory."""
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    # Output goes to a file, not a pipe, so a chatty server can never block.
    log = tmp_path_factory.mktemp("service") / "uvicorn.log"
    cmd = [
        sys.executable, "-m", "uvicorn", "service.app:create_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port),
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_until_up(proc, f"{base_url}/healthz", log)
        yield base_url
    finally:
        _stop(proc)


CORPUS_DIR = REPO_ROOT / "data" / "corpus"


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    """The corpus built by `mvmic data prepare` (make test runs it before pytest)."""
    if not (CORPUS_DIR / "manifest.json").is_file():
        pytest.fail(f"no corpus at {CORPUS_DIR}: run `mvmic data prepare` (make test does) before pytest")
    return CORPUS_DIR


@pytest.fixture(scope="session")
def corpus_manifest(corpus_dir: Path):  # -> mvmic.corpus.manifest.Manifest, imported lazily for the service tests
    from mvmic.corpus.manifest import Manifest

    return Manifest.load(corpus_dir / "manifest.json")
