"""FastAPI application factory for the MVMIC service.

There is deliberately no module-level ``app``: importing this module must not
build an app or load weights. Run it with uvicorn's factory mode::

    uvicorn mvmic.service.app:create_app --factory

    startup --lifespan--> torch threads, MVMIC_WORKERS model worker threads; models load on one of them
            in the background (GET /readyz answers 503 until they are resident, /healthz 200 at once)
    request --request id (X-Request-ID), logged with its route template (a path such as
            /dicomweb/studies/{study} and a QIDO query hold UIDs and patient names: uvicorn's access log,
            which prints them, is off), status and time, never patient data-->
            and counted (mvmic.service.prometheus); routes: health (/healthz, /readyz), metrics (/metrics),
            models (/v1/models), compress (/v1/compress), decompress (/v1/decompress), analyze (/v1/analyze),
            benchmarks (/v1/benchmarks: the last bench rd and bench tasks results),
            dicomweb (/dicomweb: STOW-RS, WADO-RS, QIDO-RS in front of the PACS at MVMIC_PACS_URL),
            ui (/ui/: the page, static files that call the routes above from the browser)
            (each takes what the app holds through the typed dependencies of mvmic.service.dependencies)
    shutdown --> the workers finish the jobs queued (up to SHUTDOWN_TIMEOUT_S) and are joined
"""

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from importlib.metadata import version

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from mvmic.pacs.client import PacsClient
from mvmic.service.errors import install_error_handlers
from mvmic.service.model_workers import ModelWorkers, configure_torch
from mvmic.service.prometheus import ServiceMetrics, route_of
from mvmic.service.resident_models import load_models
from mvmic.service.routes import analyze, benchmarks, compress, decompress, dicomweb, health, metrics, models, ui
from mvmic.service.settings import Settings

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]
log = logging.getLogger("mvmic.service")
SHUTDOWN_TIMEOUT_S = 30.0


def _make_lifespan(settings: Settings) -> Lifespan:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings, app.state.models, app.state.load_error = settings, None, None
        app.state.metrics.torch_threads.set(configure_torch(settings))  # before any worker runs torch
        app.state.workers = ModelWorkers(app.state.metrics, settings.workers, settings.batch_size,
                                        settings.max_batch_delay_ms / 1000)
        app.state.workers.submit(load_models, settings).add_done_callback(lambda done: _loaded(app, done))
        app.state.pacs = PacsClient(settings.pacs_url, settings.pacs_auth, settings.pacs_timeout_s) if settings.pacs_url else None
        yield
        if not await asyncio.to_thread(app.state.workers.close, SHUTDOWN_TIMEOUT_S):
            log.warning("model workers still busy after %.0f s; exiting without them", SHUTDOWN_TIMEOUT_S)
        if app.state.pacs is not None:
            app.state.pacs.close()

    return lifespan


def _loaded(app: FastAPI, done) -> None:
    try:
        app.state.models = done.result()
        models = app.state.models
        log.info("models resident: %s on %s, task heads in %s", models.codec.model_id, models.device,
                 models.analyzer.runtime)
    except Exception as exc:  # noqa: BLE001 - reported by /readyz, the service keeps answering
        app.state.load_error = f"{type(exc).__name__}: {exc}"
        log.error("models failed to load: %s", app.state.load_error)


async def _request_id(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    request.state.request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    started = time.perf_counter()
    try:
        response = await call_next(request)
    except Exception:
        log.exception("request %s: %s %s failed", request.state.request_id, request.method, route_of(request))
        response = JSONResponse({"detail": "internal server error", "request_id": request.state.request_id},
                                status_code=500)
    response.headers["X-Request-ID"] = request.state.request_id
    _count(request, response, time.perf_counter() - started)
    log.info("request %s: %s %s -> %d in %.1f ms", request.state.request_id, request.method, route_of(request),
             response.status_code, 1000 * (time.perf_counter() - started))
    return response


def _count(request: Request, response: Response, seconds: float) -> None:
    """Requests, latency and bytes out by route template."""
    path = route_of(request)
    metrics = request.app.state.metrics
    metrics.requests.labels(path, request.method, str(response.status_code)).inc()
    metrics.latency.labels(path).observe(seconds)
    metrics.body_bytes.labels(path, "out").inc(int(response.headers.get("content-length", 0)))


def _configure_logging(level: str) -> None:
    """The service's own log lines beside uvicorn's, at MVMIC_LOG_LEVEL; uvicorn's access log off, however
    uvicorn was started (its lines carry the raw path and query: UIDs, QIDO's PatientName=...)."""
    logging.getLogger("uvicorn.access").disabled = True
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(level.upper())


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; settings default to the ``MVMIC_*`` environment."""
    settings = settings if settings is not None else Settings()
    _configure_logging(settings.log_level)
    app = FastAPI(title="MVMIC", version=version("mvmic"), lifespan=_make_lifespan(settings))
    app.state.metrics = ServiceMetrics()
    app.middleware("http")(_request_id)
    install_error_handlers(app)
    for router in (health.router, metrics.router, models.router, compress.router, decompress.router, analyze.router,
                   benchmarks.router, dicomweb.router, ui.router):
        app.include_router(router)
    return app
