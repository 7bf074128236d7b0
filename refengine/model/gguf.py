"""GGUF import: a llama.cpp model file turned into refengine's config, float32 weights and tokenizer.

A GGUF file is one header of typed metadata (llama.cpp key names, e.g. `llama.embedding_length`)
followed by tensors, each with its own type (F32, F16, BF16, Q8_0, Q4_0, Q4_1, K-quants ...).
We read it with the `gguf` package's GGUFReader (memory-mapped: nothing is read until asked for),
then

    metadata               -> ModelConfig                      (config_from_gguf)
    tensors, layer by layer -> dequantized float32 [out, in]   (gguf_fetcher + assemble_weights)
    tokenizer.ggml.* keys  -> tokenizers.Tokenizer             (gguf_tokenizer.py)

Two things differ from a Hugging Face checkpoint and are undone here:
- Shapes: GGUF lists dimensions innermost first, so the reader's `t.shape` is numpy's reversed;
  `gguf.quants.dequantize` already returns the numpy-ordered [out, in] array.
- q/k rows: llama.cpp's converter reorders each head's rows for its own rope layout (unpermute_rotary).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFValueType
from gguf.quants import dequantize

from refengine.config import ModelConfig, RopeScaling
from refengine.errors import ModelLoadError, UnsupportedModelError
from refengine.model.gguf_tokenizer import tokenizer_from_gguf
from refengine.model.tokenizer import Tokenizer
from refengine.model.weights import ModelWeights, assemble_weights
from refengine.ops.reference import rope_inv_freq

ARCH = "llama"

# refengine role -> GGUF tensor name (per layer: prefixed with `blk.{i}.`).
GLOBAL_TENSORS = {"embed": "token_embd.weight", "final_norm": "output_norm.weight",
                  "lm_head": "output.weight"}
LAYER_TENSORS = {
    "attn_norm": "attn_norm.weight", "mlp_norm": "ffn_norm.weight",
    "q": "attn_q.weight", "k": "attn_k.weight", "v": "attn_v.weight", "o": "attn_output.weight",
    "q_bias": "attn_q.bias", "k_bias": "attn_k.bias", "v_bias": "attn_v.bias", "o_bias": "attn_output.bias",
    "gate": "ffn_gate.weight", "up": "ffn_up.weight", "down": "ffn_down.weight",
    "gate_bias": "ffn_gate.bias", "up_bias": "ffn_up.bias", "down_bias": "ffn_down.bias",
}
# Roles whose rows llama.cpp permuted, and whose head count to undo it with.
ROTARY_ROLES = {"q": "num_heads", "q_bias": "num_heads", "k": "num_kv_heads", "k_bias": "num_kv_heads"}

_MISSING = object()


def load_gguf(path, progress=None) -> tuple[ModelConfig, ModelWeights, Tokenizer]:
    """(ModelConfig, ModelWeights, Tokenizer) from a GGUF file of llama architecture.

    `progress(i, n)` is called after each of the n layers is dequantized."""
    path = Path(path)
    reader = open_gguf(path)
    meta = GGUFMetadata(reader, path)
    tensors = {t.name: t for t in reader.tensors}
    cfg = config_from_gguf(meta, tensors)
    try:
        weights = assemble_weights(cfg, gguf_fetcher(tensors, cfg, path), progress=progress)
    except UnsupportedModelError:
        raise                                    # raised by us, already naming the file
    except ModelLoadError as e:                  # assemble_weights' "missing weight ..." / "shape ..."
        raise ModelLoadError(f"{path}: {e}") from None
    return cfg, weights, tokenizer_from_gguf(meta)


def open_gguf(path: Path):
    """A GGUFReader over `path`, or a one-line ModelLoadError naming the file."""
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    try:
        return GGUFReader(path, "r")
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read ({e.strerror or e})") from None
    except (ValueError, IndexError, UnicodeDecodeError) as e:
        # The reader parses straight off the memory map: a wrong magic says ValueError, a file cut
        # short shows up as a failed reshape / view / index somewhere in the header or tensor table.
        raise ModelLoadError(f"{path}: not a valid GGUF file (bad magic, or truncated: {e})") from None


# ----------------------------------------------------------------------------------------- metadata

class GGUFMetadata:
    """Typed access to a GGUF file's key/value metadata; errors name the file and the key."""

    def __init__(self, reader, path: Path):
        self.fields = reader.fields
        self.path = path

    def get(self, key: str, default=None):
        field = self.fields.get(key)
        if field is None:
            return default
        try:
            return field_value(field)
        except (ValueError, IndexError) as e:
            raise ModelLoadError(f"{self.path}: metadata key {key!r} cannot be decoded ({e})") from None

    def require(self, key: str):
        if key not in self.fields:
            raise ModelLoadError(f"{self.path}: missing metadata key {key!r}")
        return self.get(key)

    def int(self, key: str, default=_MISSING) -> int:
        value = self.require(key) if default is _MISSING else self.get(key, default)
        if isinstance(value, list) and value:
            if len(set(value)) > 1:   # e.g. a KV head count per layer
                raise UnsupportedModelError(f"{self.path}: {key} differs between layers: not supported")
            value = value[0]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ModelLoadError(f"{self.path}: metadata key {key!r} = {value!r}: expected an integer")
        return value

    def float(self, key: str, default=_MISSING) -> float:
        value = self.require(key) if default is _MISSING else self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ModelLoadError(f"{self.path}: metadata key {key!r} = {value!r}: expected a number")
        return float(value)

    def array_len(self, key: str) -> int:
        if key not in self.fields:
            raise ModelLoadError(f"{self.path}: missing metadata key {key!r}")
        return len(self.fields[key].data)


