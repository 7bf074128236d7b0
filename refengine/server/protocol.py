"""Request bodies → validated requests. Every field is checked here, by its request name, so a client
hears `400 {"param": "temperature", ...}` and never a 500; what passes becomes a GenerationConfig.

    POST body (JSON object) ──► Body (typed field readers) ──► ChatRequest / CompletionRequest /
                                                                InteractiveRequest / EncodeRequest

Field names and defaults: OpenAI's for /v1/chat/completions and /v1/completions (plus LMDeploy's extras
top_k, min_p, repetition_penalty, ignore_eos, skip_special_tokens, session_id); LMDeploy's for
/v1/chat/interactive and /v1/encode. Unknown fields are ignored (clients send many); fields that ask for
something refengine does not do (tools, logit_bias, echo, ...) are refused by name.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from refengine.errors import GenerationConfigError
from refengine.sampling_params import GenerationConfig
from refengine.server.errors import ApiError, bad_field, from_engine_error

MAX_COMPLETIONS = 128        # prompts × n in one request: a bound on what one request may ask of the engine
MAX_LOGPROBS = 20            # GenerationConfig's own bound
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# GenerationConfig's (and the engine's) field names → the request's, for the errors they raise
COMPLETION_NAMES = {"max_new_tokens": "max_tokens"}
CHAT_NAMES = {**COMPLETION_NAMES, "prompt": "messages"}
INTERACTIVE_NAMES = {"max_new_tokens": "request_output_len"}


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}") from None
    except RecursionError:
        raise ApiError(400, "the request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


class Body:
    """Typed readers over a JSON object. A missing or null field gives the default."""

    def __init__(self, body: dict):
        self.body = body

    def has(self, name: str) -> bool:
        return self.body.get(name) is not None

    def raw(self, name: str, default=None):
        value = self.body.get(name)
        return default if value is None else value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name, default)
        if not isinstance(value, bool):
            raise bad_field(name, f"must be true or false, got {value!r}")
        return value

    def integer(self, name: str, default: int | None, lo: int | None = None, hi: int | None = None) -> int | None:
        value = self.raw(name, default)
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad_field(name, f"must be an integer, got {value!r}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise bad_field(name, f"must be in [{lo if lo is not None else '-inf'}, "
                                  f"{hi if hi is not None else 'inf'}], got {value}")
        return value

    def number(self, name: str, default: float) -> float:
        """A finite number; its range is GenerationConfig's to check (make_config names the field)."""
        value = self.raw(name, default)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise bad_field(name, f"must be a finite number, got {value!r}")
        return float(value)

    def string(self, name: str, default: str | None = None) -> str | None:
        value = self.raw(name, default)
        if value is not None and not isinstance(value, str):
            raise bad_field(name, f"must be a string, got {value!r}")
        return value

    def stop(self) -> tuple[str, ...]:
        """`stop`: a string or a list of strings, of any number and token length."""
        value = self.raw("stop", [])
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or any(not isinstance(s, str) or not s for s in value):
            raise bad_field("stop", "must be a non-empty string or a list of non-empty strings")
        return tuple(value)

    def refuse(self, name: str, is_asked) -> None:
        """A field refengine does not implement: fine when absent or neutral, else 400 naming it."""
        if self.has(name) and is_asked(self.body[name]):
            raise bad_field(name, "is not supported by refengine")


# ---------------------------------------------------------------- OpenAI requests

@dataclass
class Turn:
    """One engine request: chat messages, or raw text (no chat template), or token ids."""
    messages: list[dict] | str | None = None
    input_ids: list[int] | None = None

    @property
    def do_preprocess(self) -> bool:
        return not isinstance(self.messages, str)


@dataclass
class GenerationRequest:
    """/v1/chat/completions (chat=True) or /v1/completions: one Turn per prompt, n completions each."""
    chat: bool
    model: str | None
    turns: list[Turn]
    gen_config: GenerationConfig
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False
    session_id: int | None = None
    user: str | None = None

    @property
    def field_names(self) -> dict[str, str]:
        """Engine field names → this request's, for the errors the engine raises."""
        return CHAT_NAMES if self.chat else COMPLETION_NAMES


