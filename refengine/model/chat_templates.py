"""Chat templates: the built-in ones, loading one from a name / .jinja / .json file, and rendering.

A chat template is a Jinja program that turns `messages` into the prompt text. Rendering follows
transformers' `apply_chat_template` exactly (same Jinja environment, same globals and variables), so a
model's own template gives byte-identical prompts in refengine and in transformers.

Built-in templates exist for models that ship none (or when the user picks one with
`--chat-template NAME`). They are all generated from one skeleton and a `TemplateSpec`, whose fields are
LMDeploy's ChatTemplateConfig fields: every message is `prefix + content + suffix` for its role.

    system:     system + content + eosys          (meta_instruction = the default system prompt)
    user:       user + content + eoh
    assistant:  assistant + content + eoa + separator
    generation prompt: assistant

So an LMDeploy-style .json file (`model_name` + fields to override) is the same mechanism as a built-in.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from refengine.errors import ChatTemplateError

logger = logging.getLogger("refengine")


@dataclass(frozen=True)
class TemplateSpec:
    """LMDeploy's ChatTemplateConfig fields, plus three switches that the official formats need."""
    system: str = ""             # opens a system message
    meta_instruction: str = ""   # default system prompt, used when the conversation has no system message
    eosys: str = ""              # closes a system message
    user: str = ""
    eoh: str = ""                # end of human turn
    assistant: str = ""
    eoa: str = ""                # end of assistant turn
    separator: str = ""          # after each assistant turn (LMDeploy's `separator` / `stop_word_suffix`)
    stop_words: tuple[str, ...] = ()
    bos: bool = False            # the prompt starts with {{ bos_token }}
    strip: bool = False          # message contents are trimmed (Llama 2 and 3 do this)
    system_in_user: bool = False  # Llama 2: the system block sits inside the first [INST] ... [/INST]


@dataclass(frozen=True)
class ChatTemplate:
    text: str                      # the Jinja source
    source: str                    # where it came from, for messages: "built-in llama3", "file x.jinja"
    stop_words: tuple[str, ...] = ()  # strings that end an assistant turn besides the eos token


_CHATML = dict(system="<|im_start|>system\n", eosys="<|im_end|>\n", user="<|im_start|>user\n",
               eoh="<|im_end|>\n", assistant="<|im_start|>assistant\n", eoa="<|im_end|>", separator="\n")
_LLAMA3_HEADER = "<|start_header_id|>{}<|end_header_id|>\n\n"

BUILTIN_SPECS: dict[str, TemplateSpec] = {
    # ChatML (Qwen, and many fine-tunes): <|im_start|>role\ncontent<|im_end|>\n
    "chatml": TemplateSpec(**_CHATML, stop_words=("<|im_end|>",)),
    # internlm-chat-7b: <s><|User|>:question<eoh>\n<|Bot|>:answer<eoa>\n
    "internlm": TemplateSpec(system="<|System|>:", eosys="\n", user="<|User|>:", eoh="<eoh>\n",
                             assistant="<|Bot|>:", eoa="<eoa>", separator="\n", stop_words=("<eoa>",),
                             bos=True),
    # internlm2-chat: <s> then ChatML; <|action_end|> closes a tool call.
    "internlm2": TemplateSpec(**_CHATML, stop_words=("<|im_end|>", "<|action_end|>"), bos=True),
    # Llama-2-chat: <s>[INST] <<SYS>>\nsys\n<</SYS>>\n\nq1 [/INST] a1 </s><s>[INST] q2 [/INST]
    "llama2": TemplateSpec(system="<<SYS>>\n", eosys="\n<</SYS>>\n\n", user="<s>[INST] ", eoh=" [/INST]",
                           assistant=" ", eoa=" </s>", strip=True, system_in_user=True),
    # Llama-3-instruct: <|begin_of_text|><|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>
    "llama3": TemplateSpec(system=_LLAMA3_HEADER.format("system"), eosys="<|eot_id|>",
                           user=_LLAMA3_HEADER.format("user"), eoh="<|eot_id|>",
                           assistant=_LLAMA3_HEADER.format("assistant"), eoa="<|eot_id|>",
                           stop_words=("<|eot_id|>",), bos=True, strip=True),
}
ALIASES = {"qwen": "chatml"}
BUILTIN_TEMPLATES: tuple[str, ...] = tuple(sorted(BUILTIN_SPECS)) + tuple(sorted(ALIASES))

