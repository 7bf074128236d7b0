"""`refengine-convert`: real conversions, LMDeploy's positional form, and every user mistake as one line
on stderr, exit code 2, and nothing written."""

import json

import pytest

from refengine.cli.convert import convert, template_for_model_name
from refengine.cli.main import cli
from tests.cli_helpers import assert_one_line_error
from tests.cli_helpers import run as run_cli
from tests.hf_models import make_tiny_model


def run(argv, capsys, command=convert, prog="refengine-convert"):
    return run_cli(argv, capsys, command, prog)


def nothing_written(parent, name="ws"):
    return not (parent / name).exists() and not [p for p in parent.iterdir() if p.name.startswith(f".{name}.")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path, _ = make_tiny_model("llama", tmp_path_factory.mktemp("tiny"))
    return path


def test_convert_rtn_prints_a_summary(tiny, tmp_path, capsys):
    code, out, err = run([str(tiny), "--dst", str(tmp_path / "ws"), "--quant", "rtn", "--group-size", "32"], capsys)
    assert code == 0, err
    assert "int4 (rtn, group size 32): 5.00 bits per linear weight" in out and "size on disk" in out
    assert json.loads((tmp_path / "ws" / "refengine.json").read_text())["quant"]["method"] == "rtn"


def test_refengine_group_has_convert_and_the_workspace_generates(tiny, tmp_path, capsys):
    code, _, err = run(["convert", str(tiny), "--dst", str(tmp_path / "ws")], capsys, cli, "refengine")
    assert code == 0, err
    code, _, err = run(["generate", str(tmp_path / "ws"), "hello", "--raw", "--temperature", "0",
                        "--max-new-tokens", "3", "--backend", "numpy"], capsys, cli, "refengine")
    assert code == 0 and "3 generated" in err, err


def test_lmdeploy_positional_form_names_the_chat_template(tiny, tmp_path, capsys):
    code, _, err = run(["internlm2-chat-7b", str(tiny), "--dst", str(tmp_path / "ws")], capsys)
    assert code == 0, err
    manifest = json.loads((tmp_path / "ws" / "refengine.json").read_text())
    assert manifest["chat_template"]["stop_words"] == ["<|im_end|>", "<|action_end|>"]
    assert [template_for_model_name(n) for n in ("internlm-chat-7b", "llama2", "llama3", "qwen", "qwen-14b")] == \
        ["internlm", "llama2", "llama3", "chatml", "chatml"]


@pytest.mark.parametrize("args, needles", [
    (["--quant", "rtn", "--group-size", "128"], ["--group-size 128 does not divide", "64", "32"]),
    (["--quant", "awq", "--group-size", "48"], ["--group-size 48 is not supported"]),
    (["--quant", "rtn", "--w-bits", "8"], ["--w-bits 8", "only 4"]),
    (["--dtype", "float8"], ["--dtype"]),
    (["--quant", "awq", "--group-size", "32", "--calib-data", "/no/such/calib.txt"], ["/no/such/calib.txt"]),
    (["--chat-template", "nosuchtemplate"], ["nosuchtemplate"]),
    (["--no-such-flag"], ["--no-such-flag"]),
])
def test_bad_inputs_are_one_line_and_write_nothing(tiny, tmp_path, capsys, args, needles):
    code, _, err = run([str(tiny), "--dst", str(tmp_path / "ws"), *args], capsys)
    assert_one_line_error(code, err, *needles)
    assert nothing_written(tmp_path)


def test_unreadable_calibration_file(tiny, tmp_path, capsys):
    bad = tmp_path / "calib.jsonl"
    bad.write_text('{"text": "fine"}\nnot json\n')
    code, _, err = run([str(tiny), "--dst", str(tmp_path / "ws"), "--quant", "awq", "--group-size", "32",
                        "--calib-data", str(bad)], capsys)
    assert_one_line_error(code, err, "calib.jsonl", "line 2")
    assert nothing_written(tmp_path)


def test_existing_destination_needs_force(tiny, tmp_path, capsys):
    dst = tmp_path / "ws"
    dst.mkdir()
    (dst / "notes.txt").write_text("mine")
    code, _, err = run([str(tiny), "--dst", str(dst)], capsys)
    assert_one_line_error(code, err, "exists and is not empty", "--force")
    code, _, err = run([str(tiny), "--dst", str(dst), "--force"], capsys)       # not a workspace: kept
    assert_one_line_error(code, err, "not a refengine workspace")
    assert (dst / "notes.txt").read_text() == "mine"
    ws = tmp_path / "ws2"
    assert run([str(tiny), "--dst", str(ws)], capsys)[0] == 0
    assert_one_line_error(*run([str(tiny), "--dst", str(ws)], capsys)[::2], "--force")
    assert run([str(tiny), "--dst", str(ws), "--force", "--dtype", "bfloat16"], capsys)[0] == 0
    assert json.loads((ws / "refengine.json").read_text())["weight_type"] == "bfloat16"


def test_damaged_workspace_is_one_line_for_every_command(tiny, tmp_path, capsys):
    ws = tmp_path / "ws"
    assert run([str(tiny), "--dst", str(ws)], capsys)[0] == 0
    (ws / "weights" / "model.safetensors").write_bytes(b"garbage")
    assert_one_line_error(*run(["generate", str(ws), "hi"], capsys, cli, "refengine")[::2],
                          "model.safetensors", "damaged")
    assert_one_line_error(*run([str(ws), "--dst", str(tmp_path / "again")], capsys)[::2], "model.safetensors")
    assert nothing_written(tmp_path, "again")
