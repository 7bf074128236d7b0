"""The browser chat page, driven in headless Chromium against a live api_server on the default model.

The browser is driven through the Chrome DevTools Protocol directly (JSON over a websocket, aiohttp's
client): no selenium, no chromedriver, no new dependency. Without a Chromium binary these tests skip.

    test ──CDP websocket──► chromium ──HTTP──► web UI server (thread) ──HTTP──► api_server (thread) ─► Engine
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from http_helpers import call, metrics, wait_idle
from refengine.sampling_params import GenerationConfig
from refengine.server.webui_server import check_api_server, create_webui_app

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
ENTER = {"key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13, "text": "\r"}
SHIFT = 8                      # CDP modifier bit
LONG_PROMPT = "Count from 1 to 1000, one number per line."     # a greedy reply of hundreds of tokens


def chromium_binary() -> str | None:
    explicit = os.environ.get("REFENGINE_CHROMIUM")
    if explicit:
        return explicit
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


class Page:
    """One Chromium tab over CDP. Synchronous methods over a private event loop, so tests read plainly."""

    def __init__(self, binary: str, profile: Path):
        self.loop = asyncio.new_event_loop()
        self.errors: list[str] = []            # uncaught exceptions and console errors in the page
        self.log = (profile.parent / "chromium.log").open("wb")
        self.process = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", "--window-size=1000,800", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=self.log)
        try:
            self.run(self._connect(profile / "DevToolsActivePort"))
        except BaseException:
            self._stop_process()
            raise

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    async def _connect(self, port_file: Path) -> None:
        deadline = time.monotonic() + 30
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start (exit code {self.process.poll()})")
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        self.http = aiohttp.ClientSession()
        async with self.http.get(f"http://127.0.0.1:{port}/json/list") as resp:
            target = next(t for t in await resp.json() if t["type"] == "page")
        self.ws = await self.http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        self.pending: dict[int, asyncio.Future] = {}
        self.next_id = 0
        self.reader = self.loop.create_task(self._read())
        await self._send("Runtime.enable")
        await self._send("Page.enable")

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data:
                self.pending.pop(data["id"]).set_result(data)
            elif data.get("method") == "Runtime.exceptionThrown":
                self.errors.append(data["params"]["exceptionDetails"].get("exception", {}).get("description", "?"))
            elif data.get("method") == "Runtime.consoleAPICalled" and data["params"]["type"] == "error":
                self.errors.append(" ".join(str(a.get("value", a.get("description"))) for a in data["params"]["args"]))

    async def _send(self, method: str, **params) -> dict:
        self.next_id += 1
        future = self.pending[self.next_id] = self.loop.create_future()
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        reply = await asyncio.wait_for(future, 30)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def send(self, method: str, **params) -> dict:
        return self.run(self._send(method, **params))

    def eval(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for(f"document.readyState === 'complete' && location.href.startsWith({json.dumps(url)})")

    def wait_for(self, expression: str, timeout: float = 30.0):
        """Poll a JavaScript expression until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while not (value := self.eval(expression)):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {expression}; status: {self.text('#status')!r}")
            time.sleep(0.05)
        return value

    def text(self, selector: str) -> str:
        return self.eval(f"document.querySelector({json.dumps(selector)}).textContent")

    def texts(self, selector: str) -> list[str]:
        return self.eval(f"[...document.querySelectorAll({json.dumps(selector)})].map(e => e.textContent)")

    def enabled(self, selector: str) -> bool:
        return not self.eval(f"document.querySelector({json.dumps(selector)}).disabled")

    def type(self, text: str) -> None:
        """Keyboard input into the focused element (Enter through press_enter)."""
        if text:
            self.send("Input.insertText", text=text)

    def press_enter(self, shift: bool = False) -> None:
        modifiers = SHIFT if shift else 0
        self.send("Input.dispatchKeyEvent", type="keyDown", modifiers=modifiers, **ENTER)
        self.send("Input.dispatchKeyEvent", type="keyUp", modifiers=modifiers, key="Enter", code="Enter",
                  windowsVirtualKeyCode=13)

    def click(self, selector: str) -> None:
        """A real mouse click at the element's centre (a disabled button ignores it, as for a person)."""
        x, y = self.eval(f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                         f".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def set_slider(self, selector: str, value) -> None:
        self.eval(f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                  f" e.value = {json.dumps(str(value))}; e.dispatchEvent(new Event('input')); }})()")

    def close(self) -> None:
        async def shut():
            await self.ws.close()
            await self.reader                  # ends with the websocket
            await self.http.close()
        self.run(shut())
        self._stop_process()

    def _stop_process(self) -> None:
        self.loop.close()
        self.process.terminate()
        self.process.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    binary = chromium_binary()
    if binary is None:
        pytest.skip("no Chromium binary (apt-get install chromium, or set REFENGINE_CHROMIUM)")
    p = Page(binary, tmp_path_factory.mktemp("chromium") / "profile")
    yield p
    p.close()


@pytest.fixture
def serve(server):
    """Serve an aiohttp app the way conftest's api_server is served (its LiveServer class); yield its URL."""
    started = []

    def start(app) -> str:
        started.append(type(server)(app))
        return started[-1].url
    yield start
    for live in started:
        live.stop()


@pytest.fixture
def webui(serve, server):
    return serve(create_webui_app(server.url))


def greedy(engine, prompt: str, n: int) -> str:
    return engine.infer(None, prompt, GenerationConfig(temperature=0, max_new_tokens=n))[0].text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STATUS = "document.getElementById('status').textContent"
IDLE = "!document.querySelector('.msg.streaming') && !document.getElementById('send').disabled"


def open_fresh(page: Page, url: str, max_tokens: int) -> None:
    """Load the page (a reload ends the previous tab's session), greedy, `max_tokens` per reply."""
    page.open(url + "/")
    page.wait_for(f"{STATUS}.startsWith('ready')")
    page.set_slider("#temperature", 0)
    page.set_slider("#max-tokens", max_tokens)
    page.eval("document.getElementById('prompt').focus()")


def send_and_wait(page: Page, message: str, replies: int) -> str:
    page.type(message)
    page.press_enter()
    page.wait_for(f"document.querySelectorAll('.msg.assistant').length === {replies} && {IDLE}")
    return page.texts(".msg.assistant")[-1]


def reset(page: Page) -> None:
    page.click("#reset")
    page.wait_for(f"{STATUS}.startsWith('new conversation')")


# ---------------------------------------------------------------- without a browser

def test_the_page_is_served_whole_with_nothing_from_elsewhere(webui):
    status, headers, html = call("GET", webui + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert '<meta name="viewport"' in html
    for asset, kind in (("style.css", "text/css"), ("app.js", "javascript")):
        status, headers, text = call("GET", f"{webui}/static/{asset}")
        assert status == 200 and kind in headers["Content-Type"]
        assert "://" not in text                    # no CDN, no outside URL
    assert "://" not in html


def test_the_proxy_streams_json_lines_and_forwards_the_api_key(serve, make_server, server_engine):
    keyed = make_server(api_keys=("sesame",))
    body = {"prompt": "Hi", "session_id": 4242, "interactive_mode": False, "stream": True,
            "temperature": 0, "request_output_len": 3}
    status, _, payload = call("POST", serve(create_webui_app(keyed.url)) + "/api/interactive", body)
    assert status == 401 and "API key" in payload["error"]["message"]
    status, headers, payload = call("POST", serve(create_webui_app(keyed.url, "sesame")) + "/api/interactive", body)
    assert status == 200 and "ndjson" in headers["Content-Type"]
    lines = [json.loads(line) for line in payload.splitlines()]
    assert lines[-1]["finish_reason"] == "length" and lines[-1]["tokens"] == 3
    assert "".join(p["text"] for p in lines) == greedy(server_engine, "Hi", 3)


def test_an_unreachable_api_server_is_a_502_with_one_line(serve):
    dead = f"http://127.0.0.1:{free_port()}"
    assert "127.0.0.1" in check_api_server(dead, timeout=2)          # run_webui's start-up warning
    status, _, payload = call("POST", serve(create_webui_app(dead)) + "/api/interactive", {"prompt": "Hi"})
    message = payload["error"]["message"]
    assert status == 502 and message.startswith(f"cannot reach the api_server at {dead}") and "\n" not in message


# ---------------------------------------------------------------- in the browser

def test_chat_streams_the_greedy_reply_and_reset_ends_the_session(page, webui, server, server_engine):
    wait_idle(server.url)
    open_fresh(page, webui, 12)
    assert page.enabled("#send") and not page.enabled("#cancel") and page.enabled("#reset")
    reply = send_and_wait(page, "What is the capital of France?", 1)
    assert reply == greedy(server_engine, "What is the capital of France?", 12)
    assert page.texts(".msg.user") == ["What is the capital of France?"]
    assert page.eval("document.getElementById('prompt').value") == ""
    assert send_and_wait(page, "And of Italy?", 2)
    assert "tokens in this conversation" in page.text("#status")
    m = metrics(server.url)
    assert m["refengine_sessions"] == 1 and m["refengine_kv_blocks_used"] > 0   # kept between turns

    reset(page)
    assert page.texts(".msg") == []
    wait_idle(server.url, timeout=5)                  # no session, no KV block in use
    assert page.errors == []


def test_shift_enter_is_a_new_line_and_enter_sends(page, webui):
    open_fresh(page, webui, 2)
    page.type("Hello")
    page.press_enter(shift=True)
    page.type("there")
    assert page.eval("document.getElementById('prompt').value") == "Hello\nthere"
    assert page.texts(".msg") == []
    send_and_wait(page, "", 1)
    assert page.texts(".msg.user") == ["Hello\nthere"]
    reset(page)


def test_cancel_stops_a_long_reply_and_gives_the_buttons_back(page, webui, server):
    open_fresh(page, webui, 2048)
    page.type(LONG_PROMPT)
    page.press_enter()
    page.wait_for("(document.querySelector('.msg.assistant') || {}).textContent?.length > 10")
    assert page.enabled("#cancel") and not page.enabled("#send")
    page.click("#cancel")
    page.wait_for(IDLE, timeout=10)
    assert page.text("#status").startswith("cancelled after")
    assert not page.enabled("#cancel") and page.enabled("#reset")
    stopped = page.texts(".msg.assistant")[-1]
    time.sleep(0.5)
    assert page.texts(".msg.assistant")[-1] == stopped               # the text stopped growing
    wait_idle(server.url, timeout=5)                                 # the engine let the reply go
    assert page.errors == []


@pytest.mark.parametrize("mid_reply", [False, True])
def test_leaving_the_page_frees_its_session(page, webui, server, mid_reply):
    """Closing or reloading a tab ends its session, whether a reply is streaming or not."""
    open_fresh(page, webui, 2048 if mid_reply else 4)
    if mid_reply:
        page.type(LONG_PROMPT)
        page.press_enter()
        page.wait_for("document.querySelector('.msg.streaming')?.textContent.length > 10")
    else:
        send_and_wait(page, "Hi", 1)
    assert metrics(server.url)["refengine_sessions"] == 1
    page.open("about:blank")
    wait_idle(server.url, timeout=10)


def test_a_narrow_screen_has_no_sideways_scroll(page, webui):
    page.send("Emulation.setDeviceMetricsOverride", width=375, height=700, deviceScaleFactor=2, mobile=True)
    try:
        page.open(webui + "/")
        assert page.eval("document.documentElement.scrollWidth") <= 375
        for button in ("#send", "#cancel", "#reset"):
            assert page.eval(f"document.querySelector('{button}').getBoundingClientRect().right") <= 375
    finally:
        page.send("Emulation.clearDeviceMetricsOverride")


def test_an_unreachable_api_server_shows_one_line_in_the_page(page, serve):
    page.open(serve(create_webui_app(f"http://127.0.0.1:{free_port()}")) + "/")
    status = page.wait_for(f"document.getElementById('status').classList.contains('error') && {STATUS}")
    assert status.startswith("error 502: cannot reach the api_server") and "\n" not in status
    page.eval("document.getElementById('prompt').focus()")
    page.type("Hi")
    page.press_enter()
    page.wait_for(f"{IDLE} && {STATUS}.includes('cannot reach')")
    assert page.texts(".msg.user") == ["Hi"] and page.texts(".msg.assistant") == []   # no empty bubble