# LMDeploy's model names for the same formats, accepted as `model_name` in a .json file.
LMDEPLOY_NAMES = {"internlm-chat": "internlm", "internlm-chat-7b": "internlm", "internlm2-chat": "internlm2",
                  "internlm2-chat-7b": "internlm2", "internlm2-chat-20b": "internlm2", "llama-2": "llama2",
                  "llama-2-chat": "llama2", "llama-3": "llama3", "qwen-7b": "chatml"}

# The skeleton every built-in is rendered from. `t` holds the TemplateSpec fields (set on the first line).
_SKELETON = """\
{% if messages and messages[0]['role'] == 'system' %}
{% set system_text = messages[0]['content'] %}
{% set turns = messages[1:] %}
{% else %}
{% set system_text = t.meta_instruction if t.meta_instruction else none %}
{% set turns = messages %}
{% endif %}
{#- Llama 2 trims its first turn (system block + first user message) as one string: not the system text. #}
{% if system_text is none %}
{% set system_block = '' %}
{% else %}
{% set system_block = t.system + (system_text | trim if t.strip and not t.system_in_user else system_text)
                      + t.eosys %}
{% endif %}
{% if t.bos %}{{- bos_token -}}{% endif %}
{% if not t.system_in_user %}{{- system_block -}}{% endif %}
{% set ns = namespace(pending=system_block if t.system_in_user else '') %}
{% for message in turns %}
{% if message['role'] == 'user' %}
{% set content = ns.pending + message['content'] %}
{% set ns.pending = '' %}
{{- t.user + (content | trim if t.strip else content) + t.eoh -}}
{% elif message['role'] == 'assistant' %}
{{- t.assistant + (message['content'] | trim if t.strip else message['content']) + t.eoa + t.separator -}}
{% elif message['role'] == 'system' %}
{{- t.system + message['content'] + t.eosys -}}
{% else %}
{{- raise_exception('this chat template knows the roles system, user and assistant, not '
                    + message['role']) -}}
{% endif %}
{% endfor %}
{% if add_generation_prompt %}{{- t.generation_prompt -}}{% endif %}
"""


def template_from_spec(spec: TemplateSpec) -> str:
    """The Jinja source of a TemplateSpec: one `{% set t = {...} %}` line, then the skeleton."""
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name != "stop_words"}
    # A prompt ending in a space would tokenize that space on its own, which a model never sees in
    # training (the space belongs to the answer's first word): so the generation prompt drops it.
    fields["generation_prompt"] = spec.assistant.rstrip(" ")
    # json.dumps with ensure_ascii=False writes literals that Jinja reads back unchanged
    # (\n, \", \\ are Python escapes too; other characters are kept as they are).
    items = ", ".join(f"{json.dumps(k)}: {_jinja_literal(v)}" for k, v in fields.items())
    return "{% set t = {" + items + "} %}\n" + _SKELETON


def _jinja_literal(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, ensure_ascii=False)


def builtin_template(name: str) -> ChatTemplate:
    """The built-in template `name` (or an alias); ChatTemplateError listing the names when unknown."""
    key = ALIASES.get(name, name)
    if key not in BUILTIN_SPECS:
        raise ChatTemplateError(f"unknown chat template '{name}' (built-in: {', '.join(BUILTIN_TEMPLATES)};"
                                " or give a .jinja or .json file)")
    spec = BUILTIN_SPECS[key]
    return ChatTemplate(template_from_spec(spec), f"built-in {key}", spec.stop_words)


def load_chat_template(spec: str) -> ChatTemplate:
    """A built-in name, or a path to a .jinja file (the template itself) or a .json file
    (`{"chat_template": ...}` as in tokenizer_config.json, or LMDeploy ChatTemplateConfig fields)."""
    key = ALIASES.get(spec, spec)
    if key in BUILTIN_SPECS:
        return builtin_template(key)
    path = Path(spec).expanduser()
    if not path.is_file():
        if path.suffix in (".jinja", ".json", ".j2") or "/" in spec:
            raise ChatTemplateError(f"{spec}: no such chat template file (built-in names: "
                                    f"{', '.join(BUILTIN_TEMPLATES)})")
        builtin_template(spec)  # raises: unknown name, with the list of built-ins
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ChatTemplateError(f"{spec}: cannot read chat template file ({e})") from None
    if path.suffix != ".json":
        check_syntax(text, f"file {path.name}")
        return ChatTemplate(text, f"file {path.name}")
    return _template_from_json(text, path.name)


