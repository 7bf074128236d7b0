"""Chat templates: the built-ins against the official formats (exact strings, and the official Jinja
templates of those models rendered by transformers), our Jinja environment against transformers', loading
from names / .jinja / .json files, and the errors."""

from __future__ import annotations

import datetime
import json

import pytest

from refengine.errors import ChatTemplateError
from refengine.model.chat_templates import (BUILTIN_TEMPLATES, ChatTemplate, TemplateSpec, builtin_template,
                                            load_chat_template, render_template, template_from_spec)

TOKENS = {"bos_token": "<s>", "eos_token": "</s>"}
LLAMA3_TOKENS = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}

TWO_TURNS = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Tell me a joke."},
]

# The official formats, written out by hand for TWO_TURNS with the generation prompt.
EXPECTED = {
    "internlm": "<s><|System|>:You are a helpful assistant.\n"
                "<|User|>:Hi!<eoh>\n<|Bot|>:Hello! How can I help?<eoa>\n"
                "<|User|>:Tell me a joke.<eoh>\n<|Bot|>:",
    "internlm2": "<s><|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                 "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
                 "<|im_start|>user\nTell me a joke.<|im_end|>\n<|im_start|>assistant\n",
    "chatml": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
              "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
              "<|im_start|>user\nTell me a joke.<|im_end|>\n<|im_start|>assistant\n",
    "llama2": "<s>[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\nHi! [/INST] Hello! How can I help? "
              "</s><s>[INST] Tell me a joke. [/INST]",
    "llama3": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\nHello! How can I help?<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nTell me a joke.<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n",
}
EXPECTED["qwen"] = EXPECTED["chatml"]

# The templates these models ship in their tokenizer_config.json (reference data: the oracle).
OFFICIAL = {
    # meta-llama/Llama-2-7b-chat-hf
    "llama2": "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}",  # noqa: E501
    # meta-llama/Meta-Llama-3-8B-Instruct
    "llama3": "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",  # noqa: E501
    # internlm/internlm2-chat-7b
    "internlm2": "{{ bos_token }}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",  # noqa: E501
    # ChatML as shipped by many models (e.g. Felladrin/Llama-68M-Chat-v1)
    "chatml": "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",  # noqa: E501
    # internlm-chat-7b's format as a Jinja template (user/assistant only, always ends with the bot prompt)
    "internlm": "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.last and message['role'] != 'user' %}{{ raise_exception('Most recent message must come from user!') }}{% endif %}{% if message['role'] == 'user' %}{{ '<|User|>:' + message['content'] + '<eoh>\\n'}}{% elif message['role'] == 'assistant' %}{{ '<|Bot|>:'  + message['content'] + '<eoa>\\n'}}{% else %}{{ raise_exception('Only user and assistant roles are supported in this model!') }}{% endif %}{% endfor %}{{ '<|Bot|>:' }}",  # noqa: E501
}

CONVERSATIONS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
    TWO_TURNS,
    [{"role": "user", "content": "  padded question \n"}, {"role": "assistant", "content": "\n padded answer  "},
     {"role": "user", "content": "😀 你好 \"quotes\" {{ not jinja }}"}],
    [{"role": "system", "content": " padded system "}, {"role": "user", "content": " q "},
     {"role": "assistant", "content": "a"}, {"role": "user", "content": "q2"}],
]


def hf_render(template: str, messages, add_generation_prompt: bool, **variables) -> str:
    """transformers' own renderer (what apply_chat_template uses)."""
    cu = pytest.importorskip("transformers.utils.chat_template_utils")
    rendered, _ = cu.render_jinja_template(conversations=[messages], chat_template=template,
                                           add_generation_prompt=add_generation_prompt, **variables)
    return rendered[0]


def ours(name_or_text: str, messages, add_generation_prompt=True, **variables) -> str:
    template = (load_chat_template(name_or_text) if name_or_text in BUILTIN_TEMPLATES
                else ChatTemplate(name_or_text, "test"))
    return render_template(template, messages, add_generation_prompt, variables)


