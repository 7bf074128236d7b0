"""Tiny random-weight Hugging Face checkpoints of every supported family, for differential tests.

    path, ref = make_tiny_model("qwen2", tmp_path)            # a directory refengine can load
    logits = torch_logits(ref, ids, chunks=[5, 8])            # transformers' float32 logits [len(ids), V]

`ref` is always a transformers float32 model that computes what the checkpoint at `path` means:
for the transformers families it is the model that was saved; for InternLM (v1) and InternLM2, which
have no transformers class (remote code), the checkpoint is a tiny Llama's weights re-saved under their
names and `ref` is that Llama. For float16/bfloat16 checkpoints `ref` holds the same rounded weights in
float32, so both sides compute in float32 on identical numbers.

Weights are re-drawn with a deliberate scale (not transformers' std 0.02 init, which gives near-uniform
attention and logits ≈ 0): q/k sharp enough that attention depends on positions, logits of std ~2-4,
norm weights and biases visibly away from 1 and 0 — so a wrong position, mask, head or bias shows.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            intermediate_size=96, vocab_size=131, max_position_embeddings=64, rms_norm_eps=1e-5,
            rope_theta=10000.0, tie_word_embeddings=False)

# family name -> (transformers class family, config overrides). InternLM / InternLM2 are re-saved Llamas.
FAMILIES: dict[str, tuple[str, dict]] = {
    "llama": ("llama", dict(num_hidden_layers=3)),
    "llama-llama3-rope": ("llama", dict(rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                          high_freq_factor=4.0,
                                                          original_max_position_embeddings=32))),
    "llama-linear-rope": ("llama", dict(rope_scaling=dict(rope_type="linear", factor=2.5))),
    # max_position_embeddings small so that test prompts run past it and the base actually grows
    "llama-dynamic-rope": ("llama", dict(max_position_embeddings=24,
                                         rope_scaling=dict(rope_type="dynamic", factor=2.0))),
    "llama-bias": ("llama", dict(attention_bias=True, mlp_bias=True)),
    "llama-tied": ("llama", dict(tie_word_embeddings=True)),
    "mistral": ("mistral", dict(sliding_window=None)),
    "qwen2": ("qwen2", dict(rope_theta=1000000.0)),
    # InternLM v1 is multi-head (its config has no num_key_value_heads) with q/k/v/o biases
    "internlm": ("llama", dict(num_key_value_heads=4, attention_bias=True)),
    # InternLM2 as its chat models ship: no biases, dynamic NTK rope written {"type": "dynamic", "factor": 2.0}
    "internlm2": ("llama", dict(rope_theta=1000000.0, max_position_embeddings=24,
                                rope_scaling=dict(rope_type="dynamic", factor=2.0))),
    "internlm2-bias": ("llama", dict(attention_bias=True)),          # fused wqkv bias, wo bias
}

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _classes(kind: str):
    import transformers as tf
    return {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
            "mistral": (tf.MistralConfig, tf.MistralForCausalLM),
            "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM)}[kind]


def build_torch_model(family: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """The transformers float32 model (eval mode, eager attention) with realistic random weights."""
    kind, family_overrides = FAMILIES[family]
    config_cls, model_cls = _classes(kind)
    kwargs = {**TINY, **family_overrides, **overrides}
    config = config_cls(**kwargs, attn_implementation="eager")
    model = model_cls(config).eval()
    randomize_weights(model, seed)
    return model


def randomize_weights(model: torch.nn.Module, seed: int) -> None:
    """Re-draw every parameter: linears N(0, (g/√fan_in)²) with gain 1.5 for q/k (sharp attention) and 2 for
    the lm head (logit std ~2-4), embeddings N(0, 0.5²), norm weights 1 + N(0, 0.2²), biases N(0, 0.2²)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():       # tied lm_head is the embedding: visited once
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("bias"):
                p.copy_(0.2 * noise)
            elif p.dim() == 1:                          # rms norm weights
                p.copy_(1.0 + 0.2 * noise)
            elif "embed_tokens" in name:
                p.copy_(0.5 * noise)
            else:
                gain = 1.5 if ("q_proj" in name or "k_proj" in name) else 2.0 if "lm_head" in name else 1.0
                p.copy_(gain / math.sqrt(p.shape[1]) * noise)


