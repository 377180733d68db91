"""/dicomweb: a DICOMweb gateway in front of the PACS (MVMIC_PACS_URL).

    STOW-RS  POST /dicomweb/studies[/{study}]  multipart/related; type="application/dicom"
             --each part: mvmic.pacs.storage.prepare_instance (model thread; MVMIC_STORAGE_MODE,
               lossless by default; SEG + SR with MVMIC_STORE_ANALYSIS or ?analysis=true)-->
             PACS STOW-RS --> PS3.18 response dataset: 200 all stored, 202 some, 409 none;
             the PACS down, too slow or resetting: 503, failing (5xx): 502, both with Retry-After and
             every instance in FailedSOPSequence (0x0110): nothing was stored for sure, so the client
             sends the request again (lossless instances keep their UIDs, derivatives get the same
             new ones: a repeated request replaces, never duplicates)
    WADO-RS  GET /dicomweb/studies/{study}[/series/{series}[/instances/{instance}]]
             PACS (down: 503, failing: 502, with Retry-After), as stored --storage.render: the first
             transfer syntax of Accept it can give (default Explicit VR Little Endian, decoded; its stored
             syntax; * as stored, MVMIC instances decoded; none of them: 406)--> multipart/related
    QIDO-RS  GET /dicomweb/studies, /series, /instances (and nested), and */metadata: the PACS's
             answer as it came, its retrieve URLs pointing at the gateway (refused, 4xx: the gateway's
             {"detail"} with the same status; failing, 5xx: 502 with Retry-After)

The PACS's URL of a request is the route's path, each path parameter (a UID, or whatever the client
sent) one percent-encoded segment (``pacs_resource``); "." and ".." name nothing (422), and neither
does a limit or offset that is no count PACSs take (422: Orthanc 1.10 answers those with HTTP 500).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from mvmic.pacs.client import DICOM, PacsClient, PacsError
from mvmic.pacs.multipart import MultipartError, parse_media_type, parse_related, related_body
from mvmic.pacs.storage import (
    PROCESSING_FAILURE,
    NotAcceptableError,
    Prepared,
    StoragePolicy,
    prepare_instance,
    render,
)
from mvmic.service.auth import require_token
from mvmic.service.body import BINARY, raw_body, read_body
from mvmic.service.dependencies import AppSettings, Metrics, Models, Pacs, Workers
from mvmic.service.errors import error_responses
from mvmic.service.negotiation import media_ranges
from mvmic.service.prometheus import ServiceMetrics
from mvmic.service.schemas import DicomJsonDataset, inline_schema
from mvmic.service.settings import Settings

DICOM_JSON = "application/dicom+json"
log = logging.getLogger("mvmic.service")


def named_resource(request: Request) -> None:
    """422 for a path parameter (study, series, instance) that is a dot segment: in a URL, "." and ".."
    are the folder itself and its parent, so they name no PACS resource."""
    for name, value in request.path_params.items():
        if value in (".", ".."):
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"{name} {value!r} names no resource")


def pacs_resource(request: Request) -> str:
    """The PACS's resource a request names: its route's path under /dicomweb/, each path parameter one
    percent-encoded segment (decoded, a parameter could hold URL syntax: '?', '#', control characters)."""
    template = request.scope["route"].path.split("/dicomweb/", 1)[1]
    return template.format(**{name: quote(value, safe="") for name, value in request.path_params.items()})


router = APIRouter(prefix="/dicomweb", tags=["dicomweb"],
                   dependencies=[Depends(require_token), Depends(named_resource)],
                   responses=error_responses(401, 422, 503))


def _routes(method: str, *paths: str, **options: Any) -> Callable[[Callable], Callable]:
    """Register the endpoint at each of ``paths``, declaring their path parameters (UIDs; the endpoints
    read them from the request) in the OpenAPI document."""
    def register(endpoint: Callable) -> Callable:
        for path in paths:
            parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"},
                           "description": f"{name} instance UID"} for name in re.findall(r"{(\w+)}", path)]
            extra = options.get("openapi_extra", {})
            parameters += extra.get("parameters", [])
            extra = {**extra, **({"parameters": parameters} if parameters else {})}
            router.add_api_route(path, endpoint, methods=[method], **{**options, "openapi_extra": extra})
        return endpoint
    return register


# -- STOW-RS ------------------------------------------------------------------------------------------
# The DICOM JSON answers are declared in place: FastAPI puts a response "model" under the route's media type, which
# is application/json for the refusals of the same route.
STOW_RESPONSE = {"content": {DICOM_JSON: {"schema": inline_schema(DicomJsonDataset)}},
                 "description": "the PS3.18 response dataset"}
FOUND = {"content": {DICOM_JSON: {"schema": inline_schema(list[DicomJsonDataset])}},
         "description": "the PACS's answer: the datasets found, as it sent them"}


@_routes("POST", "/studies", "/studies/{study}", response_class=Response,
         responses={200: STOW_RESPONSE, 202: STOW_RESPONSE, 409: STOW_RESPONSE, **error_responses(400, 413, 415, 502)},
         openapi_extra=raw_body("DICOM instances (Part 10 files), one a part", f'multipart/related; type="{DICOM}"'))
async def store(request: Request, models: Models, pacs: Pacs, settings: AppSettings, workers: Workers,
                metrics: Metrics,
                analysis: Annotated[bool | None, Query(description="also store SEG and SR")] = None) -> Response:
    """Compress each instance at the storage setting and store it in the PACS."""
    study = request.path_params.get("study")
    media = parse_media_type(request.headers.get("content-type", ""))
    if media.type != "multipart/related" or media.parameters.get("type", DICOM).lower() != DICOM:
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                            f'STOW-RS takes multipart/related; type="{DICOM}", not {media.type}')
    body = await read_body(request, settings.max_body_bytes)
    try:
        parts = parse_related(body, request.headers["content-type"])
    except MultipartError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    if not parts:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "the request holds no instance")
    policy = StoragePolicy(settings.storage_bound, settings.storage_quality, settings.verify_bound,
                           settings.store_analysis if analysis is None else analysis)
    prepared = [await workers.run(prepare_instance, part.content, models.codec, models.analyzer,
                                                   policy, study) for part in parts]
    for number, item in enumerate(prepared, start=1):  # what happened to each part, never patient data
        log.info("request %s: part %d of %d: %s", request.state.request_id, number, len(prepared),
                 item.note if item.failure is None else f"failed ({item.failure:#06x}): {item.note}")
    outgoing = [data for item in prepared for data in item.instances]
    try:
        answer = await run_in_threadpool(pacs.store, outgoing) if outgoing else Dataset()
    except PacsError as exc:
        log.warning("request %s: the PACS failed the store: %s", request.state.request_id, exc)
        return _stow_failed(metrics, prepared, exc)
    return _stow_response(request, pacs, settings, metrics, prepared, answer)


def _stow_response(request: Request, pacs: PacsClient, settings: Settings, metrics: ServiceMetrics,
                   prepared: list[Prepared], answer: Dataset) -> JSONResponse:
    """The PS3.18 response: what the PACS referenced, and what failed here or there, with the reason. An
    instance sent that the PACS neither referenced nor listed as failed is not known to be stored: failed
    (0x0110)."""
    response = Dataset()
    response.ReferencedSOPSequence = []
    for item in answer.get("ReferencedSOPSequence", []):
        reference = Dataset()
        if "ReferencedSOPClassUID" in item:
            reference.ReferencedSOPClassUID = item.ReferencedSOPClassUID
        reference.ReferencedSOPInstanceUID = item.ReferencedSOPInstanceUID
        if "RetrieveURL" in item:
            reference.RetrieveURL = _through_gateway(request, pacs, settings, str(item.RetrieveURL))
        response.ReferencedSOPSequence.append(reference)
    pacs_failed = answer.get("FailedSOPSequence", [])
    answered = {str(item.ReferencedSOPInstanceUID) for item in [*response.ReferencedSOPSequence, *pacs_failed]}
    failed = [_failure(p.sop_class, p.sop_instance, p.failure) for p in prepared if p.failure is not None]
    unanswered = [(number, p) for number, p in enumerate(prepared, start=1)
                  if p.failure is None and p.instances and p.sop_instance not in answered]
    for number, item in unanswered:  # which part, never its UIDs (Orthanc 1.10 leaves out one it cannot parse)
        log.warning("request %s: part %d: the PACS did not store it, nor say why", request.state.request_id, number)
        failed.append(_failure(item.sop_class, item.sop_instance, PROCESSING_FAILURE))
    failed += [_failure(item.get("ReferencedSOPClassUID"), item.ReferencedSOPInstanceUID,
                        int(item.get("FailureReason", PROCESSING_FAILURE))) for item in pacs_failed]
    if failed:
        response.FailedSOPSequence = failed
    for item in prepared:
        metrics.stored.labels("failed" if item.failure else "sent").inc()
        metrics.gateway_bytes.labels("received").inc(item.original_bytes)
        metrics.gateway_bytes.labels("sent").inc(sum(len(data) for data in item.instances))
    code = (status.HTTP_200_OK if not failed else
            status.HTTP_202_ACCEPTED if response.ReferencedSOPSequence else status.HTTP_409_CONFLICT)
    return JSONResponse(response.to_json_dict(), status_code=code, media_type=DICOM_JSON)


def _stow_failed(metrics: ServiceMetrics, prepared: list[Prepared], error: PacsError) -> JSONResponse:
    """The PACS did not store the request: every instance failed, with its own reason or 0x0110, and the
    PACS's failure as the status (503 or 502; Retry-After when trying again may succeed)."""
    response = Dataset()
    response.FailedSOPSequence = [_failure(p.sop_class, p.sop_instance, PROCESSING_FAILURE if p.failure is None
                                           else p.failure) for p in prepared]
    metrics.stored.labels("failed").inc(len(prepared))
    code = error.status if error.status in (502, 503) else status.HTTP_502_BAD_GATEWAY
    headers = {**error.headers, "Warning": f'299 mvmic "{_quoted(str(error))}"'}
    return JSONResponse(response.to_json_dict(), status_code=code, media_type=DICOM_JSON, headers=headers)