@pytest.mark.parametrize("name", BUILTIN_TEMPLATES)
def test_builtin_exact_strings(name):
    tokens = LLAMA3_TOKENS if name == "llama3" else TOKENS
    assert ours(name, TWO_TURNS, True, **tokens) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(OFFICIAL))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_builtin_matches_official_template(name, add_generation_prompt):
    tokens = LLAMA3_TOKENS if name == "llama3" else TOKENS
    for conv in CONVERSATIONS:
        if name == "internlm" and (conv[0]["role"] == "system" or not add_generation_prompt):
            continue   # that official template has no system role and always adds the bot prompt
        want = hf_render(OFFICIAL[name], conv, add_generation_prompt, **tokens)
        assert ours(name, conv, add_generation_prompt, **tokens) == want, conv


def test_builtin_names_and_stop_words():
    assert set(BUILTIN_TEMPLATES) == {"internlm", "internlm2", "llama2", "llama3", "chatml", "qwen"}
    assert builtin_template("internlm").stop_words == ("<eoa>",)
    assert "<|im_end|>" in builtin_template("internlm2").stop_words
    assert load_chat_template("qwen").text == builtin_template("chatml").text


# ---- our Jinja environment vs transformers' ------------------------------------------------------------

PARITY_TEMPLATES = [
    "{{ messages | tojson }}",
    "{{ messages[0] | tojson(indent=2) }}|{{ {'b': 1, 'a': '<&>'} | tojson(sort_keys=true) }}",
    "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}{% if m.role == 'system' %}"
    "{% continue %}{% endif %}[{{ m.content }}]{% endfor %}",
    "{% for m in messages %}\n    {% if m.role == 'user' %}\n        U:{{ m.content }}\n    {% endif %}\n"
    "{% endfor %}\n{%- if add_generation_prompt %}\n  A:\n{% endif %}",
    "{{ tools is none }}|{{ documents is none }}|{{ tools | tojson if tools else '' }}|{{ extra | default('d') }}",
    "{% generation %}{{ messages[-1].content | upper }}{% endgeneration %}",
    "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + m.content | length %}{% endfor %}"
    "{{ ns.n }} {{ messages[0].content.split(' ') | join('_') }} {{ bos_token }}{{ eos_token }}{{ unk_token }}",
    "{{ strftime_now('%Y') }}",
]


@pytest.mark.parametrize("template", PARITY_TEMPLATES)
def test_rendering_matches_transformers(template):
    conv = [{"role": "system", "content": "sys <b>&</b> ü"}, {"role": "user", "content": "héllo 😀 wörld"},
            {"role": "assistant", "content": "a \"q\""}, {"role": "user", "content": "last one"}]
    for gen in (True, False):
        assert ours(template, conv, gen, **TOKENS) == hf_render(template, conv, gen, **TOKENS)
    tools = [{"type": "function", "function": {"name": "f", "description": "ß <x>"}}]
    assert ours(template, conv, True, tools=tools, extra="e") == hf_render(template, conv, True, tools=tools,
                                                                            extra="e")
    if "strftime" in template:
        assert ours(template, conv) == str(datetime.datetime.now().year)


def test_field_values_are_literal_text():
    spec = TemplateSpec(user='U"\\n\\ {{ x }} {% raw %} 😀 ', eoh="\t\n", assistant="A:", eoa="'end'")
    t = ChatTemplate(template_from_spec(spec), "test")
    conv = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert render_template(t, conv, True, {}) == 'U"\\n\\ {{ x }} {% raw %} 😀 q\t\nA:a\'end\'A:'


# ---- loading from files ----------------------------------------------------------------------------------

def test_load_jinja_file(tmp_path):
    f = tmp_path / "my.jinja"
    f.write_text("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}")
    t = load_chat_template(str(f))
    assert t.source == "file my.jinja"
    assert render_template(t, [{"role": "user", "content": "x"}], True, {}) == "<user>x"


@pytest.mark.parametrize("value", ["T{{ messages | length }}",
                                   [{"name": "default", "template": "T{{ messages | length }}"},
                                    {"name": "rag", "template": "R"}]])
