"""A byte-level BPE tokenizer of exactly `vocab_size` tokens, for random-weight models.

A random model's output ids are random; all the engine needs from its tokenizer is that every id decodes
(the incremental detokenizer runs on every token, as it does for a real model) and that text encodes. No
real tokenizer has the shapes' sizes (32000 / 128256 / 92544) in this byte-level form, so we build one:

    ids 0, 1, 2            <unk>  <s>  </s>                  (special; </s> is eos, <s> is bos and is put in
                                                             front of encoded text, as Llama's tokenizer does)
    ids 3 .. 258           the 256 bytes, GPT-2's byte-to-unicode alphabet (any text encodes, any bytes decode)
    ids 259 ..             merges: first " a" .. " z", then seeded random letter strings built one letter at
                           a time (each merge joins an existing token and a letter), until vocab_size

Random ids decode to word-like letter strings (and, for lone byte tokens, to U+FFFD where the bytes are not
UTF-8) — realistic work for the detokenizer. The same seed always gives the same tokenizer.
"""

from __future__ import annotations

import numpy as np
import tokenizers
from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors

from refengine.bench.errors import BenchError

SPECIALS = ("<unk>", "<s>", "</s>")
LETTERS = "abcdefghijklmnopqrstuvwxyz"
SPACE = "Ġ"                       # the byte-level alphabet's character for b" "
MIN_VOCAB = len(SPECIALS) + 256


def byte_alphabet() -> list[str]:
    """GPT-2's printable stand-in character for each byte 0..255 (the ByteLevel pre-tokenizer's alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def vocab_and_merges(vocab_size: int, seed: int = 0) -> tuple[dict[str, int], list[tuple[str, str]]]:
    if vocab_size < MIN_VOCAB:
        raise BenchError(f"a byte-level tokenizer needs a vocabulary of at least {MIN_VOCAB}, got {vocab_size}")
    vocab = {tok: i for i, tok in enumerate([*SPECIALS, *byte_alphabet()])}
    merges: list[tuple[str, str]] = []
    pieces = list(LETTERS)                              # tokens a merge may extend
    rng = np.random.default_rng(seed)
    candidates = iter([(SPACE, c) for c in LETTERS])    # " a" .. " z" first
    while len(vocab) < vocab_size:
        left, right = next(candidates, None) or (pieces[int(len(pieces) * rng.random() ** 3)],
                                                 LETTERS[rng.integers(len(LETTERS))])
        if left + right in vocab:                       # ** 3: mostly short pieces, so tokens stay word-sized
            continue
        merges.append((left, right))
        vocab[left + right] = len(vocab)
        pieces.append(left + right)
    return vocab, merges


def build_backend(vocab_size: int, seed: int = 0) -> tokenizers.Tokenizer:
    vocab, merges = vocab_and_merges(vocab_size, seed)
    backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    bos = SPECIALS[1]                                   # like Llama's tokenizer.json: <s> in front of text
    backend.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, SPECIALS.index(bos))])
    return backend


def synthetic_tokenizer(vocab_size: int, seed: int = 0):
    """A refengine Tokenizer over build_backend: bos <s> added to encoded text, eos </s>, no chat template."""
    from refengine.model.tokenizer import Tokenizer
    unk, bos, eos = SPECIALS
    return Tokenizer(build_backend(vocab_size, seed), bos_token=bos, eos_token=eos, add_bos=True,
                     chat_template=None, special_tokens={"bos_token": bos, "eos_token": eos, "unk_token": unk},
                     source=f"synthetic byte-level BPE, vocab {vocab_size}, seed {seed}")