def parse_chat(body: dict, session_len: int) -> GenerationRequest:
    b = Body(body)
    if "messages" not in body:
        raise bad_field("messages", "is required")
    turns = [Turn(messages=parse_messages(body["messages"]))]
    want_logprobs = b.boolean("logprobs", False)
    top = b.integer("top_logprobs", None, 0, MAX_LOGPROBS)
    if top is not None and not want_logprobs:
        raise bad_field("top_logprobs", "needs logprobs: true")
    max_tokens = b.integer("max_completion_tokens", None, 0) if b.has("max_completion_tokens") else \
        b.integer("max_tokens", None, 0)
    cfg = _gen_config(b, max_tokens if max_tokens is not None else session_len,
                      (top or 0) if want_logprobs else None)
    return _generation_request(b, True, turns, cfg, want_logprobs)


def parse_completion(body: dict) -> GenerationRequest:
    b = Body(body)
    if "prompt" not in body:
        raise bad_field("prompt", "is required")
    turns = parse_prompt(body["prompt"])
    b.refuse("echo", bool)
    b.refuse("suffix", bool)
    logprobs = b.integer("logprobs", None, 0, MAX_LOGPROBS)
    cfg = _gen_config(b, b.integer("max_tokens", 16, 0), logprobs)      # 16: OpenAI's default for completions
    return _generation_request(b, False, turns, cfg, logprobs is not None)


def _generation_request(b: Body, chat: bool, turns: list[Turn], cfg: GenerationConfig,
                        logprobs: bool) -> GenerationRequest:
    for name, is_asked in (("tools", bool), ("functions", bool), ("logit_bias", bool),
                           ("response_format", lambda v: not (isinstance(v, dict) and v.get("type") == "text")),
                           ("best_of", lambda v: v != 1)):
        b.refuse(name, is_asked)
    n = b.integer("n", 1, 1, MAX_COMPLETIONS)
    if n * len(turns) > MAX_COMPLETIONS:
        raise bad_field("n", f"prompts × n must be at most {MAX_COMPLETIONS}, got {len(turns)} × {n}")
    stream = b.boolean("stream", False)
    session_id = b.integer("session_id", None, -1)
    if session_id is not None and len(turns) > 1:
        raise bad_field("session_id", "names one request: give a single prompt")
    return GenerationRequest(chat, b.string("model"), turns, cfg, n, stream, _include_usage(b, stream), logprobs,
                             None if session_id == -1 else session_id, b.string("user"))


def _include_usage(b: Body, stream: bool) -> bool:
    options = b.raw("stream_options")
    if options is None:
        return False
    if not stream:
        raise bad_field("stream_options", "is only allowed with stream: true")
    if not isinstance(options, dict):
        raise bad_field("stream_options", f"must be an object, got {options!r}")
    include = options.get("include_usage", False)
    if not isinstance(include, bool):
        raise bad_field("stream_options.include_usage", f"must be true or false, got {include!r}")
    return include


def _gen_config(b: Body, max_tokens: int, logprobs: int | None) -> GenerationConfig:
    """OpenAI's sampling fields (its defaults: temperature 1, top_p 1) plus LMDeploy's extras."""
    return make_config(COMPLETION_NAMES, max_new_tokens=max_tokens, logprobs=logprobs, **_sampling(b, 1.0, 1.0, 0),
                       presence_penalty=b.number("presence_penalty", 0.0),
                       frequency_penalty=b.number("frequency_penalty", 0.0))


def _sampling(b: Body, temperature: float, top_p: float, top_k: int) -> dict:
    """Types are checked here, ranges by GenerationConfig (one source of truth for them)."""
    return dict(temperature=b.number("temperature", temperature),
                top_p=b.number("top_p", top_p),
                top_k=b.integer("top_k", top_k),
                min_p=b.number("min_p", 0.0),
                repetition_penalty=b.number("repetition_penalty", 1.0),
                seed=b.integer("seed", None),
                stop=b.stop(),
                ignore_eos=b.boolean("ignore_eos", False),
                skip_special_tokens=b.boolean("skip_special_tokens", True))


def make_config(names: dict[str, str], **fields) -> GenerationConfig:
    """GenerationConfig checks the ranges; its error becomes a 400 naming the request's field."""
    try:
        return GenerationConfig(**fields)
    except GenerationConfigError as e:
        raise from_engine_error(e, names) from None


