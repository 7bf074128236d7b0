"""A conversation's next turn as the tokens to append to a session.

A session holds the tokens of the conversation so far: the chat template of the earlier messages and the
tokens the model generated (ending in its end-of-turn token, or cut by max_new_tokens). The next turn
must make the session hold exactly what one prefill of the whole conversation would. So we render the
whole conversation and send the part after what the session holds, checking that it really is a prefix:

    held:           <|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello!<|im_end|>
    whole (render): <|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello!<|im_end|>\\n<|im_start|>user\\n…
    send:                                                                               \\n<|im_start|>user\\n…

First by token ids (exact); then by text, for a reply the model spelled with other tokens than the
tokenizer would. When neither matches (a template that rewrites earlier turns, a reply trimmed at a stop
string) there is no correct suffix: the caller re-sends the whole conversation in a fresh session.
"""

from __future__ import annotations


def next_turn_ids(tokenizer, held_ids: list[int], conversation: list[dict]) -> list[int] | None:
    """Tokens to append to a session holding `held_ids` so it holds the template of `conversation`
    (with the generation prompt); None when the session is not a prefix of it."""
    whole = tokenizer.encode_chat(conversation)
    if whole[:len(held_ids)] == held_ids:
        return whole[len(held_ids):]
    text = tokenizer.render_chat(conversation)
    held_text = tokenizer.decode(held_ids, skip_special_tokens=False)
    if text.startswith(held_text):
        return tokenizer.encode(text[len(held_text):], add_special_tokens=False)
    return None
