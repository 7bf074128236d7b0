"""tools/compare_transformers.py end to end on the CPU: the tiny random HF directory through transformers
(float32) and the matching workspace through refengine (NumPy), in one process."""

from __future__ import annotations

import json

import pytest

from bench_helpers import assert_one_line_error, run_tool_main

pytest.importorskip("torch")
pytest.importorskip("transformers")


def test_both_sides_run_and_are_compared(tiny_models, tmp_path, capsys):
    ws, hf = tiny_models["float16"]
    js = tmp_path / "cmp.json"
    code, out, err = run_tool_main("compare_transformers", [
        str(hf), "--ours", str(ws), "--device", "cpu", "--batch-sizes", "1,2", "--prompt-tokens", "6",
        "--output-tokens", "4", "--throughput-requests", "5", "--hf-batch-size", "2",
        "--cache-max-entry-count", "64", "--json", str(js)], capsys)
    assert code == 0, err
    doc = json.loads(js.read_text())
    rows = doc["rows"]
    names = {r["implementation"] for r in rows}
    assert {"transformers sdpa", "transformers static cache", "refengine numpy float32"} <= names, err
    generation = [r for r in rows if r["mode"] == "generation"]
    assert len(generation) == 3 * 2
    for r in generation:
        assert r["total_output_tokens"] == 4 * r["batch_size"] and r["decode_tokens_per_s"] > 0
    throughput = {r["implementation"]: r for r in rows if r["mode"] == "throughput"}
    assert set(throughput) == {"transformers sdpa", "refengine numpy float32"}     # static cache: not here
    assert throughput["transformers sdpa"]["output_tokens"] == throughput["refengine numpy float32"]["output_tokens"]
    assert throughput["transformers sdpa"]["generated_tokens"] >= throughput["transformers sdpa"]["output_tokens"]
    assert {(r["mode"], r["versus"]) for r in doc["ratios"]} == {
        ("generation", "transformers sdpa"), ("generation", "transformers static cache"),
        ("throughput", "transformers sdpa")}
    assert all(r["ratio"] > 0 for r in doc["ratios"])
    assert "refengine / ..." in out


@pytest.mark.parametrize("args, needle", [(["--batch-sizes", "1,b"], "--batch-sizes"),
                                          (["--output-tokens", "0"], "--output-tokens"),
                                          (["--device", "tpu"], "--device"),
                                          (["--variants", "sdpa,flash"], "--variants")])
def test_user_mistakes_are_one_line(tiny_models, capsys, args, needle):
    _, hf = tiny_models["float16"]
    code, _, err = run_tool_main("compare_transformers", [str(hf), *args], capsys)
    assert_one_line_error(code, err, "compare_transformers", needle)


def test_not_an_hf_directory(tiny_models, capsys):
    ws, _ = tiny_models["float16"]
    code, _, err = run_tool_main("compare_transformers", [str(ws / "weights")], capsys)
    assert_one_line_error(code, err, "compare_transformers", "not a Hugging Face directory")
