"""`refengine-serve api_client URL`: chat in the terminal with a running api_server.

    >>> message ──POST /v1/chat/interactive {prompt, session_id, interactive_mode: true, stream: true}──► api_server
    reply printed piece by piece ◄── one JSON object per line: {text, tokens, finish_reason, ...} ──────┘

The conversation lives in the server's engine (interactive mode): each turn sends only the new message.
`end` ends the session (the server frees its KV cache; the next message starts a new conversation),
`exit` or Ctrl-D ends it and quits, Ctrl-C during a reply cancels that reply (`cancel: true`).
Standard library only (urllib), so the client runs wherever Python does. The loop reads and writes the
streams it is given, so tests drive it with a list of lines and a StringIO.
"""

from __future__ import annotations

import http.client
import json
import secrets
import socket
import sys
import urllib.error
import urllib.request
from typing import Iterator, TextIO

import click

from refengine.errors import RefengineError

INTERACTIVE_PATH = "/v1/chat/interactive"
READ_TIMEOUT_S = 600        # a long prefill on a slow server may keep the first byte waiting
PROMPT = ">>> "
DEFAULT_SAMPLING = {"request_output_len": 512}     # LMDeploy's api_client's (the server's own is session_len)


class ApiClientError(RefengineError):
    """The chat cannot go on: the server is unreachable, went away, or rejects the API key."""


class RequestRejected(Exception):
    """The server refused one request (a 4xx other than 401: prompt too long, busy session, ...)."""


def normalize_url(url: str) -> str:
    """`host:port` or `http://host:port/` -> `http://host:port` (the server's root)."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    if url.endswith(INTERACTIVE_PATH):
        url = url[: -len(INTERACTIVE_PATH)]
    return url


def error_message(body: bytes, status: int) -> str:
    """The message of an OpenAI-style error body {"error": {"message", ...}}, else the raw body."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    text = body.decode("utf-8", "replace").strip()
    return text[:200] or f"HTTP {status}"


class InteractiveApi:
    """The api_server's interactive endpoint over urllib: one blocking HTTP request per call."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = READ_TIMEOUT_S):
        self.url = normalize_url(url)
        self.api_key = api_key
        self.timeout = timeout

    def models(self) -> list[str]:
        """The served model names (GET /v1/models): the start-up check that server and key are right."""
        with self._open(urllib.request.Request(self.url + "/v1/models", headers=self._headers())) as resp:
            body = json.loads(resp.read() or b"{}")
        return [m.get("id", "?") for m in body.get("data", []) if isinstance(m, dict)]

    def stream(self, payload: dict) -> Iterator[dict]:
        """POST a request and yield each JSON line of the reply (one line when stream is false)."""
        data = json.dumps(payload).encode()
        request = urllib.request.Request(self.url + INTERACTIVE_PATH, data=data, method="POST",
                                         headers=self._headers({"Content-Type": "application/json"}))
        with self._open(request) as resp:
            try:
                for line in resp:
                    if line.strip():
                        yield json.loads(line)
            except (http.client.HTTPException, ConnectionError) as e:
                raise ApiClientError(f"lost the connection to the api_server at {self.url}: {e!r}") from None

    def call(self, payload: dict) -> None:
        for _ in self.stream(payload):
            pass

    def cancel(self, session_id: int) -> None:
        """Stop the session's running request."""
        self.call({"prompt": "", "session_id": session_id, "cancel": True, "stream": False})

    def end_session(self, session_id: int) -> None:
        """Free the session on the server (LMDeploy's spelling: not interactive, zero tokens)."""
        self.call({"prompt": "", "session_id": session_id, "interactive_mode": False, "stream": False,
                   "request_output_len": 0})

    def _headers(self, extra: dict | None = None) -> dict:
        headers = {"Accept": "application/json", **(extra or {})}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _open(self, request: urllib.request.Request):
        """urlopen, with its failures sorted into: fatal for the chat (ApiClientError) or for one request."""
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            message = error_message(e.read(), e.code)
            if e.code == 401:
                raise ApiClientError(f"the api_server at {self.url} rejected the API key "
                                     f"({message}): give the right one with --api-key") from None
            raise RequestRejected(f"HTTP {e.code}: {message}") from None
        except (urllib.error.URLError, ConnectionError, socket.timeout, http.client.HTTPException) as e:
            reason = getattr(e, "reason", e)
            raise ApiClientError(f"cannot reach the api_server at {self.url}: {reason}") from None


