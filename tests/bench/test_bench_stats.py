"""The benchmark's arithmetic on hand-made timings (no engine): latencies, decode rate, percentiles, the
workloads' lengths and ids, list parsing, and the report files."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from refengine.bench.errors import BenchError
from refengine.bench.generation import summarize, with_floor
from refengine.bench.options import parse_int_list
from refengine.bench.report import format_table, write_csv, write_json
from refengine.bench.timing import RequestTiming, stats
from refengine.bench.workloads import BenchRequest, check_fits, fixed_requests, lognormal_lengths, spread_requests


def test_bandwidth_floor():
    """llama2-7b-like numbers: 13.2 GB of weights, 512 KB of KV a token, 3000 GB/s. Batch 1 at a mean context
    of 192 tokens reads 13.2e9 + 192 · 524288 bytes a step; batch 64, 64 times the KV."""
    meta = {"copy_GBps": 3000.0, "decode_weight_bytes": 13_200_000_000, "kv_bytes_per_token": 524288}
    row = {"batch_size": 1, "prompt_tokens": 128, "output_tokens": 128, "decode_tokens_per_s": 180.0}
    floor1 = 3000e9 / (13.2e9 + 192 * 524288)
    got = with_floor(row, meta)
    assert got["floor_tokens_per_s"] == pytest.approx(floor1) and got["percent_of_floor"] == pytest.approx(
        100 * 180 / floor1)
    got64 = with_floor({**row, "batch_size": 64}, meta)
    assert got64["floor_tokens_per_s"] == pytest.approx(64 * 3000e9 / (13.2e9 + 64 * 192 * 524288))
    cpu = with_floor(row, {**meta, "copy_GBps": None})
    assert cpu["floor_tokens_per_s"] is None and cpu["percent_of_floor"] is None
    assert "n/a" in format_table([cpu], [("percent_of_floor", "% of floor", ".1f")])


def test_first_token_latency_and_gaps():
    t = RequestTiming(10.0, prompt_tokens=4, arrivals=[10.5, 10.7, 11.3], counts=[1, 1, 3])
    assert t.first_token_latency == pytest.approx(0.5)
    assert t.output_tokens == 5
    assert t.token_gaps() == pytest.approx([0.2, 0.2, 0.2, 0.2])     # 0.6 s over the last output's 3 tokens
    assert t.tokens_after(10.6) == 4


def test_decode_rate_counts_only_the_window_where_every_request_decodes():
    # request A: first token at 1.0, then 1 token per 0.1 s; request B: first token at 1.5 (its prefill was later)
    a = RequestTiming(0.0, 8, [1.0 + 0.1 * i for i in range(11)], [1] * 11)          # last at 2.0
    b = RequestTiming(0.0, 8, [1.5 + 0.1 * i for i in range(6)], [1] * 6)            # last at 2.0
    row = summarize([a, b], (2, 8, 11), {"rss_peak_bytes": 2e9})
    # after 1.5: A's 1.6 .. 2.0 (5 tokens, since 1.5 itself is not after 1.5) and B's 1.6 .. 2.0 (5) in 0.5 s
    assert row["decode_tokens_per_s"] == pytest.approx(10 / 0.5)
    assert row["output_tokens_per_s"] == pytest.approx(17 / 2.0)
    assert row["first_token_ms_mean"] == pytest.approx(1250.0)
    assert row["token_latency_ms_p50"] == pytest.approx(100.0)
    assert row["peak_memory_gb"] == pytest.approx(2.0)


def test_stats_are_nan_for_nothing_and_percentiles_otherwise():
    assert all(math.isnan(v) for v in stats([]).values())
    s = stats(np.arange(101), scale=2.0)
    assert (s["mean"], s["p50"], s["p90"], s["p99"]) == pytest.approx((100.0, 100.0, 180.0, 198.0))


def test_fixed_requests_are_seeded_and_in_range():
    a = fixed_requests(3, 20, 7, 1000, seed=5)
    assert a == fixed_requests(3, 20, 7, 1000, seed=5) and a != fixed_requests(3, 20, 7, 1000, seed=6)
    assert all(len(r.prompt_ids) == 20 and r.output_tokens == 7 for r in a)
    assert all(300 <= t < 1000 for r in a for t in r.prompt_ids)
    assert all(0 <= t < 40 for r in fixed_requests(2, 9, 1, 40, 0) for t in r.prompt_ids)    # tiny vocabularies


def test_lognormal_lengths_are_clipped_around_the_median():
    lengths = lognormal_lengths(np.random.default_rng(0), 20000, 256, 0.7)
    assert lengths.min() >= 32 and lengths.max() <= 2048
    assert abs(np.median(lengths) - 256) < 10
    assert set(lognormal_lengths(np.random.default_rng(0), 50, 5, 0.0)) == {5}
    reqs = spread_requests(40, 30, 10, 0.7, 500, seed=1)
    assert len({len(r.prompt_ids) for r in reqs}) > 5 and len({r.output_tokens for r in reqs}) > 3


def test_check_fits_names_the_longest_request():
    reqs = [BenchRequest([1] * 10, 5), BenchRequest([1] * 30, 6)]
    check_fits(reqs, 36)
    with pytest.raises(BenchError, match="30 prompt \\+ 6 output tokens does not fit session_len 35"):
        check_fits(reqs, 35)


@pytest.mark.parametrize("text, expected", [("1,8,32", [1, 8, 32]), (" 4 , 2,4", [4, 2]), ("7", [7])])
def test_int_lists(text, expected):
    assert parse_int_list(text, "--batch-sizes") == expected


@pytest.mark.parametrize("text", ["", "1,,2", "a", "0", "-1,2", "1.5"])
def test_bad_int_lists(text):
    with pytest.raises(BenchError, match="--batch-sizes"):
        parse_int_list(text, "--batch-sizes")


def test_reports(tmp_path):
    rows = [{"a": 1, "b": 0.5}, {"a": 2, "b": float("nan"), "c": [1, 2]}]
    table = format_table(rows, [("a", "A", "d"), ("b", "B", ".2f"), ("z", "Z", ".1f")])
    assert table.splitlines() == ["| A | B | Z |", "|---|---|---|", "| 1 | 0.50 | n/a |", "| 2 | n/a | n/a |"]
    write_json(tmp_path / "r.json", {"rows": rows, "x": np.float32(1.5)})
    doc = json.loads((tmp_path / "r.json").read_text())              # strict JSON: NaN became null
    assert doc["rows"][1]["b"] is None and doc["x"] == 1.5
    write_csv(tmp_path / "r.csv", rows)
    with open(tmp_path / "r.csv") as f:
        got = list(csv.DictReader(f))
    assert list(got[0]) == ["a", "b", "c"] and got[1]["c"] == "[1, 2]"
