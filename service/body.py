"""Request bodies read with a size limit, also for chunked bodies that declare no length."""

from fastapi import HTTPException, Request, status

from service.metrics import route_of


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or 413 as soon as it is known to exceed ``limit`` bytes: from Content-Length
    before anything is read, else while the chunks arrive (never buffering more than the limit)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    if not size:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "empty request body")
    request.app.state.metrics.body_bytes.labels(route_of(request), "in").inc(size)
    return b"".join(chunks)


def _too_large(limit: int) -> HTTPException:
    return HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"request body exceeds {limit} bytes (MVMIC_MAX_BODY_BYTES)")
