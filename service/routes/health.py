"""Liveness endpoint for container health checks and load balancers."""

from fastapi import APIRouter, Request
from pydantic import BaseModel

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    version: str


@router.get("/healthz")
def healthz(request: Request) -> Health:
    # The app factory sets its version from the installed package metadata.
    return Health(status="ok", version=request.app.version)
