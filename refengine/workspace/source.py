"""A model opened for streaming: config and tokenizer at once, weights one decoder block at a time.

The converter never holds the whole model: it asks for the global tensors (embedding, final norm, LM
head) and then for block 0, 1, ... in order, each read from memory-mapped safetensors (or dequantized
from a memory-mapped GGUF) when asked for and dropped when written. Every model spec `load_model`
accepts opens here too: `demo`, GGUF files, Hugging Face directories and hub ids (AutoAWQ checkpoints
included, their linears repacked to Int4Weight) and refengine workspaces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from refengine.config import ModelConfig
from refengine.errors import ModelLoadError
from refengine.model.weights import LayerWeights, ModelWeights, assemble_layer


@dataclass
class ModelSource:
    config: ModelConfig
    tokenizer: object                               # refengine.model.tokenizer.Tokenizer
    description: str                                # where it came from, for messages and the manifest
    fetch_global: Callable[[str], object]           # "embed" | "final_norm" | "lm_head" -> array
    fetch_layer: Callable[[int], LayerWeights]
    group_size: int | None = None                   # set when the linears are already int4
    generation_config: dict = field(default_factory=dict)

    def global_weight(self, role: str):
        """embed / final_norm / lm_head; lm_head is None when tied to the embedding."""
        if role == "lm_head" and self.config.tie_word_embeddings:
            return None
        return self.fetch_global(role)

    def layer(self, i: int) -> LayerWeights:
        return self.fetch_layer(i)

    def load_all(self, progress=None) -> ModelWeights:
        """Every weight in memory at once, as load_model returns them."""
        embed = self.global_weight("embed")
        lm_head = self.global_weight("lm_head")
        layers = []
        for i in range(self.config.num_layers):
            layers.append(self.layer(i))
            if progress:
                progress(i + 1, self.config.num_layers)
        return ModelWeights(embed, self.global_weight("final_norm"), embed if lm_head is None else lm_head, layers)


def open_source(spec: str) -> ModelSource:
    """The streaming view of any model spec load_model accepts."""
    from refengine.model import hf
    from refengine.model.loader import resolve_source
    kind, where = resolve_source(spec)
    if kind == "workspace":
        from refengine.workspace.reader import open_workspace
        return open_workspace(where)
    if kind == "gguf":
        return _gguf_source(Path(where), spec)
    model_dir = hf.download_from_hub(where) if kind == "hub" else Path(where)
    return _hf_source(model_dir, spec)


def _prefixed(where, fn):
    """Call fn, naming `where` in a ModelLoadError that does not already."""
    def call(*args):
        try:
            return fn(*args)
        except ModelLoadError as e:
            if str(where) in str(e):
                raise
            raise type(e)(f"{where}: {e}") from None
    return call


def _hf_source(model_dir: Path, spec: str) -> ModelSource:
    import json
    from refengine.model import hf
    from refengine.model.tokenizer import Tokenizer
    from refengine.quant.autoawq import awq_fetcher, awq_group_size, int4_aware_split
    cfg, family = hf.load_hf_config(model_dir)
    group_size = awq_group_size(hf.read_config(model_dir), str(model_dir / "config.json"))
    tensors = hf.safetensors_files(model_dir)
    fetch = hf.hf_fetcher(family, tensors)
    split = family.split_qkv
    if group_size is not None:
        fetch, split = awq_fetcher(fetch, tensors, family, group_size), int4_aware_split(split)
    tokenizer = Tokenizer.from_hf_dir(model_dir, default_template=family.default_chat_template)
    gen_file = model_dir / "generation_config.json"
    try:
        generation = json.loads(gen_file.read_text()) if gen_file.is_file() else {}
    except (OSError, ValueError):
        generation = {}
    return ModelSource(cfg, tokenizer, f"{spec} ({model_dir})" if str(model_dir) != spec else spec,
                       _prefixed(model_dir, lambda role: fetch(role, None)),
                       _prefixed(model_dir, lambda i: assemble_layer(cfg, fetch, i, split)),
                       group_size, generation if isinstance(generation, dict) else {})


def _gguf_source(path: Path, spec: str) -> ModelSource:
    from refengine.model.gguf import GGUFMetadata, config_from_gguf, gguf_fetcher, open_gguf
    from refengine.model.gguf_tokenizer import tokenizer_from_gguf
    reader = open_gguf(path)
    meta = GGUFMetadata(reader, path)
    tensors = {t.name: t for t in reader.tensors}
    cfg = config_from_gguf(meta, tensors)
    fetch = gguf_fetcher(tensors, cfg, path)

    def fetch_global(role):
        w = fetch(role, None)
        if w is None:
            raise ModelLoadError(f"missing weight: {role}")
        return w
    return ModelSource(cfg, tokenizer_from_gguf(meta), f"{spec} ({path})" if str(path) != spec else spec,
                       _prefixed(path, fetch_global), _prefixed(path, lambda i: assemble_layer(cfg, fetch, i)))
