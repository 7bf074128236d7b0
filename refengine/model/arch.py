"""The family table: for each supported Hugging Face architecture, how its config and weight names map
onto refengine's roles. Adding a Llama-like family is adding one row here, not a branch elsewhere.

Roles (per layer):  attn_norm, q, k, v, o, mlp_norm, gate, up, down  (+ `<role>_bias` where present)
Roles (global):     embed, final_norm, lm_head
A family whose checkpoint fuses q/k/v (InternLM2's `wqkv`) names the fused tensor and a splitter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from refengine.config import ModelConfig, RopeScaling
from refengine.errors import UnsupportedModelError


def split_internlm2_wqkv(w: np.ndarray, cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """InternLM2 stores q, k, v interleaved per KV group.

    wqkv rows: [kv_heads, (q_per_kv + 2), head_dim] — for each KV head: its q heads, then its k, then its v.
    Returns q [H*D, in], k [KVH*D, in], v [KVH*D, in] in the ordinary head-major order.
    (A 1-D bias splits the same way.)
    """
    q_per_kv = cfg.num_heads // cfg.num_kv_heads
    grouped = w.reshape(cfg.num_kv_heads, q_per_kv + 2, cfg.head_dim, *w.shape[1:])
    q = grouped[:, :q_per_kv].reshape(cfg.q_size, *w.shape[1:])
    k = grouped[:, q_per_kv].reshape(cfg.kv_size, *w.shape[1:])
    v = grouped[:, q_per_kv + 1].reshape(cfg.kv_size, *w.shape[1:])
    return q, k, v


LLAMA_LAYER = {
    "attn_norm": "input_layernorm.weight",
    "q": "self_attn.q_proj.weight", "k": "self_attn.k_proj.weight", "v": "self_attn.v_proj.weight",
    "o": "self_attn.o_proj.weight",
    "q_bias": "self_attn.q_proj.bias", "k_bias": "self_attn.k_proj.bias", "v_bias": "self_attn.v_proj.bias",
    "o_bias": "self_attn.o_proj.bias",
    "mlp_norm": "post_attention_layernorm.weight",
    "gate": "mlp.gate_proj.weight", "up": "mlp.up_proj.weight", "down": "mlp.down_proj.weight",
    "gate_bias": "mlp.gate_proj.bias", "up_bias": "mlp.up_proj.bias", "down_bias": "mlp.down_proj.bias",
}

INTERNLM2_LAYER = {
    "attn_norm": "attention_norm.weight",
    "qkv": "attention.wqkv.weight", "qkv_bias": "attention.wqkv.bias",
    "o": "attention.wo.weight", "o_bias": "attention.wo.bias",
    "mlp_norm": "ffn_norm.weight",
    "gate": "feed_forward.w1.weight", "up": "feed_forward.w3.weight", "down": "feed_forward.w2.weight",
}


@dataclass(frozen=True)
class Family:
    name: str
    architectures: tuple[str, ...]
    layer_names: dict[str, str]
    embed: str = "model.embed_tokens.weight"
    final_norm: str = "model.norm.weight"
    lm_head: str = "lm_head.weight"
    layer_prefix: str = "model.layers.{i}."
    # Which config flags switch biases on: role group -> function of the raw HF config.
    qkv_bias: Callable[[dict], bool] = lambda c: bool(c.get("attention_bias", False))
    o_bias: Callable[[dict], bool] = lambda c: bool(c.get("attention_bias", False))
    mlp_bias: Callable[[dict], bool] = lambda c: bool(c.get("mlp_bias", False))
    split_qkv: Callable | None = None
    default_chat_template: str | None = None   # built-in template name used when the model has none
    extra_checks: tuple[Callable[[dict], None], ...] = field(default_factory=tuple)


def refuse_sliding_window(c: dict) -> None:
    """Sliding-window attention (Mistral v0.1, Qwen2 with use_sliding_window) is not implemented."""
    window = c.get("sliding_window")
    uses_window = c.get("use_sliding_window", c.get("model_type") == "mistral")
    if uses_window and window is not None and window < c.get("max_position_embeddings", 0):
        raise UnsupportedModelError(
            f"config.json: sliding_window={window} < max_position_embeddings="
            f"{c.get('max_position_embeddings')}: sliding-window attention is not supported")


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("llama", ("LlamaForCausalLM",), LLAMA_LAYER, default_chat_template="llama2"),
    Family("mistral", ("MistralForCausalLM",), LLAMA_LAYER, default_chat_template="llama2",
           o_bias=lambda c: False, qkv_bias=lambda c: False, extra_checks=(refuse_sliding_window,)),
    Family("qwen2", ("Qwen2ForCausalLM",), LLAMA_LAYER, default_chat_template="chatml",
           qkv_bias=lambda c: True, o_bias=lambda c: False, extra_checks=(refuse_sliding_window,)),
    Family("internlm", ("InternLMForCausalLM",), LLAMA_LAYER, default_chat_template="internlm",
           qkv_bias=lambda c: bool(c.get("bias", True)), o_bias=lambda c: bool(c.get("bias", True))),
    Family("internlm2", ("InternLM2ForCausalLM",), INTERNLM2_LAYER, default_chat_template="internlm2",
           embed="model.tok_embeddings.weight", lm_head="output.weight",
           qkv_bias=lambda c: bool(c.get("bias", False)), o_bias=lambda c: bool(c.get("bias", False)),
           split_qkv=split_internlm2_wqkv),
)}


def family_for_architecture(hf_config: dict, source: str = "config.json") -> Family:
    archs = hf_config.get("architectures") or []
    for fam in FAMILIES.values():
        if any(a in fam.architectures for a in archs):
            return fam
    known = sorted(a for f in FAMILIES.values() for a in f.architectures)
    raise UnsupportedModelError(
        f"{source}: architectures={archs or hf_config.get('model_type')!r} is not supported "
        f"(supported: {', '.join(known)})")


def parse_rope(hf_config: dict, source: str = "config.json") -> tuple[float, RopeScaling]:
    """Rope theta and scaling from either transformers 4.x (`rope_theta` + `rope_scaling`) or 5.x
    (`rope_parameters`) config keys."""
    params = dict(hf_config.get("rope_parameters") or {})
    scaling = dict(hf_config.get("rope_scaling") or {})
    theta = float(hf_config.get("rope_theta") or params.get("rope_theta") or 10000.0)
    merged = {**params, **scaling}
    rope_type = merged.get("rope_type") or merged.get("type") or "default"
    max_pos = int(hf_config.get("max_position_embeddings", 2048))
    original = int(merged.get("original_max_position_embeddings") or max_pos)
    if rope_type == "dynamic":   # transformers' dynamic NTK grows past max_position_embeddings, ignoring this key
        original = max_pos
    try:
        return theta, RopeScaling(
            type=rope_type,
            factor=float(merged.get("factor", 1.0)),
            low_freq_factor=float(merged.get("low_freq_factor", 1.0)),
            high_freq_factor=float(merged.get("high_freq_factor", 4.0)),
            original_max_position=original)
    except UnsupportedModelError as e:
        raise UnsupportedModelError(f"{source}: {e}") from None


def model_config_from_hf(hf_config: dict, source: str = "config.json") -> tuple[ModelConfig, Family]:
    """Build a ModelConfig from a Hugging Face config.json dict; raise a one-line error naming the field."""
    fam = family_for_architecture(hf_config, source)
    for check in fam.extra_checks:
        check(hf_config)
    act = hf_config.get("hidden_act", "silu")
    if act != "silu":
        raise UnsupportedModelError(f"{source}: hidden_act={act!r} is not supported (only silu)")

    def need(key):
        if key not in hf_config:
            raise UnsupportedModelError(f"{source}: missing field {key!r}")
        return hf_config[key]

    hidden, heads = int(need("hidden_size")), int(need("num_attention_heads"))
    theta, scaling = parse_rope(hf_config, source)
    cfg = ModelConfig(
        family=fam.name,
        hidden_size=hidden,
        num_layers=int(need("num_hidden_layers")),
        num_heads=heads,
        num_kv_heads=int(hf_config.get("num_key_value_heads") or heads),
        head_dim=int(hf_config.get("head_dim") or hidden // heads),
        intermediate_size=int(need("intermediate_size")),
        vocab_size=int(need("vocab_size")),
        rms_norm_eps=float(hf_config.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=int(hf_config.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(hf_config.get("tie_word_embeddings", False)),
        qkv_bias=fam.qkv_bias(hf_config),
        o_bias=fam.o_bias(hf_config),
        mlp_bias=fam.mlp_bias(hf_config),
    )
    return cfg, fam