def _quoted(text: str) -> str:
    """``text`` fit for a quoted-string of an HTTP header (RFC 9110 5.6.4): one line, Latin-1, no quotes."""
    return " ".join(text.split()).replace("\\", "/").replace('"', "'").encode("latin-1", "replace").decode("latin-1")


def _through_gateway(request: Request, pacs: PacsClient, settings: Settings, text: str) -> str:
    """``text`` with the PACS's URLs turned into this gateway's, as clients reach it: MVMIC_PUBLIC_URL
    (behind a proxy, or for clients whose Host header is not the address they used), else what the
    request's Host header says."""
    public = settings.public_url
    return text.replace(pacs.root, (public or str(request.base_url)).rstrip("/") + "/dicomweb")


def _failure(sop_class: str | None, sop_instance: str | None, reason: int) -> Dataset:
    item = Dataset()
    if sop_class:
        item.ReferencedSOPClassUID = sop_class
    if sop_instance:
        item.ReferencedSOPInstanceUID = sop_instance
    item.FailureReason = reason
    return item


# -- WADO-RS ------------------------------------------------------------------------------------------
@_routes("GET", "/studies/{study}", "/studies/{study}/series/{series}",
         "/studies/{study}/series/{series}/instances/{instance}", response_class=Response,
         responses={200: {"content": {f'multipart/related; type="{DICOM}"': BINARY}}, **error_responses(404, 406, 502)})