def field_value(field):
    """A ReaderField as Python: str, int, float, bool, or a list of them.

    `field.parts` holds the raw numpy pieces of the record; `field.data` indexes the ones that carry
    values (one for a scalar, one per element for an array)."""
    if field.types[0] == GGUFValueType.ARRAY:
        return [_scalar(field.parts[i], field.types[-1]) for i in field.data]
    return _scalar(field.parts[field.data[0]], field.types[0])


def _scalar(part: np.ndarray, vtype):
    if vtype == GGUFValueType.STRING:
        return bytes(part).decode("utf-8")
    if vtype == GGUFValueType.BOOL:
        return bool(part[0])
    if vtype == GGUFValueType.FLOAT32:
        # 1e-5 is stored as the float32 9.99999974e-06; its shortest float32 spelling gives back
        # the decimal the converter was given.
        return float(str(part[0]))
    return part[0].item()


# ------------------------------------------------------------------------------------------- config

def config_from_gguf(meta: GGUFMetadata, tensors: dict) -> ModelConfig:
    """ModelConfig from `llama.*` metadata; the tensor table says whether biases / an LM head exist."""
    arch = meta.require("general.architecture")
    if arch != ARCH:
        raise UnsupportedModelError(
            f"{meta.path}: GGUF architecture {arch!r} is not supported (supported: {ARCH})")
    refuse_unsupported(meta)
    hidden, heads = meta.int("llama.embedding_length"), meta.int("llama.attention.head_count")
    head_dim = meta.int("llama.attention.key_length", hidden // heads if heads > 0 else 0)
    rotary_dims = meta.int("llama.rope.dimension_count", head_dim)
    if rotary_dims != head_dim:
        raise UnsupportedModelError(f"{meta.path}: partial rotary embeddings (llama.rope.dimension_count="
                                    f"{rotary_dims}, head_dim={head_dim}) are not supported")
    theta = meta.float("llama.rope.freq_base", 10000.0)
    context = meta.int("llama.context_length")
    has = lambda name: f"blk.0.{name}" in tensors
    try:
        return ModelConfig(
            family=ARCH,
            hidden_size=hidden,
            num_layers=meta.int("llama.block_count"),
            num_heads=heads,
            num_kv_heads=meta.int("llama.attention.head_count_kv", heads),
            head_dim=head_dim,
            intermediate_size=meta.int("llama.feed_forward_length"),
            vocab_size=meta.array_len("tokenizer.ggml.tokens"),
            rms_norm_eps=meta.float("llama.attention.layer_norm_rms_epsilon"),
            rope_theta=theta,
            rope_scaling=rope_scaling_from_gguf(meta, tensors, head_dim, theta, context),
            max_position_embeddings=context,
            tie_word_embeddings=GLOBAL_TENSORS["lm_head"] not in tensors,
            qkv_bias=has("attn_q.bias"),
            o_bias=has("attn_output.bias"),
            mlp_bias=has("ffn_gate.bias"),
        )
    except UnsupportedModelError as e:
        raise UnsupportedModelError(f"{meta.path}: {e}") from None


def refuse_unsupported(meta: GGUFMetadata) -> None:
    """llama-architecture files that are not a plain dense decoder in one file."""
    if meta.get("llama.expert_count", 0):
        raise UnsupportedModelError(f"{meta.path}: mixture-of-experts models (llama.expert_count="
                                    f"{meta.get('llama.expert_count')}) are not supported")
    if meta.get("split.count", 1) > 1:
        raise UnsupportedModelError(f"{meta.path}: one part of a {meta.get('split.count')}-part split GGUF; "
                                    "merge the parts first (llama-gguf-split --merge)")


def rope_scaling_from_gguf(meta: GGUFMetadata, tensors: dict, head_dim: int, theta: float,
                           context: int) -> RopeScaling:
    """`llama.rope.scaling.*` keys (or the pre-2024 `llama.rope.scale_linear`), or Llama 3.1's scaling,
    which llama.cpp stores not as keys but as a `rope_freqs.weight` table of per-frequency divisors."""
    legacy_linear = meta.float("llama.rope.scale_linear", 1.0)
    kind = meta.get("llama.rope.scaling.type", "linear" if legacy_linear != 1.0 else "none")
    factor = meta.float("llama.rope.scaling.factor", legacy_linear)
    original = meta.int("llama.rope.scaling.original_context_length", context)
    if kind == "none":
        if "rope_freqs.weight" in tensors:
            freqs = dequantize_tensor(tensors["rope_freqs.weight"], meta.path)
            return llama3_scaling_from_freqs(freqs, head_dim, theta, meta.path)
        return RopeScaling()
    if kind == "linear":
        return RopeScaling("linear", factor=factor, original_max_position=original)
    raise UnsupportedModelError(f"{meta.path}: rope scaling type {kind!r} (llama.rope.scaling.type) is not "
                                "supported (supported: none, linear, and Llama 3's rope_freqs table)")


# (low_freq_factor, high_freq_factor, original_max_position) of the published Llama 3.1 / 3.2 configs;
# the factor itself is the table's largest divisor.
LLAMA3_ROPE_CANDIDATES = ((1.0, 4.0, 8192),)


def llama3_scaling_from_freqs(freqs: np.ndarray, head_dim: int, theta: float, path: Path) -> RopeScaling:
    """Recognise a rope_freqs table as Llama 3 scaling by recomputing it: divisor_i =
    inv_freq_default_i / inv_freq_llama3_i (llama.cpp divides each frequency by the table entry)."""
    if freqs.shape != (head_dim // 2,):
        raise ModelLoadError(f"{path}: rope_freqs.weight has shape {freqs.shape}, expected ({head_dim // 2},)")
    factor = float(freqs.max())
    plain = rope_inv_freq(head_dim, theta, RopeScaling(), 0)
    for low, high, original in LLAMA3_ROPE_CANDIDATES:
        scaling = RopeScaling("llama3", factor, low, high, original)
        if np.allclose(plain / rope_inv_freq(head_dim, theta, scaling, 0), freqs, rtol=1e-3):
            return scaling
    raise UnsupportedModelError(f"{path}: rope_freqs.weight is not a Llama 3 rope scaling table "
                                "this loader recognises (custom rope frequencies are not supported)")


# ------------------------------------------------------------------------------------------ weights

def gguf_fetcher(tensors: dict, cfg: ModelConfig, path: Path):
    """fetch(role, layer) for assemble_weights: dequantizes one tensor at a time, as it is asked for."""
    def fetch(role, layer):
        name = GLOBAL_TENSORS[role] if layer is None else f"blk.{layer}.{LAYER_TENSORS[role]}"
        tensor = tensors.get(name)
        if tensor is None:
            return None
        w = dequantize_tensor(tensor, path)
        if role in ROTARY_ROLES:
            w = unpermute_rotary(w, getattr(cfg, ROTARY_ROLES[role]))
        return w
    return fetch


def dequantize_tensor(tensor, path: Path) -> np.ndarray:
    """float32 array in numpy order ([out, in] for a linear) of any type gguf.quants can dequantize."""
    shape = tuple(int(d) for d in reversed(tensor.shape))     # GGUF lists the innermost dimension first
    try:
        w = dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError:
        raise UnsupportedModelError(f"{path}: tensor {tensor.name} has type {tensor.tensor_type.name}, "
                                    "which this gguf package cannot dequantize") from None
    if np.may_share_memory(w, tensor.data):
        w = np.array(w, dtype=np.float32)    # F32 comes back as a view of the file's memory map: own it
    return np.ascontiguousarray(w, dtype=np.float32).reshape(shape)


def unpermute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row order (a weight [rows, in] or a bias [rows]).

    Hugging Face rotates halves: head rows [x_0 … x_{D/2-1} | x_{D/2} … x_{D-1}], pairing x_i with x_{i+D/2}.
    llama.cpp rotates adjacent pairs, so its converter interleaved them: [x_0, x_{D/2}, x_1, x_{D/2+1}, …].
    Per head, view the rows as [D/2, 2] and transpose to [2, D/2] to get the halves back.
    """
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
