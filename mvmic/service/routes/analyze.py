"""POST /v1/analyze: lesion and organ boxes and segmentations of a .mvm bitstream.

    .mvm in --Analyzer.analyze_many (a lossy stream's base layer: its quantised bands, no pixels decoded; an
             exact stream: its decoded frame's bands; concurrent requests share a batch)
            --mvmic.transcode.analysis_document--> application/json (AnalysisReport)

Errors (mvmic.service.errors): a damaged bitstream 400, missing or wrong token 401, Accept without JSON 406, one
of other weights 409, body too large 413, an image too small for the heads 422, models still loading 503.
"""

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from mvmic.service.auth import require_token
from mvmic.service.body import raw_body, read_body
from mvmic.service.dependencies import AppSettings, Models, Workers
from mvmic.service.errors import error_responses
from mvmic.service.model_workers import ModelWorkers
from mvmic.service.negotiation import negotiate
from mvmic.service.resident_models import ResidentModels
from mvmic.service.schemas import AnalysisReport
from mvmic.service.server_timing import ServerTiming
from mvmic.transcode import analysis_document, parse_for

router = APIRouter(prefix="/v1", tags=["codec"], dependencies=[Depends(require_token)],
                   responses=error_responses(401, 503))

JSON = "application/json"


@router.post("/analyze", response_class=JSONResponse, responses=error_responses(400, 406, 409, 413, 422),
             openapi_extra=raw_body("a .mvm bitstream", "application/octet-stream"))
async def analyze(request: Request, response: Response, models: Models, settings: AppSettings,
                  workers: Workers) -> AnalysisReport:
    """Lesion and organ boxes and segmentations of a .mvm bitstream, read from its base layer without decoding
    pixels. The Server-Timing header gives the analysis's time (``analysis``, mvmic.service.server_timing)."""
    negotiate(request.headers.get("accept"), (JSON,))
    body = await read_body(request, settings.max_body_bytes)
    timing = ServerTiming()
    report = await timing.measure("analysis", analysis_report(workers, models, body))
    response.headers.update(timing.headers)
    return report


async def analysis_report(workers: ModelWorkers, models: ResidentModels, data: bytes) -> AnalysisReport:
    """The analysis of bitstream ``data`` (also /v1/compress's ``analysis``); analyses of concurrent requests
    share a batch."""
    stream = parse_for(data, models.codec)
    frames = await workers.run_batched(models.analyzer.analyze_many, stream)
    return AnalysisReport.model_validate(analysis_document(stream, frames, models.analyzer))
