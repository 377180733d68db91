"""A DICOMweb client of the upstream PACS: what the gateway and `mvmic pacs` ask of it.

    store(instances)            STOW-RS  POST {root}/studies            -> PS3.18 response dataset, also that
                                of a 400 (Orthanc 1.10 answers 400 when it cannot parse an instance, with
                                those it stored in ReferencedSOPSequence and the other one in no sequence)
    retrieve(resource)          WADO-RS  GET  {root}/{resource}, transfer-syntax=* (as stored) -> instances
    search(resource, query)     QIDO-RS  GET  {root}/{resource}?query   -> the PACS's answer as it came (2xx)

Every request carries the configured credentials (HTTP basic). A failed connection is tried again
(twice) before anything is sent. A PACS that cannot be reached, resets the connection or does not answer
within ``timeout`` (to connect, and to each read or write) raises PacsError with status 503 and a
Retry-After; one that answers 5xx, 502 with its own Retry-After (seconds or an HTTP date) or ours; an
unknown resource, 404; a refused query, its own 4xx; any other refusal or an answer that is not what
DICOMweb defines, 502. The
message names what failed and the PACS's status, never the PACS's address (it may hold credentials),
its own words or the resource (they may name a patient or a study's UIDs).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

import httpx
from pydicom.dataset import Dataset

from mvmic.pacs.multipart import MultipartError, parse_related, related_body

DICOM = "application/dicom"
AS_STORED = f'multipart/related; type="{DICOM}"; transfer-syntax=*'


RETRY_AFTER_S = 10  # what the gateway tells its clients when the PACS is down and said nothing itself
CONNECT_RETRIES = 2


class PacsError(RuntimeError):
    """The upstream PACS could not be reached or refused a request: ``status`` is what a gateway answers
    its own client (503 unreachable or too slow, 502 refused or failing, 404 unknown resource);
    ``retry_after`` (seconds) is set when trying again later may succeed."""

    def __init__(self, message: str, status: int = 502, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}


@dataclass
class PacsClient:
    root: str  # DICOMweb root, e.g. http://orthanc:8042/dicom-web
    auth: tuple[str, str] | None = None
    timeout: float = 120.0
    http: httpx.Client = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.root = self.root.rstrip("/")
        self.http = httpx.Client(auth=self.auth, timeout=self.timeout,
                                 transport=httpx.HTTPTransport(retries=CONNECT_RETRIES))

    def close(self) -> None:
        self.http.close()

    def store(self, instances: list[bytes]) -> Dataset:
        """STOW-RS of ``instances`` (Part 10 files); the PACS's PS3.18 response dataset (empty if it sent
        none), or PacsError 502 for an answer that is not one."""
        body, content_type = related_body(instances, DICOM)
        response = self._send("POST", "studies", content=body,
                              headers={"Content-Type": content_type, "Accept": "application/dicom+json"})
        if response.status_code not in (200, 202, 409) and not (response.status_code == 400
                                                                and _holds_response_dataset(response)):
            raise self._refused(response, "store")
        if not response.content:
            return Dataset()
        try:
            answer = Dataset.from_json(response.json())
            for item in [*answer.get("ReferencedSOPSequence", []), *answer.get("FailedSOPSequence", [])]:
                str(item.ReferencedSOPInstanceUID)
                int(item.get("FailureReason", 0))
        except Exception as exc:  # JSON and pydicom raise many types on a malformed answer
            raise PacsError(f"the PACS answered the store (HTTP {response.status_code}) with a body that is not a "
                            f"PS3.18 response dataset ({type(exc).__name__})") from exc
        return answer

    def retrieve(self, resource: str) -> list[bytes]:
        """The instances of a study, series or instance (``studies/S[/series/R[/instances/I]]``), as stored."""
        response = self._send("GET", resource, headers={"Accept": AS_STORED})
        if response.status_code != 200:
            raise self._refused(response, "retrieve")
        try:
            return [part.content for part in parse_related(response.content, response.headers.get("content-type", ""))]
        except MultipartError as exc:
            raise PacsError(f"the PACS answered a retrieve with a malformed multipart body ({exc})") from exc

    def search(self, resource: str, query: str = "", accept: str = "application/dicom+json") -> httpx.Response:
        """A QIDO-RS query, answered as the PACS answered it (status, type and body), unless it refused it (4xx:
        PacsError with that status, the query is the client's to mend) or failed (5xx)."""
        response = self._send("GET", f"{resource}?{query}" if query else resource, headers={"Accept": accept})
        if response.status_code >= 400:
            raise self._refused(response, "search", response.status_code)
        return response

    def _send(self, method: str, resource: str, **kwargs) -> httpx.Response:
        try:
            try:
                return self.http.request(method, f"{self.root}/{resource}", **kwargs)
            except httpx.RemoteProtocolError:
                # Most often a pooled keep-alive connection the PACS closed while it was idle, met by this request
                # (seen with Orthanc under load): sent once more, on a fresh connection. Every request here may be
                # repeated: reads, and STOW-RS of instances the PACS keys by their SOP Instance UID.
                return self.http.request(method, f"{self.root}/{resource}", **kwargs)
        except httpx.InvalidURL as exc:  # a path parameter no URL can hold (a NUL byte, say)
            raise PacsError(f"not a valid DICOMweb resource ({exc})", 400) from exc
        except httpx.TimeoutException as exc:
            raise PacsError(f"the PACS did not answer within {self.timeout:g} s ({type(exc).__name__})", 503,
                            RETRY_AFTER_S) from exc
        except httpx.TransportError as exc:  # refused, reset, closed mid-answer
            raise PacsError(f"the PACS cannot be reached or closed the connection ({type(exc).__name__})", 503,
                            RETRY_AFTER_S) from exc

    @staticmethod
    def _refused(response: httpx.Response, action: str, status: int = 502) -> PacsError:
        """The PacsError of a refusal: 404 as such, 5xx as 502 with Retry-After, any other as ``status``."""
        if response.status_code == 404:
            return PacsError(f"the PACS has no such resource to {action}", 404)
        reason = f"the PACS refused to {action}: HTTP {response.status_code}"
        if response.status_code >= 500:
            return PacsError(reason, 502, retry_after(response.headers.get("retry-after", "")))
        return PacsError(reason, status)


def retry_after(header: str, default: int = RETRY_AFTER_S) -> int:
    """Seconds from a Retry-After header (RFC 9110 10.2.3: delay-seconds or an HTTP date), else ``default``."""
    header = header.strip()
    if header.isascii() and header.isdigit():
        return int(header)
    try:
        return max(0, round(parsedate_to_datetime(header).timestamp() - time.time()))
    except (TypeError, ValueError, OverflowError):
        return default


def _holds_response_dataset(response: httpx.Response) -> bool:
    """Whether the body is a PS3.18 STOW-RS response dataset (DICOM JSON)."""
    try:
        answer = response.json()
    except ValueError:
        return False
    return isinstance(answer, dict) and ("00081199" in answer or "00081198" in answer)
