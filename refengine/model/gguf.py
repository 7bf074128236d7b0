"""GGUF import: a llama.cpp model file turned into refengine's config, float32 weights and tokenizer.

A GGUF file is one header of typed metadata (llama.cpp key names, e.g. `llama.embedding_length`)
followed by tensors, each with its own type (F32, F16, BF16, Q8_0, Q4_0, Q4_1, K-quants ...).
We read it with the `gguf` package's GGUFReader (memory-mapped: nothing is read until asked for),
then

    metadata               -> ModelConfig                      (config_from_gguf)
    tensors, layer by layer -> dequantized float32 [out, in]   (gguf_fetcher + assemble_weights)
    tokenizer.ggml.* keys  -> tokenizers.Tokenizer             (backend_from_gguf)

Two things differ from a Hugging Face checkpoint and are undone here:
- Shapes: GGUF lists dimensions innermost first, so the reader's `t.shape` is numpy's reversed;
  `gguf.quants.dequantize` already returns the numpy-ordered [out, in] array.
- q/k rows: llama.cpp's converter reorders each head's rows for its own rope layout (unpermute_rotary).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tokenizers
from gguf import GGUFReader, GGUFValueType
from gguf.quants import dequantize
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers

from refengine.config import ModelConfig, RopeScaling
from refengine.errors import ModelLoadError, UnsupportedModelError
from refengine.model.arch import FAMILIES
from refengine.model.tokenizer import Tokenizer
from refengine.model.weights import ModelWeights, assemble_weights
from refengine.ops.reference import rope_inv_freq

ARCH = "llama"
TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED = 2, 3, 4     # gguf.TokenType values

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


# ---------------------------------------------------------------------------------------- tokenizer

def tokenizer_from_gguf(meta: GGUFMetadata):
    """refengine's Tokenizer: the backend from `tokenizer.ggml.*`, special tokens, chat template."""
    tokens = meta.require("tokenizer.ggml.tokens")
    kind = meta.require("tokenizer.ggml.model")
    token_of = lambda key: _token_at(meta, tokens, key)
    eos_ids = [meta.get(f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")]
    special = {name: token_of(f"{key}_token_id") for name, key in (
        ("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"), ("pad_token", "padding"))}
    return Tokenizer(
        backend_from_gguf(meta, tokens, kind),
        bos_token=special["bos_token"],
        eos_token=special["eos_token"],
        # llama.cpp's defaults when the key is absent: sentencepiece vocabularies add BOS, GPT-2 ones do not
        add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", kind == "llama")),
        chat_template=meta.get("tokenizer.chat_template"),
        special_tokens={k: v for k, v in special.items() if v is not None},
        eos_token_ids=tuple(dict.fromkeys(i for i in eos_ids if i is not None and 0 <= i < len(tokens))),
        default_template=FAMILIES[ARCH].default_chat_template,
        source=str(meta.path),
    )


def _token_at(meta: GGUFMetadata, tokens: list, key: str) -> str | None:
    token_id = meta.get(f"tokenizer.ggml.{key}")
    if token_id is None:
        return None
    if not 0 <= token_id < len(tokens):
        raise ModelLoadError(f"{meta.path}: tokenizer.ggml.{key} = {token_id} is outside the vocabulary "
                             f"(0..{len(tokens) - 1})")
    return tokens[token_id]


def backend_from_gguf(meta: GGUFMetadata, tokens: list, kind: str) -> tokenizers.Tokenizer:
    """A `tokenizers.Tokenizer` for `tokenizer.ggml.model` gpt2 (byte-level BPE) or llama (sentencepiece
    BPE), with control tokens as special added tokens and user-defined ones as plain added tokens."""
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    if kind == "gpt2":
        pre = meta.get("tokenizer.ggml.pre", "default")
        backend = byte_level_bpe(tokens, meta.require("tokenizer.ggml.merges"), pre, meta.path)
    elif kind == "llama":
        unk = _token_at(meta, tokens, "unknown_token_id")
        backend = sentencepiece_bpe(
            tokens, meta.get("tokenizer.ggml.merges"), meta.get("tokenizer.ggml.scores"), unk,
            add_space_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", True)), path=meta.path)
    else:
        raise UnsupportedModelError(f"{meta.path}: tokenizer.ggml.model {kind!r} is not supported "
                                    "(supported: gpt2, llama)")
    add_marked_tokens(backend, tokens, types)
    return backend


# The pre-tokenizer llama.cpp applies for each `tokenizer.ggml.pre` (its llama-vocab.cpp), as
# `tokenizers` pre-tokenizers: "gpt2" = GPT-2's regex (ByteLevel's own), "digits" = every digit on its
# own first (SmolLM, StarCoder), else a regex split before the byte mapping.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {
    # "default" is what llama.cpp reads when the converter did not recognise the tokenizer (or the file
    # predates the key); like transformers we take GPT-2's regex for it.
    **dict.fromkeys(("default", "gpt-2", "mpt", "olmo", "jais"), "gpt2"),
    **dict.fromkeys(("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"),
                    "digits"),
    **dict.fromkeys(("llama-bpe", "llama3", "llama-v3", "smaug-bpe", "dbrx", "falcon3"), LLAMA3_SPLIT),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "stablelm2"), QWEN2_SPLIT),
}


