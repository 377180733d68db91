"""Liveness endpoint for container health checks and load balancers."""

from functools import cache
from importlib.metadata import version

from fastapi import APIRouter
from pydantic import BaseModel

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    version: str


@cache
def _package_version() -> str:
    # Installed metadata cannot change while the process runs; read it once.
    return version("mvmic")


@router.get("/healthz")
def healthz() -> Health:
    return Health(status="ok", version=_package_version())
