"""The service as a hospital's security review sees it: bearer tokens on every route that touches images
(the DICOMweb gateway's included), body limits enforced while a body streams in on every route that takes
one, and no patient identifier (name, ID, birth date, accession number, UIDs) in any log line or error
message, whatever the request. A real gateway with tokens and a small body limit, in front of a real Orthanc.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from mvmic.pacs.multipart import related_body
from mvmic.pacs.orthanc import OrthancServer
from mvmic.service.process import start_service

TOKEN, BODY_LIMIT = "security-test-token", 400_000
AUTH = {"Authorization": f"Bearer {TOKEN}"}
UNGUARDED = {"/healthz", "/readyz", "/metrics", "/docs", "/redoc", "/openapi.json", "/ui/"}  # /ui/: static files
DICOM = "application/dicom"


@dataclass(frozen=True)
class Gateway:
    url: str
    log: Path


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, orthanc: OrthancServer) -> Iterator[Gateway]:
    log = tmp_path_factory.mktemp("gateway") / "uvicorn.log"
    process, url = start_service(log, {
        "MVMIC_PACS_URL": orthanc.dicomweb, "MVMIC_PACS_USER": orthanc.auth[0], "MVMIC_PACS_PASSWORD": orthanc.auth[1],
        "MVMIC_API_TOKENS": f'["{TOKEN}"]', "MVMIC_MAX_BODY_BYTES": str(BODY_LIMIT), "MVMIC_LOG_LEVEL": "debug"})
    try:
        yield Gateway(url, log)
    finally:
        process.terminate()
        process.wait(30)


def _identified(corpus_dir: Path, entry_id: str = "pyradiomics-brain2-011") -> pydicom.Dataset:
    """A corpus image under identifiers that appear nowhere else."""
    dataset = pydicom.dcmread(corpus_dir / "images" / f"{entry_id}.dcm")
    dataset.PatientName, dataset.PatientID = "Confidential^Patricia", "PID-7734-SECRET"
    dataset.PatientBirthDate, dataset.AccessionNumber = "19230417", "ACC-SECRET-99"
    # a component with a leading zero, as some modalities write: pydicom's validation warning would quote it
    dataset.StudyInstanceUID = f"1.2.840.99.0{generate_uid()[-20:].lstrip('.')}"
    dataset.SeriesInstanceUID = generate_uid()
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return dataset


def _identifiers(dataset: pydicom.Dataset) -> list[str]:
    return [str(dataset.PatientName), "Confidential", "Patricia", dataset.PatientID, dataset.PatientBirthDate,
            dataset.AccessionNumber, dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID]


def _bytes(dataset: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _routes(gateway: Gateway) -> list[tuple[str, str]]:
    """(method, path template) of every route the gateway's OpenAPI document lists, its documents and the page."""
    paths = httpx.get(f"{gateway.url}/openapi.json", timeout=30).json()["paths"]
    listed = [(method.upper(), path) for path, operations in paths.items() for method in operations]
    return sorted(listed + [("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/redoc"), ("GET", "/ui/")])


def test_every_route_but_the_probes_and_docs_needs_the_token(gateway: Gateway) -> None:
    routes = _routes(gateway)
    assert ("POST", "/dicomweb/studies") in routes and ("GET", "/dicomweb/studies/{study}") in routes
    for method, template in routes:
        path = template.format(study="1.2.3", series="4.5.6", instance="7.8.9")
        response = httpx.request(method, f"{gateway.url}{path}", content=b"x" if method == "POST" else None,
                                 timeout=60)
        if template in UNGUARDED:
            assert response.status_code == 200, (method, path)
        else:
            assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer", (method, path)
    for header in (f"Bearer {TOKEN}", f"bearer  {TOKEN}"):  # RFC 6750: the scheme in any case, 1*SP
        assert httpx.get(f"{gateway.url}/v1/models", headers={"Authorization": header}).status_code == 200
    for header in ("Bearer", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}"):
        assert httpx.get(f"{gateway.url}/v1/models", headers={"Authorization": header}).status_code == 401


