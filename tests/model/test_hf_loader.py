"""Bad Hugging Face checkpoints and hub ids give a typed, one-line error that names the file or field.

Every case starts from a valid tiny checkpoint (tests/hf_models.py) and breaks one thing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from refengine.errors import ModelLoadError, UnsupportedModelError
from refengine.model.hf import download_from_hub, load_hf_config, load_hf_weights
from tests.hf_models import edit_config, make_tiny_model


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """family -> a valid checkpoint directory, built once; tests break copies of it."""
    root, made = tmp_path_factory.mktemp("pristine"), {}

    def get(family, **kwargs):
        key = (family, tuple(sorted(kwargs.items())))
        if key not in made:
            made[key] = make_tiny_model(family, root / str(len(made)), **kwargs)[0]
        return made[key]
    return get


@pytest.fixture
def checkpoint(pristine, tmp_path):
    """copy(family="llama", **make_tiny_model kwargs) -> a private copy of a valid checkpoint."""
    def copy(family="llama", **kwargs):
        dest = tmp_path / "model"
        shutil.copytree(pristine(family, **kwargs), dest)
        return dest
    return copy


def load(path: Path):
    cfg, family = load_hf_config(path)
    return load_hf_weights(path, cfg, family)


def expect_error(path: Path, error=ModelLoadError, *needles: str) -> str:
    """Loading `path` raises `error` with a one-line message containing every needle."""
    with pytest.raises(error) as info:
        load(path)
    message = str(info.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


def rewrite_tensors(path: Path, change) -> None:
    """Load model.safetensors as a dict, let `change(tensors)` edit it, save it back."""
    file = path / "model.safetensors"
    tensors = load_file(str(file))
    change(tensors)
    save_file(tensors, str(file), metadata={"format": "pt"})


def test_valid_checkpoint_loads(checkpoint):
    weights = load(checkpoint())
    assert len(weights.layers) == 3


# ---------------------------------------------------------------- config.json

def test_missing_config_json(checkpoint):
    path = checkpoint()
    (path / "config.json").unlink()
    expect_error(path, ModelLoadError, str(path / "config.json"), "missing")


def test_config_json_not_json(checkpoint):
    path = checkpoint()
    (path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], ')
    expect_error(path, ModelLoadError, str(path / "config.json"), "not valid JSON")


def test_unknown_architecture(checkpoint):
    path = checkpoint()
    edit_config(path, architectures=["GPT2LMHeadModel"], model_type="gpt2")
    expect_error(path, UnsupportedModelError, str(path / "config.json"), "architectures", "GPT2LMHeadModel",
                 "LlamaForCausalLM")


@pytest.mark.parametrize("key", ["rope_scaling", "rope_parameters"])   # transformers 4.x and 5.x spellings
def test_unknown_rope_type(checkpoint, key):
    path = checkpoint()
    yarn = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0, "original_max_position_embeddings": 32}
    edit_config(path, **{"rope_parameters": None, key: yarn})
    expect_error(path, UnsupportedModelError, str(path / "config.json"), "rope_scaling", "yarn")


def test_hidden_act_not_silu(checkpoint):
    path = checkpoint()
    edit_config(path, hidden_act="gelu")
    expect_error(path, UnsupportedModelError, "config.json", "hidden_act", "gelu")


def test_missing_config_field(checkpoint):
    path = checkpoint()
    edit_config(path, num_hidden_layers=None)
    expect_error(path, UnsupportedModelError, "config.json", "num_hidden_layers")


def test_mistral_sliding_window_refused(checkpoint):
    path = checkpoint("mistral")
    edit_config(path, sliding_window=4096, max_position_embeddings=32768)
    expect_error(path, UnsupportedModelError, "config.json", "sliding_window=4096")


def test_qwen2_use_sliding_window_refused(checkpoint):
    path = checkpoint("qwen2")
    edit_config(path, use_sliding_window=True, sliding_window=16, max_position_embeddings=64)
    expect_error(path, UnsupportedModelError, "config.json", "sliding_window=16")


def test_qwen2_sliding_window_off_loads(checkpoint):
    """Real Qwen2 configs carry a sliding_window with use_sliding_window false: that is full attention."""
    path = checkpoint("qwen2")
    edit_config(path, use_sliding_window=False, sliding_window=16, max_position_embeddings=64)
    load(path)


# ---------------------------------------------------------------- weight files

def test_no_safetensors(checkpoint):
    path = checkpoint()
    (path / "model.safetensors").unlink()
    message = expect_error(path, ModelLoadError, str(path), "no *.safetensors")
    assert ".bin" not in message


def test_only_bin_weights(checkpoint):
    path = checkpoint()
    (path / "model.safetensors").rename(path / "pytorch_model.bin")
    expect_error(path, ModelLoadError, str(path), "no *.safetensors", ".bin")


def test_truncated_safetensors_data(checkpoint):
    path = checkpoint()
    file = path / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[:len(data) * 3 // 5])
    expect_error(path, ModelLoadError, str(file), "truncated")


def test_truncated_safetensors_header(checkpoint):
    path = checkpoint()
    file = path / "model.safetensors"
    file.write_bytes(file.read_bytes()[:40])
    expect_error(path, ModelLoadError, str(file), "not a readable safetensors file")


def test_missing_tensor(checkpoint):
    path = checkpoint()
    rewrite_tensors(path, lambda t: t.pop("model.layers.1.self_attn.k_proj.weight"))
    expect_error(path, ModelLoadError, str(path), "model.layers.1.self_attn.k_proj.weight")


def test_missing_lm_head_untied(checkpoint):
    path = checkpoint()
    rewrite_tensors(path, lambda t: t.pop("lm_head.weight"))
    expect_error(path, ModelLoadError, "lm_head.weight")


def test_tensor_of_wrong_shape(checkpoint):
    path = checkpoint()
    name = "model.layers.0.mlp.up_proj.weight"
    rewrite_tensors(path, lambda t: t.__setitem__(name, t[name].T.contiguous()))
    expect_error(path, ModelLoadError, str(path), "layer 0 up", "(64, 96)", "(96, 64)")


def test_internlm2_wqkv_of_wrong_shape(checkpoint):
    path = checkpoint("internlm2")
    name = "model.layers.1.attention.wqkv.weight"
    rewrite_tensors(path, lambda t: t.__setitem__(name, t[name][:-16].contiguous()))
    expect_error(path, ModelLoadError, "layer 1 qkv", "(112, 64)", "(128, 64)")


def sharded(checkpoint) -> tuple[Path, dict]:
    path = checkpoint("llama", max_shard_size="100KB")
    index = json.loads((path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    return path, index


def test_index_points_at_missing_shard(checkpoint):
    path, index = sharded(checkpoint)
    shard = sorted(set(index["weight_map"].values()))[1]
    (path / shard).unlink()
    expect_error(path, ModelLoadError, str(path / shard), "missing", "model.safetensors.index.json")


def test_index_maps_tensor_to_wrong_shard(checkpoint):
    path, index = sharded(checkpoint)
    shards = sorted(set(index["weight_map"].values()))
    name = next(n for n, s in index["weight_map"].items() if s == shards[0])
    index["weight_map"][name] = shards[-1]
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    expect_error(path, ModelLoadError, shards[-1], name)


def test_index_not_json(checkpoint):
    path, _ = sharded(checkpoint)
    (path / "model.safetensors.index.json").write_text("{")
    expect_error(path, ModelLoadError, "model.safetensors.index.json")


# ---------------------------------------------------------------- hub ids

@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1 and an empty HF_HOME. huggingface_hub reads both into its `constants` module
    when it is first imported (transformers already did), so those are set alongside the environment."""
    import huggingface_hub.constants as constants
    home = tmp_path / "hf_home"
    home.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return home / "hub"


def test_hub_id_not_cached_offline(offline_hub):
    with pytest.raises(ModelLoadError) as info:
        download_from_hub("some-org/some-model")
    message = str(info.value)
    assert "\n" not in message
    assert "some-org/some-model" in message and "not in the local Hugging Face cache" in message
    assert "HF_HUB_OFFLINE" in message


def test_hub_id_in_local_cache_resolves_offline(offline_hub, pristine):
    """A repo laid out the way huggingface_hub caches it (refs/main -> commit, snapshots/<commit>/files)
    resolves without network, and loads."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = offline_hub / "models--tiny-org--tiny-llama"
    snapshot = repo_dir / "snapshots" / commit
    shutil.copytree(pristine("llama"), snapshot)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    resolved = download_from_hub("tiny-org/tiny-llama")
    assert Path(resolved).resolve() == snapshot.resolve()
    assert len(load(resolved).layers) == 3
