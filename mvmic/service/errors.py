"""What each failure of the codec means over HTTP: a status and a one-line reason, never a traceback.

    DicomInputError (not DICOM, malformed, not an MVMIC instance)   400
    TooSmallToAnalyseError (analysis of a tiny image)                422
    RateTargetError (conflicting or invalid targets)                 422
    UnsupportedPixelFormatError, CodecInputError                    415 (a DICOM image MVMIC cannot code)
    WeightsMismatchError (bitstream of other weights)                409
    BitstreamError (damaged bitstream; LayerError: a layer that      400
        does not decode, though its CRC holds)

Only these are the client's errors. Any other exception, a ValueError among them, is a bug of the service:
mvmic.service.app logs it with its traceback and answers 500 {"detail": "internal server error", "request_id"}.
Bad input is refused with one of these classes where it is found (mvmic.model.bitstream, mvmic.pixels, ...), never
with a bare ValueError.

Every refusal, these and the routes' own (401, 406, 413, ...), is JSON ``{"detail": reason}``;
``error_responses`` declares them in the OpenAPI document.
"""

import logging
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse

from mvmic.model.bitstream import BitstreamError, WeightsMismatchError
from mvmic.model.errors import CodecInputError, TooSmallToAnalyseError
from mvmic.model.rate_control import RateTargetError
from mvmic.pixels import DicomInputError, UnsupportedPixelFormatError
from mvmic.service.schemas import Problem

log = logging.getLogger("mvmic.service")

STATUS_BY_ERROR: tuple[tuple[type[Exception], int], ...] = (  # most specific first
    (TooSmallToAnalyseError, status.HTTP_422_UNPROCESSABLE_CONTENT),
    (RateTargetError, status.HTTP_422_UNPROCESSABLE_CONTENT),
    (UnsupportedPixelFormatError, status.HTTP_415_UNSUPPORTED_MEDIA_TYPE),
    (CodecInputError, status.HTTP_415_UNSUPPORTED_MEDIA_TYPE),
    (DicomInputError, status.HTTP_400_BAD_REQUEST),
    (WeightsMismatchError, status.HTTP_409_CONFLICT),
    (BitstreamError, status.HTTP_400_BAD_REQUEST),
)

REASONS = {
    400: "malformed input: not DICOM, a damaged bitstream or multipart body, an empty body",
    401: "missing or wrong bearer token (MVMIC_API_TOKENS)",
    404: "no such study, series or instance in the PACS",
    406: "the Accept header asks for nothing the route can answer with",
    409: "the bitstream was made by other weights",
    413: "the body exceeds MVMIC_MAX_BODY_BYTES",
    415: "a DICOM image MVMIC cannot code, or a body of another media type",
    422: "invalid parameters, conflicting rate targets, or an image too small to analyse",
    502: "the PACS cannot be reached or refused the request",
    503: "the models are still loading (Retry-After), or no PACS is configured",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` of a route's refusals: ``Problem`` bodies, with REASONS as descriptions."""
    return {code: {"model": Problem, "description": REASONS[code]} for code in codes}


def install_error_handlers(app: FastAPI) -> None:
    async def handle(request: Request, error: Exception) -> JSONResponse:
        code = next(code for kind, code in STATUS_BY_ERROR if isinstance(error, kind))
        log.info("request %s: %d %s", request.state.request_id, code, type(error).__name__)
        return JSONResponse({"detail": str(error)}, status_code=code)

    for kind, _ in STATUS_BY_ERROR:  # any other exception is a bug: mvmic.service.app's middleware answers 500
        app.add_exception_handler(kind, handle)
