"""Liveness and readiness, for container health checks and load balancers."""

from fastapi import APIRouter, Request, Response, status
from pydantic import BaseModel

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    version: str


@router.get("/healthz")
def healthz(request: Request) -> Health:
    # The app factory sets its version from the installed package metadata.
    return Health(status="ok", version=request.app.version)


@router.get("/readyz", responses={503: {"description": "the models are loading or failed to load"}})
def readyz(request: Request, response: Response) -> dict:
    if request.app.state.models is not None:
        return {"status": "ready"}
    response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    error = request.app.state.load_error
    return {"status": "failed" if error else "loading", "detail": error}
