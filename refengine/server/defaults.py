"""The api_server's limits, in one place: ServerContext, create_app and `refengine-serve api_server` read
them from here (docs/serving.md states the same numbers).

No imports: the CLI reads these for its --help without loading aiohttp.
"""

MAX_CONCURRENT_REQUESTS = 256          # generation requests in flight; beyond it: 429 with Retry-After
MAX_BODY_SIZE = 4 * 1024 * 1024        # bytes (4 MiB); a larger request body: 413
DRAIN_TIMEOUT = 30.0                   # seconds requests in flight may finish after SIGTERM / Ctrl-C
