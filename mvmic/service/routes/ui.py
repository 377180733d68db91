"""GET /ui/: the page that shows what the codec did to an image (mvmic/service/ui/, static files, no build step).

    GET /, GET /ui --> redirect to /ui/
    GET /ui/ --> index.html;  GET /ui/{name} --> one of the page's files (app.js, viewer.js, ...)

The page holds no data and runs no code on the server: in the browser it calls the public API, with the bearer
token the user types in, as any client does (/v1/compress, /v1/decompress, /v1/benchmarks/..., and QIDO-RS and
WADO-RS under /dicomweb). So it needs no authentication of its own, as /docs does not. Its Content-Security-Policy
lets it load scripts and styles from this origin only and talk to this origin only.
"""

from pathlib import Path

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse, RedirectResponse

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
# Only the page's own files, listed once: a name is looked up, never joined to a path.
FILES = {path.name: path for path in sorted(UI_DIR.iterdir()) if path.suffix in MEDIA_TYPES}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # a new release's page is fetched again, not mixed with the old one's scripts
}

router = APIRouter(include_in_schema=False)


@router.api_route("/", methods=["GET", "HEAD"])
@router.api_route("/ui", methods=["GET", "HEAD"])
def to_page() -> RedirectResponse:
    return RedirectResponse("/ui/", status.HTTP_307_TEMPORARY_REDIRECT)


@router.api_route("/ui/", methods=["GET", "HEAD"])
def page() -> FileResponse:
    return ui_file("index.html")


@router.api_route("/ui/{name}", methods=["GET", "HEAD"])
def ui_file(name: str) -> FileResponse:
    path = FILES.get(name)
    if path is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such file of the page")
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=HEADERS)
