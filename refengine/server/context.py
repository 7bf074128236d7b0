"""ServerContext: everything a handler needs, stored on the aiohttp app under one typed key.

Handlers read `request.app[CTX]`; nothing lives in module globals, so several apps (a test's, a
benchmark's) can share one engine in one process.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

from aiohttp import web

from refengine.server import defaults
from refengine.server.admission import Admission
from refengine.server.metrics import Metrics


@dataclass
class ServerContext:
    engine: object                                # refengine.engine.engine.Engine
    model_name: str
    api_keys: tuple[str, ...] = ()
    allow_origins: tuple[str, ...] = ()
    admission: Admission = field(default_factory=lambda: Admission(defaults.MAX_CONCURRENT_REQUESTS))
    metrics: Metrics = field(default_factory=Metrics)
    drain_timeout: float = defaults.DRAIN_TIMEOUT
    created: int = field(default_factory=lambda: int(time.time()))
    _interactive_ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    _token_texts: dict[int, str] = field(default_factory=dict)

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def session_len(self) -> int:
        return self.engine.session_len

    def new_interactive_id(self) -> int:
        """A session id for `session_id: -1` (LMDeploy gives each such request a fresh number)."""
        while True:
            sid = next(self._interactive_ids)
            if self.engine.session_token_ids(sid) is None and sid not in self.admission.sessions:
                return sid

    def token_text(self, token_id: int) -> str:
        """One token as text, for log-probabilities (cached: the vocabulary does not change)."""
        text = self._token_texts.get(token_id)
        if text is None:
            text = self._token_texts[token_id] = self.tokenizer.decode([token_id], skip_special_tokens=False)
        return text


CTX = web.AppKey("refengine_context", ServerContext)
