"""POST /v1/compress, /v1/decompress and /v1/analyze: the codec over HTTP.

    /v1/compress    application/dicom in --mvmic.transcode.dicom_to_mvm--> by Accept:
                    application/json (default): bitstream (base64), rate, and the analysis of the same
                    latent; application/octet-stream: the .mvm bitstream; application/dicom: the
                    instance with the .mvm as encapsulated Pixel Data (transcode.mvm_instance)
    /v1/decompress  .mvm or such an instance in --> application/dicom, decoded (lossless: the original)
    /v1/analyze     .mvm in --Analyzer.analyze_many (base layer only, no pixels; concurrent requests
                    share a batch)--> application/json

Errors (mvmic.service.errors): not DICOM or a damaged bitstream 400, unsupported pixel format 415, body
too large 413, a bitstream of other weights 409, missing or wrong token 401.
"""

import base64
import io
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.responses import JSONResponse

from mvmic.model.bitstream import MAGIC
from mvmic.model.errors import TooSmallToAnalyseError
from mvmic.model.residual import MAX_ERROR
from mvmic.pixels import read_dataset
from mvmic.service.auth import require_token
from mvmic.service.body import raw_body, read_body
from mvmic.service.dependencies import AppSettings, Metrics, Models, Workers
from mvmic.service.errors import error_responses
from mvmic.service.models import ModelWorkers, ResidentModels
from mvmic.service.schemas import AnalysisReport, CompressedInstance, Mode
from mvmic.transcode import (
    analysis_document,
    dicom_to_mvm,
    error_bound,
    instance_to_dicom,
    mvm_instance,
    mvm_to_dicom,
    parse_for,
)

router = APIRouter(prefix="/v1", tags=["codec"], dependencies=[Depends(require_token)],
                   responses=error_responses(401, 503))

DICOM = "application/dicom"
OCTET = "application/octet-stream"
JSON = "application/json"


# The JSON routes answer through JSONResponse (json.dumps), as they did before they declared their models.
@router.post("/compress", response_model=CompressedInstance, response_class=JSONResponse,
             response_model_exclude_unset=True,  # analysis_skipped: only when there is no analysis
             responses={200: {"content": {JSON: {}, OCTET: {}, DICOM: {}}}, **error_responses(400, 406, 413, 415, 422)},
             openapi_extra=raw_body("one DICOM instance (Part 10 file)", DICOM))
async def compress(request: Request, models: Models, settings: AppSettings, workers: Workers, metrics: Metrics,
                   quality: Annotated[int | None, Query(ge=1, le=8)] = None,
                   target_bpp: Annotated[float | None, Query(gt=0, allow_inf_nan=False)] = None,
                   target_psnr: Annotated[float | None, Query(gt=0, allow_inf_nan=False,
                                                              description="dB on the native range")] = None,
                   mode: Mode = "lossy",
                   max_error: Annotated[int | None, Query(ge=1, le=MAX_ERROR)] = None) -> CompressedInstance | Response:
    """Compress one DICOM instance (body ``application/dicom``)."""
    accept = _negotiate(request, (JSON, OCTET, DICOM))
    try:
        bound = error_bound(mode, max_error)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    body = await read_body(request, settings.max_body_bytes)
    result = await workers.run(dicom_to_mvm, body, models.codec, quality, target_bpp, target_psnr, bound,
                               settings.verify_bound)
    metrics.bits_per_pixel.labels(mode).observe(result.bits_per_pixel)
    if accept == OCTET:
        return Response(result.data, media_type=OCTET)
    if accept == DICOM:
        return Response(await workers.run(mvm_instance, result, models.codec), media_type=DICOM)
    try:
        analysis, skipped = await _analysis(workers, models, result.data), None
    except TooSmallToAnalyseError as exc:  # the compression stands; the heads cannot see so small an image
        analysis, skipped = None, str(exc)
    return CompressedInstance(model_id=models.codec.model_id, bitstream=base64.b64encode(result.data).decode("ascii"),
                              bytes=len(result.data), bits_per_pixel=result.bits_per_pixel,
                              compression_ratio=result.ratio, quality_code=result.quality_code, mode=mode,
                              max_error=bound, analysis=analysis, **({"analysis_skipped": skipped} if skipped else {}))


@router.post("/decompress", response_class=Response,
             responses={200: {"content": {DICOM: {}}}, **error_responses(400, 406, 409, 413, 415)},
             openapi_extra=raw_body("a .mvm bitstream, or a DICOM instance that holds one", OCTET, DICOM))
async def decompress(request: Request, models: Models, settings: AppSettings, workers: Workers) -> Response:
    """A .mvm bitstream, or a DICOM instance that holds one, back to a decoded DICOM instance."""
    _negotiate(request, (DICOM,))
    body = await read_body(request, settings.max_body_bytes)
    if body.startswith(MAGIC):
        dataset = await workers.run(mvm_to_dicom, body, models.codec)
    else:
        dataset = await workers.run(instance_to_dicom, read_dataset(body), models.codec)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return Response(buffer.getvalue(), media_type=DICOM)


@router.post("/analyze", response_class=JSONResponse, responses=error_responses(400, 406, 409, 413, 422),
             openapi_extra=raw_body("a .mvm bitstream", OCTET))
async def analyze(request: Request, models: Models, settings: AppSettings, workers: Workers) -> AnalysisReport:
    """Lesion and organ boxes and segmentations of a .mvm bitstream, read from its base layer without decoding
    pixels."""
    _negotiate(request, (JSON,))
    body = await read_body(request, settings.max_body_bytes)
    return await _analysis(workers, models, body)


async def _analysis(workers: ModelWorkers, models: ResidentModels, data: bytes) -> AnalysisReport:
    """The analysis document of a bitstream; analyses of concurrent requests share a batch."""
    stream = parse_for(data, models.codec)
    frames = await workers.run_batched(models.analyzer.analyze_many, stream)
    return AnalysisReport.model_validate(analysis_document(stream, frames, models.analyzer))


def _negotiate(request: Request, offered: tuple[str, ...]) -> str:
    """The first offered type the Accept header allows (no header or */*: the first offered)."""
    accept = request.headers.get("accept", "*/*")
    wanted = {part.split(";")[0].strip() for part in accept.split(",")}
    for media_type in offered:
        if wanted & {media_type, "*/*", media_type.split("/")[0] + "/*"}:
            return media_type
    raise HTTPException(status.HTTP_406_NOT_ACCEPTABLE, f"can answer with {', '.join(offered)}, not {accept}")
