"""IncrementalDetokenizer vs the tokenizer's own full decode, on a sentencepiece-style (Metaspace, byte
fallback) tokenizer, a byte-level BPE and the default model's real tokenizer."""

from __future__ import annotations

import pytest
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import decoders, models, pre_tokenizers, trainers

from refengine.engine.detokenizer import IncrementalDetokenizer
from refengine.model.tokenizer import Tokenizer
from tests.model.test_tokenizer import TEXTS, llama_like_backend


def wrap(backend: tokenizers.Tokenizer, bos="<s>", eos="</s>") -> Tokenizer:
    return Tokenizer(backend, bos_token=bos, eos_token=eos, add_bos=False, chat_template=None)


def byte_level_backend() -> tokenizers.Tokenizer:
    """A small GPT-2-style byte-level BPE trained here: its merges cut CJK characters and emoji
    in the middle of their UTF-8 bytes (e.g. a token holding the first two bytes of 你)."""
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["你好世界 你们好 世界很大 😀😀 👍🏽 👨‍👩‍👧 hello world, the world is big", "日本語 한국어 ü é ß"] * 20
    trainer = trainers.BpeTrainer(vocab_size=330, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>", "<|im_end|>"], show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return tok


TOKENIZERS = {
    "llama-legacy": wrap(llama_like_backend("legacy")),
    "metaspace": wrap(llama_like_backend("metaspace")),
    "byte-level": wrap(byte_level_backend(), bos=None, eos="<|endoftext|>"),
}


def stream(tok, ids, prompt_ids=(), skip_special_tokens=True) -> list[str]:
    """All deltas, the flush last."""
    detok = IncrementalDetokenizer(tok, prompt_ids, skip_special_tokens=skip_special_tokens)
    deltas = [detok.add(i) for i in ids] + [detok.flush()]
    assert detok.text == "".join(deltas)
    return deltas


def interesting_ids(tok: Tokenizer) -> list[int]:
    """Byte tokens, specials and space tokens: where detokenizers go wrong."""
    backend = tok.backend
    vocab = backend.get_vocab(with_added_tokens=True)
    picks = [i for t, i in vocab.items() if t.startswith("<0x") or "▁" in t or tok.is_special(i)]
    picks += [i for t, i in vocab.items() if any(ord(c) >= 0x80 for c in backend.decode([i]))]  # partial chars
    return sorted(set(picks))


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_deltas_concatenate_to_full_decode(name, skip_special_tokens):
    tok = TOKENIZERS[name]
    pool = interesting_ids(tok)
    ids_strategy = st.lists(st.one_of(st.sampled_from(pool), st.integers(0, tok.vocab_size - 1)), max_size=40)

    @settings(max_examples=150, deadline=None, database=None)
    @given(ids_strategy)
    def check(ids):
        deltas = stream(tok, ids, skip_special_tokens=skip_special_tokens)
        full = tok.decode(ids, skip_special_tokens=skip_special_tokens)
        if "\ufffd" not in full:   # a character split over tokens is never emitted half-done
            assert "".join(deltas) == full
            assert not any("\ufffd" in d for d in deltas)
        elif name == "byte-level":
            # Invalid bytes: byte-level decoding replaces each bad sequence on its own, so even then
            # the stream matches. (ByteFallback turns a whole run of byte tokens into U+FFFD when any
            # byte in it is bad, so a streamed valid character may later be "unmade": not compared.)
            assert "".join(deltas) == full

    check()


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_texts_round_trip(name):
    tok = TOKENIZERS[name]
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        deltas = stream(tok, ids)
        assert "".join(deltas) == tok.decode(ids), text
        assert not any("\ufffd" in d for d in deltas), text


@pytest.mark.parametrize("name", ["llama-legacy", "metaspace"])
def test_leading_spaces_are_kept(name):
    tok = TOKENIZERS[name]
    ids = tok.encode("hello world the quick", add_special_tokens=False)
    assert len(ids) == 4   # one token per word, each "▁word"
    assert [tok.decode([i]) for i in ids] == ["hello", "world", "the", "quick"]   # alone: spaces lost
    assert stream(tok, ids) == ["hello", " world", " the", " quick", ""]
    # After skipped special tokens too.
    eos, bos = tok.eos_token_id, tok.bos_token_id
    assert stream(tok, [ids[0], eos, bos, ids[1]]) == ["hello", "", "", " world", ""]


@pytest.mark.parametrize("name", ["llama-legacy", "metaspace"])
def test_byte_fallback_characters_are_held_until_complete(name):
    tok = TOKENIZERS[name]
    ids = tok.encode("hello 你😀", add_special_tokens=False)
    assert tok.backend.id_to_token(ids[2]) == "<0xE4>"   # ▁hello ▁ <0xE4><0xBD><0xA0> <0xF0>...
    assert stream(tok, ids) == ["hello", " ", "", "", "你", "", "", "", "😀", ""]


def test_byte_level_characters_split_inside_tokens():
    tok = TOKENIZERS["byte-level"]
    ids = tok.encode("你好世界 😀😀 👍🏽", add_special_tokens=False)
    pieces = [tok.decode([i]) for i in ids]
    assert any("\ufffd" in p for p in pieces)          # the test is worth something: characters are split
    deltas = stream(tok, ids)
    assert "".join(deltas) == "你好世界 😀😀 👍🏽"
    assert not any("\ufffd" in d for d in deltas)


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
def test_prompt_context(name):
    """With the prompt as context the text reads as the prompt's continuation (vLLM's behaviour): a
    Metaspace first word keeps its space, which decode(generated) alone drops."""
    tok = TOKENIZERS[name]
    prompt = tok.encode("the quick 你好 [INST] hi [/INST]", add_special_tokens=False)
    generated = tok.encode(" hello world 😀 ok", add_special_tokens=False)
    if name != "byte-level":
        generated = tok.encode("hello world 😀 ok", add_special_tokens=False)   # "▁hello" ...
    deltas = stream(tok, generated, prompt_ids=prompt)
    assert "".join(deltas) == tok.decode(prompt + generated)[len(tok.decode(prompt)):]
    assert deltas[0] == " hello"


def test_incomplete_character_at_the_end_is_flushed():
    tok = TOKENIZERS["llama-legacy"]
    ids = tok.encode("ok 你", add_special_tokens=False)[:-1]   # drop the last byte of 你
    detok = IncrementalDetokenizer(tok)
    assert [detok.add(i) for i in ids] == ["", "o", "k", " ", "", ""]   # ▁ o k ▁ <0xE4> <0xBD>
    assert detok.text == "ok "
    assert detok.flush() == "\ufffd\ufffd" == tok.decode(ids)[3:]
    assert detok.flush() == ""


def test_cost_per_token_is_bounded():
    """Each step decodes a few tokens, not the whole sequence."""
    class CountingTokenizer:
        def __init__(self, tok):
            self.tok, self.longest = tok, 0

        def decode(self, ids, skip_special_tokens=True):
            self.longest = max(self.longest, len(ids))
            return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)

    tok = TOKENIZERS["llama-legacy"]
    ids = tok.encode("hello world the quick 你好😀 " * 300, add_special_tokens=False)
    counting = CountingTokenizer(tok)
    prompt = ids[:100]
    detok = IncrementalDetokenizer(counting, prompt_ids=prompt)
    text = "".join(detok.add(i) for i in ids) + detok.flush()
    assert text == tok.decode(prompt + ids)[len(tok.decode(prompt)):]
    assert counting.longest <= 8


def test_real_default_model_tokenizer(hf_demo_tokenizer, tmp_path):
    """SmolLM2's byte-level BPE: every text and a few random id streams, against transformers' decode."""
    import random
    hf_demo_tokenizer.save_pretrained(tmp_path)
    tok = Tokenizer.from_hf_dir(tmp_path)
    rng = random.Random(1)
    id_lists = [hf_demo_tokenizer.encode(t) for t in TEXTS]
    id_lists += [[rng.randrange(tok.vocab_size) for _ in range(50)] for _ in range(10)]
    for ids in id_lists:
        for skip in (True, False):
            deltas = stream(tok, ids, skip_special_tokens=skip)
            full = hf_demo_tokenizer.decode(ids, skip_special_tokens=skip)
            assert "".join(deltas) == full
            if "\ufffd" not in full:
                assert not any("\ufffd" in d for d in deltas)