async def retrieve(request: Request, models: Models, pacs: Pacs, workers: Workers) -> Response:
    """Instances in the first transfer syntax of the Accept header the gateway can give each in: decoded to
    Explicit VR Little Endian (the default), as stored (naming its syntax), or * (standard syntaxes only:
    MVMIC instances decoded)."""
    acceptable = _acceptable_syntaxes(request.headers.get("accept", "*/*"))
    resource = pacs_resource(request)
    try:
        stored = await run_in_threadpool(pacs.retrieve, resource)
    except PacsError as exc:
        raise HTTPException(exc.status, str(exc), exc.headers) from None
    try:
        rendered = [await workers.run(render, data, acceptable, models.codec) for data in stored]
    except NotAcceptableError as exc:
        raise HTTPException(status.HTTP_406_NOT_ACCEPTABLE, str(exc)) from None
    except ValueError as exc:  # not DICOM, a damaged MVMIC instance: what the PACS holds, not the request
        log.warning("request %s: the PACS gave an instance the gateway cannot read: %s", request.state.request_id,
                    type(exc).__name__)
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, f"the PACS gave an instance the gateway cannot read "
                            f"({type(exc).__name__}); ask for it as stored in its own transfer syntax") from None
    body, content_type = related_body([data for data, _ in rendered], DICOM,
                                      [f"transfer-syntax={syntax}" if syntax else "" for _, syntax in rendered])
    syntaxes = {syntax for _, syntax in rendered}  # '': an instance stored without one, given as stored
    return Response(body, media_type=f"{content_type}; transfer-syntax={syntaxes.pop()}"
                    if len(syntaxes) == 1 and "" not in syntaxes else content_type)