def parse_messages(value, param: str = "messages") -> list[dict]:
    """A non-empty list of {role, content}; content a string or a list of text parts."""
    if not isinstance(value, list) or not value:
        raise bad_field(param, "must be a non-empty list of {role, content} objects")
    return [_message(m, f"{param}[{i}]") for i, m in enumerate(value)]


def _message(m, where: str) -> dict:
    if not isinstance(m, dict):
        raise bad_field(where, f"must be a {{role, content}} object, got {m!r}")
    role = m.get("role")
    if role not in ROLES:
        raise bad_field(f"{where}.role", f"must be one of {', '.join(ROLES)}, got {role!r}")
    content = m.get("content")
    if content is None and role == "assistant":
        content = ""
    if isinstance(content, list):
        content = "".join(_text_part(p, f"{where}.content[{i}]") for i, p in enumerate(content))
    if not isinstance(content, str):
        raise bad_field(f"{where}.content", f"must be a string or a list of text parts, got {content!r}")
    return {"role": ROLES[role], "content": content}


def _text_part(part, where: str) -> str:
    if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
        raise bad_field(where, "only {\"type\": \"text\", \"text\": ...} parts are supported")
    return part["text"]


def parse_prompt(value) -> list[Turn]:
    """/v1/completions `prompt`: a string, a list of strings, a list of token ids, or a list of those lists."""
    if isinstance(value, str):
        return [Turn(messages=value)]
    if isinstance(value, list) and value:
        if all(isinstance(p, str) for p in value):
            return [Turn(messages=p) for p in value]
        if _is_ids(value):
            return [Turn(input_ids=value)]
        if all(isinstance(p, list) and p and _is_ids(p) for p in value):
            return [Turn(input_ids=p) for p in value]
    raise bad_field("prompt", "must be a string, a list of strings, a list of token ids or a list of such lists")


def _is_ids(values: list) -> bool:
    return all(isinstance(t, int) and not isinstance(t, bool) for t in values)


# ---------------------------------------------------------------- LMDeploy requests

@dataclass
class InteractiveRequest:
    """/v1/chat/interactive (LMDeploy): a turn of session `session_id` (-1: a new one), or a cancel / end."""
    session_id: int
    prompt: str | list[dict] | None = None
    interactive_mode: bool = False
    stream: bool = False
    cancel: bool = False
    end_only: bool = False                   # interactive_mode false, prompt "" and request_output_len 0
    gen_config: GenerationConfig | None = field(default=None)


def parse_interactive(body: dict, session_len: int) -> InteractiveRequest:
    b = Body(body)
    session_id = b.integer("session_id", -1, -1)
    cancel, interactive = b.boolean("cancel", False), b.boolean("interactive_mode", False)
    b.refuse("image_url", bool)
    if cancel:
        if session_id == -1:
            raise bad_field("session_id", "name the session whose request to cancel")
        return InteractiveRequest(session_id, cancel=True)
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        prompt = parse_messages(prompt, "prompt")
    elif not isinstance(prompt, str):
        raise bad_field("prompt", "must be a string or a list of {role, content} messages")
    output_len = b.integer("request_output_len", None, 0)
    if not interactive and prompt == "" and output_len == 0:
        if session_id == -1:
            raise bad_field("session_id", "name the session to end")
        return InteractiveRequest(session_id, prompt, end_only=True)
    cfg = make_config(INTERACTIVE_NAMES, max_new_tokens=session_len if output_len is None else output_len,
                      **_sampling(b, 0.8, 0.8, 40))                 # LMDeploy's defaults
    return InteractiveRequest(session_id, prompt, interactive, b.boolean("stream", False), gen_config=cfg)


@dataclass
class EncodeRequest:
    """/v1/encode (LMDeploy): token ids of one text or of each of a list."""
    texts: list[str]
    batch: bool
    do_preprocess: bool = False
    add_bos: bool = True


def parse_encode(body: dict) -> EncodeRequest:
    b = Body(body)
    value = body.get("input")
    batch = isinstance(value, list)
    texts = value if batch else [value]
    if not texts or any(not isinstance(t, str) for t in texts):
        raise bad_field("input", "must be a string or a non-empty list of strings")
    return EncodeRequest(texts, batch, b.boolean("do_preprocess", False), b.boolean("add_bos", True))


async def read_json(request) -> dict:
    """The body of an aiohttp request as a JSON object (aiohttp answers 413 past client_max_size)."""
    return parse_json(await request.read())
