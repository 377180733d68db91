"""POST /v1/decompress: a .mvm bitstream, or a DICOM instance that holds one, back to DICOM.

    .mvm --mvmic.transcode.mvm_to_dicom-->           application/dicom, decoded (lossless: the original)
    MVMIC instance --mvmic.transcode.instance_to_dicom-->

Errors (mvmic.service.errors): not a .mvm nor an MVMIC instance, or a damaged one, 400; missing or wrong token
401; Accept without application/dicom 406; a bitstream of other weights 409; body too large 413; a stream of a
pixel format MVMIC does not code 415; models still loading 503.
"""

import io

from fastapi import APIRouter, Depends, Request, Response

from mvmic.model.bitstream import MAGIC
from mvmic.pixels import read_dataset
from mvmic.service.auth import require_token
from mvmic.service.body import BINARY, raw_body, read_body
from mvmic.service.dependencies import AppSettings, Models, Workers
from mvmic.service.errors import error_responses
from mvmic.service.negotiation import negotiate
from mvmic.service.server_timing import ServerTiming
from mvmic.transcode import instance_to_dicom, mvm_to_dicom

router = APIRouter(prefix="/v1", tags=["codec"], dependencies=[Depends(require_token)],
                   responses=error_responses(401, 503))

DICOM = "application/dicom"


@router.post("/decompress", response_class=Response,
             responses={200: {"content": {DICOM: BINARY}}, **error_responses(400, 406, 409, 413, 415)},
             openapi_extra=raw_body("a .mvm bitstream, or a DICOM instance that holds one",
                                    "application/octet-stream", DICOM))
async def decompress(request: Request, models: Models, settings: AppSettings, workers: Workers) -> Response:
    """A .mvm bitstream, or a DICOM instance that holds one, back to a decoded DICOM instance. The Server-Timing
    header gives the decoding's time (``decode``, mvmic.service.server_timing)."""
    negotiate(request.headers.get("accept"), (DICOM,))
    body = await read_body(request, settings.max_body_bytes)
    timing = ServerTiming()
    job = (workers.run(mvm_to_dicom, body, models.codec) if body.startswith(MAGIC)
           else workers.run(instance_to_dicom, read_dataset(body), models.codec))
    dataset = await timing.measure("decode", job)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return Response(buffer.getvalue(), media_type=DICOM, headers=timing.headers)
