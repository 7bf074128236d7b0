"""The tokenizer: a `tokenizers` backend plus the special tokens and the chat template around it.

Semantics are transformers' (so refengine and transformers give the same ids for the same text):
- `encode(text)` runs the backend; with add_special_tokens the bos token is present exactly once when
  `add_bos` is set (the tokenizer.json post-processor may already add it), and absent when it is not.
- `decode` is the backend's decode (transformers 5 never "cleans up" spaces for BPE tokenizers).
- `render_chat` renders the chat template like `apply_chat_template(tokenize=False)`, and `encode_chat`
  encodes that text without adding special tokens, like `apply_chat_template(tokenize=True)`: the
  template itself writes the bos token where the model wants one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import tokenizers

from refengine.errors import ChatTemplateError, ModelLoadError
from refengine.model.chat_templates import (ChatTemplate, builtin_template, load_chat_template, pick_template,
                                            render_template)

logger = logging.getLogger("refengine")

# tokenizer_config.json keys that name special tokens; templates see them as variables of the same name.
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class Tokenizer:
    def __init__(self, backend: tokenizers.Tokenizer, *, bos_token: str | None, eos_token: str | None,
                 add_bos: bool, chat_template: str | None, special_tokens: dict[str, str] | None = None,
                 eos_token_ids: Sequence[int] = (), default_template: str | None = None, source: str = ""):
        self.backend = backend
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.add_bos = add_bos
        self.source = source
        self.special_tokens = {k: v for k, v in (special_tokens or {}).items() if v is not None}
        self.bos_token_id = self._token_id(bos_token)
        self.eos_token_id = self._token_id(eos_token)
        first = [self.eos_token_id] if self.eos_token_id is not None else []
        self.eos_token_ids = list(dict.fromkeys(first + [int(i) for i in eos_token_ids]))
        self._special_ids = frozenset(i for i, tok in backend.get_added_tokens_decoder().items() if tok.special)
        # Does the tokenizer.json post-processor put the bos in front by itself? (Llama-2's does.)
        self._backend_adds_bos = (self.bos_token_id is not None and
                                  backend.encode("a", add_special_tokens=True).ids[:1] == [self.bos_token_id])
        self._template = ChatTemplate(chat_template, "model") if chat_template else None
        if self._template is None and default_template is not None:
            fallback = builtin_template(default_template)
            self._template = ChatTemplate(fallback.text, f"{fallback.source} (fallback)", fallback.stop_words)
        self._warn_fallback = self._template is not None and chat_template is None

    # ---- loading ---------------------------------------------------------------------------------------

    @classmethod
    def from_hf_dir(cls, path, default_template: str | None = None) -> "Tokenizer":
        """tokenizer.json (required), tokenizer_config.json, chat_template.jinja, generation_config.json."""
        path = Path(path)
        backend = _load_backend(path / "tokenizer.json")
        config = _read_json(path / "tokenizer_config.json")
        tokens = {key: _token_content(config.get(key)) for key in SPECIAL_TOKEN_KEYS}
        generation = _read_json(path / "generation_config.json")
        eos_ids = generation.get("eos_token_id")
        eos_ids = [eos_ids] if isinstance(eos_ids, int) else list(eos_ids or [])
        template_file = path / "chat_template.jinja"
        # transformers gives chat_template.jinja priority over the template inside tokenizer_config.json.
        if template_file.is_file():
            chat_template = _read_text(template_file)
        elif config.get("chat_template") is not None:
            chat_template = pick_template(config["chat_template"], str(path / "tokenizer_config.json"))
        else:
            chat_template = None
        tok = cls(backend, bos_token=tokens["bos_token"], eos_token=tokens["eos_token"], add_bos=False,
                  chat_template=chat_template, special_tokens=tokens, eos_token_ids=eos_ids,
                  default_template=default_template, source=str(path))
        # Without add_bos_token in the config, the tokenizer.json post-processor decides.
        tok.add_bos = bool(config.get("add_bos_token", tok._backend_adds_bos))
        return tok

    def _token_id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    # ---- ids <-> text ----------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self.backend.encode(text, add_special_tokens=add_special_tokens).ids
        if not add_special_tokens or self.bos_token_id is None:
            return ids
        if self.add_bos and not self._backend_adds_bos:
            return [self.bos_token_id] + ids
        if not self.add_bos and self._backend_adds_bos:
            return ids[1:]  # the post-processor's bos, not one written in the text
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def is_special(self, token_id: int) -> bool:
        return int(token_id) in self._special_ids

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    # ---- chat ------------------------------------------------------------------------------------------

    @property
    def chat_template(self) -> str | None:
        """The Jinja source render_chat uses (the model's, a chosen one, or the built-in fallback)."""
        return self._template.text if self._template else None

    @property
    def chat_template_source(self) -> str:
        return self._template.source if self._template else "none"

    @property
    def extra_stop_words(self) -> tuple[str, ...]:
        """Strings that end an assistant turn besides eos (e.g. internlm's <eoa>); () for model templates."""
        return self._template.stop_words if self._template else ()

    @property
    def stop_token_ids(self) -> list[int]:
        """eos_token_ids plus the extra stop words that are single tokens of this vocabulary."""
        extra = [self.backend.token_to_id(w) for w in self.extra_stop_words]
        return list(dict.fromkeys(self.eos_token_ids + [i for i in extra if i is not None]))

    def set_chat_template(self, spec: str) -> None:
        """Use a built-in template (by name) or a .jinja / .json file instead of the model's."""
        self._template = load_chat_template(spec)
        self._warn_fallback = False

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        if self._template is None:
            raise ChatTemplateError(f"{self.source or 'this model'} has no chat template: choose one with "
                                    f"--chat-template NAME (e.g. chatml, llama3) or a .jinja file")
        if self._warn_fallback:
            logger.warning("%s has no chat template; using the %s template", self.source or "the model",
                           self._template.source)
            self._warn_fallback = False
        variables = {**self._special_token_variables(), **kwargs}
        return render_template(self._template, messages, add_generation_prompt, variables)

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> list[int]:
        return self.encode(self.render_chat(messages, add_generation_prompt, **kwargs), add_special_tokens=False)

    def _special_token_variables(self) -> dict[str, str]:
        # Like transformers' special_tokens_map: only the tokens that are set (an unset one stays undefined,
        # which renders as "" where None would render as "None").
        named = {"bos_token": self.bos_token, "eos_token": self.eos_token}
        return {**self.special_tokens, **{k: v for k, v in named.items() if v is not None}}

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab={self.vocab_size}, bos={self.bos_token!r}, eos={self.eos_token!r}, "
                f"chat_template={self.chat_template_source!r})")


def _load_backend(file: Path) -> tokenizers.Tokenizer:
    if not file.is_file():
        raise ModelLoadError(f"{file}: missing (refengine needs a Hugging Face tokenizer.json)")
    try:
        return tokenizers.Tokenizer.from_file(str(file))
    except Exception as e:  # noqa: BLE001  the Rust side raises plain Exception for any parse error
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelLoadError(f"{file}: not a valid tokenizer.json ({first_line})") from None


def _read_json(file: Path) -> dict:
    """An optional JSON file: {} when absent, ModelLoadError naming it when unreadable."""
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{file}: expected a JSON object")
    return data


def _read_text(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{file}: cannot be read ({e})") from None


def _token_content(value) -> str | None:
    """tokenizer_config writes a special token as a string or as an AddedToken dict {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None
