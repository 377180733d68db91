"""A DICOMweb client of the upstream PACS: what the gateway and `mvmic pacs` ask of it.

    store(instances)            STOW-RS  POST {root}/studies            -> PS3.18 response dataset (JSON)
    retrieve(resource)          WADO-RS  GET  {root}/{resource}, transfer-syntax=* (as stored) -> instances
    search(resource, query)     QIDO-RS  GET  {root}/{resource}?query   -> the PACS's answer as it came

Every request carries the configured credentials (HTTP basic). A PACS that cannot be reached or
answers with an unexpected status raises PacsError, which names the status and the PACS's reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx

from mvmic.pacs.multipart import MultipartError, parse_related, related_body

DICOM = "application/dicom"
AS_STORED = f'multipart/related; type="{DICOM}"; transfer-syntax=*'


class PacsError(RuntimeError):
    """The upstream PACS could not be reached or refused a request."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class PacsClient:
    root: str  # DICOMweb root, e.g. http://orthanc:8042/dicom-web
    auth: tuple[str, str] | None = None
    timeout: float = 120.0
    http: httpx.Client = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.root = self.root.rstrip("/")
        self.http = httpx.Client(auth=self.auth, timeout=self.timeout)

    def close(self) -> None:
        self.http.close()

    def store(self, instances: list[bytes]) -> dict:
        """STOW-RS of ``instances`` (Part 10 files); the PACS's response dataset (DICOM JSON), or {}."""
        body, content_type = related_body(instances, DICOM)
        response = self._send("POST", "studies", content=body,
                              headers={"Content-Type": content_type, "Accept": "application/dicom+json"})
        if response.status_code not in (200, 202, 409):
            raise self._refused(response, "store")
        return response.json() if response.content else {}

    def retrieve(self, resource: str) -> list[bytes]:
        """The instances of a study, series or instance (``studies/S[/series/R[/instances/I]]``), as stored."""
        response = self._send("GET", resource, headers={"Accept": AS_STORED})
        if response.status_code != 200:
            raise self._refused(response, "retrieve")
        try:
            return [part.content for part in parse_related(response.content, response.headers.get("content-type", ""))]
        except MultipartError as exc:
            raise PacsError(f"the PACS answered {resource} with a malformed multipart body: {exc}", 502) from exc

    def search(self, resource: str, query: str = "", accept: str = "application/dicom+json") -> httpx.Response:
        """A QIDO-RS query, answered as the PACS answered it (status, type and body)."""
        return self._send("GET", f"{resource}?{query}" if query else resource, headers={"Accept": accept})

    def _send(self, method: str, resource: str, **kwargs) -> httpx.Response:
        try:
            return self.http.request(method, f"{self.root}/{resource}", **kwargs)
        except httpx.HTTPError as exc:
            raise PacsError(f"the PACS at {self.root} cannot be reached: {exc}", 502) from exc

    @staticmethod
    def _refused(response: httpx.Response, action: str) -> PacsError:
        return PacsError(f"the PACS refused to {action} {response.request.url.path}: HTTP {response.status_code} "
                         f"{response.text[:300]}", response.status_code)