def _acceptable_syntaxes(accept: str) -> list[str]:
    """The transfer syntaxes of the media ranges that ask for DICOM instances, by preference (higher q first,
    in order among equals: mvmic.service.negotiation); 406 when none is."""
    syntaxes = [media.parameters.get("transfer-syntax", ExplicitVRLittleEndian) for media in media_ranges(accept)
                if media.type in ("*/*", "multipart/*") or (
                    media.type == "multipart/related" and media.parameters.get("type", DICOM).lower() == DICOM)]
    if not syntaxes:
        raise HTTPException(status.HTTP_406_NOT_ACCEPTABLE,
                            f'WADO-RS answers multipart/related; type="{DICOM}" [; transfer-syntax=...], not {accept}')
    return syntaxes


# -- QIDO-RS and metadata: passed through -------------------------------------------------------------
QIDO = ("/studies", "/series", "/instances", "/studies/{study}/series", "/studies/{study}/instances",
        "/studies/{study}/series/{series}/instances")
METADATA = ("/studies/{study}/metadata", "/studies/{study}/series/{series}/metadata",
            "/studies/{study}/series/{series}/instances/{instance}/metadata")
PAGING, MOST = ("limit", "offset"), 2**31 - 1  # counts PACSs hold in 32-bit signed integers
# PS3.18 8.3.4: the query parameters of QIDO-RS (any other attribute matches too; all pass to the PACS as sent)
QIDO_PARAMETERS = [
    *({"name": name, "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": MOST}} for name in PAGING),
    {"name": "fuzzymatching", "in": "query", "schema": {"type": "boolean"}},
    {"name": "includefield", "in": "query", "schema": {"type": "array", "items": {"type": "string"}}},
    *({"name": name, "in": "query", "schema": {"type": "string"}, "description": "attribute matching"} for name in (
        "PatientID", "PatientName", "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber",
        "ModalitiesInStudy", "SeriesInstanceUID", "Modality", "SOPInstanceUID", "00100020"))]


def paging(request: Request) -> None:
    """422 unless each limit and offset is a count from 0 to MOST: Orthanc 1.10 answers a negative one, or
    one past MOST, with HTTP 500."""
    for name in PAGING:
        for value in request.query_params.getlist(name):
            if not re.fullmatch(r"[0-9]{1,10}", value) or int(value) > MOST:
                raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                                    f"{name} {value[:80]!r} is not a count from 0 to {MOST}")


async def search(request: Request, pacs: Pacs, settings: AppSettings) -> Response:
    """The PACS's answer, with its retrieve URLs rewritten to point at this gateway."""
    resource = pacs_resource(request)
    try:
        answer = await run_in_threadpool(pacs.search, resource, request.url.query,
                                         request.headers.get("accept", DICOM_JSON))
    except PacsError as exc:
        raise HTTPException(exc.status, str(exc), exc.headers) from None
    # surrogateescape: any bytes the PACS sends come back unchanged, only its URLs are replaced
    body = _through_gateway(request, pacs, settings, answer.content.decode("utf-8", "surrogateescape")).encode(
        "utf-8", "surrogateescape")
    return Response(body, status_code=answer.status_code,
                    media_type=answer.headers.get("content-type", DICOM_JSON))


_routes("GET", *QIDO, response_class=Response, dependencies=[Depends(paging)],
        openapi_extra={"parameters": QIDO_PARAMETERS}, responses={200: FOUND, **error_responses(400, 404, 502)})(search)
_routes("GET", *METADATA, response_class=Response, responses={200: FOUND, **error_responses(400, 404, 502)})(search)
