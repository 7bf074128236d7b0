"""Shared pieces of the diff tests: the dump script imported by path (tests may import torch; refengine
may not), reference dumps written in-process, and checkpoints with a planted bug."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np

from refengine.diff import DUMP_SCRIPT
from refengine.diff.prompts import encode_prompts
from refengine.model.loader import load_model

# Raw-text prompts for the character-level tiny tokenizer: the longer one (39 tokens) runs past the
# dynamic-rope families' max_position_embeddings (24), so their base actually grows.
TINY_PROMPTS = ["hello there", "the quick brown fox jumps over a lazy dog"]
NEW_TOKENS = 6


def dump_script():
    """tools/dump_transformers.py as a module (a script run in a child process, not a refengine module)."""
    spec = importlib.util.spec_from_file_location("dump_transformers", DUMP_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prompt_ids(model_path, prompts=TINY_PROMPTS, chat=False) -> list[list[int]]:
    return encode_prompts(load_model(str(model_path)).tokenizer, prompts, chat)


def reference_dump(torch_model, ids_list, out: Path, new_tokens: int = NEW_TOKENS) -> Path:
    """A DUMP.npz of `torch_model` (a transformers model) for these token ids, written by the dump script's
    own functions in this process (the same code the child process runs)."""
    script = dump_script()
    script.write_dump(str(out), [script.dump_prompt(torch_model, ids, new_tokens) for ids in ids_list],
                      "tests reference")
    return out


def edit_tensors(src: Path, dst: Path, change) -> Path:
    """A copy of checkpoint `src` at `dst` whose model.safetensors went through `change(tensors: dict)`."""
    from safetensors.numpy import load_file, save_file
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def rewrite_dump(src: Path, dst: Path, change) -> Path:
    """A copy of a dump whose arrays (a dict) went through `change`."""
    with np.load(src) as npz:
        arrays = {k: npz[k] for k in npz.files}
    change(arrays)
    np.savez(dst, **arrays)
    return dst
