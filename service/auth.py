"""Bearer-token authentication of the /v1 routes, when MVMIC_API_TOKENS lists tokens."""

import hmac

from fastapi import HTTPException, Request, status


def require_token(request: Request) -> None:
    tokens: list[str] = request.app.state.settings.api_tokens
    if not tokens:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # compare_digest against every token: the time taken says nothing about which one nearly matched.
    matches = [hmac.compare_digest(given.encode(), token.encode()) for token in tokens]
    if scheme.lower() != "bearer" or not any(matches):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token",
                            {"WWW-Authenticate": "Bearer"})
