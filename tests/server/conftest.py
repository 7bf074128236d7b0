"""A live api_server on the default model (NumPy backend), shared by the server tests.

The aiohttp app runs on its own event loop in a background thread, on a free port, exactly as
`refengine-serve api_server` runs it (same runner options); tests talk to it over real HTTP with the
`openai` package or aiohttp's client. The engine is small-cached (256 blocks of 16 tokens) so that
/metrics block counts are easy to reason about.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from aiohttp import web

from refengine.config import EngineConfig
from refengine.engine.engine import Engine
from refengine.server.app import RUNNER_OPTIONS, create_app
from http_helpers import MODEL_NAME



class LiveServer:
    """An aiohttp app served from a background thread; `url` is its base URL."""

    def __init__(self, app: web.Application):
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-api-server", daemon=True)
        self.thread.start()
        self.runner = web.AppRunner(app, **RUNNER_OPTIONS)
        self.port = self.call(self._start())
        self.url = f"http://127.0.0.1:{self.port}"

    async def _start(self) -> int:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return site._server.sockets[0].getsockname()[1]

    def call(self, coro, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if not self.loop.is_running():
            return
        self.call(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="session")
def server_engine(demo_pipeline):
    engine = Engine(demo_pipeline.model, demo_pipeline.tokenizer,
                    EngineConfig(session_len=1024, cache_max_entry_count=256, cache_block_seq_len=16))
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def server(server_engine):
    live = LiveServer(create_app(server_engine, model_name=MODEL_NAME, max_concurrent_requests=80, allow_origins=("*",),
                                 max_body_size=64 * 1024))
    yield live
    live.stop()


@pytest.fixture
def make_server(server_engine):
    """Another app on the same engine, with other options (API keys, a concurrency limit, ...)."""
    made = []

    def make(**options):
        options.setdefault("model_name", MODEL_NAME)
        made.append(LiveServer(create_app(server_engine, **options)))
        return made[-1]
    yield make
    for live in made:
        live.stop()


@pytest.fixture
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
