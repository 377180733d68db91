"""Request bodies read with a size limit, also for chunked bodies that declare no length.

The routes read their bodies raw (``read_body``), so FastAPI cannot see them; ``raw_body`` declares
them in the OpenAPI document (``openapi_extra``).
"""

from typing import Any

from fastapi import HTTPException, Request, status

from mvmic.service.prometheus import route_of


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


BINARY = {"schema": {"type": "string", "format": "binary"}}  # OpenAPI 3.1's bytes of a body


def raw_body(description: str, *media_types: str) -> dict[str, Any]:
    """``openapi_extra`` of a route that reads a required body of bytes of one of ``media_types``."""
    return {"requestBody": {"required": True, "description": description,
                            "content": {media_type: BINARY for media_type in media_types}}}


def _too_large(limit: int) -> HTTPException:
    return HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"request body exceeds {limit} bytes (MVMIC_MAX_BODY_BYTES)")
