from importlib.metadata import version

import httpx


def test_healthz_reports_ok_and_version(service_url: str) -> None:
    response = httpx.get(f"{service_url}/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "version": version("mvmic")}


def test_unknown_path_is_404(service_url: str) -> None:
    response = httpx.get(f"{service_url}/nope")

    assert response.status_code == 404
