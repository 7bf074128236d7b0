"""Workspaces: convert -> load round trips (float and int4), AutoAWQ import, atomic writes, checksums."""

import json

import numpy as np
import pytest
import torch

from refengine import ops
from refengine.engine.kv_cache import KVCache
from refengine.model.llama import ForwardBatch, LlamaModel
from refengine.model.loader import load_model
from refengine.quant.block import CalibrationOps
from refengine.quant.primitives import Int4Weight, dequantize_int4, fake_quantize
from refengine.workspace.convert import ConvertOptions, convert
from refengine.workspace.format import WorkspaceError
from refengine.workspace.writer import WorkspaceWriter
from tests.hf_models import make_tiny_model
from tests.quant.awq_checkpoints import write_awq_checkpoint
from tests.tolerances import assert_close

LINEARS = ("qkv", "o", "gate_up", "down")
TEXT = "The quick brown fox jumps over the lazy dog. " * 40


def logits(cfg, weights, backend=ops.reference, n=23):
    ids = np.arange(n) * 7 % 90 + 3
    model = LlamaModel(cfg, weights, backend)
    return model.forward(ForwardBatch.single(ids, 0, [0], 32, all_logits=True), KVCache.allocate(cfg, 1, 32))


def loaded_layers(path) -> int:
    return json.loads((path / "config.json").read_text())["num_hidden_layers"]


def rounded(weights, dtype):
    """The weights as the workspace stores them: float16, or bfloat16 (rounded by torch), back in float32."""
    if dtype == "float16":
        return weights.astype(np.float16).astype(np.float32)
    bf16 = lambda a: None if a is None else torch.from_numpy(np.array(a, np.float32)).to(torch.bfloat16).float().numpy()
    from refengine.model.weights import LayerWeights, ModelWeights
    embed = bf16(weights.embed)
    return ModelWeights(embed, bf16(weights.final_norm),
                        embed if weights.lm_head is weights.embed else bf16(weights.lm_head),
                        [LayerWeights(**{k: bf16(v) for k, v in vars(l).items()}) for l in weights.layers])


@pytest.mark.parametrize("family, dtype", [("llama-bias", "float16"), ("internlm2", "float16"),
                                           ("qwen2", "bfloat16"), ("llama-tied", "bfloat16")])
def test_float_workspace_gives_identical_logits(tmp_path, family, dtype):
    path, _ = make_tiny_model(family, tmp_path)
    ws = tmp_path / "ws"
    summary = convert(str(path), ConvertOptions(dst=ws, dtype=dtype))
    source, loaded = load_model(str(path)), load_model(str(ws))
    assert summary.weight_type == dtype and json.loads((ws / "refengine.json").read_text())["weight_type"] == dtype
    np.testing.assert_array_equal(logits(loaded.config, loaded.weights),
                                  logits(source.config, rounded(source.weights, dtype)))
    assert loaded.config == source.config
    for text in ["hello world", "Ab 12 !?"]:
        assert loaded.tokenizer.encode(text) == source.tokenizer.encode(text)
    assert loaded.tokenizer.render_chat([{"role": "user", "content": "hi"}]) == \
        source.tokenizer.render_chat([{"role": "user", "content": "hi"}])


def test_rtn_workspace_is_int4_and_its_logits_equal_the_fake_quant_reference(tmp_path):
    path, _ = make_tiny_model("llama-bias", tmp_path)
    ws = tmp_path / "ws"
    convert(str(path), ConvertOptions(dst=ws, quant="rtn", group_size=32))
    loaded, source = load_model(str(ws)), load_model(str(path))
    assert all(isinstance(getattr(l, n), Int4Weight) for l in loaded.weights.layers for n in LINEARS)
    reference = rounded(source.weights, "float16")
    for ref_layer, src_layer in zip(reference.layers, source.weights.layers):
        for n in LINEARS:
            setattr(ref_layer, n, fake_quantize(np.asarray(getattr(src_layer, n), np.float32), 32))
    expected = logits(source.config, reference)
    np.testing.assert_array_equal(logits(loaded.config, loaded.weights), expected)        # dequantized at load
    assert_close(logits(loaded.config, loaded.weights, CalibrationOps(ops.reference)),  # W4A16 linears
                 expected, "logits_self", "float32")


@pytest.mark.parametrize("family, overrides, inputs", [("llama", {}, "float"),                       # GQA
                                                       ("llama-bias", {"num_key_value_heads": 4},      # MHA + biases
                                                        "quantized")])
def test_awq_workspace_round_trip(tmp_path, family, overrides, inputs):
    path, _ = make_tiny_model(family, tmp_path, intermediate_size=128, **overrides)
    data = tmp_path / "calib.txt"
    data.write_text(TEXT)
    ws = tmp_path / "ws"
    summary = convert(str(path), ConvertOptions(dst=ws, quant="awq", group_size=32, calib_data=str(data),
                                                calib_samples=4, calib_seqlen=16, batch_size=3, calib_inputs=inputs))
    manifest = json.loads((ws / "refengine.json").read_text())
    quant = manifest["quant"]
    assert manifest["weight_type"] == "int4" and manifest["group_size"] == 32
    assert (quant["method"], quant["calib_samples"], quant["calib_seqlen"]) == ("awq", 4, 16)
    assert quant["options"]["calib_inputs"] == inputs
    assert len(quant["blocks"]) == loaded_layers(path)
    assert ("v -> o" in quant["blocks"][0]) == (family == "llama-bias")           # only without GQA
    assert summary.linear_bits_per_weight == 5.0
    loaded, source = load_model(str(ws)), load_model(str(path))
    got = logits(loaded.config, loaded.weights)
    assert_close(logits(loaded.config, loaded.weights, CalibrationOps(ops.reference)), got, "logits_self")
    # random tiny weights have no salient channels: AWQ should land about where RTN does, not worse
    convert(str(path), ConvertOptions(dst=tmp_path / "rtn", quant="rtn", group_size=32))
    rtn = load_model(str(tmp_path / "rtn"))
    dense = logits(source.config, source.weights)
    rms = lambda a: float(np.sqrt(np.mean((a - dense) ** 2)))
    assert np.isfinite(got).all() and rms(got) < 1.25 * rms(logits(rtn.config, rtn.weights))