class ApiChat:
    """One interactive session on the server; `end` ends it and the next message starts a new one."""

    def __init__(self, api: InteractiveApi, session_id: int, stdin: TextIO, stdout: TextIO,
                 sampling: dict | None = None):
        self.api = api
        self.session_id = session_id
        self.stdin = stdin
        self.stdout = stdout
        self.sampling = {**DEFAULT_SAMPLING, **(sampling or {})}     # others: the server's defaults
        self.turns = 0                            # replies the server holds in this session

    def run(self) -> None:
        """Read lines until `exit` or end of input, then end the session (on Ctrl-C at the prompt too)."""
        try:
            self.loop()
        except KeyboardInterrupt:
            self.end_session()
            raise
        self.end_session()

    def loop(self) -> None:
        while (line := self.read_line()) is not None:
            command = line.strip()
            if command == "exit":
                return
            if command == "end":
                self.end_session()
                self.write("(new conversation)")
            elif command:
                self.turn(line.rstrip("\n"))

    def read_line(self) -> str | None:
        self.write("\n")
        if self.stdin is sys.stdin and sys.stdin.isatty():
            try:
                return input(PROMPT)              # line editing and history when a person types
            except EOFError:
                return None
        self.write(PROMPT)
        line = self.stdin.readline()
        return line if line else None

    def end_session(self) -> None:
        """Free the session on the server; the next message starts a new conversation."""
        try:
            self.api.end_session(self.session_id)
        except RequestRejected as e:
            self.write(f"error: ending the session: {e}")
        self.turns = 0

    def turn(self, message: str) -> None:
        payload = {"prompt": message, "session_id": self.session_id, "interactive_mode": True, "stream": True,
                   **self.sampling}
        pieces, last = self.api.stream(payload), None
        try:
            for last in pieces:
                self.on_piece(last)
        except KeyboardInterrupt:                 # Ctrl-C: stop this reply, keep the chat
            pieces.close()
            self.api.cancel(self.session_id)
            self.write("\n(cancelled)")
            return
        except RequestRejected as e:
            self.write(f"error: {e}")
            return
        self.turns += 1
        if last is not None and last.get("finish_reason") == "length":
            self.write(f"\n(the reply stopped at its length limit: {last.get('tokens', '?')} tokens)")

    def on_piece(self, piece: dict) -> None:
        if self.turns and piece.get("history_tokens") == 0 and piece.get("input_tokens"):
            self.write("(the server started a new conversation: earlier turns are forgotten)\n")
            self.turns = 0
        self.write(piece.get("text", ""))

    def write(self, text: str) -> None:
        if text:
            self.stdout.write(text)
            self.stdout.flush()


def new_session_id() -> int:
    """A random positive 31-bit id, so that two terminals (or a terminal and a browser tab) never share one."""
    return secrets.randbelow(2**31 - 2) + 1


def run_api_client(url: str, api_key: str | None = None, session_id: int | None = None, *,
                   stdin: TextIO | None = None, stdout: TextIO | None = None, sampling: dict | None = None) -> None:
    """The terminal chat. Unreachable server or rejected key: one line on stderr, exit code 2."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    api = InteractiveApi(url, api_key)
    session_id = new_session_id() if session_id is None else session_id
    try:
        names = api.models()
        stdout.write(f"connected to {api.url} (model {', '.join(names) or '?'}), session {session_id}; "
                     "`end` starts a new conversation, `exit` quits, Ctrl-C stops a reply\n")
        ApiChat(api, session_id, stdin, stdout, sampling).run()
    except ApiClientError as e:
        click.echo(f"refengine-serve: error: {e}", err=True)
        raise click.exceptions.Exit(2) from None
    except KeyboardInterrupt:                     # at the prompt: quit (the session was ended by run)
        click.echo("", err=True)
        raise click.exceptions.Exit(130) from None
