"""refengine's Tokenizer vs transformers' AutoTokenizer on the default model's real tokenizer, plus the
bos / eos / chat-template rules on small tokenizers built here with the `tokenizers` library."""

from __future__ import annotations

import json
import logging

import pytest
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from refengine.errors import ChatTemplateError, ModelLoadError
from refengine.model.tokenizer import Tokenizer

TEXTS = [
    "Hello, world!",
    "",
    " leading space and trailing  ",
    "digits 0123456789 and 3.14159, 1,000,000",
    "CJK 你好，世界。日本語のテキスト 한국어",
    "emoji 😀👍🏽 family 👨‍👩‍👧 flags 🇫🇷",
    "whitespace runs:\t\t tabs   spaces\n\n\nnewlines \r\n crlf",
    "def f(x):\n    return {'a': [x ** 2 for _ in range(3)]}  # code\n",
    "special tokens in text: <|im_start|>user\nhi<|im_end|><|endoftext|>",
    "accents: naïve café Ω ≈ ∑ — “quotes” ‘single’",
    "<|im_start|><|im_start|> doubled bos-like token",
]

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}],
    [{"role": "system", "content": "Answer in French."},
     {"role": "user", "content": "Hello!"},
     {"role": "assistant", "content": "Bonjour !"},
     {"role": "user", "content": "How are you? 😀 你好"}],
    [{"role": "user", "content": "  spaces around  "}, {"role": "assistant", "content": "ok\n"},
     {"role": "user", "content": "again"}],
]


# ---- the default model's real tokenizer, saved by transformers ------------------------------------------

@pytest.fixture(scope="module")
def demo_dir(hf_demo_tokenizer, tmp_path_factory):
    d = tmp_path_factory.mktemp("smollm2_tokenizer")
    hf_demo_tokenizer.save_pretrained(d)
    assert (d / "tokenizer.json").is_file() and (d / "chat_template.jinja").is_file()
    return d


@pytest.fixture(scope="module")
def demo_tok(demo_dir):
    return Tokenizer.from_hf_dir(demo_dir)


@pytest.mark.parametrize("add_special_tokens", [True, False])
def test_encode_matches_transformers(demo_tok, hf_demo_tokenizer, add_special_tokens):
    for text in TEXTS:
        want = hf_demo_tokenizer.encode(text, add_special_tokens=add_special_tokens)
        assert demo_tok.encode(text, add_special_tokens=add_special_tokens) == want, text


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_decode_matches_transformers(demo_tok, hf_demo_tokenizer, skip_special_tokens):
    import random
    rng = random.Random(0)
    id_lists = [hf_demo_tokenizer.encode(t) for t in TEXTS]
    id_lists += [[rng.randrange(demo_tok.vocab_size) for _ in range(rng.randrange(1, 40))] for _ in range(20)]
    id_lists += [[1, 2, 0, 5, 1]]  # specials only, or nearly
    for ids in id_lists:
        want = hf_demo_tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        assert demo_tok.decode(ids, skip_special_tokens=skip_special_tokens) == want, ids


def test_special_tokens_match_transformers(demo_tok, hf_demo_tokenizer):
    assert demo_tok.vocab_size == len(hf_demo_tokenizer)
    assert demo_tok.bos_token_id == hf_demo_tokenizer.bos_token_id
    assert demo_tok.eos_token_id == hf_demo_tokenizer.eos_token_id
    assert demo_tok.eos_token_ids[0] == hf_demo_tokenizer.eos_token_id
    # "special" = what decode(skip_special_tokens=True) drops: every added token marked special, a superset
    # of the named ones (all_special_ids).
    specials = {i for i in range(demo_tok.vocab_size) if demo_tok.is_special(i)}
    dropped = {i for i in range(demo_tok.vocab_size)
               if hf_demo_tokenizer.decode([i], skip_special_tokens=True) == ""}
    assert specials == dropped and set(hf_demo_tokenizer.all_special_ids) <= specials
    assert demo_tok.chat_template == hf_demo_tokenizer.chat_template
    assert demo_tok.chat_template_source == "model"


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_matches_transformers(demo_tok, hf_demo_tokenizer, add_generation_prompt):
    for conv in CONVERSATIONS:
        want_text = hf_demo_tokenizer.apply_chat_template(conv, tokenize=False,
                                                          add_generation_prompt=add_generation_prompt)
        want_ids = hf_demo_tokenizer.apply_chat_template(conv, tokenize=True, return_dict=False,
                                                         add_generation_prompt=add_generation_prompt)
        assert demo_tok.render_chat(conv, add_generation_prompt=add_generation_prompt) == want_text
        assert demo_tok.encode_chat(conv, add_generation_prompt=add_generation_prompt) == list(want_ids)