def test_load_json_chat_template(tmp_path, value):
    f = tmp_path / "tokenizer_config.json"
    f.write_text(json.dumps({"chat_template": value, "bos_token": "<s>"}))
    assert render_template(load_chat_template(str(f)), [{"role": "user", "content": "x"}], True, {}) == "T1"


def test_load_lmdeploy_fields(tmp_path):
    f = tmp_path / "internlm2.json"
    f.write_text(json.dumps({"model_name": "internlm2", "meta_instruction": "You are InternLM."}))
    t = load_chat_template(str(f))
    assert t.stop_words == ("<|im_end|>", "<|action_end|>")
    assert render_template(t, [{"role": "user", "content": "hi"}], True, TOKENS) == (
        "<s><|im_start|>system\nYou are InternLM.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\n")
    # A conversation's own system message replaces meta_instruction.
    conv = [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]
    assert render_template(t, conv, False, TOKENS).startswith("<s><|im_start|>system\nS<|im_end|>\n<|im_start|>u")
    # model_name alone is the built-in itself.
    f.write_text(json.dumps({"model_name": "llama3"}))
    assert load_chat_template(str(f)).text == builtin_template("llama3").text


def test_load_lmdeploy_fields_from_scratch(tmp_path):
    f = tmp_path / "vicuna.json"
    f.write_text(json.dumps({"model_name": "vicuna", "meta_instruction": "A chat.", "eosys": "\n",
                             "user": "USER: ", "eoh": "\n", "assistant": "ASSISTANT: ", "eoa": "</s>",
                             "separator": "\n", "stop_words": ["</s>", "USER:"]}))
    t = load_chat_template(str(f))
    assert t.stop_words == ("</s>", "USER:")
    conv = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "q2"}]
    # The generation prompt drops the trailing space of "ASSISTANT: ": it belongs to the answer's first token.
    assert render_template(t, conv, True, TOKENS) == "A chat.\nUSER: q1\nASSISTANT: a1</s>\nUSER: q2\nASSISTANT:"


# ---- errors ------------------------------------------------------------------------------------------------

def test_unknown_name_lists_builtins():
    with pytest.raises(ChatTemplateError, match="no-such-template") as e:
        load_chat_template("no-such-template")
    assert all(name in str(e.value) for name in BUILTIN_TEMPLATES)


@pytest.mark.parametrize("name", ["missing.jinja", "missing.json", "dir/missing"])
def test_missing_file(tmp_path, name):
    with pytest.raises(ChatTemplateError, match="missing"):
        load_chat_template(str(tmp_path / name))


def test_broken_jinja_file(tmp_path):
    f = tmp_path / "broken.jinja"
    f.write_text("ok\n{% for m in messages %}{{ m.content }")
    with pytest.raises(ChatTemplateError, match=r"broken.jinja.*line 2") as e:
        load_chat_template(str(f))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("content,match", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "JSON object"),
    ('{"model_name": "chatml", "usr": "typo"}', "usr"),
    ('{"model_name": "chatml", "user": 3}', "user"),
    ('{"chat_template": [{"name": "rag", "template": "R"}]}', "default"),
    ('{"chat_template": "{% if %}"}', "syntax error"),
])
def test_bad_json_files(tmp_path, content, match):
    f = tmp_path / "bad.json"
    f.write_text(content)
    with pytest.raises(ChatTemplateError, match=match) as e:
        load_chat_template(str(f))
    assert "bad.json" in str(e.value) and "\n" not in str(e.value)


def test_render_errors_are_one_line():
    with pytest.raises(ChatTemplateError, match=r"\(test\).*Roles must alternate") as e:
        ours("{{ raise_exception('Roles must alternate') }}", [])
    assert "\n" not in str(e.value)
    with pytest.raises(ChatTemplateError, match="test"):   # content None: a TypeError inside the template
        ours("{{ messages[0].content + '!' }}", [{"role": "user", "content": None}])
    with pytest.raises(ChatTemplateError, match="test"):   # the sandbox forbids mutating the messages
        ours("{{ messages.append(1) }}", [])
    with pytest.raises(ChatTemplateError, match="roles"):
        ours("chatml", [{"role": "tool", "content": "x"}])
