"""The prompts a diff runs: read from a file, turned into token ids by refengine's tokenizer.

    prompts.txt     one prompt per line (blank lines skipped)
    prompts.jsonl   one JSON object per line: {"prompt": "..."} or {"messages": [{"role": ..., "content": ...}]}

A prompt string is a user message rendered with the chat template (or, with chat=False / --raw, plain
text); a message list is always rendered with the chat template. The ids computed here are the ones
both implementations see: transformers never tokenizes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence, Union

from refengine.diff.errors import PromptsFileError

Prompt = Union[str, list]           # a str, or a list of {"role", "content"} messages


def read_prompts(path) -> list[Prompt]:
    """The prompts in `path` (a .jsonl file is JSON lines, any other plain text), or PromptsFileError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise PromptsFileError(f"{path}: cannot read the prompts file ({why})") from None
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise PromptsFileError(f"{path}: the prompts file has no prompts")
    if path.suffix == ".jsonl":
        return [_json_prompt(line, f"{path}:{n}") for n, line in lines]
    return [line for _, line in lines]


def _json_prompt(line: str, where: str) -> Prompt:
    try:
        obj = json.loads(line)
    except ValueError as e:
        raise PromptsFileError(f"{where}: not valid JSON ({e})") from None
    if isinstance(obj, dict) and isinstance(obj.get("prompt"), str):
        return obj["prompt"]
    if isinstance(obj, dict) and "messages" in obj:
        return check_messages(obj["messages"], where)
    raise PromptsFileError(f'{where}: expected {{"prompt": "..."}} or {{"messages": [...]}}')


def check_messages(messages, where: str) -> list:
    ok = isinstance(messages, list) and messages and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages)
    if not ok:
        raise PromptsFileError(f'{where}: "messages" must be a non-empty list of {{"role": str, "content": str}}')
    return messages


def encode_prompts(tokenizer, prompts: Sequence[Prompt], chat: bool = True) -> list[list[int]]:
    """Token ids of every prompt, as refengine's pipeline would compute them."""
    out = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            ids = tokenizer.encode_chat([{"role": "user", "content": prompt}]) if chat else tokenizer.encode(prompt)
        else:
            ids = tokenizer.encode_chat(check_messages(list(prompt), f"prompt {i + 1}"))
        if not ids:
            raise PromptsFileError(f"prompt {i + 1} encodes to no tokens")
        out.append([int(t) for t in ids])
    return out


def label(prompt: Prompt) -> str:
    """A one-line name for a prompt in reports: the text, or the last message's content."""
    return prompt if isinstance(prompt, str) else f"[{len(prompt)} messages] {prompt[-1]['content']}"
