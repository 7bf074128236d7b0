"""Writing a workspace's files (into the temporary directory atomic_directory hands out).

Weights go out as they come — the globals, then one file per decoder block — so the converter holds a
single block at a time. refengine.json is written last, with the size and sha256 of every other file.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from refengine import __version__
from refengine.model.weights import LayerWeights
from refengine.quant.primitives import Int4Weight
from refengine.workspace.format import (FORMAT_VERSION, GLOBALS_FILE, LINEARS, MANIFEST, TOKENIZER_DIR,
                                        WEIGHTS_DIR, config_to_dict, layer_file, tensor_name)
from refengine.workspace.reader import sha256_file
from refengine.workspace.safetensors_writer import write_safetensors


class WorkspaceWriter:
    def __init__(self, root: Path, dtype: str):
        self.root = Path(root)
        self.dtype = dtype                      # float16 | bfloat16: everything but the int4 parts
        (self.root / WEIGHTS_DIR).mkdir(parents=True, exist_ok=True)
        (self.root / TOKENIZER_DIR).mkdir(parents=True, exist_ok=True)

    def write_globals(self, embed, final_norm, lm_head=None) -> None:
        tensors = {"embed": (embed, self.dtype), "final_norm": (final_norm, self.dtype)}
        if lm_head is not None:
            tensors["lm_head"] = (lm_head, self.dtype)
        write_safetensors(self.root / GLOBALS_FILE, tensors, {"format": "refengine"})

    def write_layer(self, i: int, layer: LayerWeights) -> None:
        tensors = {tensor_name(i, "attn_norm"): (layer.attn_norm, self.dtype),
                   tensor_name(i, "mlp_norm"): (layer.mlp_norm, self.dtype)}
        for role in LINEARS:
            w = getattr(layer, role)
            if isinstance(w, Int4Weight):
                tensors[tensor_name(i, role, "qweight")] = (w.qweight, "uint32")
                tensors[tensor_name(i, role, "scales")] = (w.scales, "float16")
                tensors[tensor_name(i, role, "zeros")] = (w.zeros, "float16")
            else:
                tensors[tensor_name(i, role, "weight")] = (w, self.dtype)
            bias = getattr(layer, f"{role}_bias")
            if bias is not None:
                tensors[tensor_name(i, role, "bias")] = (bias, self.dtype)
        write_safetensors(self.root / layer_file(i), tensors, {"format": "refengine"})

    def write_tokenizer(self, tokenizer, generation_config: dict, max_length: int) -> None:
        """tokenizer.json (the backend, saved even when it was built from GGUF metadata), transformers-style
        tokenizer_config.json and generation_config.json, and the chat template with its stop words."""
        d = self.root / TOKENIZER_DIR
        tokenizer.backend.save(str(d / "tokenizer.json"))
        template = tokenizer.chat_template
        config = {**tokenizer.special_tokens, "add_bos_token": bool(tokenizer.add_bos),
                  "model_max_length": max_length, "tokenizer_class": "PreTrainedTokenizerFast",
                  "clean_up_tokenization_spaces": False}
        if template is not None:
            config["chat_template"] = template
            _write_json(d / "chat_template.json", {"chat_template": template,
                                                   "stop_words": list(tokenizer.extra_stop_words)})
        _write_json(d / "tokenizer_config.json", config)
        generation = {**generation_config, "eos_token_id": list(tokenizer.eos_token_ids)}
        if tokenizer.bos_token_id is not None:
            generation["bos_token_id"] = tokenizer.bos_token_id
        _write_json(d / "generation_config.json", generation)

    def finish(self, fields: dict) -> dict:
        """Write refengine.json (fields + format version + checksums of every file); return it."""
        files = {}
        for path in sorted(p for p in self.root.rglob("*") if p.is_file() and p.name != MANIFEST):
            rel = path.relative_to(self.root).as_posix()
            files[rel] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
        manifest = {"format_version": FORMAT_VERSION, "created_by": f"refengine {__version__}",
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **fields, "files": files}
        _write_json(self.root / MANIFEST, manifest)
        return manifest


def manifest_fields(cfg, tokenizer, weight_type: str, dtype: str, group_size: int | None, quant: dict | None,
                    source: str) -> dict:
    """The descriptive part of refengine.json (format_version, created and files are added by finish)."""
    return {
        "source": source,
        "model": config_to_dict(cfg),
        "weight_type": weight_type,
        "dtype": dtype,
        "group_size": group_size,
        "quant": quant,
        "chat_template": None if tokenizer.chat_template is None else {
            "source": tokenizer.chat_template_source, "stop_words": list(tokenizer.extra_stop_words),
            "text": tokenizer.chat_template},
        "special_tokens": {**tokenizer.special_tokens, "bos_token_id": tokenizer.bos_token_id,
                           "eos_token_ids": list(tokenizer.eos_token_ids), "add_bos": bool(tokenizer.add_bos)},
        "session_len": cfg.max_position_embeddings,
    }


def _write_json(path: Path, data) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
