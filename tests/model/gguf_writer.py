"""Synthetic GGUF files for tests: a tiny random llama written the way llama.cpp's converter writes one.

    TinyLlama.random(seed)        weights in Hugging Face layout (the truth the loader must give back)
    write_tiny_gguf(path, model, tensor_type, ...)
                                  llama.cpp's q/k row permutation applied, every 2-D weight stored as
                                  `tensor_type`, norms as F32, metadata under llama.cpp's key names

Shapes: 2 layers, hidden 64, 4 heads, 2 KV heads (head_dim 16), FFN 96 — every linear's input
dimension is a multiple of 32, the block size of Q8_0 / Q4_0 / Q4_1.
Also here: a tiny byte-level BPE and a tiny sentencepiece vocabulary, and `reference_dequantize`,
a from-the-spec dequantizer for Q8_0 / Q4_0 / Q4_1 (independent of gguf.quants).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT, GGUFValueType as VT

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 64, 2, 4, 2, 96
HEAD_DIM = HIDDEN // HEADS

CONTROL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# A few merges over GPT-2's byte alphabet ("Ġ" is the space byte). Letters only: digits stay single.
BPE_MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "Ġ c", "a t", "Ġc at", "Ġ s", "Ġ i",
              "Ġi n", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld", "e l", "el l", "h ell", "hell o"]
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the alphabet byte-level BPE tokens are spelled in)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def byte_level_vocab() -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges): control tokens, the 256 byte characters, then one token per merge."""
    tokens = CONTROL_TOKENS + [bytes_to_unicode()[b] for b in range(256)]
    tokens += ["".join(m.split(" ")) for m in BPE_MERGES]
    types = [3] * len(CONTROL_TOKENS) + [1] * (len(tokens) - len(CONTROL_TOKENS))
    return tokens, types, list(BPE_MERGES)


SPM_PIECES = ["▁", "▁t", "he", "▁the", "▁a", "in", "▁in", "▁c", "at", "▁cat", "▁s", "er", "on", "▁on",
              "ll", "ello", "▁hello", "▁w", "or", "▁wor", "ld", "▁world", "▁is", "is"]


def sentencepiece_vocab() -> tuple[list[str], list[int], list[float]]:
    """(tokens, token types, scores) shaped like a Llama-2 GGUF: <unk> <s> </s>, 256 byte tokens,
    single letters, then merged pieces whose score says their merge priority."""
    letters = sorted(set("".join(SPM_PIECES)) - {"▁"})
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + letters + SPM_PIECES
    types = [2, 3, 3] + [6] * 256 + [1] * (len(letters) + len(SPM_PIECES))
    scores = [0.0] * (3 + 256) + [-100.0 - i for i in range(len(letters))] + \
        [-float(i) for i in range(len(SPM_PIECES))]
    return tokens, types, scores


