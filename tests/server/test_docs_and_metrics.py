"""/openapi.json, the offline docs page with its assets, /health and /metrics."""

from __future__ import annotations

import re

import pytest

from http_helpers import call, wait_idle

ROUTES = {"/v1/models": "get", "/v1/chat/completions": "post", "/v1/completions": "post",
          "/v1/chat/interactive": "post", "/v1/encode": "post", "/health": "get", "/metrics": "get"}


def test_openapi_document_describes_every_route(server):
    status, _, doc = call("GET", server.url + "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    assert {path: next(iter(ops)) for path, ops in doc["paths"].items()} == ROUTES
    refs = re.findall(r'"\$ref": "#/components/schemas/(\w+)"', str(doc).replace("'", '"'))
    assert refs and set(refs) <= set(doc["components"]["schemas"])
    chat = doc["components"]["schemas"]["ChatCompletionRequest"]
    assert chat["required"] == ["messages"] and "example" in chat


def test_openapi_document_passes_a_validator(server):
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(call("GET", server.url + "/openapi.json")[2])


def test_docs_page_serves_swagger_ui_from_local_files(server):
    pytest.importorskip("swagger_ui_bundle")
    status, headers, page = call("GET", server.url + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert assets and all(not a.startswith("http") for a in assets)                   # offline: no CDN
    for asset in assets:
        status, headers, body = call("GET", f"{server.url}/{asset}")
        assert status == 200 and len(body) > 1000, asset
    assert "openapi.json" in page


def test_health_and_metrics_format(server):
    assert call("GET", server.url + "/health")[:3:2] == (200, {"status": "ok"})
    call("POST", server.url + "/v1/completions", {"prompt": "Hi", "max_tokens": 3, "temperature": 0})
    m = wait_idle(server.url)
    status, headers, text = call("GET", server.url + "/metrics")
    assert headers["Content-Type"].startswith("text/plain")
    for name in ("refengine_prompt_tokens_total", "refengine_generation_tokens_total", "refengine_queue_depth",
                 "refengine_sequences_running", "refengine_kv_blocks_used", "refengine_kv_blocks_total"):
        assert name in m
    assert m["refengine_kv_blocks_total"] == 256 and m["refengine_generation_tokens_total"] >= 3
    assert 'refengine_http_requests_total{route="/v1/completions",status="200"}' in text
    buckets = [int(float(v)) for v in re.findall(r'refengine_time_to_first_token_seconds_bucket\{le="[^"]+"\} (\S+)',
                                                  text)]
    assert buckets == sorted(buckets) and buckets[-1] == m["refengine_time_to_first_token_seconds_count"] > 0
    for line in text.splitlines():                     # every sample line: name{labels} value
        assert line.startswith("#") or re.fullmatch(r'[a-z_]+(\{(\w+="[^"]*",?)*\})? [0-9.e+-]+', line), line
