"""Text for calibration (AWQ) and evaluation (perplexity), with nothing to download by default.

`--calib-data` / `--data` take:

    stdlib              (the calibration default) the docstrings of the Python standard library's modules,
                        read from its source files with `ast` (~690 KB of English prose about e-mail,
                        HTTP, dates, decimals, threads ... with code examples): real human-written text
                        that every Python installation has, so converting needs no network
    python-reference    the Python Language Reference as shipped in the standard library
                        (pydoc_data.topics, ~465 KB): the held-out evaluation text of docs/quantization.md
    PATH                a text file, or .jsonl with a "text" field per line
    NAME | org/name     a Hugging Face hub dataset (pileval, wikitext2, c4, ptb, or a repo id) where a hub
                        is reachable; one-line error otherwise

AWQ only needs activation statistics, and the AWQ paper found them robust to the calibration domain,
so a built-in corpus that is always there beats a download that may not be; see docs/quantization.md.
Token blocks: the texts are joined, tokenized once and cut into non-overlapping blocks of `seqlen`
tokens; `samples` blocks are taken evenly spaced through the corpus, in a fixed shuffled order.
"""

from __future__ import annotations

import ast
import json
import os
import sysconfig
from pathlib import Path

import numpy as np

from refengine.errors import RefengineError

MIN_DOCSTRING = 200                  # shorter docstrings are mostly one-line summaries
HUB_ALIASES = {                      # LMDeploy's --calib-dataset names
    "pileval": ("mit-han-lab/pile-val-backup", ["val.jsonl.zst"]),
    "wikitext2": ("Salesforce/wikitext", ["wikitext-2-raw-v1/train-*"]),
    "c4": ("allenai/c4", ["en/c4-validation.00000-of-00008.json.gz"]),
    "ptb": ("ptb-text-only/ptb_text_only", ["*"]),
}


class CalibrationDataError(RefengineError):
    """Calibration or evaluation text that cannot be read, or is too short."""


def stdlib_docstrings() -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py"))
    if not files:
        raise CalibrationDataError(f"the built-in calibration text needs the Python standard library's source "
                                   f"files, and {root} has none: give --calib-data FILE")
    docs = []
    for path in files:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= MIN_DOCSTRING:
                    docs.append(doc)
    return docs


def python_reference() -> list[str]:
    from pydoc_data.topics import topics
    return [topics[k] for k in sorted(topics)]


BUILTIN = {"stdlib": (stdlib_docstrings, "docstrings of the Python standard library"),
           "python-reference": (python_reference, "the Python Language Reference (pydoc_data.topics)")}


def load_texts(spec: str) -> tuple[list[str], str]:
    """(texts, description) for a data spec (see the module docstring)."""
    import sys
    if spec in BUILTIN:
        fn, what = BUILTIN[spec]
        return fn(), f"{spec}: {what}, Python {sys.version.split()[0]}"
    path = Path(os.path.expanduser(spec))
    if spec in HUB_ALIASES and not path.exists() or _looks_like_repo_id(spec):
        return load_hub_dataset(spec), f"hub dataset {spec}"
    return read_text_file(path), str(path)


def _looks_like_repo_id(spec: str) -> bool:
    """org/name that is not a file here and has no file extension."""
    parts = spec.split("/")
    return (len(parts) == 2 and all(parts) and not os.path.exists(spec) and not spec.startswith((".", "~"))
            and "." not in parts[1])


def read_text_file(path: Path) -> list[str]:
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CalibrationDataError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CalibrationDataError(f"{path}: cannot be read as UTF-8 text ({e})") from None
    texts = parse_jsonl(raw, str(path)) if path.suffix == ".jsonl" else [raw]
    if not any(t.strip() for t in texts):
        raise CalibrationDataError(f"{path}: no text in it")
    return texts


def parse_jsonl(raw: str, where: str) -> list[str]:
    texts = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise CalibrationDataError(f"{where}: line {n} is not JSON ({e})") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise CalibrationDataError(f"{where}: line {n} has no string field \"text\"")
        texts.append(row["text"])
    return texts


def load_hub_dataset(name: str) -> list[str]:
    """Text files of a hub dataset repo (.txt, .jsonl, .json(.gz); .parquet with pyarrow, .zst with zstandard)."""
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
    repo, patterns = HUB_ALIASES.get(name, (name, ["*.txt", "*.jsonl", "*.json", "*.json.gz", "*.parquet"]))
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
    try:
        root = Path(huggingface_hub.snapshot_download(repo, repo_type="dataset", allow_patterns=patterns,
                                                      local_files_only=offline))
    except (LocalEntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError, OSError, ValueError) as e:
        why = "not in the local Hugging Face cache and the hub cannot be reached" \
            if isinstance(e, (LocalEntryNotFoundError, OSError)) else f"the hub refused it ({type(e).__name__})"
        raise CalibrationDataError(f"calibration dataset {name} ({repo}): {why}; use --calib-data FILE or the "
                                   f"built-in default (stdlib)") from None
    texts = [t for f in sorted(root.rglob("*")) if f.is_file() for t in _read_dataset_file(f)]
    if not texts:
        raise CalibrationDataError(f"calibration dataset {name} ({repo}): no readable text files in it")
    return texts


def _read_dataset_file(f: Path) -> list[str]:
    name = f.name
    try:
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq
            return [t for t in pq.read_table(f, columns=["text"]).column("text").to_pylist() if t]
        if name.endswith(".zst"):
            import zstandard
            raw = zstandard.ZstdDecompressor().stream_reader(open(f, "rb")).read().decode("utf-8")
        elif name.endswith(".gz"):
            import gzip
            raw = gzip.decompress(f.read_bytes()).decode("utf-8")
        elif name.endswith((".txt", ".jsonl", ".json")):
            raw = f.read_text(encoding="utf-8")
        else:
            return []
    except ImportError as e:
        raise CalibrationDataError(f"{f}: reading it needs the {e.name} package") from None
    return [raw] if name.endswith(".txt") else parse_jsonl(raw, str(f))


def token_blocks(ids: list[int], samples: int, seqlen: int, where: str) -> np.ndarray:
    """`samples` non-overlapping blocks [n, seqlen] evenly spaced through ids (fewer if the text is short)."""
    available = len(ids) // seqlen
    if available == 0:
        raise CalibrationDataError(f"{where}: {len(ids)} tokens, fewer than one sequence of --calib-seqlen {seqlen}")
    n = min(samples, available)
    starts = (np.arange(n) * available // n) * seqlen
    order = np.random.default_rng(0).permutation(n)       # so the first few sequences span the corpus
    arr = np.asarray(ids, dtype=np.int64)
    return np.stack([arr[s:s + seqlen] for s in starts[order]])


def calibration_ids(tokenizer, spec: str, samples: int, seqlen: int) -> tuple[np.ndarray, str]:
    """(token ids [n ≤ samples, seqlen], description of the data)."""
    texts, description = load_texts(spec)
    ids = tokenizer.encode("\n\n".join(texts), add_special_tokens=False)
    return token_blocks(ids, samples, seqlen, description), description
