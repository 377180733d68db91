"""HTTP service that exposes the MVMIC codec.

Layout: ``app`` holds the FastAPI application factory ``create_app`` and its
``lifespan`` (where model weights are loaded once per process); ``routes/``
holds one ``APIRouter`` module per concern (``health`` for ``/healthz``);
``settings`` reads configuration from ``MVMIC_*`` environment variables; and
``server`` runs uvicorn with the factory, which is what ``mvmic serve`` calls.
Importing any of these modules has no side effects: no app is built at import.
"""
