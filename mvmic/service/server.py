"""Run the MVMIC service under uvicorn (called by ``mvmic serve``)."""

import uvicorn


def serve(host: str, port: int, log_level: str = "info") -> None:
    """Serve until interrupted; binds exactly the host given."""
    # Factory mode builds the app inside the server process, so importing
    # mvmic.service.app stays free of side effects.
    uvicorn.run(
        "mvmic.service.app:create_app",
        factory=True,
        host=host,
        port=port,
        log_level=log_level,
    )