def test_every_body_is_limited_while_it_streams_in(gateway: Gateway, corpus_dir: Path) -> None:
    large = (corpus_dir / "images" / "pyradiomics-lung1-030.dcm").read_bytes()  # 524 kB
    assert len(large) > BODY_LIMIT
    posts = [path for method, path in _routes(gateway) if method == "POST"]
    assert posts == ["/dicomweb/studies", "/dicomweb/studies/{study}", "/v1/analyze", "/v1/compress",
                     "/v1/decompress"]
    body, content_type = related_body([large], DICOM)
    for path in posts:
        headers = {**AUTH, "Content-Type": content_type if path.startswith("/dicomweb") else DICOM}

        def chunked():  # no Content-Length: only counting the bytes as they arrive can stop it
            for start in range(0, len(body), 65536):
                yield body[start:start + 65536]

        response = httpx.post(f"{gateway.url}{path.format(study='1.2.3')}", content=chunked(), headers=headers,
                              timeout=120)
        assert response.status_code == 413 and "content-length" not in response.request.headers, (path, response.text)


def test_no_patient_identifier_in_any_log_line_or_error_message(gateway: Gateway, corpus_dir: Path) -> None:
    dataset = _identified(corpus_dir)
    identifiers = _identifiers(dataset)
    unreadable = _identified(corpus_dir)
    unreadable.BitsStored = 20  # more bits than allocated: refused
    identifiers += _identifiers(unreadable)
    errors = []

    def send(method: str, path: str, expected: int, **kwargs) -> httpx.Response:
        kwargs["headers"] = {**AUTH, **kwargs.get("headers", {})}
        response = httpx.request(method, f"{gateway.url}{path}", timeout=300, **kwargs)
        assert response.status_code == expected, (method, path, response.text)
        if expected >= 400:
            errors.append(response)
        return response

    stream = send("POST", "/v1/compress", 200, content=_bytes(dataset), params={"quality": 4},
                  headers={"Content-Type": DICOM, "Accept": "application/octet-stream"}).content
    send("POST", "/v1/compress", 415, content=_bytes(unreadable), headers={"Content-Type": DICOM})
    send("POST", "/v1/analyze", 200, content=stream)
    send("POST", "/v1/decompress", 200, content=stream)
    send("POST", "/v1/decompress", 400, content=stream[: len(stream) // 2])
    send("POST", "/v1/compress", 422, content=_bytes(dataset), params={"quality": 4, "target_bpp": 1})
    body, content_type = related_body([_bytes(dataset), _bytes(unreadable), b"not DICOM"], DICOM)
    send("POST", "/dicomweb/studies", 202, content=body, headers={"Content-Type": content_type})
    body, content_type = related_body([_bytes(dataset)], DICOM)
    send("POST", "/dicomweb/studies/1.2.3", 409, content=body, headers={"Content-Type": content_type})
    instance = f"/dicomweb/studies/{dataset.StudyInstanceUID}/series/{dataset.SeriesInstanceUID}" \
               f"/instances/{dataset.SOPInstanceUID}"
    send("GET", instance, 200)
    send("GET", f"{instance}/metadata", 200)
    send("GET", instance, 406, headers={"Accept": 'multipart/related; type="application/dicom"; '
                                                  'transfer-syntax=1.2.840.10008.1.2.4.50'})
    send("GET", f"/dicomweb/studies/{dataset.StudyInstanceUID}/series/{generate_uid()}", 404)
    found = send("GET", "/dicomweb/studies", 200, params={"PatientID": dataset.PatientID,
                                                          "AccessionNumber": dataset.AccessionNumber})
    assert dataset.StudyInstanceUID in found.text  # the search did reach the PACS with the identifiers
    send("GET", "/dicomweb/series", 200, params={"PatientName": str(dataset.PatientName)})  # the search did reach the PACS with the identifiers
    metrics = httpx.get(f"{gateway.url}/metrics", timeout=30).text  # no token needed: nothing identifying
    assert 'route="/dicomweb/studies/{study}"' in metrics and [i for i in identifiers if i in metrics] == []
    log = gateway.log.read_text(errors="replace")
    assert "POST /dicomweb/studies -> 202" in log and "GET /dicomweb/studies/{study}/series/{series}" in log
    assert [identifier for identifier in identifiers if identifier in log] == []
    for response in errors:  # PS3.18 answers name the failed instance by UID: its detail, headers never
        text = response.text if "detail" in response.text else ""
        leaked = [i for i in identifiers if i in text or i in str(response.headers)]
        assert leaked == [], (response.request.url.path, response.status_code, leaked)
