"""The workspace format, version 1: file names, tensor names and the refengine.json manifest.

    workspace/
      refengine.json                     the manifest below (written last: its presence marks a workspace)
      tokenizer/tokenizer.json           the `tokenizers` backend (a GGUF-built one saved as well)
      tokenizer/tokenizer_config.json    special tokens, add_bos_token, chat_template (transformers' keys)
      tokenizer/generation_config.json   eos_token_id list (+ the source's sampling defaults, if any)
      tokenizer/chat_template.json       {"chat_template", "stop_words"}: the template the workspace chats with
      weights/model.safetensors          embed, final_norm, lm_head (absent when tied to embed)
      weights/layer_NNN.safetensors      one file per decoder block, tensors named layers.N.<role>[.<part>]

Per block (H heads, KVH KV heads, D head_dim, I intermediate, g group size):

    attn_norm, mlp_norm                      [hidden]                  dtype
    qkv | o | gate_up | down  .weight        [out, in]                 dtype            (float workspaces)
                              .qweight       [out, in/8]               uint32           (int4 workspaces)
                              .scales        [out, in/g]               float16
                              .zeros         [out, in/g]               float16 (integer zero points 0..15)
                              .bias          [out]                     dtype            (only if the model has it)

with qkv [(H + 2·KVH)·D, hidden] (rows q | k | v), o [hidden, H·D], gate_up [2·I, hidden] (rows gate | up),
down [hidden, I]. `dtype` is float16, or bfloat16 stored as raw bf16 bits (safetensors dtype BF16).
The int4 packing is refengine/quant/primitives.py's (docs/workspace.md draws it).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from refengine.config import ModelConfig, RopeScaling
from refengine.errors import ModelLoadError

FORMAT_VERSION = 1
MANIFEST = "refengine.json"
TOKENIZER_DIR = "tokenizer"
WEIGHTS_DIR = "weights"
GLOBALS_FILE = f"{WEIGHTS_DIR}/model.safetensors"
DTYPES = ("float16", "bfloat16")
WEIGHT_TYPES = DTYPES + ("int4",)
LINEARS = ("qkv", "o", "gate_up", "down")
INT4_PARTS = ("qweight", "scales", "zeros")


class WorkspaceError(ModelLoadError):
    """A workspace that cannot be read: missing or damaged files, an unknown format version."""


def layer_file(i: int) -> str:
    return f"{WEIGHTS_DIR}/layer_{i:03d}.safetensors"


def tensor_name(i: int, role: str, part: str | None = None) -> str:
    """layers.<i>.<role> for norms, layers.<i>.<role>.<part> for linears (weight, bias, qweight, ...)."""
    return f"layers.{i}.{role}" + (f".{part}" if part else "")


def is_workspace(path) -> bool:
    return Path(path).is_dir() and (Path(path) / MANIFEST).is_file()


def config_to_dict(cfg: ModelConfig) -> dict:
    return dataclasses.asdict(cfg)      # rope_scaling becomes a nested dict


def config_from_dict(d: dict, where: str) -> ModelConfig:
    try:
        fields = dict(d)
        fields["rope_scaling"] = RopeScaling(**fields.get("rope_scaling", {}))
        return ModelConfig(**fields)
    except (TypeError, ValueError) as e:
        raise WorkspaceError(f"{where}: the model section is not valid ({e})") from None


def read_manifest(ws: Path) -> dict:
    """refengine.json as a dict, its format version checked."""
    path = ws / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WorkspaceError(f"{ws}: not a refengine workspace (no {MANIFEST})") from None
    except (OSError, ValueError) as e:
        raise WorkspaceError(f"{path}: not valid JSON ({e}); convert the model again") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise WorkspaceError(f"{path}: format_version {version!r} is not supported (this refengine reads "
                             f"version {FORMAT_VERSION}); convert the model again")
    if manifest.get("weight_type") not in WEIGHT_TYPES:
        raise WorkspaceError(f"{path}: weight_type {manifest.get('weight_type')!r} is not one of {WEIGHT_TYPES}")
    return manifest
