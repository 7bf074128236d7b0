"""The `refengine` command: real runs end to end, and every user mistake as one line + exit code 2."""

import json
import subprocess
import sys

import pytest

from tests.cli_helpers import assert_one_line_error, run
from tests.hf_models import make_tiny_model


def test_generate_with_the_default_model_end_to_end(demo_gguf_dir):
    proc = subprocess.run([sys.executable, "-m", "refengine.cli.main", "generate", "demo",
                           "What is the capital of France?", "--temperature", "0", "--max-new-tokens", "16"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "The capital of France is Paris."
    assert "finish_reason=stop" in proc.stderr


def test_generate_raw_text_on_a_tiny_model(tmp_path, capsys):
    path, _ = make_tiny_model("llama", tmp_path)
    code, out, err = run(["generate", str(path), "hello", "--raw", "--temperature", "0",
                          "--max-new-tokens", "5", "--backend", "numpy"], capsys)
    assert code == 0, err
    assert "5 generated, finish_reason=length" in err


def test_missing_model_path(capsys):
    assert_one_line_error(*run(["generate", "./no/such/model", "hi"], capsys)[::2], "./no/such/model")


def test_bad_flag_value_names_the_flag(capsys):
    assert_one_line_error(*run(["generate", "demo", "hi", "--temperature", "3"], capsys)[::2], "--temperature")
    assert_one_line_error(*run(["generate", "demo", "hi", "--backend", "tpu"], capsys)[::2], "--backend")
    assert_one_line_error(*run(["generate", "demo", "hi", "--no-such-flag"], capsys)[::2], "--no-such-flag")


def test_corrupt_config_names_the_file(tmp_path, capsys):
    path, _ = make_tiny_model("llama", tmp_path)
    (path / "config.json").write_text("{not json")
    assert_one_line_error(*run(["generate", str(path), "hi"], capsys)[::2], "config.json")


def test_unknown_architecture_names_it(tmp_path, capsys):
    path, _ = make_tiny_model("llama", tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["architectures"] = ["GPTNeoXForCausalLM"]
    (path / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(*run(["generate", str(path), "hi"], capsys)[::2], "GPTNeoXForCausalLM")


def test_unknown_chat_template_names_it(tmp_path, capsys):
    path, _ = make_tiny_model("llama", tmp_path)
    assert_one_line_error(*run(["generate", str(path), "hi", "--chat-template", "nosuch"], capsys)[::2],
                          "nosuch")


def test_prompt_longer_than_the_session(tmp_path, capsys):
    path, _ = make_tiny_model("llama", tmp_path)
    code, _, err = run(["generate", str(path), "hello " * 40, "--raw", "--session-len", "8"], capsys)
    assert_one_line_error(code, err, "session")


@pytest.mark.parametrize("argv", [["--help"], ["generate", "--help"], ["chat", "--help"], ["--version"]])
def test_help_and_version(argv, capsys):
    code, out, _ = run(argv, capsys)
    assert code == 0 and out
