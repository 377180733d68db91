"""POST /v1/compress: one DICOM instance to a .mvm bitstream, and what the heads see in it.

    application/dicom in --mvmic.transcode.dicom_to_mvm (mvmic.model.rate_control)--> by Accept:
        application/json (default): the bitstream (base64), its rate, and the analysis of the same
                                    latent (mvmic.service.routes.analyze) as CompressedInstance
        application/octet-stream:   the .mvm bitstream
        application/dicom:          the instance with the .mvm as encapsulated Pixel Data (transcode.mvm_instance)

Errors (mvmic.service.errors): not DICOM 400, missing or wrong token 401, an Accept it cannot answer 406, body
too large 413, unsupported pixel format 415, conflicting or out-of-range operating points 422, models still
loading 503.
"""

import base64
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.responses import JSONResponse

from mvmic.model.errors import TooSmallToAnalyseError
from mvmic.model.quality import MAX_ERROR
from mvmic.service.auth import require_token
from mvmic.service.body import BINARY, raw_body, read_body
from mvmic.service.dependencies import AppSettings, Metrics, Models, Workers
from mvmic.service.errors import error_responses
from mvmic.service.negotiation import negotiate
from mvmic.service.routes.analyze import analysis_report
from mvmic.service.schemas import CompressedInstance, Mode
from mvmic.service.server_timing import ServerTiming
from mvmic.transcode import dicom_to_mvm, error_bound, mvm_instance

router = APIRouter(prefix="/v1", tags=["codec"], dependencies=[Depends(require_token)],
                   responses=error_responses(401, 503))

DICOM = "application/dicom"
OCTET = "application/octet-stream"
JSON = "application/json"


# The JSON routes answer through JSONResponse (json.dumps), as they did before they declared their models.
@router.post("/compress", response_model=CompressedInstance, response_class=JSONResponse,
             response_model_exclude_unset=True,  # analysis_skipped: only when there is no analysis
             responses={200: {"content": {JSON: {}, OCTET: BINARY, DICOM: BINARY}}, **error_responses(400, 406, 413, 415, 422)},
             openapi_extra=raw_body("one DICOM instance (Part 10 file)", DICOM))
async def compress(request: Request, response: Response, models: Models, settings: AppSettings, workers: Workers,
                   metrics: Metrics,
                   quality: Annotated[int | None, Query(ge=1, le=8)] = None,
                   target_bpp: Annotated[float | None, Query(gt=0, allow_inf_nan=False)] = None,
                   target_psnr: Annotated[float | None, Query(gt=0, allow_inf_nan=False,
                                                              description="dB on the native range")] = None,
                   mode: Mode = "lossy",
                   max_error: Annotated[int | None, Query(ge=1, le=MAX_ERROR)] = None) -> CompressedInstance | Response:
    """Compress one DICOM instance (body ``application/dicom``). The Server-Timing header gives the encoding's
    time (``encode``) and the analysis's or the instance's (mvmic.service.server_timing)."""
    accept = negotiate(request.headers.get("accept"), (JSON, OCTET, DICOM))
    try:
        bound = error_bound(mode, max_error)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    body = await read_body(request, settings.max_body_bytes)
    timing = ServerTiming()
    result = await timing.measure("encode", workers.run(dicom_to_mvm, body, models.codec, quality, target_bpp,
                                                        target_psnr, bound, settings.verify_bound))
    metrics.bits_per_pixel.labels(mode).observe(result.bits_per_pixel)
    if accept == OCTET:
        return Response(result.data, media_type=OCTET, headers=timing.headers)
    if accept == DICOM:
        instance = await timing.measure("instance", workers.run(mvm_instance, result, models.codec))
        return Response(instance, media_type=DICOM, headers=timing.headers)
    try:
        analysis, skipped = await timing.measure("analysis", analysis_report(workers, models, result.data)), None
    except TooSmallToAnalyseError as exc:  # the compression stands; the heads cannot see so small an image
        analysis, skipped = None, str(exc)
    response.headers.update(timing.headers)
    return CompressedInstance(model_id=models.codec.model_id, bitstream=base64.b64encode(result.data).decode("ascii"),
                              bytes=len(result.data), bits_per_pixel=result.bits_per_pixel,
                              compression_ratio=result.ratio, quality_code=result.quality_code, mode=mode,
                              max_error=bound, analysis=analysis, **({"analysis_skipped": skipped} if skipped else {}))
