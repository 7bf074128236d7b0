"""`refengine bench generation|throughput` end to end on a tiny random workspace (NumPy backend): the request
counts are right, every number is positive, the table, JSON and CSV are written; mistakes are one line."""

from __future__ import annotations

import csv
import json

import pytest

from bench_helpers import assert_one_line_error, run_cli
from refengine.bench.workloads import spread_requests

ENGINE = ["--backend", "numpy", "--cache-max-entry-count", "64", "--cache-block-seq-len", "8", "--warmup", "1"]


def test_generation_runs_every_case_with_exact_counts(tiny_models, tmp_path, capsys):
    ws, _ = tiny_models["float16"]
    js, cs = tmp_path / "gen.json", tmp_path / "gen.csv"
    code, out, err = run_cli(["bench", "generation", str(ws), *ENGINE, "--batch-sizes", "1,3",
                              "--prompt-tokens", "8,12", "--output-tokens", "5", "--json", str(js),
                              "--csv", str(cs), "--label", "tiny fp16"], capsys)
    assert code == 0, err
    assert "| batch | prompt | output |" in out and "decode tok/s" in out
    doc = json.loads(js.read_text())
    assert doc["kind"] == "generation" and doc["meta"]["label"] == "tiny fp16"
    assert doc["meta"]["decode_weight_bytes"] > 0 and doc["meta"]["kv_bytes_per_token"] == 2 * 2 * 64 * 4
    assert doc["meta"]["engine"]["lookahead"] is True                        # the default, recorded
    rows = doc["rows"]
    assert [(r["batch_size"], r["prompt_tokens"]) for r in rows] == [(1, 8), (1, 12), (3, 8), (3, 12)]
    for r in rows:
        assert r["requests"] == r["batch_size"] and r["total_output_tokens"] == 5 * r["batch_size"]
        for key in ("decode_tokens_per_s", "output_tokens_per_s", "first_token_ms_p50", "first_token_ms_p99",
                    "token_latency_ms_p50", "token_latency_ms_p99", "rss_peak_bytes", "wall_s"):
            assert r[key] > 0, key
        assert r["first_token_ms_p50"] <= r["first_token_ms_p99"]
    with open(cs) as f:
        assert [int(r["batch_size"]) for r in csv.DictReader(f)] == [1, 1, 3, 3]


def test_throughput_sends_every_request_once(tiny_models, tmp_path, capsys):
    ws, _ = tiny_models["int4"]
    js = tmp_path / "tp.json"
    code, out, err = run_cli(["bench", "throughput", str(ws), *ENGINE, "--num-requests", "7", "--concurrency", "3",
                              "--prompt-tokens", "10", "--output-tokens", "6", "--seed", "4", "--json", str(js),
                              "--no-lookahead"], capsys)
    assert code == 0, err
    assert "req/s" in out and "synthetic lognormal" in out
    assert json.loads(js.read_text())["meta"]["engine"]["lookahead"] is False
    row = json.loads(js.read_text())["rows"][0]
    expected = spread_requests(7, 10, 6, 0.7, 384, 4)
    assert row["num_requests"] == row["completed"] == 7 and row["concurrency"] == 3
    assert row["output_tokens"] == sum(r.output_tokens for r in expected)
    assert row["prompt_tokens"] == sum(len(r.prompt_ids) for r in expected)
    for key in ("requests_per_s", "output_tokens_per_s", "total_tokens_per_s", "first_token_ms_p90"):
        assert row[key] > 0, key
    assert row["total_tokens_per_s"] > row["output_tokens_per_s"]


def test_throughput_from_a_sharegpt_file(tiny_models, tmp_path, capsys):
    ws, _ = tiny_models["float16"]
    data = [{"conversations": [{"from": "human", "value": f"question number {i} about things"},
                               {"from": "gpt", "value": "an answer " * (i + 2)}]} for i in range(6)]
    data.append({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "x"}]})  # too short
    path = tmp_path / "share.json"
    path.write_text(json.dumps(data))
    js = tmp_path / "tp.json"
    code, _, err = run_cli(["bench", "throughput", str(ws), *ENGINE, "--num-requests", "5", "--concurrency", "5",
                            "--dataset", str(path), "--json", str(js)], capsys)
    assert code == 0, err
    doc = json.loads(js.read_text())
    assert doc["rows"][0]["completed"] == 5 and "ShareGPT" in doc["meta"]["workload"]


@pytest.mark.parametrize("args, needle", [
    (["generation", "--batch-sizes", "1,x"], "--batch-sizes"),
    (["generation", "--batch-sizes", "0,4"], "--batch-sizes"),
    (["generation", "--output-tokens", ""], "--output-tokens"),
    (["generation", "--session-len", "16", "--prompt-tokens", "12", "--output-tokens", "8"], "session_len 16"),
    (["throughput", "--num-requests", "0"], "--num-requests"),
    (["throughput", "--dataset", "/no/such.json"], "--dataset /no/such.json"),
    (["generation", "--json", "/no/such/dir/gen.json"], "--json /no/such/dir/gen.json"),
])
def test_user_mistakes_are_one_line_and_exit_2(tiny_models, capsys, args, needle):
    ws, _ = tiny_models["float16"]
    code, _, err = run_cli(["bench", args[0], str(ws), *ENGINE, *args[1:]], capsys)
    assert_one_line_error(code, err, "refengine", needle)


def test_an_unknown_model_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(["bench", "generation", str(tmp_path / "nothing"), "--backend", "numpy"], capsys)
    assert_one_line_error(code, err, "refengine", "nothing")
