"""CORS for browsers on other origins (the web UI on port 6006 calls this server on 23333).

A preflight (OPTIONS with Access-Control-Request-Method) is answered here, before the API-key check,
since browsers send it without credentials; every other answer gets Access-Control-Allow-Origin just
before its headers go out (an aiohttp on_response_prepare hook, which streamed answers pass through too).
"""

from __future__ import annotations

from aiohttp import web

ALLOW_METHODS = "GET, POST, OPTIONS"


def allowed(origins: tuple[str, ...], origin: str | None) -> str | None:
    """The Access-Control-Allow-Origin value for this request's Origin, or None (no CORS headers)."""
    if not origin or not origins:
        return None
    if "*" in origins:
        return "*"
    return origin if origin in origins else None


def preflight_middleware(origins: tuple[str, ...]):
    @web.middleware
    async def preflight(request: web.Request, handler):
        allow = allowed(origins, request.headers.get("Origin"))
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers and allow:
            return web.Response(status=204, headers={
                "Access-Control-Allow-Origin": allow, "Access-Control-Allow-Methods": ALLOW_METHODS,
                "Access-Control-Allow-Headers": request.headers.get("Access-Control-Request-Headers", "*"),
                "Access-Control-Max-Age": "600", "Vary": "Origin"})
        return await handler(request)
    return preflight


def response_hook(origins: tuple[str, ...]):
    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        allow = allowed(origins, request.headers.get("Origin"))
        if allow and "Access-Control-Allow-Origin" not in response.headers:
            response.headers["Access-Control-Allow-Origin"] = allow
            if allow != "*":
                response.headers.add("Vary", "Origin")
    return add_headers
