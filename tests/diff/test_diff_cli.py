"""`refengine diff` on the command line: the real child process on a tiny model, --json, and every user
mistake as one line on stderr with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from refengine.diff import theirs
from refengine.diff.prompts import read_prompts
from tests.cli_helpers import assert_one_line_error, run
from tests.diff.diff_helpers import TINY_PROMPTS, prompt_ids, reference_dump
from tests.hf_models import make_tiny_model

pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(checkpoint, prompts file, reference dump) of a tiny Llama."""
    tmp = tmp_path_factory.mktemp("cli")
    path, ref = make_tiny_model("llama", tmp)
    prompts = tmp / "prompts.txt"
    prompts.write_text("\n".join(TINY_PROMPTS) + "\n\n")
    return path, prompts, reference_dump(ref, prompt_ids(path), tmp / "ref.npz")


def test_against_transformers_runs_the_child_process_and_keeps_torch_out(tiny):
    """End to end in a fresh interpreter: the table, exit code 0, and not one torch/transformers module
    in refengine's own process (the project rule; the child process has them)."""
    path, prompts, _ = tiny
    argv = ["diff", str(path), "--prompts", str(prompts), "--raw", "--max-new-tokens", "4"]
    code = ("import sys\nfrom refengine.cli.main import cli\nfrom refengine.cli.options import run_click\n"
            f"code = run_click(cli, {argv!r}, 'refengine')\n"
            "print('LEAKED', sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))\n"
            "sys.exit(code)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr
    assert "LEAKED []" in out
    assert "against transformers: transformers " in out and "result: OK: 2 prompts within tolerance" in out
    assert [l.split()[:2] for l in out.splitlines() if l.strip().startswith("layer 2 ")] == [["layer", "2"]] * 2
    assert "greedy (4 tokens): identical" in out
    assert "starting transformers in a child process" in proc.stderr


def test_json_output_against_a_dump(tiny, capsys):
    path, prompts, dump = tiny
    code, out, err = run(["diff", str(path), "--prompts", str(prompts), "--raw", "--against", str(dump),
                          "--json"], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["ok"] is True and data["dtype"] == "float32" and data["tolerance"]["source"] == "float32 table"
    p = data["prompts"][0]
    assert p["prompt"] == TINY_PROMPTS[0] and p["first_bad_layer"] is None
    assert [l["name"] for l in p["layers"]] == ["embedding", "layer 0", "layer 1", "layer 2"]
    assert p["logits"]["top1_fraction"] == 1.0 and p["greedy"]["first_diff"] is None


def test_tight_tolerances_from_the_command_line_fail_with_exit_1(tiny, capsys):
    path, prompts, dump = tiny
    code, out, _ = run(["diff", str(path), "--prompts", str(prompts), "--raw", "--against", str(dump),
                        "--atol", "0", "--rtol", "0"], capsys)
    assert code == 1 and "result: FAIL" in out and "(--atol/--rtol)" in out


def test_a_model_transformers_cannot_load(tmp_path, capsys):
    """InternLM2 has no transformers class (remote code): the child says so, in one line."""
    path, _ = make_tiny_model("internlm2", tmp_path)
    prompts = tmp_path / "p.txt"
    prompts.write_text("hi\n")
    assert_one_line_error(*run(["diff", str(path), "--prompts", str(prompts)], capsys)[::2],
                          "transformers cannot load", "--against DUMP.npz")


def test_transformers_missing_says_how_to_install(tiny, capsys, monkeypatch):
    path, prompts, _ = tiny
    monkeypatch.setattr(theirs, "missing_packages", lambda: ["torch", "transformers"])
    assert_one_line_error(*run(["diff", str(path), "--prompts", str(prompts)], capsys)[::2],
                          "needs torch and transformers", "pip install 'refengine[test]'")


def test_the_availability_check_does_not_import(monkeypatch):
    monkeypatch.setattr(theirs, "REQUIRED", ("torch", "no_such_package_for_refengine_diff"))
    assert theirs.missing_packages() == ["no_such_package_for_refengine_diff"]


@pytest.mark.parametrize("content, needle", [
    (None, "cannot read the prompts file"),                      # missing
    ("dir", "cannot read the prompts file"),                     # a directory
    (b"\xff\xfe bad utf-8\n", "cannot read the prompts file"),
    ("\n  \n", "has no prompts"),
])
def test_an_unreadable_prompts_file(tiny, tmp_path, capsys, content, needle):
    prompts = tmp_path / "prompts.txt"
    if content == "dir":
        prompts.mkdir()
    elif content is not None:
        prompts.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert_one_line_error(*run(["diff", str(tiny[0]), "--prompts", str(prompts), "--against", str(tiny[2])],
                               capsys)[::2], needle, str(prompts))


@pytest.mark.parametrize("line, needle", [
    ("{not json", "prompts.jsonl:2: not valid JSON"),
    ('{"text": "hi"}', 'prompts.jsonl:2: expected {"prompt": "..."} or {"messages": [...]}'),
    ('{"messages": [{"role": "user"}]}', 'prompts.jsonl:2: "messages" must be'),
])
def test_a_bad_jsonl_line_is_named(tiny, tmp_path, capsys, line, needle):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "hello"}\n' + line + "\n")
    assert_one_line_error(*run(["diff", str(tiny[0]), "--prompts", str(prompts), "--against", str(tiny[2])],
                               capsys)[::2], needle)


def test_jsonl_prompts_and_messages(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a"}\n\n{"messages": [{"role": "user", "content": "b"}]}\n')
    assert read_prompts(f) == ["a", [{"role": "user", "content": "b"}]]


def test_against_a_missing_dump_and_wrong_shapes_are_one_line(tiny, tmp_path, capsys):
    path, prompts, dump = tiny
    assert_one_line_error(*run(["diff", str(path), "--prompts", str(prompts), "--against", "nope.npz"],
                               capsys)[::2], "nope.npz", "neither 'transformers' nor an existing DUMP.npz")
    # the dump was made with --raw; without it the chat template changes the ids
    assert_one_line_error(*run(["diff", str(path), "--prompts", str(prompts), "--against", str(dump)],
                               capsys)[::2], "p0.input_ids", "--chat/--raw")
