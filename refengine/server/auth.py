"""API keys: with --api-keys set, every /v1 route wants `Authorization: Bearer KEY` (one of the keys).

/health, /metrics, /openapi.json and the docs page stay open, as in LMDeploy, so probes and scrapers need
no secret. Keys are compared in constant time.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from refengine.server.errors import ApiError


def bearer_token(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def auth_middleware(api_keys: tuple[str, ...]):
    keys = [k.encode() for k in api_keys]

    @web.middleware
    async def check_api_key(request: web.Request, handler):
        if keys and request.path.startswith("/v1/"):
            token = bearer_token(request)
            if token is None or not any(hmac.compare_digest(token.encode(), k) for k in keys):
                why = "no API key given: send 'Authorization: Bearer KEY'" if token is None else "invalid API key"
                raise ApiError(401, why, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)
    return check_api_key
