"""What the routes take from the running app, as typed FastAPI dependencies: the one place that reads
``app.state``, which mvmic.service.app's lifespan fills (settings, workers, models, load_error, pacs) and create_app
starts (metrics).

    AppSettings  Settings        the MVMIC_* settings the app runs with
    Metrics      ServiceMetrics  the Prometheus metrics
    Workers      ModelWorkers    the model threads that run the codec and the heads
    Loading      ModelsLoading   the models, or why there are none yet (for /readyz)
    Models       ResidentModels  the loaded models; 503 with Retry-After while they load
    Pacs         PacsClient      the upstream PACS; 503 without MVMIC_PACS_URL
"""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from mvmic.pacs.client import PacsClient
from mvmic.service.model_workers import ModelWorkers
from mvmic.service.prometheus import ServiceMetrics
from mvmic.service.resident_models import ResidentModels
from mvmic.service.settings import Settings


def app_settings(request: Request) -> Settings:
    return request.app.state.settings


def service_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


def model_workers(request: Request) -> ModelWorkers:
    return request.app.state.workers


@dataclass(frozen=True)
class ModelsLoading:
    models: ResidentModels | None  # None until they are resident
    error: str | None  # why they failed to load ("Type: message"); None while loading or loaded


def models_loading(request: Request) -> ModelsLoading:
    return ModelsLoading(request.app.state.models, request.app.state.load_error)


def resident(loading: Annotated[ModelsLoading, Depends(models_loading)]) -> ResidentModels:
    """The resident models; 503 with Retry-After while they load."""
    if loading.models is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the model is still loading", {"Retry-After": "5"})
    return loading.models


def upstream(request: Request) -> PacsClient:
    """The upstream PACS; 503 when none is configured."""
    pacs = request.app.state.pacs
    if pacs is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no upstream PACS is configured (MVMIC_PACS_URL)")
    return pacs


AppSettings = Annotated[Settings, Depends(app_settings)]
Metrics = Annotated[ServiceMetrics, Depends(service_metrics)]
Workers = Annotated[ModelWorkers, Depends(model_workers)]
Loading = Annotated[ModelsLoading, Depends(models_loading)]
Models = Annotated[ResidentModels, Depends(resident)]
Pacs = Annotated[PacsClient, Depends(upstream)]
