"""Write a Hugging Face Llama directory (LlamaForCausalLM) from refengine's fused weights, one block at a time,
so transformers (and refengine's own HF loader) can run exactly the weights of a random workspace.

    hf_dir/
      config.json                              LlamaConfig fields, dtype float16
      model.safetensors.index.json             weight_map: tensor -> shard
      model-00000-of-NNNNN.safetensors         embed_tokens, norm, lm_head
      model-0000i-of-NNNNN.safetensors         block i-1 (q/k/v/o, gate/up/down, the two norms)
      tokenizer.json, tokenizer_config.json, generation_config.json   copied from the workspace's tokenizer/

The fused qkv [q heads | k heads | v heads] and gate_up [gate | up] split back by rows: views, no copies.
int4 linears are dequantized ((q − zero) · scale, then float16) in row chunks: the HF directory then holds
the function the int4 workspace computes, as float16 weights.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from refengine.config import ModelConfig
from refengine.model.weights import LayerWeights
from refengine.quant.primitives import Int4Weight, dequantize_int4
from refengine.workspace.safetensors_writer import write_safetensors
from refengine.workspace.writer import _write_json      # the workspace's JSON writer (fsync'd)

DEQUANT_ROWS = 1024                   # rows dequantized at a time (float32 scratch stays ~50 MB)


def hf_config(cfg: ModelConfig, bos_id: int, eos_id: int) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
            "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
            "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
            "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim, "vocab_size": cfg.vocab_size,
            "max_position_embeddings": cfg.max_position_embeddings, "rms_norm_eps": cfg.rms_norm_eps,
            "rope_theta": cfg.rope_theta, "tie_word_embeddings": cfg.tie_word_embeddings,
            "attention_bias": False, "mlp_bias": False, "bos_token_id": bos_id, "eos_token_id": eos_id,
            "dtype": "float16", "torch_dtype": "float16"}


def dense_float16(w) -> np.ndarray:
    """A linear as float16 [out, in]: itself, or an Int4Weight dequantized chunk by chunk."""
    if not isinstance(w, Int4Weight):
        return np.asarray(w, dtype=np.float16)
    out = np.empty(w.shape, np.float16)
    for r in range(0, w.shape[0], DEQUANT_ROWS):
        rows = slice(r, r + DEQUANT_ROWS)
        out[rows] = dequantize_int4(Int4Weight(w.qweight[rows], w.scales[rows], w.zeros[rows], w.group_size))
    return out


class HFWriter:
    def __init__(self, root: Path, cfg: ModelConfig):
        self.root = Path(root)
        self.cfg = cfg
        self.weight_map: dict[str, str] = {}
        self.total_bytes = 0

    def _shard(self, index: int) -> str:
        return f"model-{index:05d}-of-{self.cfg.num_layers + 1:05d}.safetensors"

    def _write(self, index: int, tensors: dict[str, np.ndarray]) -> None:
        name = self._shard(index)
        write_safetensors(self.root / name, {k: (v, "float16") for k, v in tensors.items()}, {"format": "pt"})
        self.weight_map.update({k: name for k in tensors})
        self.total_bytes += sum(v.size * 2 for v in tensors.values())

    def write_globals(self, embed, final_norm, lm_head) -> None:
        self._write(0, {"model.embed_tokens.weight": embed, "model.norm.weight": final_norm,
                        "lm_head.weight": lm_head})

    def write_layer(self, i: int, layer: LayerWeights) -> None:
        c, p = self.cfg, f"model.layers.{i}."
        qkv, gate_up = dense_float16(layer.qkv), dense_float16(layer.gate_up)
        q_end, k_end = c.q_size, c.q_size + c.kv_size
        self._write(i + 1, {
            p + "input_layernorm.weight": layer.attn_norm,
            p + "self_attn.q_proj.weight": qkv[:q_end], p + "self_attn.k_proj.weight": qkv[q_end:k_end],
            p + "self_attn.v_proj.weight": qkv[k_end:], p + "self_attn.o_proj.weight": dense_float16(layer.o),
            p + "post_attention_layernorm.weight": layer.mlp_norm,
            p + "mlp.gate_proj.weight": gate_up[:c.intermediate_size],
            p + "mlp.up_proj.weight": gate_up[c.intermediate_size:],
            p + "mlp.down_proj.weight": dense_float16(layer.down)})

    def finish(self, tokenizer, tokenizer_dir: Path) -> None:
        """The index, config.json, and the tokenizer files: those WorkspaceWriter.write_tokenizer already
        wrote into the workspace's `tokenizer_dir` (transformers' names and formats), copied as they are."""
        _write_json(self.root / "model.safetensors.index.json",
                    {"metadata": {"total_size": self.total_bytes}, "weight_map": self.weight_map})
        _write_json(self.root / "config.json", hf_config(self.cfg, tokenizer.bos_token_id, tokenizer.eos_token_id))
        for src in sorted(p for p in Path(tokenizer_dir).iterdir() if p.is_file()):
            _copy_synced(src, self.root / src.name)


def _copy_synced(src: Path, dst: Path) -> None:
    """Copy a file, on disk before the directory is renamed into place (as every other file here)."""
    with open(src, "rb") as f_in, open(dst, "wb") as f_out:
        shutil.copyfileobj(f_in, f_out)
        f_out.flush()
        os.fsync(f_out.fileno())

