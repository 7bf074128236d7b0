"""Incremental detokenization: token ids in, text deltas out, one token at a time.

Decoding each new token on its own is wrong in two ways:
- sentencepiece-style (Metaspace) decoders drop the leading space of the *first* token of whatever they
  decode, so "▁world" alone gives "world" and the words would run together;
- a character of several UTF-8 bytes may be split over tokens (byte-fallback <0xE4><0xBD><0xA0>, or
  byte-level BPE pieces of an emoji); decoding a part gives U+FFFD.

So, like vLLM (prefix/read offsets), we decode a short window that starts with the last emitted tokens
(the context) and emit only what the window's text gained beyond the context's text:

    window (self._ids):  | context: emitted last time | new: not emitted yet |
                         0                      read_offset                 end
    delta = decode(window)[len(decode(window[:read_offset])):]

When the window's text ends in U+FFFD the character is not complete yet: emit nothing and wait for more
tokens. After an emission the new tokens become the context of the next window and older ids are dropped,
so the per-token cost is the decode of a few tokens, whatever the length of the sequence.

Invariant (tested): with no prompt_ids, "".join(deltas) + flush() == tokenizer.decode(generated_ids).
With prompt_ids the first tokens are decoded after the prompt's last tokens, so the text reads as the
continuation of the prompt: for a Metaspace tokenizer the first word keeps its leading space (vLLM's
behaviour), where tokenizer.decode(generated_ids) alone would drop it.
"""

from __future__ import annotations

from typing import Sequence

REPLACEMENT_CHAR = "\ufffd"
PROMPT_CONTEXT = 6   # prompt tokens kept as context: enough for any decoder's look-behind
MAX_PENDING = 16     # tokens held for an unfinished character before giving up (no character is this long)


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_ids: Sequence[int] = (), skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._ids: list[int] = [int(i) for i in prompt_ids[max(0, len(prompt_ids) - PROMPT_CONTEXT):]]
        self._read_offset = len(self._ids)  # self._ids[:read_offset] is context, already emitted
        self._pieces: list[str] = []
        self._text_cache: str | None = None

    @property
    def text(self) -> str:
        """Everything emitted so far."""
        if self._text_cache is None:
            self._text_cache = "".join(self._pieces)
        return self._text_cache

    def add(self, token_id: int) -> str:
        """Append one generated token; return the new text ("" while a character is incomplete)."""
        self._ids.append(int(token_id))
        prefix_text = self._decode(self._ids[:self._read_offset])
        new_text = self._decode(self._ids)
        pending = len(self._ids) - self._read_offset
        incomplete = new_text.endswith(REPLACEMENT_CHAR) and pending < MAX_PENDING
        if len(new_text) <= len(prefix_text) or incomplete:
            return ""   # nothing new yet: a skipped special token, or half a character
        delta = new_text[len(prefix_text):]
        self._slide()
        return self._emit(delta)

    def flush(self) -> str:
        """At the end of generation: whatever is still held (an unfinished character decodes as U+FFFD)."""
        if self._read_offset == len(self._ids):
            return ""
        prefix_text = self._decode(self._ids[:self._read_offset])
        new_text = self._decode(self._ids)
        self._slide()
        return self._emit(new_text[len(prefix_text):])

    def _slide(self) -> None:
        # The ids just emitted become the next window's context; older ones are dropped (memory stays bounded).
        del self._ids[:self._read_offset]
        self._read_offset = len(self._ids)

    def _emit(self, delta: str) -> str:
        if delta:
            self._pieces.append(delta)
            self._text_cache = None
        return delta

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens) if ids else ""