@pytest.mark.parametrize("family", ["qwen2", "internlm2"])
def test_autoawq_checkpoint_imports_to_the_same_dequantized_weights(tmp_path, family):
    path, _ = make_tiny_model(family, tmp_path)
    awq_dir = tmp_path / "awq"
    expected = write_awq_checkpoint(path, awq_dir, group_size=32)
    loaded = load_model(str(awq_dir))
    convert(str(awq_dir), ConvertOptions(dst=tmp_path / "ws"))
    from_ws = load_model(str(tmp_path / "ws"))
    if family == "qwen2":
        p = "model.layers.1."
        qkv = np.concatenate([expected[p + f"self_attn.{x}_proj.weight"] for x in "qkv"])
        down = expected[p + "mlp.down_proj.weight"]
    else:     # InternLM2's fused, interleaved wqkv: compare against the float loader's split of the same matrix
        from refengine.model.arch import split_internlm2_wqkv
        p = "model.layers.1."
        qkv = np.concatenate(split_internlm2_wqkv(expected[p + "attention.wqkv.weight"], loaded.config))
        down = expected[p + "feed_forward.w2.weight"]
    for weights in (loaded.weights, from_ws.weights):
        layer = weights.layers[1]
        assert isinstance(layer.qkv, Int4Weight) and layer.qkv.group_size == 32
        np.testing.assert_array_equal(dequantize_int4(layer.qkv), qkv)
        np.testing.assert_array_equal(dequantize_int4(layer.down), down)
    assert json.loads((tmp_path / "ws" / "refengine.json").read_text())["weight_type"] == "int4"


def test_gguf_tokenizer_is_saved_into_the_workspace(tmp_path):
    from tests.model.gguf_writer import TinyLlama, byte_level_vocab, write_tiny_gguf
    gguf_path = write_tiny_gguf(tmp_path / "tiny.gguf", TinyLlama.random(len(byte_level_vocab()[0])))
    convert(str(gguf_path), ConvertOptions(dst=tmp_path / "ws"))
    assert (tmp_path / "ws" / "tokenizer" / "tokenizer.json").is_file()
    source, loaded = load_model(str(gguf_path)), load_model(str(tmp_path / "ws"))
    for text in ["hello world", "the cat in 2024", "<|im_start|>user\nhi<|im_end|>"]:
        assert loaded.tokenizer.encode(text) == source.tokenizer.encode(text)
    assert loaded.tokenizer.eos_token_ids == source.tokenizer.eos_token_ids
    np.testing.assert_array_equal(logits(loaded.config, loaded.weights),
                                  logits(source.config, rounded(source.weights, "float16")))


def _leftovers(parent, name):
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_failure_mid_write_leaves_nothing(tmp_path, monkeypatch, error):
    path, _ = make_tiny_model("llama", tmp_path)
    original = WorkspaceWriter.write_layer

    def failing(self, i, layer):
        if i == 1:
            raise error
        original(self, i, layer)
    monkeypatch.setattr(WorkspaceWriter, "write_layer", failing)
    with pytest.raises(type(error)):
        convert(str(path), ConvertOptions(dst=tmp_path / "ws", quant="rtn", group_size=32))
    assert not (tmp_path / "ws").exists() and _leftovers(tmp_path, "ws") == []


def test_a_failed_forced_convert_keeps_the_old_workspace(tmp_path, monkeypatch):
    path, _ = make_tiny_model("llama", tmp_path)
    ws = tmp_path / "ws"
    convert(str(path), ConvertOptions(dst=ws))
    before = (ws / "refengine.json").read_text()
    monkeypatch.setattr(WorkspaceWriter, "finish", lambda self, fields: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError):
        convert(str(path), ConvertOptions(dst=ws, force=True, quant="rtn", group_size=32))
    assert (ws / "refengine.json").read_text() == before and _leftovers(tmp_path, "ws") == []
    load_model(str(ws))


def test_damaged_or_missing_files_are_named(tmp_path):
    path, _ = make_tiny_model("llama", tmp_path)
    ws = tmp_path / "ws"
    convert(str(path), ConvertOptions(dst=ws))
    layer = ws / "weights" / "layer_001.safetensors"
    data = bytearray(layer.read_bytes())
    data[-3] ^= 0xFF
    layer.write_bytes(bytes(data))
    with pytest.raises(WorkspaceError, match="layer_001.safetensors: damaged"):
        load_model(str(ws))
    layer.unlink()
    with pytest.raises(WorkspaceError, match="layer_001.safetensors: missing"):
        load_model(str(ws))
    manifest = json.loads((ws / "refengine.json").read_text())
    (ws / "refengine.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(WorkspaceError, match="format_version 99"):
        load_model(str(ws))
