"""The api_server application: `create_app(engine, ...)` wires routes, middlewares and the shutdown
drain around one Engine; `run_api_server` serves it until SIGINT / SIGTERM.

    request ─► metrics (count, time) ─► errors (→ OpenAI error body) ─► CORS preflight ─► API key ─► route
                                                                   (CORS headers: on_response_prepare)

Routes: openai_routes.py (/v1/models, /v1/chat/completions, /v1/completions), interactive_routes.py
(/v1/chat/interactive, /v1/encode), here (/health, /metrics), openapi.py (/openapi.json, docs at /).

Shutdown (SIGTERM, Ctrl-C): the listening socket closes, then on_shutdown drains — new requests get 503,
those in flight get up to `drain_timeout` seconds to finish — then cancels what is left in the engine.
A client that disconnects cancels its handler (handler_cancellation), which closes its engine stream.
"""

from __future__ import annotations

import logging
import socket

from aiohttp import web

from refengine.server import defaults, interactive_routes, openai_routes
from refengine.server.admission import Admission
from refengine.server.auth import auth_middleware
from refengine.server.context import CTX, ServerContext
from refengine.server.cors import preflight_middleware, response_hook
from refengine.server.errors import ApiError, ServerStartError, error_middleware
from refengine.server.metrics import Metrics
from refengine.server.openapi import add_docs_routes

logger = logging.getLogger("refengine.server")

RUNNER_OPTIONS = {"handler_cancellation": True}     # a disconnect cancels its handler (aiohttp's default: not)

__all__ = ["CTX", "ServerContext", "create_app", "run_api_server", "RUNNER_OPTIONS"]


def create_app(engine, *, model_name: str, api_keys=(), allow_origins=(),
               max_concurrent_requests: int = defaults.MAX_CONCURRENT_REQUESTS,
               max_body_size: int = defaults.MAX_BODY_SIZE,
               drain_timeout: float = defaults.DRAIN_TIMEOUT) -> web.Application:
    ctx = ServerContext(engine, model_name, tuple(api_keys), tuple(allow_origins),
                        Admission(max_concurrent_requests), Metrics(), drain_timeout)
    app = web.Application(client_max_size=max_body_size, middlewares=[
        ctx.metrics.middleware(), error_middleware, preflight_middleware(ctx.allow_origins),
        auth_middleware(ctx.api_keys)])
    app[CTX] = ctx
    _add_routes(app.router)
    add_docs_routes(app, model_name)
    app.on_response_prepare.append(response_hook(ctx.allow_origins))
    app.on_shutdown.append(_drain)
    return app


def _add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/v1/models", openai_routes.list_models)
    router.add_get("/v1/models/{model:.+}", openai_routes.get_model)
    router.add_post("/v1/chat/completions", openai_routes.chat_completions)
    router.add_post("/v1/completions", openai_routes.completions)
    router.add_post("/v1/chat/interactive", interactive_routes.chat_interactive)
    router.add_post("/v1/encode", interactive_routes.encode)
    router.add_get("/health", health)
    router.add_get("/metrics", metrics)


async def health(request: web.Request) -> web.Response:
    if request.app[CTX].admission.draining:
        raise ApiError(503, "draining", type="server_error", code="server_draining")
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    text = ctx.metrics.render(ctx.engine, ctx.admission.in_flight)
    return web.Response(body=text.encode(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def _drain(app: web.Application) -> None:
    ctx = app[CTX]
    if ctx.admission.in_flight:
        logger.warning("draining %d request(s) in flight (up to %g s)", ctx.admission.in_flight, ctx.drain_timeout)
    if not await ctx.admission.drain(ctx.drain_timeout):
        logger.warning("drain timed out: cancelling %d request(s)", ctx.admission.abort(ctx.engine))


def run_api_server(engine, host: str = "0.0.0.0", port: int = 23333, **app_options) -> None:
    """Serve until SIGINT / SIGTERM, then drain. A port in use or a bad address → ServerStartError."""
    app = create_app(engine, **app_options)
    _check_bindable(host, port)
    shown = "localhost" if host in ("0.0.0.0", "::") else host
    print(f"refengine api_server serving {app[CTX].model_name!r} on http://{shown}:{port} "
          f"(docs at http://{shown}:{port}/ ; Ctrl-C or SIGTERM drains and stops)", flush=True)
    web.run_app(app, host=host, port=port, print=None, access_log=logging.getLogger("aiohttp.access"),
                shutdown_timeout=app[CTX].drain_timeout + 5, **RUNNER_OPTIONS)


def _check_bindable(host: str, port: int) -> None:
    """Fail with one line before serving, instead of aiohttp's traceback from inside the event loop."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(infos[0][4])
    except OSError as e:
        raise ServerStartError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
