"""What each failure of the codec means over HTTP: a status and a one-line reason, never a traceback.

    DicomInputError (not DICOM, malformed)            400
    TooSmallToAnalyseError (analysis of a tiny image)  422
    RateTargetError (conflicting or invalid targets)   422
    UnsupportedPixelFormatError, CodecInputError      415 (a DICOM image MVMIC cannot code)
    WeightsMismatchError (bitstream of other weights)  409
    BitstreamError, ValueError (damaged bitstream)    400
"""

import logging

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse

from model.bitstream import BitstreamError, WeightsMismatchError
from model.errors import CodecInputError, TooSmallToAnalyseError
from model.rate_control import RateTargetError
from mvmic.pixels import DicomInputError, UnsupportedPixelFormatError

log = logging.getLogger("mvmic.service")

STATUS_BY_ERROR: tuple[tuple[type[Exception], int], ...] = (  # most specific first
    (TooSmallToAnalyseError, status.HTTP_422_UNPROCESSABLE_CONTENT),
    (RateTargetError, status.HTTP_422_UNPROCESSABLE_CONTENT),
    (UnsupportedPixelFormatError, status.HTTP_415_UNSUPPORTED_MEDIA_TYPE),
    (CodecInputError, status.HTTP_415_UNSUPPORTED_MEDIA_TYPE),
    (DicomInputError, status.HTTP_400_BAD_REQUEST),
    (WeightsMismatchError, status.HTTP_409_CONFLICT),
    (BitstreamError, status.HTTP_400_BAD_REQUEST),
    (ValueError, status.HTTP_400_BAD_REQUEST),
)


def install_error_handlers(app: FastAPI) -> None:
    async def handle(request: Request, error: Exception) -> JSONResponse:
        code = next(code for kind, code in STATUS_BY_ERROR if isinstance(error, kind))
        log.info("request %s: %d %s", request.state.request_id, code, type(error).__name__)
        return JSONResponse({"detail": str(error)}, status_code=code)

    app.add_exception_handler(ValueError, handle)  # the others are ValueError subclasses
