import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mvmic.pacs.orthanc import OrthancServer, OrthancStartError, running_orthanc
from mvmic.service.process import ServiceStartError, running_service

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def mvmic() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Runs the `mvmic` command line in a subprocess, as a user would."""
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mvmic.cli", *args], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=600, check=False)
    return run


def _serve(tmp_path_factory: pytest.TempPathFactory, environment: dict[str, str]) -> Iterator[tuple[str, Path]]:
    """(base URL, log file) of a real uvicorn process serving the app factory, once its models are resident."""
    log = tmp_path_factory.mktemp("service") / "uvicorn.log"
    try:
        with running_service(log, environment) as url:
            yield url, log
    except ServiceStartError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def service_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The service as `make run` starts it: shipped weights, no tokens, default limits."""
    for url, _ in _serve(tmp_path_factory, {}):
        yield url


@dataclass(frozen=True)
class GuardedService:
    url: str
    token: str
    body_limit: int
    log: Path  # everything the server printed


@pytest.fixture(scope="session")
def guarded_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuardedService]:
    """The service with bearer tokens and a small body limit."""
    token, body_limit = "test-token-1", 300_000
    environment = {"MVMIC_API_TOKENS": f'["{token}", "test-token-2"]', "MVMIC_MAX_BODY_BYTES": str(body_limit)}
    for url, log in _serve(tmp_path_factory, environment):
        yield GuardedService(url, token, body_limit, log)


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


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """A real Orthanc with its DICOMweb plugin, one per test module (inside the private network namespace
    `make test` runs pytest in)."""
    try:
        with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
            yield server
    except OrthancStartError as exc:
        pytest.fail(str(exc))
