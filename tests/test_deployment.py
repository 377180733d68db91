"""The compose stack and images: wiring checked without a Docker engine (none runs here)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from mvmic.service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_gateway_settings_are_real_and_storage_is_lossless(services: dict) -> None:
    environment = services["mvmic"]["environment"]
    fields = set(Settings.model_fields)
    assert {name.removeprefix("MVMIC_").lower() for name in environment} <= fields
    assert environment["MVMIC_STORAGE_MODE"] == "lossless"
    assert environment["MVMIC_PACS_URL"].startswith("http://orthanc:8042/")


def test_everything_is_published_on_loopback_only(services: dict) -> None:
    published = [port for service in services.values() for port in service.get("ports", [])]
    assert published and all(port.startswith("127.0.0.1:") for port in published)


def test_orthanc_serves_dicomweb_and_replaces_instances_for_the_gateway(services: dict) -> None:
    config = json.loads((ROOT / "docker" / "orthanc.json").read_text())
    assert config["DicomWeb"]["Enable"] and config["OverwriteInstances"] and config["AuthenticationEnabled"]
    assert services["mvmic"]["environment"]["MVMIC_PACS_USER"] in config["RegisteredUsers"]
    assert "./docker/orthanc.json:/etc/orthanc/orthanc.json:ro" in services["orthanc"]["volumes"]


def test_prometheus_scrapes_the_gateway(services: dict) -> None:
    scrape = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())["scrape_configs"]
    targets = [target for job in scrape for config in job["static_configs"] for target in config["targets"]]
    container_port = services["mvmic"]["ports"][0].rsplit(":", 1)[1]
    assert targets == [f"mvmic:{container_port}"]


@pytest.mark.parametrize("dockerfile", ["Dockerfile.cpu", "Dockerfile.cuda"])
def test_images_install_as_make_run_does(dockerfile: str) -> None:
    text = (ROOT / "docker" / dockerfile).read_text()
    assert "RUN make .venv/.installed" in text and '"/app/.venv/bin/mvmic", "serve"' in text


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
@pytest.mark.parametrize("files", [["docker-compose.yml"], ["docker-compose.yml", "docker-compose.cuda.yml"]])
def test_compose_files_are_valid(files: list[str]) -> None:
    command = ["docker-compose", *(option for name in files for option in ("-f", name)), "config", "-q"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def test_the_cuda_image_swaps_in_onnxruntime_gpu_of_the_version_pyproject_pins() -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pinned,) = [d.split("==")[1] for d in dependencies if d.startswith("onnxruntime==")]
    text = (ROOT / "docker" / "Dockerfile.cuda").read_text()
    assert "pip uninstall -y onnxruntime" in text and f'"onnxruntime-gpu[cuda,cudnn]=={pinned}"' in text
