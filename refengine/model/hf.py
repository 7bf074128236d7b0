"""Hugging Face checkpoints: a local directory (config.json + safetensors, single or sharded), or a hub id
fetched through huggingface_hub (which honours HF_HUB_OFFLINE and its local cache)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from refengine.config import ModelConfig
from refengine.errors import ModelLoadError
from refengine.model.arch import Family, model_config_from_hf
from refengine.model.safetensors_io import SafetensorsFile
from refengine.model.weights import ModelWeights, assemble_weights

HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "tokenizer.model"]


def is_hf_dir(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def looks_like_hub_id(spec: str) -> bool:
    """`org/name` (or a bare name) that is not a path on this machine."""
    parts = spec.split("/")
    return (not os.path.exists(spec) and 1 <= len(parts) <= 2 and all(parts)
            and not spec.startswith((".", "~")) and not spec.endswith((".gguf", ".json")))


def download_from_hub(repo_id: str) -> Path:
    """The snapshot directory of `repo_id` (cached or downloaded); one-line errors when it cannot be had."""
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
    try:
        return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=HUB_FILES,
                                                      local_files_only=offline))
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached"
        raise ModelLoadError(f"{repo_id}: not in the local Hugging Face cache and {why}") from None
    except RepositoryNotFoundError:
        raise ModelLoadError(f"{repo_id}: no such model on the Hugging Face hub (or it is private)") from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"{repo_id}: could not download from the hub ({first_line})") from None


def read_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: missing") from None
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path}: not valid JSON ({e})") from None


def safetensors_files(model_dir: Path) -> dict[str, SafetensorsFile]:
    """tensor name -> the file that holds it (sharded checkpoints through their index file)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as e:
            raise ModelLoadError(f"{index}: not a valid safetensors index ({e})") from None
        shards = {name: SafetensorsFile(model_dir / name) for name in sorted(set(weight_map.values()))
                  if _exists(model_dir / name, index)}
        return {tensor: shards[shard] for tensor, shard in weight_map.items()}
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        has_bin = any(model_dir.glob("*.bin"))
        hint = " (only PyTorch .bin weights: re-save them as safetensors)" if has_bin else ""
        raise ModelLoadError(f"{model_dir}: no *.safetensors weights found{hint}")
    by_name = {}
    for f in files:
        st = SafetensorsFile(f)
        by_name.update({k: st for k in st.keys()})
    return by_name


def _exists(path: Path, index: Path) -> bool:
    if not path.is_file():
        raise ModelLoadError(f"{path}: missing (listed in {index.name})")
    return True


def hf_fetcher(family: Family, tensors: dict[str, SafetensorsFile]):
    """fetch(role, layer) for assemble_weights: role -> this family's tensor name -> array."""
    global_names = {"embed": family.embed, "final_norm": family.final_norm, "lm_head": family.lm_head}

    def fetch(role, layer):
        name = global_names[role] if layer is None else \
            family.layer_prefix.format(i=layer) + family.layer_names.get(role, "")
        st = tensors.get(name)
        if st is None:    # every role assemble_weights asks for is required: name the tensor, not the role
            raise ModelLoadError(f"missing tensor {name} ({role if layer is None else f'layer {layer} {role}'})")
        return st.get(name)
    return fetch


def load_hf_config(model_dir: Path) -> tuple[ModelConfig, Family]:
    return model_config_from_hf(read_config(model_dir), str(model_dir / "config.json"))


def load_hf_weights(model_dir: Path, cfg: ModelConfig, family: Family, progress=None) -> ModelWeights:
    fetch = hf_fetcher(family, safetensors_files(model_dir))
    try:
        return assemble_weights(cfg, fetch, family.split_qkv, progress)
    except ModelLoadError as e:
        raise ModelLoadError(f"{model_dir}: {e}") from None