def round_weights(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Round the parameters (not the rope buffers) to `dtype` and back to float32, in place."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).float())


def make_tiny_model(family: str, tmp_path, dtype: str = "float32", max_shard_size: str | None = None,
                    seed: int = 0, **overrides) -> tuple[Path, torch.nn.Module]:
    """Save a tiny random `family` checkpoint under tmp_path/<family>-<dtype>-<seed>; return (path, ref).

    family: a key of FAMILIES. dtype: storage dtype of the saved weights. max_shard_size: e.g. "40KB"
    for a sharded checkpoint with an index file. overrides: config fields (e.g. num_hidden_layers=3,
    rope_scaling={...}); for internlm/internlm2 `bias` maps to Llama's attention_bias."""
    kind, _ = FAMILIES[family]
    if family.startswith("internlm") and "bias" in overrides:
        overrides["attention_bias"] = overrides.pop("bias")
    model = build_torch_model(family, seed, **overrides)
    torch_dtype = TORCH_DTYPES[dtype]
    if torch_dtype != torch.float32:
        round_weights(model, torch_dtype)
    path = Path(tmp_path) / f"{family}-{dtype}-{seed}"
    if family == "internlm":
        _save_internlm(model, path, torch_dtype)
    elif family.startswith("internlm2"):
        _save_internlm2(model, path, torch_dtype)
    else:
        saved = copy.deepcopy(model).to(torch_dtype)   # a copy: .to() would also round the rope buffers
        saved.save_pretrained(path, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
        # transformers 5 writes only rope_parameters; 4.x (and older tools) read rope_theta at the top
        edit_config(path, rope_theta=rope_parameters(model.config)["rope_theta"])
    write_tiny_tokenizer(path)
    return path, model


TINY_CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                      "{% if add_generation_prompt %}assistant:{% endif %}")


def write_tiny_tokenizer(path: Path) -> None:
    """A character-level tokenizer (printable ASCII + <unk> <s> </s>: 98 ids, inside the tiny vocab of
    131) with a chat template, so that tiny models run through the pipeline and the CLI like real ones."""
    from tokenizers import Tokenizer, decoders, models
    specials = ["<unk>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials + [chr(c) for c in range(32, 127)])}
    tok = Tokenizer(models.BPE(vocab, [], unk_token="<unk>"))
    tok.add_special_tokens(specials)
    tok.decoder = decoders.Fuse()
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
        "chat_template": TINY_CHAT_TEMPLATE}))


def edit_config(path, **changes) -> dict:
    """Update config.json in place; a value of None deletes the key. Returns the new config."""
    cfg_path = Path(path) / "config.json"
    cfg = json.loads(cfg_path.read_text())
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return cfg


def rope_parameters(cfg) -> dict:
    """rope theta + scaling of a transformers config as one dict (5.x `rope_parameters`, 4.x two fields)."""
    if getattr(cfg, "rope_parameters", None):
        return dict(cfg.rope_parameters)
    return {"rope_theta": cfg.rope_theta, **(cfg.rope_scaling or {})}


def _common_config(cfg, architecture: str, model_type: str, dtype: torch.dtype) -> dict:
    rope = rope_parameters(cfg)
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    return {
        "architectures": [architecture], "model_type": model_type, "hidden_act": "silu",
        "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "num_attention_heads": cfg.num_attention_heads, "num_hidden_layers": cfg.num_hidden_layers,
        "max_position_embeddings": cfg.max_position_embeddings, "rms_norm_eps": cfg.rms_norm_eps,
        "vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.tie_word_embeddings,
        "rope_theta": rope["rope_theta"],
        # InternLM2's own config spells the scaling the old way: {"type": ..., "factor": ...}
        "rope_scaling": None if rope_type == "default" else {"type": rope_type, "factor": rope["factor"]},
        "bias": bool(cfg.attention_bias), "torch_dtype": str(dtype).replace("torch.", ""),
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "use_cache": True,
    }


def _state(model: torch.nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    sd = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    return sd


def _write(path: Path, config: dict, tensors: dict[str, torch.Tensor]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})


def _save_internlm(model, path: Path, dtype: torch.dtype) -> None:
    """InternLM v1: Llama tensor names, `bias` for q/k/v/o biases, no num_key_value_heads (MHA)."""
    cfg = model.config
    assert cfg.num_key_value_heads == cfg.num_attention_heads, "InternLM v1 is multi-head attention"
    assert not cfg.mlp_bias, "InternLM v1 has no MLP biases"
    _write(path, _common_config(cfg, "InternLMForCausalLM", "internlm", dtype), _state(model, dtype))


