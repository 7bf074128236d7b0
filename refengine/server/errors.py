"""HTTP errors as OpenAI shapes them, and the middleware that turns every failure into one.

Every 4xx/5xx answer carries the same body, whichever route or layer produced it:

    {"error": {"message": "temperature: must be in [0, 2], got 3.0", "type": "invalid_request_error",
               "param": "temperature", "code": null}}

A client's mistake is never a 500: request fields are checked in protocol.py, and the engine's typed
errors (refengine.errors / refengine.engine.errors) are mapped to 400 here. Only a bug in refengine
(any other exception) answers 500, with its traceback in the server log.
"""

from __future__ import annotations

import logging

from aiohttp import web

from refengine.engine.errors import SessionBusyError, SessionLengthError, UnknownSessionError
from refengine.errors import ChatTemplateError, GenerationConfigError, RefengineError

logger = logging.getLogger("refengine.server")

# aiohttp's own HTTP exceptions (unknown route, wrong method, body too large) get these codes
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


class ApiError(Exception):
    """An error answer: status, OpenAI's {message, type, param, code}, and extra headers (Retry-After)."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> web.Response:
        return web.json_response(self.body(), status=self.status, headers=self.headers)


def bad_field(param: str, message: str) -> ApiError:
    """400 for one request field; the message starts with the field's name."""
    return ApiError(400, f"{param}: {message}", param=param)


def from_engine_error(e: RefengineError, field_names: dict[str, str] | None = None) -> ApiError:
    """The engine refused a request (the client's mistake): 400, naming the field when one is to blame.
    `field_names` maps GenerationConfig names to the request's (max_new_tokens -> max_tokens)."""
    if isinstance(e, GenerationConfigError):
        param = (field_names or {}).get(e.field, e.field)
        return ApiError(400, f"{param}: {str(e).split(': ', 1)[-1]}", param=param)
    if isinstance(e, SessionLengthError):
        return ApiError(400, str(e), param="messages", code="context_length_exceeded")
    if isinstance(e, (SessionBusyError, UnknownSessionError)):
        return ApiError(400, str(e), param="session_id", code="session_busy" if isinstance(e, SessionBusyError)
                        else "session_not_found")
    if isinstance(e, ChatTemplateError):
        return ApiError(400, str(e), param="messages")
    return ApiError(400, str(e))


def http_error(e: web.HTTPException) -> ApiError:
    """aiohttp's 404 / 405 / 413 as an OpenAI body."""
    message = {404: "no such route", 405: "method not allowed on this route"}.get(e.status, e.reason)
    if e.status == 413:
        message = f"request body too large: {e.text}"
    headers = {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None
    return ApiError(e.status, message, code=_HTTP_CODES.get(e.status), headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler):
    """Innermost but for the handler: whatever escapes a handler becomes an OpenAI error body."""
    try:
        return await handler(request)
    except ApiError as e:
        return e.response()
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return http_error(e).response()
    except RefengineError as e:
        return from_engine_error(e).response()
    except Exception:             # a bug in refengine: log it, answer 500, keep serving
        logger.exception("%s %s failed", request.method, request.path)
        return ApiError(500, "internal server error (see the server log)", type="server_error",
                        code="internal_error").response()


class ServerStartError(RefengineError):
    """The server could not start (the port is taken, the address is not this machine's)."""