def _template_from_json(text: str, name: str) -> ChatTemplate:
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ChatTemplateError(f"{name}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ChatTemplateError(f"{name}: expected a JSON object (chat_template, or LMDeploy template fields)")
    if "chat_template" in data:
        template = pick_template(data["chat_template"], name)
        check_syntax(template, f"file {name}")
        return ChatTemplate(template, f"file {name}", tuple(data.get("stop_words") or ()))
    spec = spec_from_lmdeploy_fields(data, name)
    return ChatTemplate(template_from_spec(spec), f"file {name}", spec.stop_words)


def spec_from_lmdeploy_fields(data: dict, name: str) -> TemplateSpec:
    """LMDeploy's ChatTemplateConfig: `model_name` picks the built-in to start from, the other fields
    override it. An unknown model_name starts from empty fields, as LMDeploy does."""
    overridable = {"system", "meta_instruction", "eosys", "user", "eoh", "assistant", "eoa", "separator"}
    ignored = {"model_name", "capability", "stop_words", "stop_word_suffix"}
    unknown = sorted(set(data) - overridable - ignored)
    if unknown:
        raise ChatTemplateError(f"{name}: unknown chat template field(s) {', '.join(unknown)} "
                                f"(known: model_name, {', '.join(sorted(overridable))}, stop_words)")
    model_name = str(data.get("model_name", ""))
    base_name = ALIASES.get(model_name, LMDEPLOY_NAMES.get(model_name, model_name))
    base = BUILTIN_SPECS.get(base_name)
    if base is None:
        if model_name:
            logger.warning("%s: model_name '%s' is not a built-in template (%s); starting from empty fields",
                           name, model_name, ", ".join(BUILTIN_TEMPLATES))
        base = TemplateSpec()
    changes = {k: data[k] for k in overridable if data.get(k) is not None}
    if data.get("stop_word_suffix") is not None:  # newer LMDeploy's name for `separator`
        changes.setdefault("separator", data["stop_word_suffix"])
    bad = sorted(k for k, v in changes.items() if not isinstance(v, str))
    if bad:
        raise ChatTemplateError(f"{name}: field(s) {', '.join(bad)} must be strings")
    if data.get("stop_words") is not None:
        changes["stop_words"] = tuple(str(w) for w in data["stop_words"])
    return dataclasses.replace(base, **changes)


def pick_template(value, where: str) -> str:
    """tokenizer_config's chat_template: a string, or named templates (a list of {"name", "template"}
    or a dict) of which transformers uses "default"."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        value = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
    if isinstance(value, dict) and isinstance(value.get("default"), str):
        return value["default"]
    names = ", ".join(map(str, value)) if isinstance(value, dict) else type(value).__name__
    raise ChatTemplateError(f"{where}: chat_template has no 'default' template (found: {names})")


# ---- rendering: the same Jinja environment as transformers' apply_chat_template ----------------------

class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks in transformers;
    for rendering a prompt it is just its body. Without it such templates would not even compile."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    def _render_body(self, caller):
        return caller()


def _raise_exception(message):
    raise ChatTemplateError(str(message))


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson escapes HTML characters (<, >, &, '), which no chat model was trained on.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=32)
def compile_template(text: str) -> jinja2.Template:
    """Compile once per distinct template (jinja2.TemplateSyntaxError propagates)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(text)


def check_syntax(text: str, source: str) -> None:
    try:
        compile_template(text)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"chat template ({source}): syntax error on line {e.lineno}: "
                                f"{_one_line(e.message or '')}") from None


def render_template(template: ChatTemplate, messages: list[dict], add_generation_prompt: bool,
                    variables: dict) -> str:
    """Render like transformers: `messages`, `add_generation_prompt`, `tools`/`documents` (None unless
    given: templates test `tools is not none`) and `variables` (special tokens, then user kwargs)."""
    check_syntax(template.text, template.source)
    context = {"tools": None, "documents": None, **variables}
    try:
        return compile_template(template.text).render(messages=messages,
                                                      add_generation_prompt=add_generation_prompt, **context)
    except (ChatTemplateError, jinja2.TemplateError, TypeError, ValueError) as e:
        # raise_exception() in the template, a template error, or a template applied to messages it
        # cannot handle (e.g. content None).
        raise ChatTemplateError(f"chat template ({template.source}): {_one_line(str(e)) or type(e).__name__}") \
            from None


def _one_line(text: str) -> str:
    """Error messages are one line (the CLI prints them as such)."""
    return " ".join(line.strip() for line in text.strip().splitlines() if line.strip())
