"""tools/make_random_workspace.py and refengine/bench/random_model.py: random workspaces that load, verify and
generate; an HF directory that transformers runs to the same logits; seeds; atomic writing; user mistakes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench_helpers import assert_one_line_error, run_tool_main
from refengine.bench import hf_writer
from refengine.bench.random_model import RandomModelOptions, make_random_model
from refengine.bench.synthetic_tokenizer import synthetic_tokenizer
from refengine.config import EngineConfig
from refengine.engine.engine import Engine
from refengine.model.llama import LlamaModel
from refengine.model.loader import load_model
from refengine.ops import get_backend
from refengine.quant.primitives import Int4Weight, dequantize_int4
from refengine.sampling_params import GenerationConfig
from tests.tolerances import assert_close

PROMPT = [5, 300, 301, 17, 250, 99, 340, 7]


def generate(ws, n: int) -> list[int]:
    with Engine.from_model(str(ws), backend="numpy", config=EngineConfig(cache_max_entry_count=16,
                                                                          cache_block_seq_len=8)) as engine:
        out = engine.infer(input_ids=PROMPT, gen_config=GenerationConfig(temperature=0, max_new_tokens=n,
                                                                         ignore_eos=True))
    return out[0].token_ids


def logits_of(loaded, ids) -> np.ndarray:
    from refengine.engine.kv_cache import KVCache
    from refengine.model.llama import ForwardBatch
    model = LlamaModel(loaded.config, loaded.weights, get_backend("numpy"))
    kv = KVCache.allocate(model.cfg, 4, 16)
    return model.forward(ForwardBatch.single(ids, 0, np.arange(4), 16, all_logits=True), kv)


@pytest.mark.parametrize("weight_type", ["float16", "int4"])
def test_workspace_loads_verified_and_generates(tiny_models, weight_type):
    ws, _ = tiny_models[weight_type]
    manifest = json.loads((ws / "refengine.json").read_text())
    assert manifest["weight_type"] == weight_type and manifest["model"]["vocab_size"] == 384
    loaded = load_model(str(ws))                                     # checks every sha256 first
    qkv = loaded.weights.layers[0].qkv
    assert isinstance(qkv, Int4Weight) == (weight_type == "int4")
    assert qkv.shape == (128 + 2 * 64, 128)
    tokens = generate(ws, 6)
    assert len(tokens) == 6 and all(0 <= t < 384 for t in tokens)
    assert isinstance(loaded.tokenizer.decode(tokens), str)
    logits = logits_of(loaded, PROMPT)
    assert np.isfinite(logits).all() and 0.3 < logits.std() < 5      # sane activations: not exploding, not ~0


def test_hf_out_gives_transformers_the_same_logits(tiny_models):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    ws, hf = tiny_models["float16"]
    ours = logits_of(load_model(str(ws)), PROMPT)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = model(torch.tensor([PROMPT])).logits[0]
    assert_close(ours, theirs, "logits", "float32")
    assert_close(logits_of(load_model(str(hf)), PROMPT), ours, "logits_self", "float32")   # our HF loader too
    tok = transformers.AutoTokenizer.from_pretrained(hf)
    text = "hello world, random weights"
    assert tok(text).input_ids == load_model(str(ws)).tokenizer.encode(text)


def test_int4_hf_out_holds_the_dequantized_weights(tiny_models):
    ws, hf = tiny_models["int4"]
    ours = load_model(str(ws)).weights.layers[1]
    theirs = load_model(str(hf)).weights.layers[1]                  # float16 on disk
    for role in ("qkv", "o", "gate_up", "down"):
        expected = dequantize_int4(getattr(ours, role)).astype(np.float16)
        np.testing.assert_array_equal(np.asarray(getattr(theirs, role)), expected, err_msg=role)


def test_weights_depend_on_the_seed_only(tmp_path):
    def hashes(name, seed, threads):
        make_random_model(RandomModelOptions("tiny", tmp_path / name, "int4", 32, seed, threads=threads))
        files = json.loads((tmp_path / name / "refengine.json").read_text())["files"]
        return {k: v["sha256"] for k, v in files.items() if k.startswith("weights/")}
    a, b, c = hashes("a", 1, 1), hashes("b", 1, 3), hashes("c", 2, 1)
    assert a == b                                                     # threads change nothing
    assert all(a[k] != c[k] for k in a)                               # another seed changes every file


def test_synthetic_tokenizer_has_exactly_the_vocabulary():
    tok = synthetic_tokenizer(32000)
    assert tok.vocab_size == 32000
    rng = np.random.default_rng(0)
    assert isinstance(tok.decode(rng.integers(0, 32000, 200).tolist()), str)
    text = "Any text encodes: ünïcödé, 漢字, digits 123."
    ids = tok.encode(text)
    assert ids[0] == tok.bos_token_id and tok.decode(ids) == text
    assert tok.eos_token_ids == [2]


def test_a_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken(self, i, layer):
        raise RuntimeError("disk full")
    monkeypatch.setattr(hf_writer.HFWriter, "write_layer", broken)
    with pytest.raises(RuntimeError):
        make_random_model(RandomModelOptions("tiny", tmp_path / "ws", hf_out=tmp_path / "hf"))
    assert list(tmp_path.iterdir()) == []


def test_the_tool_writes_a_workspace(tmp_path, capsys):
    code, out, err = run_tool_main("make_random_workspace", ["tiny", "--dst", str(tmp_path / "ws"), "--quiet",
                                                             "--weight-type", "int4", "--group-size", "32"], capsys)
    assert code == 0, err
    assert "wrote" in out and json.loads((tmp_path / "ws" / "refengine.json").read_text())["group_size"] == 32


@pytest.mark.parametrize("argv, needle", [
    (["gpt-5", "--dst", "{tmp}/ws"], "unknown shape 'gpt-5'"),
    (["tiny", "--dst", "{tmp}/ws", "--weight-type", "int4", "--group-size", "48"], "--group-size 48"),
    (["tiny", "--dst", "{tmp}/ws", "--weight-type", "int8"], "--weight-type 'int8'"),
    (["tiny", "--dst", "{tmp}/ws", "--dtype", "bfloat16"], "--dtype 'bfloat16'"),
    (["tiny", "--dst", "{tmp}/ws", "--hf-out", "{tmp}/full"], "--hf-out"),
    (["tiny", "--dst", "{tmp}/no/such/ws"], "does not exist"),
    (["tiny"], "--dst"),
])
def test_user_mistakes_are_one_line_and_exit_2(tmp_path, capsys, argv, needle):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "something").write_text("keep me")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, _, err = run_tool_main("make_random_workspace", argv, capsys)
    assert_one_line_error(code, err, "make_random_workspace", needle)
    assert not (tmp_path / "ws").exists() and (tmp_path / "full" / "something").read_text() == "keep me"
