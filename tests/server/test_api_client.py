"""The terminal client (`refengine-serve api_client URL`) against a live api_server on the default model.

The chat loop reads the lines it is given and writes to a StringIO; one test runs it in a child process
and presses Ctrl-C for real (SIGINT) in the middle of a reply.
"""

from __future__ import annotations

import io
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from http_helpers import wait_idle
from refengine.cli.options import run_click
from refengine.cli.serve import cli
from refengine.sampling_params import GenerationConfig
from refengine.server.api_client import run_api_client

GREEDY = {"temperature": 0, "request_output_len": 8}
LONG_PROMPT = "Count from 1 to 1000, one number per line."
REPO = Path(__file__).resolve().parents[2]


def greedy(engine, prompt: str, n: int = 8) -> str:
    return engine.infer(None, prompt, GenerationConfig(temperature=0, max_new_tokens=n))[0].text


class ScriptedInput:
    """stdin that hands out the given lines and calls `on_read` before each (to look at the server)."""

    def __init__(self, lines: list[str], on_read=lambda: None):
        self.lines = list(lines)
        self.on_read = on_read

    def readline(self) -> str:
        self.on_read()
        return self.lines.pop(0) + "\n" if self.lines else ""


class CtrlCOutput(io.StringIO):
    """stdout that raises KeyboardInterrupt once, at the `at`-th piece of a reply, once armed."""

    def __init__(self, at: int):
        super().__init__()
        self.at, self.pieces, self.armed = at, 0, False

    def write(self, text: str) -> int:
        n = super().write(text)
        if self.armed and ">>>" not in text:
            self.pieces += 1
            if self.pieces == self.at:
                self.armed = False
                raise KeyboardInterrupt
        return n


def eventually(expected, probe, timeout: float = 5.0):
    """probe() once it equals `expected` (the engine frees a session on its own thread, soon after the HTTP
    answer), or its value at the deadline."""
    deadline = time.monotonic() + timeout
    while (value := probe()) != expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return value


def chat(url: str, lines: list[str], session_id: int, on_read=lambda: None, stdout=None, **kwargs) -> str:
    out = stdout if stdout is not None else io.StringIO()
    run_api_client(url, session_id=session_id, stdin=ScriptedInput(lines, on_read), stdout=out, **kwargs)
    return out.getvalue()


def test_turns_stream_the_greedy_reply_and_keep_the_session_until_exit(server, server_engine):
    held = []
    out = chat(server.url, ["What is the capital of France?", "And of Italy?", "exit"], 501,
               on_read=lambda: held.append(len(server_engine.session_token_ids(501) or [])), sampling=GREEDY)
    assert out.startswith(f"connected to {server.url} (model smollm2-test), session 501")
    assert greedy(server_engine, "What is the capital of France?") in out
    assert held[0] == 0 and 0 < held[1] < held[2]          # the session grows turn by turn
    wait_idle(server.url, timeout=5)                        # `exit` ended it


def test_end_starts_a_new_conversation(server, server_engine):
    expected, held = [False, True, False, True], []

    def on_read():
        held.append(eventually(expected[len(held)], lambda: server_engine.session_token_ids(502) is not None))
    out = chat(server.url, ["Hi", "end", "Hi", "exit"], 502, on_read, sampling=GREEDY)
    assert out.count(greedy(server_engine, "Hi")) == 2      # the same first turn twice: nothing remembered
    assert "(new conversation)" in out
    assert held == expected
    wait_idle(server.url, timeout=5)


def test_ctrl_c_in_a_reply_cancels_that_reply_and_the_chat_goes_on(server, server_engine):
    out = CtrlCOutput(at=5)
    seen = []

    def on_read():
        seen.append(eventually(None, lambda: server_engine.session_token_ids(503), 0 if len(seen) != 2 else 5))
        out.armed = len(seen) == 2                          # interrupt the second turn's reply

    text = chat(server.url, ["Hi", LONG_PROMPT, "Hi", "exit"], 503, on_read, out,
                sampling={"temperature": 0, "request_output_len": 512})
    assert "(cancelled)" in text
    assert seen[2] is None                                  # cancelling freed the session on the server
    assert "(the server started a new conversation: earlier turns are forgotten)" in text
    assert text.count(greedy(server_engine, "Hi", 512)) == 2
    wait_idle(server.url, timeout=5)


def test_a_rejected_request_is_one_line_and_the_chat_goes_on(server):
    out = chat(server.url, ["word " * 1500, "exit"], 504, sampling=GREEDY)
    errors = [line for line in out.splitlines() if "error: HTTP 400" in line]
    assert len(errors) == 1 and "session length" in errors[0]
    wait_idle(server.url, timeout=5)


def test_real_ctrl_c_in_a_child_process(server):
    code = ("from refengine.server.api_client import run_api_client; "
            f"run_api_client({server.url!r}, session_id=505, sampling={{'temperature': 0, 'request_output_len': 512}})")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    output = Reader(proc.stdout)
    try:
        output.wait_for(">>> ")
        proc.stdin.write(LONG_PROMPT + "\n")
        proc.stdin.flush()
        output.wait_for_more(20)                            # the reply is streaming
        proc.send_signal(signal.SIGINT)
        output.wait_for("(cancelled)")
        proc.stdin.write("exit\n")
        proc.stdin.flush()
        assert proc.wait(30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_idle(server.url, timeout=5)


class Reader:
    """Everything a child writes, collected by a thread, so a test can wait for a string without blocking."""

    def __init__(self, stream):
        self.chunks: queue.Queue = queue.Queue()
        self.text = ""
        threading.Thread(target=lambda: [self.chunks.put(c) for c in iter(lambda: stream.read(1), "")],
                         daemon=True).start()

    def wait_for_more(self, n: int) -> None:
        self.wait_for("", lambda n0=len(self.text): len(self.text) >= n0 + n)

    def wait_for(self, needle: str, done=None, timeout: float = 60) -> None:
        done = done or (lambda: needle in self.text)
        deadline = time.monotonic() + timeout
        while not done():
            try:
                self.text += self.chunks.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {needle or 'more output'!r} after {timeout} s in {self.text!r}") from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_server_is_one_line_and_exit_code_2(capsys):
    url = f"http://127.0.0.1:{free_port()}"
    assert run_click(cli, ["api_client", url], "refengine-serve") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"refengine-serve: error: cannot reach the api_server at {url}") and err.count("\n") == 1


def test_a_rejected_key_is_one_line_and_exit_code_2(make_server, server_engine, capsys):
    keyed = make_server(api_keys=("sesame",))
    for key in (None, "wrong"):
        args = ["api_client", keyed.url] + (["--api-key", key] if key else [])
        assert run_click(cli, args, "refengine-serve") == 2
        err = capsys.readouterr().err
        assert "rejected the API key" in err and "--api-key" in err and err.count("\n") == 1
    out = chat(keyed.url, ["Hi", "exit"], 506, api_key="sesame", sampling=GREEDY)
    assert greedy(server_engine, "Hi") in out


@pytest.mark.parametrize("given, root", [("localhost:23333", "http://localhost:23333"),
                                         ("http://h:1/", "http://h:1"),
                                         ("http://h:1/v1/chat/interactive", "http://h:1")])
def test_server_urls_are_read_leniently(given, root):
    from refengine.server.api_client import normalize_url
    assert normalize_url(given) == root