def test_chat_kwargs_reach_the_template_like_transformers(demo_dir, hf_demo_tokenizer):
    template = ("{{ bos_token }}|{{ unk_token }}|{{ pad_token }}|{{ sep_token }}|{{ tools | tojson }}|"
                "{% for m in messages %}{{ m.content }}{% endfor %}|{{ custom }}|{{ documents is none }}")
    tok = Tokenizer.from_hf_dir(demo_dir)
    (demo_dir / "custom.jinja").write_text(template)
    tok.set_chat_template(str(demo_dir / "custom.jinja"))
    conv = [{"role": "user", "content": "ü<b>"}]
    tools = [{"type": "function", "function": {"name": "größe", "parameters": {}}}]
    want = hf_demo_tokenizer.apply_chat_template(conv, chat_template=template, tokenize=False, tools=tools,
                                                 custom="x")
    assert tok.render_chat(conv, tools=tools, custom="x") == want
    assert "größe" in want and "None" not in want.split("|")[3]  # unset sep_token renders "" (not "None")


# ---- small tokenizers built here -------------------------------------------------------------------------

def llama_like_backend(style: str = "legacy", post_bos: bool = True) -> tokenizers.Tokenizer:
    """A small sentencepiece-style (Llama-2-like) BPE tokenizer: "▁" for spaces, byte fallback <0xXX>,
    specials <unk> <s> </s>. style "legacy" is Llama-2's tokenizer.json (Prepend/Replace normalizer, Strip
    decoder); "metaspace" is the newer Metaspace pre-tokenizer/decoder with prepend_scheme="first"."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for ch in "▁abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'[]/<>|-:":
        vocab.setdefault(ch, len(vocab))
    merges = []
    for word in ["▁hello", "▁Hello", "▁world", "▁the", "▁quick", "ing", "er", "▁[INST]", "▁[/INST]", "▁a"]:
        for i in range(1, len(word)):
            if word[:i + 1] not in vocab:
                vocab[word[:i + 1]] = len(vocab)
                merges.append((word[:i], word[i]))
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True,
                                          fuse_unk=True))
    if style == "legacy":
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
        tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(prepend_scheme="first")])
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    if post_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", 1)])
    return tok


def write_model_dir(path, backend, config: dict | None = None, generation: dict | None = None,
                    template: str | None = None):
    path.mkdir(parents=True, exist_ok=True)
    backend.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(config or {}))
    if generation is not None:
        (path / "generation_config.json").write_text(json.dumps(generation))
    if template is not None:
        (path / "chat_template.jinja").write_text(template)
    return path


LLAMA_CONFIG = {"bos_token": {"content": "<s>", "lstrip": False, "__type": "AddedToken"},
                "eos_token": "</s>", "unk_token": {"content": "<unk>", "__type": "AddedToken"}}


@pytest.mark.parametrize("post_bos", [True, False])
@pytest.mark.parametrize("add_bos", [True, False, None])
def test_bos_exactly_once_or_never(tmp_path, post_bos, add_bos):
    config = dict(LLAMA_CONFIG) if add_bos is None else {**LLAMA_CONFIG, "add_bos_token": add_bos}
    tok = Tokenizer.from_hf_dir(write_model_dir(tmp_path, llama_like_backend(post_bos=post_bos), config))
    plain = tok.encode("hello world", add_special_tokens=False)
    assert 1 not in plain and len(plain) > 0
    wants_bos = post_bos if add_bos is None else add_bos   # no add_bos_token: the post-processor decides
    assert tok.add_bos == wants_bos
    assert tok.encode("hello world") == ([1] if wants_bos else []) + plain
    # A bos written in the text is text: kept, and not merged with the added one (transformers does the same).
    assert tok.encode("<s>hello")[:2] == ([1, 1] if wants_bos else [1, tok.encode("hello", False)[0]])


def test_llama_like_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    d = write_model_dir(tmp_path, llama_like_backend(), {**LLAMA_CONFIG, "add_bos_token": True})
    ours, theirs = Tokenizer.from_hf_dir(d), transformers.AutoTokenizer.from_pretrained(d)
    for text in ["hello world", " the quick", "你好 😀", "[INST] hi [/INST]", "a  b\n c", ""]:
        assert ours.encode(text) == theirs.encode(text), text
        ids = theirs.encode(text)
        assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True)
        assert ours.decode(ids, skip_special_tokens=False) == theirs.decode(ids, skip_special_tokens=False)


def test_eos_ids_from_generation_config(tmp_path):
    d = write_model_dir(tmp_path / "a", llama_like_backend(), LLAMA_CONFIG, {"eos_token_id": [5, 2, 7, 5]})
    tok = Tokenizer.from_hf_dir(d)
    assert (tok.eos_token_id, tok.eos_token_ids) == (2, [2, 5, 7])
    d = write_model_dir(tmp_path / "b", llama_like_backend(), LLAMA_CONFIG, {"eos_token_id": 9})
    assert Tokenizer.from_hf_dir(d).eos_token_ids == [2, 9]


def test_template_sources_and_priority(tmp_path):
    named = [{"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": "DEFAULT"}]
    d = write_model_dir(tmp_path / "list", llama_like_backend(), {**LLAMA_CONFIG, "chat_template": named})
    assert Tokenizer.from_hf_dir(d).render_chat([]) == "DEFAULT"
    # transformers 5 saves the template as chat_template.jinja, which wins over the config's.
    d = write_model_dir(tmp_path / "jinja", llama_like_backend(), {**LLAMA_CONFIG, "chat_template": "CONFIG"},
                        template="FILE{{ bos_token }}")
    assert Tokenizer.from_hf_dir(d).render_chat([]) == "FILE<s>"


def test_fallback_template_warns(tmp_path, caplog):
    d = write_model_dir(tmp_path, llama_like_backend(), LLAMA_CONFIG)
    tok = Tokenizer.from_hf_dir(d, default_template="llama2")
    assert tok.chat_template_source == "built-in llama2 (fallback)"
    with caplog.at_level(logging.WARNING, logger="refengine"):
        text = tok.render_chat([{"role": "user", "content": "hi"}])
    assert text == "<s>[INST] hi [/INST]"
    assert any("no chat template" in r.getMessage() and "llama2" in r.getMessage() for r in caplog.records)
    assert tok.encode_chat([{"role": "user", "content": "hi"}])[0] == 1   # the template's bos, once
    assert tok.encode_chat([{"role": "user", "content": "hi"}]).count(1) == 1


def test_no_template_at_all(tmp_path):
    tok = Tokenizer.from_hf_dir(write_model_dir(tmp_path, llama_like_backend(), LLAMA_CONFIG))
    with pytest.raises(ChatTemplateError, match="--chat-template") as e:
        tok.render_chat([{"role": "user", "content": "hi"}])
    assert "\n" not in str(e.value)
    tok.set_chat_template("internlm")
    assert tok.chat_template_source == "built-in internlm"
    assert tok.extra_stop_words == ("<eoa>",)
    assert tok.render_chat([{"role": "user", "content": "hi"}]) == "<s><|User|>:hi<eoh>\n<|Bot|>:"


def test_stop_token_ids(tmp_path):
    backend = llama_like_backend()
    backend.add_special_tokens(["<|im_end|>"])
    tok = Tokenizer.from_hf_dir(write_model_dir(tmp_path, backend, LLAMA_CONFIG))
    tok.set_chat_template("internlm2")   # stop words <|im_end|> (in vocab) and <|action_end|> (not)
    assert tok.stop_token_ids == [2, backend.token_to_id("<|im_end|>")]


def test_missing_or_corrupt_files(tmp_path):
    with pytest.raises(ModelLoadError, match="tokenizer.json"):
        Tokenizer.from_hf_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "nonsense"}}')
    with pytest.raises(ModelLoadError, match="tokenizer.json"):
        Tokenizer.from_hf_dir(tmp_path)
    d = write_model_dir(tmp_path / "ok", llama_like_backend())
    (d / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="tokenizer_config.json"):
        Tokenizer.from_hf_dir(d)


def test_broken_model_template_is_a_chat_template_error(tmp_path):
    d = write_model_dir(tmp_path, llama_like_backend(), LLAMA_CONFIG, template="{% for m in messages %}")
    tok = Tokenizer.from_hf_dir(d)   # loading works: the user may still replace the template
    with pytest.raises(ChatTemplateError, match="model"):
        tok.render_chat([{"role": "user", "content": "hi"}])
    tok.set_chat_template("chatml")
    assert tok.render_chat([{"role": "user", "content": "hi"}]) == "<|im_start|>user\nhi<|im_end|>\n" \
                                                                   "<|im_start|>assistant\n"