def byte_level_pre_tokenizer(pre: str, path: Path) -> pre_tokenizers.PreTokenizer:
    if pre not in PRE_TOKENIZERS:
        raise UnsupportedModelError(f"{path}: tokenizer.ggml.pre {pre!r} is not supported "
                                    f"(supported: {', '.join(sorted(PRE_TOKENIZERS))})")
    split = PRE_TOKENIZERS[pre]
    gpt2 = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if split == "gpt2":
        return gpt2
    if split == "digits":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), gpt2])
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def byte_level_bpe(tokens: list, merges: list, pre: str, path: Path) -> tokenizers.Tokenizer:
    """GPT-2 style BPE: tokens are already spelled in the byte-to-unicode alphabet, merges are "a b"."""
    backend = tokenizers.Tokenizer(_bpe_model(tokens, [tuple(m.split(" ", 1)) for m in merges], path,
                                 byte_fallback=False))
    backend.pre_tokenizer = byte_level_pre_tokenizer(pre, path)
    backend.decoder = decoders.ByteLevel()
    return backend


def sentencepiece_bpe(tokens: list, merges: list | None, scores: list | None, unk: str | None,
                      add_space_prefix: bool, path: Path) -> tokenizers.Tokenizer:
    """Llama-2 style sentencepiece BPE: spaces spelled "▁", bytes missing from the vocabulary as <0xNN>.

    Built like the original Llama-2 tokenizer.json: a normalizer prepends "▁" to every stretch of text
    (also one after a special token, also one that starts with a space), as llama.cpp does too.
    (transformers' GGUF import uses Metaspace instead, which adds it only at the start of the text
    and not before an existing space.)"""
    if merges is not None:
        pairs = [tuple(m.split(" ", 1)) for m in merges]
    elif scores is not None:
        pairs = merges_from_scores(tokens, scores)
    else:
        raise ModelLoadError(f"{path}: missing metadata key 'tokenizer.ggml.scores' "
                             "(a sentencepiece vocabulary needs scores or merges)")
    backend = tokenizers.Tokenizer(_bpe_model(tokens, pairs, path, byte_fallback=True, unk=unk))
    spaces = [normalizers.Replace(" ", "\u2581")]
    backend.normalizer = normalizers.Sequence(
        ([normalizers.Prepend("\u2581")] if add_space_prefix else []) + spaces)
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    backend.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if add_space_prefix else []))
    return backend


def _bpe_model(tokens: list, pairs: list, path: Path, byte_fallback: bool, unk: str | None = None
               ) -> models.BPE:
    vocab = {token: i for i, token in enumerate(tokens)}
    bad = next((p for p in pairs if len(p) != 2 or p[0] not in vocab or p[1] not in vocab), None)
    if bad is not None:
        raise ModelLoadError(f"{path}: tokenizer merge {' '.join(bad)!r} uses a token not in the vocabulary")
    return models.BPE(vocab, pairs, unk_token=unk, fuse_unk=unk is not None, byte_fallback=byte_fallback)


def merges_from_scores(tokens: list, scores: list) -> list[tuple[str, str]]:
    """Sentencepiece keeps scores, not merges: every split of a token into two vocabulary tokens is a
    merge, ranked by the merged token's score, best first (ties: longer left, then longer right piece;
    the same ranking as transformers' generate_merges, so both build the same BPE)."""
    vocab = {token: i for i, token in enumerate(tokens)}
    ranked = []
    for token, score in dict(zip(tokens, scores)).items():
        local = [(token[:k], token[k:]) for k in range(1, len(token))
                 if token[:k] in vocab and token[k:] in vocab]
        local.sort(key=lambda p: (vocab[p[0]], vocab[p[1]]))
        ranked.extend((score, left, right) for left, right in local)
    ranked.sort(key=lambda m: (m[0], len(m[1]), len(m[2])), reverse=True)
    return [(left, right) for _, left, right in ranked]


def add_marked_tokens(backend: tokenizers.Tokenizer, tokens: list, types: list) -> None:
    """Control (and unknown) tokens become special added tokens: matched whole in the text, never
    split, dropped by decode(skip_special_tokens=True). User-defined ones (e.g. <think>) are matched
    whole too, but are ordinary text. Both are already in the vocabulary, so no id is created."""
    special = [AddedToken(t, special=True, normalized=False)
               for t, kind in zip(tokens, types) if t and kind in (TOKEN_UNKNOWN, TOKEN_CONTROL)]
    plain = [AddedToken(t, special=False, normalized=False)
             for t, kind in zip(tokens, types) if t and kind == TOKEN_USER_DEFINED]
    backend.add_special_tokens(special)
    backend.add_tokens(plain)
