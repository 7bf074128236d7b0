"""The OpenAPI 3 document of the routes (written by hand: no framework generates it here) and the docs
page at `/`, Swagger UI served from the `swagger-ui-bundle` package's own files (works offline; no CDN).
"""

from __future__ import annotations

from aiohttp import web

from refengine import __version__

STATIC_PREFIX = "/docs/static"


def _obj(properties: dict, required: tuple[str, ...] = (), example: dict | None = None) -> dict:
    schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if example is not None:
        schema["example"] = example
    return schema


def _type(name: str) -> dict:
    return {"type": "array", "items": {}} if name == "array" else {"type": name}


def _p(type_, description: str, **extra) -> dict:
    schema = _type(type_) if isinstance(type_, str) else {"oneOf": [_type(t) for t in type_]}
    return {**schema, "description": description, **extra}


_SAMPLING = {
    "temperature": _p("number", "0 = greedy; up to 2", minimum=0, maximum=2),
    "top_p": _p("number", "nucleus cut, (0, 1]"),
    "top_k": _p("integer", "LMDeploy extra: keep the k most likely tokens (0 = off)"),
    "min_p": _p("number", "LMDeploy extra: drop tokens below min_p × the best one's probability"),
    "repetition_penalty": _p("number", "LMDeploy extra: > 1 discourages repeats"),
    "seed": _p("integer", "random seed (>= 0)"),
    "stop": _p(["string", "array"], "stop string(s), any number, any token length"),
    "ignore_eos": _p("boolean", "LMDeploy extra: keep going past end-of-sequence"),
    "skip_special_tokens": _p("boolean", "LMDeploy extra: drop special tokens from the text"),
}
_OPENAI = {
    "model": _p("string", "the served model's name (GET /v1/models)"),
    "max_tokens": _p("integer", "most tokens to generate"),
    "n": _p("integer", "completions per prompt"),
    "stream": _p("boolean", "server-sent events"),
    "stream_options": _obj({"include_usage": _p("boolean", "a last chunk with usage")}),
    "presence_penalty": _p("number", "[-2, 2]"), "frequency_penalty": _p("number", "[-2, 2]"),
    "user": _p("string", "accepted, not used"),
    "session_id": _p("integer", "LMDeploy extra: name the request (cancel it via /v1/chat/interactive)"),
    **_SAMPLING,
}
_MESSAGES = {"type": "array", "items": _obj({"role": _p("string", "system | user | assistant"),
                                              "content": _p(["string", "array"], "text or text parts")})}
SCHEMAS = {
    "ChatCompletionRequest": _obj({"messages": _MESSAGES, "max_completion_tokens": _p("integer", "as max_tokens"),
                                   "logprobs": _p("boolean", "return log-probabilities"),
                                   "top_logprobs": _p("integer", "0-20 alternatives per token"), **_OPENAI},
                                  ("messages",), {"messages": [{"role": "user", "content": "What is the capital of "
                                                                "France?"}], "max_tokens": 32, "temperature": 0}),
    "CompletionRequest": _obj({"prompt": _p(["string", "array"], "text, texts, token ids or lists of them"),
                               "logprobs": _p("integer", "0-20 alternatives per token"), **_OPENAI},
                              ("prompt",), {"prompt": "The capital of France is", "max_tokens": 16, "temperature": 0}),
    "InteractiveRequest": _obj({
        "prompt": _p(["string", "array"], "a user message, or a list of messages"),
        "session_id": _p("integer", "-1: a new session"),
        "interactive_mode": _p("boolean", "keep the session (history and KV cache) after this turn"),
        "stream": _p("boolean", "one JSON object per line"),
        "request_output_len": _p("integer", "most tokens to generate (default: as many as the session holds)"),
        "cancel": _p("boolean", "cancel the session's running turn and free the session"),
        **_SAMPLING}, ("prompt",), {"prompt": "Hi!", "session_id": 1, "interactive_mode": True, "temperature": 0}),
    "EncodeRequest": _obj({"input": _p(["string", "array"], "text or texts"),
                           "do_preprocess": _p("boolean", "apply the chat template (as one user message)"),
                           "add_bos": _p("boolean", "add the begin-of-sequence token")},
                          ("input",), {"input": "Hello world", "add_bos": False}),
    "Error": _obj({"error": _obj({"message": _p("string", "what went wrong"), "type": _p("string", "kind"),
                                  "param": _p("string", "the request field to blame, or null"),
                                  "code": _p("string", "a short code, or null")})}),
}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _op(summary: str, body: str | None = None, answer: str = "application/json", secured: bool = True) -> dict:
    errors = {str(s): {"description": d, "content": {"application/json": {"schema": _ref("Error")}}}
              for s, d in ((400, "invalid field"), (401, "API key"), (404, "unknown model"),
                           (413, "body too large"), (429, "too many requests"), (503, "draining"))}
    op = {"summary": summary, "responses": {"200": {"description": "OK", "content": {answer: {}}}, **errors}}
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
    if not secured:
        op["security"] = []
        op["responses"] = {"200": op["responses"]["200"]}
    return op


def openapi_document(model_name: str) -> dict:
    paths = {
        "/v1/models": {"get": _op("The served model")},
        "/v1/chat/completions": {"post": _op("Chat completion (OpenAI)", "ChatCompletionRequest")},
        "/v1/completions": {"post": _op("Text completion (OpenAI)", "CompletionRequest")},
        "/v1/chat/interactive": {"post": _op("A turn of a stateful session (LMDeploy)", "InteractiveRequest")},
        "/v1/encode": {"post": _op("Token ids of text (LMDeploy)", "EncodeRequest")},
        "/health": {"get": _op("Liveness: 200 while serving, 503 while draining", secured=False)},
        "/metrics": {"get": _op("Prometheus metrics", answer="text/plain", secured=False)},
    }
    return {"openapi": "3.0.3",
            "info": {"title": "refengine api_server", "version": __version__,
                     "description": f"OpenAI-compatible and LMDeploy-compatible routes serving `{model_name}`."},
            "paths": paths,
            "components": {"schemas": SCHEMAS,
                           "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearer": []}]}


def swagger_ui_dir() -> str | None:
    """The Swagger UI assets shipped by the `swagger-ui-bundle` package, if installed."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    return str(swagger_ui_path)


DOCS_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>refengine api_server</title>
<link rel="stylesheet" href="docs/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="docs/static/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({url: "openapi.json", dom_id: "#swagger-ui", tryItOutEnabled: true});</script>
</body></html>
"""

PLAIN_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>refengine api_server</title></head>
<body><h1>refengine api_server</h1>
<p>The interactive docs need the <code>swagger-ui-bundle</code> package (<code>pip install swagger-ui-bundle</code>).
The API is described in <a href="openapi.json">openapi.json</a>.</p></body></html>
"""


def add_docs_routes(app: web.Application, model_name: str) -> None:
    document = openapi_document(model_name)
    assets = swagger_ui_dir()

    async def openapi_json(request: web.Request) -> web.Response:
        return web.json_response(document)

    async def docs_page(request: web.Request) -> web.Response:
        return web.Response(text=DOCS_PAGE if assets else PLAIN_PAGE, content_type="text/html")

    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/", docs_page)
    if assets:
        app.router.add_static(STATIC_PREFIX, assets)