@dataclass
class TinyLlama:
    """Random weights in Hugging Face layout: name -> float32 array ([out, in] for linears)."""
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    vocab: int = 0

    @classmethod
    def random(cls, vocab: int, seed: int = 0, tie: bool = True, qkv_bias: bool = False) -> "TinyLlama":
        rng = np.random.default_rng(seed)
        # q/k a few times larger than 1/sqrt(in): attention is then sharp, so a rope applied to the
        # wrong rows changes the logits by far more than the test tolerance.
        lin = lambda out, inp, gain=1.0: (rng.standard_normal((out, inp)) * gain / np.sqrt(inp)).astype(np.float32)
        w = {"model.embed_tokens.weight": lin(vocab, HIDDEN, 8.0),
             "model.norm.weight": (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32)}
        if not tie:
            w["lm_head.weight"] = lin(vocab, HIDDEN)
        for i in range(LAYERS):
            p = f"model.layers.{i}."
            w[p + "self_attn.q_proj.weight"] = lin(HEADS * HEAD_DIM, HIDDEN, 3.0)
            w[p + "self_attn.k_proj.weight"] = lin(KV_HEADS * HEAD_DIM, HIDDEN, 3.0)
            w[p + "self_attn.v_proj.weight"] = lin(KV_HEADS * HEAD_DIM, HIDDEN)
            w[p + "self_attn.o_proj.weight"] = lin(HIDDEN, HEADS * HEAD_DIM)
            w[p + "mlp.gate_proj.weight"] = lin(FFN, HIDDEN)
            w[p + "mlp.up_proj.weight"] = lin(FFN, HIDDEN)
            w[p + "mlp.down_proj.weight"] = lin(HIDDEN, FFN)
            for norm in ("input_layernorm.weight", "post_attention_layernorm.weight"):
                w[p + norm] = (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32)
            if qkv_bias:
                for proj, rows in (("q", HEADS), ("k", KV_HEADS), ("v", KV_HEADS)):
                    w[p + f"self_attn.{proj}_proj.bias"] = rng.standard_normal(rows * HEAD_DIM).astype(np.float32)
        return cls(w, vocab)


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: HF rotate-half rows -> llama.cpp interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
              "post_attention_layernorm": "ffn_norm"}


