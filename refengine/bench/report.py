"""Results out: a Markdown table on stdout, and JSON / CSV files.

JSON (the input of tools/plot_benchmarks.py; docs/bench.md lists every key):

    {"kind": "generation" | "throughput" | "compare",
     "meta": {"label", "model", "backend", "device", "tp", "weight_type", "group_size", "decode_weight_bytes",
              "kv_bytes_per_token", "copy_GBps", "engine": {...}, "seed", "date", "refengine"},
     "rows": [{...one flat dict per configuration...}]}

CSV: the rows only, one column per key (the union of the rows' keys, in first-seen order).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path


def fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, spec)


def format_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A Markdown table; columns are (row key, header, format spec). Absent values print as n/a."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(k), spec) for k, _, spec in columns) + " |")
    return "\n".join(lines)


def write_json(path, doc: dict) -> None:
    Path(path).write_text(json.dumps(_clean(doc), indent=1, allow_nan=False) + "\n", encoding="utf-8")


def write_csv(path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in keys})


def _csv_value(v):
    return json.dumps(v) if isinstance(v, (dict, list)) else v


def _clean(v):
    """NaN becomes null (JSON has no NaN), NumPy scalars plain numbers, tuples lists, paths strings."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v if isinstance(v, (str, int, float, bool)) or v is None else str(v)
