"""Reading a workspace: checksums first, then config, tokenizer and (memory-mapped) weights.

Every file listed in refengine.json is checked (size, then sha256) before anything is used, and a
damaged or missing file is named in a one-line WorkspaceError. Weights stay memory-mapped until used:
float16 tensors as read-only maps of the file, bfloat16 widened to float32, int4 linears as Int4Weight
(qweight / scales / zeros maps) — the layout the kernels read, unchanged.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from refengine.model.safetensors_io import SafetensorsFile
from refengine.model.weights import LayerWeights
from refengine.quant.primitives import Int4Weight
from refengine.workspace.format import (GLOBALS_FILE, LINEARS, MANIFEST, TOKENIZER_DIR, WorkspaceError,
                                        config_from_dict, layer_file, read_manifest, tensor_name)
from refengine.workspace.source import ModelSource

CHUNK = 1 << 22


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def verify_files(ws: Path, manifest: dict) -> None:
    """Raise WorkspaceError naming the first missing or damaged file."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise WorkspaceError(f"{ws / MANIFEST}: no file checksums (not written by refengine-convert?)")
    for rel, info in files.items():
        path = ws / rel
        if not path.is_file():
            raise WorkspaceError(f"{path}: missing from the workspace; convert the model again")
        if path.stat().st_size != info.get("bytes") or sha256_file(path) != info.get("sha256"):
            raise WorkspaceError(f"{path}: damaged (its sha256 does not match refengine.json); "
                                 f"convert the model again")


def open_workspace(ws, verify: bool = True) -> ModelSource:
    from refengine.model.tokenizer import Tokenizer
    ws = Path(ws)
    manifest = read_manifest(ws)
    if verify:
        verify_files(ws, manifest)
    cfg = config_from_dict(manifest.get("model", {}), str(ws / MANIFEST))
    tokenizer = Tokenizer.from_hf_dir(ws / TOKENIZER_DIR)
    template_file = ws / TOKENIZER_DIR / "chat_template.json"
    if template_file.is_file():                    # carries the stop words a built-in template needs
        tokenizer.set_chat_template(str(template_file))
    int4 = manifest["weight_type"] == "int4"
    group_size = int(manifest["group_size"]) if int4 else None
    globals_st = SafetensorsFile(ws / GLOBALS_FILE)

    def fetch_global(role):
        if role not in globals_st.header:
            raise WorkspaceError(f"{ws / GLOBALS_FILE}: no tensor {role}")
        return globals_st.get(role)

    def fetch_layer(i):
        return read_layer(SafetensorsFile(ws / layer_file(i)), i, cfg, group_size)
    return ModelSource(cfg, tokenizer, str(ws), fetch_global, fetch_layer, group_size)


def read_layer(st: SafetensorsFile, i: int, cfg, group_size: int | None) -> LayerWeights:
    def get(role, part=None):
        name = tensor_name(i, role, part)
        if name not in st.header:
            raise WorkspaceError(f"{st.path}: no tensor {name}")
        return st.get(name)

    def linear(role):
        if group_size is None:
            return get(role, "weight")
        return Int4Weight(get(role, "qweight"), get(role, "scales"), get(role, "zeros"), group_size)

    bias = lambda role: get(role, "bias") if tensor_name(i, role, "bias") in st.header else None
    layer = LayerWeights(attn_norm=get("attn_norm"), qkv=linear("qkv"), qkv_bias=bias("qkv"), o=linear("o"),
                         o_bias=bias("o"), mlp_norm=get("mlp_norm"), gate_up=linear("gate_up"),
                         gate_up_bias=bias("gate_up"), down=linear("down"), down_bias=bias("down"))
    expected = {"qkv": (cfg.qkv_size, cfg.hidden_size), "o": (cfg.hidden_size, cfg.q_size),
                "gate_up": (2 * cfg.intermediate_size, cfg.hidden_size),
                "down": (cfg.hidden_size, cfg.intermediate_size)}
    for role in LINEARS:
        if tuple(getattr(layer, role).shape) != expected[role]:
            raise WorkspaceError(f"{st.path}: {role} has shape {tuple(getattr(layer, role).shape)}, "
                                 f"expected {expected[role]} from refengine.json")
    return layer


def load_workspace(ws, chat_template: str | None = None, progress=None, verify: bool = True):
    """load_model for a workspace: a LoadedModel with Int4Weight linears for an int4 workspace."""
    from refengine.model.loader import LoadedModel
    source = open_workspace(ws, verify=verify)
    weights = source.load_all(progress)
    if chat_template is not None:
        source.tokenizer.set_chat_template(chat_template)
    return LoadedModel(source.config, weights, source.tokenizer, str(ws))
