"""Bearer-token authentication of every route but the probes, metrics and OpenAPI documents (the /v1 codec
and the /dicomweb gateway), when MVMIC_API_TOKENS lists tokens."""

import hmac

from fastapi import HTTPException, Request, status


def require_token(request: Request) -> None:
    tokens: list[str] = request.app.state.settings.api_tokens
    if not tokens:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    given = given.lstrip(" ")  # RFC 6750 2.1: "Bearer" 1*SP b64token
    # compare_digest against every token: the time taken says nothing about which one nearly matched.
    matches = [hmac.compare_digest(given.encode(), token.encode()) for token in tokens]
    if scheme.lower() != "bearer" or not any(matches):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token",
                            {"WWW-Authenticate": "Bearer"})
