"""Liveness and readiness, for container health checks and load balancers."""

from fastapi import APIRouter, Request, Response, status

from mvmic.service.dependencies import Loading
from mvmic.service.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(request: Request) -> Health:
    # The app factory sets its version from the installed package metadata.
    return Health(status="ok", version=request.app.version)


@router.get("/readyz", response_model_exclude_unset=True,  # detail: only when not ready
            responses={503: {"model": Readiness, "description": "the models are loading or failed to load"}})
def readyz(loading: Loading, response: Response) -> Readiness:
    if loading.models is not None:
        return Readiness(status="ready")
    response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Readiness(status="failed" if loading.error else "loading", detail=loading.error)
