"""Bearer-token authentication of every route but the probes, metrics and OpenAPI documents (the /v1 codec
and the /dicomweb gateway), when MVMIC_API_TOKENS lists tokens."""

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from mvmic.service.dependencies import AppSettings

# Declares the scheme in the OpenAPI document; require_token decides (no tokens configured: no check).
bearer = HTTPBearer(auto_error=False, description="one of MVMIC_API_TOKENS, when it lists tokens")


def require_token(settings: AppSettings,
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
    tokens = settings.api_tokens
    if not tokens:
        return
    given = credentials.credentials.lstrip(" ") if credentials is not None else ""  # RFC 6750 2.1: 1*SP
    # compare_digest against every token: the time taken says nothing about which one nearly matched.
    matches = [hmac.compare_digest(given.encode(), token.encode()) for token in tokens]
    if credentials is None or not any(matches):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token",
                            {"WWW-Authenticate": "Bearer"})
