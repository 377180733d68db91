"""FastAPI application factory for the MVMIC service.

There is deliberately no module-level ``app``: importing this module must not
build an app (or, later, load weights). Run it with uvicorn's factory mode::

    uvicorn service.app:create_app --factory
"""

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from importlib.metadata import version

from fastapi import FastAPI

from service.routes import health
from service.settings import Settings

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def _make_lifespan(settings: Settings) -> Lifespan:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Runs once per worker process at startup; model weights will be
        # loaded here so that requests never pay for it.
        app.state.settings = settings
        yield

    return lifespan


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; settings default to the ``MVMIC_*`` environment."""
    settings = settings if settings is not None else Settings()
    app = FastAPI(
        title="MVMIC",
        version=version("mvmic"),
        lifespan=_make_lifespan(settings),
    )
    app.include_router(health.router)
    return app
