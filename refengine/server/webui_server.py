"""`refengine-serve webui API_URL`: the browser chat page, served next to a proxy to the api_server.

    browser tab ──GET /──────────────────► this server: webui/index.html, /static/style.css, /static/app.js
        │
        └──POST /api/interactive {json}──► this server ──POST {API_URL}/v1/chat/interactive──► api_server
           ◄── JSON lines, piece by piece ◄──────────── streamed through as they arrive ◄─────┘

The page talks only to the server that served it, so the api_server needs no CORS setup and the API key
(if any) stays on this side. Each tab picks its own random session id and speaks the api_server's
interactive protocol itself (chat turns, cancel, end); the proxy adds the key and turns "cannot connect"
into a one-line JSON error the page shows in its status line.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
from aiohttp import web

from refengine.server.api_client import INTERACTIVE_PATH, normalize_url

logger = logging.getLogger("refengine")

WEBUI_DIR = Path(__file__).with_name("webui")
DEFAULT_PORT = 6006
CONNECT_TIMEOUT_S = 10

API_URL = web.AppKey("api_url", str)
API_KEY = web.AppKey("api_key", object)                  # str | None
CLIENT = web.AppKey("client", aiohttp.ClientSession)


def error_body(message: str, type_: str, code: int) -> dict:
    """The api_server's error shape, so the page reads proxy and server errors the same way."""
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def upstream_headers(app: web.Application, content_type: str | None = None) -> dict:
    headers = {}
    if content_type:
        headers["Content-Type"] = content_type
    if app[API_KEY]:
        headers["Authorization"] = f"Bearer {app[API_KEY]}"
    return headers


def unreachable(app: web.Application, e: Exception) -> web.Response:
    message = f"cannot reach the api_server at {app[API_URL]}: {str(e) or type(e).__name__}"
    return web.json_response(error_body(message, "api_server_unreachable", 502), status=502)


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEBUI_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def proxy_interactive(request: web.Request) -> web.StreamResponse:
    """POST /api/interactive: the body goes to the api_server as it is; the reply streams back as it comes."""
    app, body = request.app, await request.read()
    try:
        upstream = await app[CLIENT].post(app[API_URL] + INTERACTIVE_PATH, data=body,
                                          headers=upstream_headers(app, "application/json"))
    except (aiohttp.ClientConnectionError, TimeoutError) as e:
        return unreachable(app, e)
    async with upstream:
        response = web.StreamResponse(status=upstream.status, headers={
            "Content-Type": upstream.headers.get("Content-Type", "application/json"),
            "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
        except aiohttp.ClientPayloadError as e:         # the api_server went away mid-reply
            logger.warning("the api_server's reply was cut off: %s", e)
        except ConnectionResetError:                    # the tab went away: closing upstream tells the server
            pass
    return response


async def models(request: web.Request) -> web.Response:
    """GET /api/models: the api_server's /v1/models (the page shows the model name and reachability)."""
    app = request.app
    try:
        async with app[CLIENT].get(app[API_URL] + "/v1/models", headers=upstream_headers(app)) as upstream:
            return web.Response(status=upstream.status, body=await upstream.read(),
                                content_type="application/json")
    except (aiohttp.ClientConnectionError, TimeoutError) as e:
        return unreachable(app, e)


async def client_session(app: web.Application):
    """One HTTP client for the app's life. No total timeout: a reply streams for as long as it takes."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        app[CLIENT] = session
        yield


def create_webui_app(api_url: str, api_key: str | None = None) -> web.Application:
    app = web.Application()
    app[API_URL] = normalize_url(api_url)
    app[API_KEY] = api_key or None
    app.cleanup_ctx.append(client_session)
    app.router.add_get("/", index)
    app.router.add_post("/api/interactive", proxy_interactive)
    app.router.add_get("/api/models", models)
    app.router.add_static("/static/", WEBUI_DIR)
    return app


def check_api_server(api_url: str, api_key: str | None = None, timeout: float = 5) -> str | None:
    """None when the api_server answers GET /v1/models (with the key), else why not, in one line."""
    url = normalize_url(api_url) + "/v1/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
            json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        return f"{url} answered HTTP {e.code}" + (" (the API key is missing or wrong)" if e.code == 401 else "")
    except (urllib.error.URLError, OSError, ValueError) as e:
        return f"{url}: {getattr(e, 'reason', e)}"
    return None


def run_webui(api_url: str, host: str = "0.0.0.0", port: int = DEFAULT_PORT, api_key: str | None = None) -> None:
    """Serve the chat page on host:port until Ctrl-C. A server not reachable yet is a warning, not an error:
    the api_server may still be loading its model, and the page reports each failed request itself."""
    logging.basicConfig(level=logging.INFO, format="refengine: %(levelname)s: %(message)s")
    problem = check_api_server(api_url, api_key)
    if problem:
        logger.warning("the api_server is not reachable yet (%s); the page will say so until it is", problem)
    shown = "localhost" if host in ("0.0.0.0", "::", "") else host
    print(f"refengine web UI on http://{shown}:{port} (api_server {normalize_url(api_url)})", flush=True)
    # handler_cancellation: a closed tab cancels its proxy handler, which closes the upstream request,
    # which makes the api_server stop that reply (aiohttp's default would keep generating for nobody)
    web.run_app(create_webui_app(api_url, api_key), host=host, port=port, print=None, handler_cancellation=True)
