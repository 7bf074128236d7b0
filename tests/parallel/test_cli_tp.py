"""`--tp N` on the front ends (chat, api_server, bench): with CPU ranks (--backend numpy) a split model prints
what tp = 1 prints; a bad --tp is one line and exit code 2 with no process started; and every front end stops
its rank processes when it ends (no orphans)."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
from pathlib import Path

import pytest

from refengine.cli import chat as chat_cli
from refengine.cli import serve
from refengine.cli.main import cli
from refengine.cli.options import run_click
from tests.hf_models import make_tiny_model

SMALL_CACHE = ["--backend", "numpy", "--cache-max-entry-count", "64", "--cache-block-seq-len", "8"]
GREEDY = ["--temperature", "0", "--max-new-tokens", "12"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    path, _ = make_tiny_model("llama-bias", tmp_path_factory.mktemp("tp-cli"))      # 4 heads, 2 KV heads
    return str(path)


def rank_processes() -> list[int]:
    """Pids of this process's live multiprocessing-spawned children (the tensor-parallel ranks), from /proc."""
    multiprocessing.active_children()                   # joins the ones that have exited (no zombies left)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:                                 # exited while we looked
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and b"spawn_main" in cmdline and " Z " not in stat[stat.rindex(")"):]:
            found.append(int(entry.name))
    return found


@pytest.fixture
def no_orphans():
    assert rank_processes() == [], "rank processes alive before the test"
    yield
    assert rank_processes() == [], "rank processes left behind"


def one_error_line(err: str, prog: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith(f"{prog}: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------- refengine chat


def run_chat(tiny, tp: int, monkeypatch, capsys) -> tuple[str, str, list[int]]:
    """Two turns of `refengine chat --tp N`; (stdout, stderr, rank processes seen during the chat)."""
    lines, seen = iter(["hello there", "what now?", "exit"]), []

    def read_line():
        seen.extend(rank_processes())
        return next(lines)

    monkeypatch.setattr(chat_cli, "read_line", read_line)
    code = run_click(cli, ["chat", tiny, *SMALL_CACHE, *GREEDY, "--tp", str(tp)], "refengine")
    out, err = capsys.readouterr()
    assert code == 0, err
    return out, err, seen


def test_chat_tp2_prints_what_tp1_prints(tiny, monkeypatch, capsys, no_orphans):
    want, _, seen1 = run_chat(tiny, 1, monkeypatch, capsys)
    got, err, seen2 = run_chat(tiny, 2, monkeypatch, capsys)
    assert seen1 == [] and len(set(seen2)) == 1, (seen1, seen2)       # tp 2: one worker, alive while chatting
    assert "split over 2 ranks" in err
    assert got == want and len(want.replace(">>>", "").strip()) > 0, (got, want)


# ---------------------------------------------------------------- refengine-serve api_server


def serve_once(tiny, tp: int, monkeypatch) -> dict:
    """`refengine-serve api_server --tp N`, its run_api_server replaced by one chat completion through the
    app it would serve (create_app, aiohttp's test server); the command then shuts down as after SIGTERM."""
    from aiohttp.test_utils import TestClient, TestServer

    from refengine.server.app import create_app
    answers = []

    async def one_completion(app):
        async with TestClient(TestServer(app)) as client:
            resp = await client.post("/v1/chat/completions", json={
                "model": "tiny", "messages": [{"role": "user", "content": "hello there"}],
                "temperature": 0, "max_tokens": 12})
            answers.append((resp.status, await resp.json(), rank_processes()))

    def run_api_server(engine, host, port, **options):
        asyncio.run(one_completion(create_app(engine, **options)))

    monkeypatch.setattr("refengine.server.app.run_api_server", run_api_server)
    code = run_click(serve.cli, ["api_server", tiny, *SMALL_CACHE, "--model-name", "tiny", "--tp", str(tp)],
                     "refengine-serve")
    assert code == 0 and len(answers) == 1
    status, body, ranks = answers[0]
    assert status == 200, body
    return {"text": body["choices"][0]["message"]["content"], "usage": body["usage"], "ranks": ranks}


def test_api_server_tp2_answers_what_tp1_answers(tiny, monkeypatch, no_orphans):
    want, got = serve_once(tiny, 1, monkeypatch), serve_once(tiny, 2, monkeypatch)
    assert want["ranks"] == [] and len(got["ranks"]) == 1
    assert got["text"] == want["text"] and got["usage"] == want["usage"] and want["usage"]["completion_tokens"] > 0


# ---------------------------------------------------------------- refengine bench


def test_bench_generation_with_tp2(tiny, tmp_path, capsys, monkeypatch, no_orphans):
    js = tmp_path / "gen.json"
    monkeypatch.setattr("refengine.engine.block_manager.available_memory_bytes", lambda xp: 1 << 20)
    code = run_click(cli, ["bench", "generation", tiny, "--backend", "numpy", "--cache-max-entry-count", "0.5",
                           "--cache-block-seq-len", "8", "--tp", "2", "--warmup", "0", "--batch-sizes", "2",
                           "--prompt-tokens", "8", "--output-tokens", "4", "--json", str(js)], "refengine")
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(js.read_text())
    meta, rows = doc["meta"], doc["rows"]
    assert meta["tp"] == 2 and meta["label"].endswith("tp2"), meta
    # one rank's share: 1 of the 2 KV heads (2 layers, K and V, head_dim 16, float32)
    assert meta["kv_bytes_per_token"] == 2 * 2 * 1 * 16 * 4
    # the KV budget (half of 1 MiB) is spent in blocks of that share: twice the blocks tp = 1 would get
    assert meta["engine"]["kv_blocks"] == (1 << 19) // (8 * meta["kv_bytes_per_token"]) == 256
    assert [(r["batch_size"], r["requests"], r["total_output_tokens"]) for r in rows] == [(2, 2, 8)]
    assert rows[0]["decode_tokens_per_s"] > 0 and "decode tok/s" in out


# ---------------------------------------------------------------- a bad --tp

COMMANDS = {"chat": (cli, "refengine", ["chat"]), "api_server": (serve.cli, "refengine-serve", ["api_server"]),
            "bench": (cli, "refengine", ["bench", "generation"])}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("tp, backend, needle", [
    ("3", "numpy", "--tp 3 is not a power of two"),
    ("8", "numpy", "--tp 8 does not divide the model's 4 attention heads"),
    ("2", "cupy", "--tp 2 needs 2 GPUs, one per rank, but only 1 is visible"),
    ("0", "numpy", "--tp"),                                   # click's range check, before loading
])
def test_bad_tp_is_one_line_and_starts_nothing(tiny, command, tp, backend, needle, monkeypatch, capsys):
    group, prog, words = COMMANDS[command]
    monkeypatch.setattr(multiprocessing, "get_context", lambda *a: pytest.fail("a process was started"))
    monkeypatch.setattr("refengine.parallel.build.visible_gpu_count", lambda: 1)
    monkeypatch.setattr(chat_cli, "read_line", lambda: pytest.fail("the chat started"))
    monkeypatch.setattr("refengine.server.app.run_api_server", lambda *a, **k: pytest.fail("the server started"))
    code = run_click(group, [*words, tiny, "--backend", backend, "--tp", tp], prog)
    _, err = capsys.readouterr()
    assert code == 2, err
    prefix = prog if tp == "0" else "refengine"       # usage errors name the program; user errors say refengine
    assert needle in one_error_line(err, prefix)
