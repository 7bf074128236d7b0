"""PNG plots from benchmark JSON files (matplotlib: a tools-only dependency, `pip install matplotlib`).

    python tools/plot_benchmarks.py gen-fp16.json gen-int4.json cmp.json tp-fp16.json tp-int4.json --out-dir plots/
        [--copy-gbps 2988 | --kernels kernels.json] [--prompt-tokens 128 --output-tokens 128]

Writes
    decode_vs_batch.png   decode tokens/s against batch size (log-log): one line per run, and per weight type
                          the bandwidth bound (dashed)
    throughput.png        output tokens/s per run (bars, requests/s written on each)

Inputs: the JSON that these write (refengine/bench/report.py):
    refengine bench generation --json   {"kind": "generation", "meta": {...}, "rows": [...]}
        a line labelled meta.label: rows' batch_size -> decode_tokens_per_s (one line per (prompt_tokens,
        output_tokens) case, or only the case --prompt-tokens/--output-tokens pick)
    refengine bench throughput --json   {"kind": "throughput", ...}: a bar meta.label -> output_tokens_per_s
    tools/compare_transformers.py --json  {"kind": "compare", "rows": [...]}: rows with mode "generation" make
        a line per implementation, rows with mode "throughput" a bar per implementation
    tools/bench_kernels.py --json       {"ceilings": {"copy_GBps": ...}, ...}: only its copy bandwidth (--kernels)

Bandwidth bound: a decode step reads every weight once and the K/V of every context token of every sequence,
so at batch B (context c = prompt + output/2 on average over the run)

    tokens/s ≤ B · copy_bandwidth / (decode_weight_bytes + B · c · kv_bytes_per_token)

with decode_weight_bytes and kv_bytes_per_token from the generation JSON's meta and the copy bandwidth
(bytes read + written per second, tools/bench_kernels.py's measure) from --copy-gbps, --kernels, or the
meta's copy_GBps (measured by `refengine bench` on the GPU).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from refengine.bench.errors import BenchError
from refengine.bench.meta import decode_floor_tokens_per_s
from refengine.bench.options import OneLineArgumentParser, run_tool


def load(paths: list[str]) -> list[dict]:
    docs = []
    for p in paths:
        try:
            doc = json.loads(Path(p).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise BenchError(f"{p}: cannot read JSON ({e})") from None
        if not isinstance(doc, dict) or doc.get("kind") not in ("generation", "throughput", "compare"):
            raise BenchError(f"{p}: not a `refengine bench` / compare_transformers JSON (no known \"kind\")")
        doc["_file"] = Path(p).stem
        docs.append(doc)
    return docs


def unique_names(items: list[tuple]) -> list[tuple]:
    """Items whose first element (a name) repeats get the JSON file they came from (the last element)
    appended to the name; that last element is dropped."""
    names = [it[0] for it in items]
    return [((it[0] if names.count(it[0]) == 1 else f"{it[0]} [{it[-1]}]"),) + tuple(it[1:-1]) for it in items]


def pick_case(rows: list[dict], prompt: int | None, output: int | None) -> dict[tuple, list[dict]]:
    """Generation rows grouped by (prompt_tokens, output_tokens), filtered by the flags."""
    cases: dict[tuple, list[dict]] = {}
    for r in rows:
        if (prompt is None or r["prompt_tokens"] == prompt) and (output is None or r["output_tokens"] == output):
            cases.setdefault((r["prompt_tokens"], r["output_tokens"]), []).append(r)
    return cases


def decode_series(docs: list[dict], prompt: int | None, output: int | None) -> list[tuple[str, list, list]]:
    series = []
    for doc in docs:
        rows = [r for r in doc["rows"] if doc["kind"] == "generation" or r.get("mode") == "generation"]
        groups: dict[str, list[dict]] = {}
        for r in rows:
            groups.setdefault(doc["meta"]["label"] if doc["kind"] == "generation" else r["implementation"], []).append(r)
        for label, group in groups.items():
            cases = pick_case(group, prompt, output)
            for (p, o), case_rows in cases.items():
                case_rows = sorted(case_rows, key=lambda r: r["batch_size"])
                name = label if len(cases) == 1 else f"{label} ({p}+{o})"
                series.append((name, [r["batch_size"] for r in case_rows],
                               [r["decode_tokens_per_s"] for r in case_rows], doc["_file"]))
    return unique_names(series)


def bound_series(docs: list[dict], copy_gbps: float | None, prompt: int | None, output: int | None):
    """(label, batches, bound tokens/s) per distinct weight type of the generation runs: the first run of a
    type gives the copy rate and sizes, all runs of it the batch sizes."""
    kinds: dict[tuple, tuple[dict, float, set]] = {}
    for doc in (d for d in docs if d["kind"] == "generation"):
        m = {**doc["meta"], "copy_GBps": copy_gbps or doc["meta"].get("copy_GBps")}
        rows = [r for case in pick_case(doc["rows"], prompt, output).values() for r in case]
        if not m["copy_GBps"] or not rows:
            continue
        kind = (m["weight_type"], m.get("group_size"))
        context = rows[0]["prompt_tokens"] + rows[0]["output_tokens"] / 2
        kinds.setdefault(kind, (m, context, set()))[2].update(r["batch_size"] for r in rows)
    lines = []
    for m, context, batch_set in kinds.values():
        batches = sorted(batch_set)
        bound = [decode_floor_tokens_per_s(m, b, context) for b in batches]
        name = m["weight_type"] + (f" g{m['group_size']}" if m.get("group_size") else "")
        lines.append((f"bandwidth bound, {name} ({m['copy_GBps']:.0f} GB/s)", batches, bound))
    return lines


def throughput_bars(docs: list[dict]) -> list[tuple[str, float, float]]:
    bars = []
    for doc in docs:
        if doc["kind"] == "throughput":
            r = doc["rows"][0]
            bars.append((doc["meta"]["label"], r["output_tokens_per_s"], r["requests_per_s"], doc["_file"]))
        elif doc["kind"] == "compare":
            bars += [(r["implementation"], r["output_tokens_per_s"], r["requests_per_s"], doc["_file"])
                     for r in doc["rows"] if r.get("mode") == "throughput"]
    return unique_names(bars)


def plot_decode(plt, series, bounds, path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for name, x, y in series:
        ax.plot(x, y, marker="o", label=name)
    for name, x, y in bounds:
        ax.plot(x, y, linestyle="--", color="gray", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size (requests decoding at once)")
    ax.set_ylabel("decode tokens/s (all sequences)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_throughput(plt, bars, path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(bars) + 2))
    names = [b[0] for b in bars]
    ax.barh(names, [b[1] for b in bars])
    for i, (_, tps, rps) in enumerate(bars):
        ax.text(tps, i, f"  {tps:.0f} tok/s, {rps:.2f} req/s", va="center", fontsize=8)
    ax.set_xlim(0, 1.45 * max(b[1] for b in bars))        # room for the labels
    ax.set_xlabel("output tokens/s")
    ax.set_title(title)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def copy_from_kernels(path: str | None) -> float | None:
    if path is None:
        return None
    try:
        return float(json.loads(Path(path).read_text())["ceilings"]["copy_GBps"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BenchError(f"--kernels {path}: no ceilings.copy_GBps ({e})") from None


def main(argv=None) -> int:
    p = OneLineArgumentParser(prog="plot_benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+")
    p.add_argument("--out-dir", default=".")
    p.add_argument("--copy-gbps", type=float, default=None)
    p.add_argument("--kernels", default=None, help="a tools/bench_kernels.py JSON (its copy bandwidth)")
    p.add_argument("--prompt-tokens", type=int, default=None)
    p.add_argument("--output-tokens", type=int, default=None)
    p.add_argument("--title", default="")
    args = p.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    docs = load(args.files)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    copy = args.copy_gbps or copy_from_kernels(args.kernels)
    written = []
    series = decode_series(docs, args.prompt_tokens, args.output_tokens)
    if series:
        plot_decode(plt, series, bound_series(docs, copy, args.prompt_tokens, args.output_tokens),
                    out / "decode_vs_batch.png", args.title or "decode tokens/s vs batch size")
        written.append(out / "decode_vs_batch.png")
    bars = throughput_bars(docs)
    if bars:
        plot_throughput(plt, bars, out / "throughput.png", args.title or "offline throughput")
        written.append(out / "throughput.png")
    print("wrote " + (", ".join(map(str, written)) or "nothing (no generation or throughput rows)"))
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, "plot_benchmarks"))
