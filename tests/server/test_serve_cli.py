"""`refengine-serve`: flags reach the server, mistakes are one line and exit code 2, the client
subcommands call the client modules, and the real command serves and stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import types

import pytest

from http_helpers import call
from refengine.cli import serve
from refengine.cli.options import run_click


class FakePipe:
    def __init__(self, engine_config):
        self.engine = types.SimpleNamespace(config=engine_config)
        self.closed = False

    def close(self):
        self.closed = True


@pytest.fixture
def launched(monkeypatch):
    seen = {}

    def load(model, backend, chat_template, engine_config, tp=1):
        seen.update(model=model, backend=backend, engine_config=engine_config, tp=tp, pipe=FakePipe(engine_config))
        return seen["pipe"]

    def run_api_server(engine, host, port, **options):
        seen.update(host=host, port=port, **options)

    monkeypatch.setattr(serve, "load_chat_pipeline", load)
    monkeypatch.setattr("refengine.server.app.run_api_server", run_api_server)
    return seen


def test_api_server_flags_reach_the_engine_and_the_app(launched):
    code = run_click(serve.cli, ["api_server", "demo", "--backend", "numpy", "--server-port", "8000",
                                 "--instance-num", "16", "--session-len", "512", "--api-keys", "a,b",
                                 "--api-keys", "c", "--allow-origins", "http://x", "--max-concurrent-requests", "9",
                                 "--max-body-size", "2048", "--enable-prefix-caching"], "refengine-serve")
    assert code == 0
    cfg = launched["engine_config"]
    assert (cfg.max_batch_size, cfg.session_len, cfg.enable_prefix_caching) == (16, 512, True)
    assert (launched["host"], launched["port"], launched["model_name"]) == ("0.0.0.0", 8000, "demo")
    assert launched["api_keys"] == ("a", "b", "c") and launched["allow_origins"] == ("http://x",)
    assert (launched["max_concurrent_requests"], launched["max_body_size"]) == (9, 2048)
    assert launched["pipe"].closed


def test_max_batch_size_wins_over_instance_num(launched):
    run_click(serve.cli, ["api_server", "demo", "--instance-num", "16", "--max-batch-size", "4"], "refengine-serve")
    assert launched["engine_config"].max_batch_size == 4


def test_tp_reaches_the_pipeline(launched):
    assert run_click(serve.cli, ["api_server", "demo", "--tp", "4"], "refengine-serve") == 0
    assert launched["tp"] == 4          # checked and used by Pipeline (tests/parallel/test_cli_tp.py)


def test_a_port_in_use_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(serve, "load_chat_pipeline", lambda *a: FakePipe(None))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = run_click(serve.cli, ["api_server", "demo", "--server-name", "127.0.0.1", "--server-port", str(port)],
                         "refengine-serve")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"127.0.0.1:{port}" in err


def test_client_subcommands_call_the_client_modules(monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "refengine.server.api_client", types.SimpleNamespace(
        run_api_client=lambda url, api_key=None, session_id=None: calls.append((url, api_key, session_id))))
    monkeypatch.setitem(sys.modules, "refengine.server.webui_server", types.SimpleNamespace(
        run_webui=lambda api_url, host, port, api_key=None: calls.append((api_url, host, port, api_key))))
    assert run_click(serve.cli, ["api_client", "http://h:1", "--api-key", "k", "--session-id", "3"], "x") == 0
    assert run_click(serve.cli, ["webui", "http://h:1", "--server-port", "7000"], "x") == 0
    assert calls == [("http://h:1", "k", 3), ("http://h:1", "0.0.0.0", 7000, None)]


def test_the_command_serves_and_stops_cleanly_on_sigterm(demo_gguf_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "refengine.cli.serve", "api_server", "demo", "--backend", "numpy",
                             "--server-name", "127.0.0.1", "--server-port", str(port), "--session-len", "256",
                             "--cache-max-entry-count", "32", "--model-name", "smol"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
        while True:
            try:
                if call("GET", url + "/health")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.2)
        status, _, models = call("GET", url + "/v1/models")
        assert status == 200 and models["data"][0]["id"] == "smol"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
