"""The tokenizer of a GGUF file, rebuilt with the `tokenizers` library from `tokenizer.ggml.*` metadata.

    tokenizer.ggml.model = gpt2   byte-level BPE: vocab + "a b" merges, a pre-tokenizer chosen by
                                  `tokenizer.ggml.pre` (llama.cpp's name for the split regex)
    tokenizer.ggml.model = llama  sentencepiece BPE with byte fallback; merges rebuilt from scores
    token_type 3 (control)        special added tokens; 4 (user-defined) plain added tokens

Special ids (bos/eos/eot/unk/pad), add_bos and the chat template come from the same metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers

from refengine.errors import ModelLoadError, UnsupportedModelError
from refengine.model.arch import FAMILIES
from refengine.model.tokenizer import Tokenizer

if TYPE_CHECKING:
    from refengine.model.gguf import GGUFMetadata

TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED = 2, 3, 4     # gguf.TokenType values


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
        default_template=FAMILIES["llama"].default_chat_template,
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
