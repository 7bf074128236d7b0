"""The DUMP.npz format (version 1): what one implementation computed for a list of prompts, so that another
can be compared with it. docs/diff.md documents it for people writing dumps from other engines.

    key                  dtype            shape              meaning
    format_version       int              []                 1
    num_prompts          int              []                 P
    producer             str (optional)   []                 free text, e.g. "transformers 5.18.0 (float32)"
    p{i}.input_ids       int              [T]                prompt i's token ids (i in [0, P))
    p{i}.hidden_states   float32/16       [L+1, T, hidden]   embedding output, then each decoder layer's
                                                             output (residual stream, before the final norm)
    p{i}.logits          float32/16       [T, V]             logits at every prompt position
    p{i}.greedy_ids      int (optional)   [N]                greedy (argmax) continuation, eos not special
    p{i}.greedy_logprobs float32 (opt.)   [N, V]             log-softmax of the logits that chose greedy_ids[k]

Reading checks the format (version, keys, ranks, dtypes); `check_against` then checks that the dump fits
the model and the prompts (token ids, shapes). Both raise DumpError, one line naming the key.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from refengine.config import ModelConfig
from refengine.diff.errors import DumpError

FORMAT_VERSION = 1


@dataclass
class PromptDump:
    input_ids: np.ndarray                        # [T] int64
    hidden_states: np.ndarray                    # [L+1, T, hidden] float32
    logits: np.ndarray                           # [T, V] float32
    greedy_ids: np.ndarray | None = None         # [N] int64
    greedy_logprobs: np.ndarray | None = None    # [N, V] float32


@dataclass
class Dump:
    prompts: list[PromptDump]
    producer: str = ""
    path: str = field(default="", compare=False)    # where it was read from, for messages


def write_dump(path, dump: Dump) -> None:
    arrays = {"format_version": np.array(FORMAT_VERSION), "num_prompts": np.array(len(dump.prompts)),
              "producer": np.array(dump.producer)}
    for i, p in enumerate(dump.prompts):
        arrays.update({f"p{i}.{name}": value for name, value in vars(p).items() if value is not None})
    np.savez(path, **arrays)


def read_dump(path) -> Dump:
    """A Dump from a .npz file, or DumpError (unreadable, wrong version, missing keys, wrong ranks/dtypes)."""
    path = Path(path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DumpError(f"{path}: a single .npy array, not an .npz archive of a dump")
        with loaded:
            arrays = {key: loaded[key] for key in loaded.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DumpError(f"{path}: not a readable .npz dump ({type(e).__name__}: {e})") from None
    return _parse(arrays, path)


def _parse(arrays: dict, path: Path) -> Dump:
    version = _scalar(arrays, "format_version", path)
    if version != FORMAT_VERSION:
        raise DumpError(f"{path}: format_version {version} is not supported (this refengine reads {FORMAT_VERSION})")
    prompts = [_prompt(arrays, f"p{i}.", path) for i in range(_scalar(arrays, "num_prompts", path))]
    producer = str(arrays["producer"]) if "producer" in arrays else ""
    return Dump(prompts, producer, str(path))


def _scalar(arrays: dict, key: str, path: Path) -> int:
    a = arrays.get(key)
    if a is None or a.shape != () or a.dtype.kind not in "iu":
        raise DumpError(f"{path}: {key} must be an integer scalar" + (" (missing)" if a is None else ""))
    return int(a)


# key -> (required, allowed dtype kinds, rank)
FIELDS = {"input_ids": (True, "iu", 1), "hidden_states": (True, "f", 3), "logits": (True, "f", 2),
          "greedy_ids": (False, "iu", 1), "greedy_logprobs": (False, "f", 2)}


def _prompt(arrays: dict, prefix: str, path: Path) -> PromptDump:
    values = {}
    for name, (required, kinds, rank) in FIELDS.items():
        a = arrays.get(prefix + name)
        if a is None:
            if required:
                raise DumpError(f"{path}: missing {prefix + name}")
            values[name] = None
            continue
        if a.dtype.kind not in kinds or a.ndim != rank:
            raise DumpError(f"{path}: {prefix + name} has dtype {a.dtype} and {a.ndim} dimensions; expected "
                            f"{'an integer' if kinds == 'iu' else 'a float'} array of {rank} dimensions")
        values[name] = a.astype(np.int64 if kinds == "iu" else np.float32)
    if (values["greedy_ids"] is None) != (values["greedy_logprobs"] is None):
        raise DumpError(f"{path}: {prefix}greedy_ids and {prefix}greedy_logprobs come together (one is missing)")
    return PromptDump(**values)


def check_against(dump: Dump, prompt_ids: list[list[int]], cfg: ModelConfig) -> None:
    """DumpError unless `dump` holds these prompts' token ids, and shapes that fit the model."""
    where = dump.path or "the dump"
    if len(dump.prompts) != len(prompt_ids):
        raise DumpError(f"{where}: num_prompts is {len(dump.prompts)}, but {len(prompt_ids)} prompts were given")
    for i, (p, ids) in enumerate(zip(dump.prompts, prompt_ids)):
        _check_ids(p.input_ids, ids, f"{where}: p{i}.input_ids")
        T, L, H, V = len(ids), cfg.num_layers, cfg.hidden_size, cfg.vocab_size
        _check_shape(p.hidden_states, (L + 1, T, H), f"{where}: p{i}.hidden_states", "(layers + 1, tokens, hidden)")
        _check_shape(p.logits, (T, V), f"{where}: p{i}.logits", "(tokens, vocab)")
        if p.greedy_ids is not None:
            N = len(p.greedy_ids)
            _check_shape(p.greedy_logprobs, (N, V), f"{where}: p{i}.greedy_logprobs", "(greedy tokens, vocab)")


def _check_ids(got: np.ndarray, want: list[int], what: str) -> None:
    if len(got) != len(want):
        raise DumpError(f"{what} has {len(got)} tokens, the prompt encodes to {len(want)} "
                        f"(same prompts, same --chat/--raw and chat template?)")
    bad = np.flatnonzero(got != np.asarray(want, dtype=np.int64))
    if len(bad):
        k = int(bad[0])
        raise DumpError(f"{what} differs from the prompt's token ids at position {k} (dump {int(got[k])}, "
                        f"refengine {want[k]}): same prompts, same --chat/--raw and chat template?")


def _check_shape(a: np.ndarray, want: tuple, what: str, meaning: str) -> None:
    if tuple(a.shape) != tuple(want):
        raise DumpError(f"{what} has shape {tuple(a.shape)}, expected {tuple(want)} = {meaning} for this model")
