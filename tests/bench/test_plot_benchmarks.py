"""tools/plot_benchmarks.py: PNGs from the JSON the benchmarks write, and the bandwidth bound's arithmetic."""

from __future__ import annotations

import json

import pytest

from bench_helpers import assert_one_line_error, load_tool, run_tool_main

pytest.importorskip("matplotlib")

META = {"label": "refengine cupy float16", "weight_type": "float16", "group_size": None,
        "decode_weight_bytes": 13_000_000_000, "kv_bytes_per_token": 524288, "copy_GBps": 3000.0}


def generation_doc(meta=META, tokens=(100.0, 700.0, 2500.0)):
    rows = [{"batch_size": b, "prompt_tokens": 128, "output_tokens": 128, "decode_tokens_per_s": t}
            for b, t in zip((1, 8, 64), tokens)]
    return {"kind": "generation", "meta": meta, "rows": rows}


def test_bound_is_bandwidth_over_bytes_per_step():
    plot = load_tool("plot_benchmarks")
    (name, batches, bound), = plot.bound_series([generation_doc()], None, None, None)
    assert batches == [1, 8, 64] and "float16" in name
    context = 128 + 64
    for b, got in zip(batches, bound):
        assert got == pytest.approx(b * 3000e9 / (13e9 + b * context * 524288))
    assert plot.bound_series([generation_doc()], 1000.0, None, None)[0][2][0] == pytest.approx(1000e9 / (13e9 + context * 524288))


def test_pngs_from_every_kind_of_file(tmp_path, capsys):
    int4 = {**META, "label": "refengine cupy int4 g128", "weight_type": "int4", "group_size": 128,
            "decode_weight_bytes": 3_900_000_000}
    compare = {"kind": "compare", "meta": {}, "rows": [
        {"implementation": "transformers sdpa", "mode": "generation", "batch_size": b, "prompt_tokens": 128,
         "output_tokens": 128, "decode_tokens_per_s": t} for b, t in ((1, 30.0), (64, 1500.0))] + [
        {"implementation": "transformers sdpa", "mode": "throughput", "output_tokens_per_s": 900.0,
         "requests_per_s": 3.0}]}
    throughput = {"kind": "throughput", "meta": META, "rows": [{"output_tokens_per_s": 2000.0, "requests_per_s": 6.0}]}
    files = []
    for i, doc in enumerate([generation_doc(), generation_doc(int4), compare, throughput]):
        files.append(tmp_path / f"{i}.json")
        files[-1].write_text(json.dumps(doc))
    code, out, err = run_tool_main("plot_benchmarks", [*map(str, files), "--out-dir", str(tmp_path / "plots")], capsys)
    assert code == 0, err
    for name in ("decode_vs_batch.png", "throughput.png"):
        data = (tmp_path / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_a_file_that_is_not_a_result(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": []}))
    code, _, err = run_tool_main("plot_benchmarks", [str(bad)], capsys)
    assert_one_line_error(code, err, "plot_benchmarks", "bad.json")


def test_series_and_bars_carry_the_numbers():
    """What the PNGs draw: each run's own batches and rates, names made unique by file when they repeat."""
    plot = load_tool("plot_benchmarks")
    compare = {"kind": "compare", "meta": {}, "_file": "cmp", "rows": [
        {"implementation": "transformers sdpa", "mode": "generation", "batch_size": 64, "prompt_tokens": 128,
         "output_tokens": 128, "decode_tokens_per_s": 1500.0},
        {"implementation": "transformers sdpa", "mode": "throughput", "output_tokens_per_s": 900.0,
         "requests_per_s": 3.0}]}
    docs = [{**generation_doc(), "_file": "a"}, {**generation_doc(tokens=(1.0, 2.0, 3.0)), "_file": "b"}, compare]
    assert plot.decode_series(docs, None, None) == [
        ("refengine cupy float16 [a]", [1, 8, 64], [100.0, 700.0, 2500.0]),
        ("refengine cupy float16 [b]", [1, 8, 64], [1.0, 2.0, 3.0]),
        ("transformers sdpa", [64], [1500.0])]
    throughput = {"kind": "throughput", "meta": META, "_file": "t",
                  "rows": [{"output_tokens_per_s": 2000.0, "requests_per_s": 6.0}]}
    assert plot.throughput_bars([compare, throughput]) == [("transformers sdpa", 900.0, 3.0),
                                                          ("refengine cupy float16", 2000.0, 6.0)]