INTERNLM2_NAMES = {
    "model.embed_tokens.weight": "model.tok_embeddings.weight", "model.norm.weight": "model.norm.weight",
    "lm_head.weight": "output.weight",
    "input_layernorm.weight": "attention_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.o_proj.weight": "attention.wo.weight", "self_attn.o_proj.bias": "attention.wo.bias",
    "mlp.gate_proj.weight": "feed_forward.w1.weight", "mlp.up_proj.weight": "feed_forward.w3.weight",
    "mlp.down_proj.weight": "feed_forward.w2.weight",
}


def fuse_internlm2_wqkv(q, k, v, num_heads: int, num_kv_heads: int, head_dim: int) -> torch.Tensor:
    """Llama q [H·D, ...], k, v [KVH·D, ...] -> InternLM2 wqkv [KVH·(H/KVH + 2)·D, ...]: for each KV head,
    its q heads, then its k head, then its v head (the inverse of arch.split_internlm2_wqkv)."""
    rest = q.shape[1:]
    q = q.reshape(num_kv_heads, num_heads // num_kv_heads, head_dim, *rest)
    k = k.reshape(num_kv_heads, 1, head_dim, *rest)
    v = v.reshape(num_kv_heads, 1, head_dim, *rest)
    return torch.cat([q, k, v], dim=1).reshape(-1, *rest)


def _save_internlm2(model, path: Path, dtype: torch.dtype) -> None:
    """InternLM2: renamed tensors, fused interleaved wqkv, config keys as InternLM2's config.json."""
    cfg = model.config
    assert not cfg.mlp_bias, "InternLM2 has no MLP biases"
    sd, out = _state(model, dtype), {}
    fuse = lambda p, suffix: fuse_internlm2_wqkv(sd[p + "q_proj" + suffix], sd[p + "k_proj" + suffix],
                                                 sd[p + "v_proj" + suffix], cfg.num_attention_heads,
                                                 cfg.num_key_value_heads, cfg.head_dim).contiguous()
    for name in sd:
        if name.startswith("model.layers."):
            i, local = name[len("model.layers."):].split(".", 1)
            prefix = f"model.layers.{i}."
            if local.startswith("self_attn.q_proj."):
                suffix = local[len("self_attn.q_proj"):]
                out[prefix + "attention.wqkv" + suffix] = fuse(prefix + "self_attn.", suffix)
            elif local in INTERNLM2_NAMES:
                out[prefix + INTERNLM2_NAMES[local]] = sd[name]
            elif not local.startswith(("self_attn.k_proj.", "self_attn.v_proj.")):
                raise AssertionError(f"unmapped Llama tensor {name}")
        else:
            out[INTERNLM2_NAMES[name]] = sd[name]
    config = _common_config(cfg, "InternLM2ForCausalLM", "internlm2", dtype)
    config["num_key_value_heads"] = cfg.num_key_value_heads
    config["attn_implementation"] = "eager"
    _write(path, config, out)


# ---------------------------------------------------------------- running the reference

def reset_rope_state(model: torch.nn.Module) -> None:
    """Forget dynamic-NTK growth from an earlier prompt (transformers keeps the largest inv_freq seen)."""
    for module in model.modules():
        if hasattr(module, "original_inv_freq") and hasattr(module, "original_max_seq_len"):
            module.inv_freq = module.original_inv_freq.clone()
            module.max_seq_len_cached = module.original_max_seq_len


@torch.no_grad()
def torch_logits(model: torch.nn.Module, ids, chunks: list[int] | None = None) -> np.ndarray:
    """transformers float32 logits [len(ids), V] for one sequence, fed in `chunks` (sizes summing to
    len(ids); None = one forward) through its KV cache, as refengine would run it."""
    ids = list(ids)
    chunks = chunks or [len(ids)]
    assert sum(chunks) == len(ids), (chunks, len(ids))
    reset_rope_state(model)
    past, start, out = None, 0, []
    for n in chunks:
        piece = torch.tensor([ids[start:start + n]], dtype=torch.long)
        result = model(input_ids=piece, past_key_values=past, use_cache=True)
        past, start = result.past_key_values, start + n
        out.append(result.logits[0].float())
    return torch.cat(out).numpy()