def gguf_tensor_name(hf_name: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf_name in top:
        return top[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{GGUF_NAMES[module]}.{kind}"


def gguf_array(hf_name: str, w: np.ndarray) -> np.ndarray:
    """The array llama.cpp stores for an HF tensor (q/k rows permuted, biases too)."""
    if ".q_proj." in hf_name:
        return llama_cpp_permute(w, HEADS)
    if ".k_proj." in hf_name:
        return llama_cpp_permute(w, KV_HEADS)
    return w


def llama_metadata(vocab: int) -> dict[str, tuple]:
    """llama.cpp's key -> (value, value type) for the tiny model (general.architecture comes from the writer)."""
    return {
        "llama.block_count": (LAYERS, VT.UINT32), "llama.context_length": (256, VT.UINT32),
        "llama.embedding_length": (HIDDEN, VT.UINT32), "llama.feed_forward_length": (FFN, VT.UINT32),
        "llama.attention.head_count": (HEADS, VT.UINT32), "llama.attention.head_count_kv": (KV_HEADS, VT.UINT32),
        "llama.rope.freq_base": (10000.0, VT.FLOAT32), "llama.rope.dimension_count": (HEAD_DIM, VT.UINT32),
        "llama.attention.layer_norm_rms_epsilon": (1e-5, VT.FLOAT32), "llama.vocab_size": (vocab, VT.UINT32),
    }


def gpt2_tokenizer_metadata(pre: str = "smollm") -> dict[str, tuple]:
    tokens, types, merges = byte_level_vocab()
    return {
        "tokenizer.ggml.model": ("gpt2", VT.STRING), "tokenizer.ggml.pre": (pre, VT.STRING),
        "tokenizer.ggml.tokens": (tokens, VT.ARRAY), "tokenizer.ggml.token_type": (types, VT.ARRAY),
        "tokenizer.ggml.merges": (merges, VT.ARRAY),
        "tokenizer.ggml.bos_token_id": (1, VT.UINT32), "tokenizer.ggml.eos_token_id": (2, VT.UINT32),
        "tokenizer.ggml.unknown_token_id": (0, VT.UINT32), "tokenizer.ggml.padding_token_id": (2, VT.UINT32),
        "tokenizer.ggml.add_bos_token": (False, VT.BOOL), "tokenizer.chat_template": (CHATML, VT.STRING),
    }


def spm_tokenizer_metadata() -> dict[str, tuple]:
    tokens, types, scores = sentencepiece_vocab()
    return {
        "tokenizer.ggml.model": ("llama", VT.STRING), "tokenizer.ggml.pre": ("default", VT.STRING),
        "tokenizer.ggml.tokens": (tokens, VT.ARRAY), "tokenizer.ggml.token_type": (types, VT.ARRAY),
        "tokenizer.ggml.scores": (scores, VT.ARRAY),
        "tokenizer.ggml.bos_token_id": (1, VT.UINT32), "tokenizer.ggml.eos_token_id": (2, VT.UINT32),
        "tokenizer.ggml.unknown_token_id": (0, VT.UINT32), "tokenizer.ggml.add_bos_token": (True, VT.BOOL),
    }


def array_subtype(values: list) -> VT:
    first = values[0]
    return VT.STRING if isinstance(first, str) else VT.FLOAT32 if isinstance(first, float) else VT.INT32


def store(w: np.ndarray, tensor_type: QT) -> tuple[np.ndarray, QT | None]:
    """(array to hand GGUFWriter, raw dtype) for `w` stored as `tensor_type` (1-D tensors stay F32)."""
    if w.ndim == 1 or tensor_type == QT.F32:
        return w.astype(np.float32), None
    if tensor_type == QT.F16:
        return w.astype(np.float16), None
    return gguf.quants.quantize(w, tensor_type), tensor_type


def write_tiny_gguf(path: Path, model: TinyLlama, tensor_type: QT = QT.F32, *, arch: str = "llama",
                    tokenizer: dict | None = None, metadata: dict | None = None, drop: tuple = (),
                    extra_tensors: dict | None = None) -> Path:
    """Write `model` as a GGUF file. `metadata` adds/overrides keys, `drop` removes keys."""
    keys = {**llama_metadata(model.vocab), **(gpt2_tokenizer_metadata() if tokenizer is None else tokenizer),
            **(metadata or {})}
    writer = gguf.GGUFWriter(str(path), arch)
    for key, (value, vtype) in keys.items():
        if key in drop:
            continue
        key = key.replace("llama.", f"{arch}.", 1) if key.startswith("llama.") else key
        if vtype == VT.ARRAY:
            writer.add_key_value(key, value, vtype, sub_type=array_subtype(value))
        else:
            writer.add_key_value(key, value, vtype)
    for hf_name, w in model.weights.items():
        data, raw = store(gguf_array(hf_name, w), tensor_type)
        writer.add_tensor(gguf_tensor_name(hf_name), data, raw_dtype=raw)
    for name, w in (extra_tensors or {}).items():
        writer.add_tensor(name, w.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# ------------------------------------------------------- an independent dequantizer (ggml's block layouts)

def reference_dequantize(blocks: np.ndarray, tensor_type: QT, shape: tuple[int, ...]) -> np.ndarray:
    """Dequantize ggml blocks of 32 values, straight from the format description:

        Q8_0  [d: f16][q: 32 × int8]          x = d · q
        Q4_0  [d: f16][q: 16 bytes]           x = d · (nibble − 8)
        Q4_1  [d: f16][m: f16][q: 16 bytes]   x = d · nibble + m
    (in a 16-byte nibble array, byte j holds value j in its low nibble and value j + 16 in its high)."""
    raw = np.ascontiguousarray(blocks).view(np.uint8).reshape(-1)
    size = {QT.Q8_0: 34, QT.Q4_0: 18, QT.Q4_1: 20}[tensor_type]
    b = raw.reshape(-1, size)
    d = b[:, :2].copy().view(np.float16).astype(np.float32)                       # [n, 1]
    if tensor_type == QT.Q8_0:
        x = d * b[:, 2:].copy().view(np.int8).astype(np.float32)
    else:
        packed = b[:, 4:] if tensor_type == QT.Q4_1 else b[:, 2:]
        nibbles = np.concatenate([packed & 0x0F, packed >> 4], axis=1).astype(np.float32)   # [n, 32]
        if tensor_type == QT.Q4_1:
            x = d * nibbles + b[:, 2:4].copy().view(np.float16).astype(np.float32)
        else:
            x = d * (nibbles - 8)
    return x.reshape(shape)
