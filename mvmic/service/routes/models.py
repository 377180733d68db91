"""GET /v1/models: the resident weights (sha256), operating points, tasks and device."""

from fastapi import APIRouter, Depends

from mvmic.service.auth import require_token
from mvmic.service.dependencies import Models
from mvmic.service.errors import error_responses
from mvmic.service.schemas import ResidentModelsReport

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[Depends(require_token)],
                   responses=error_responses(401, 503))


@router.get("/models")
def list_models(models: Models) -> ResidentModelsReport:
    return models.describe()
