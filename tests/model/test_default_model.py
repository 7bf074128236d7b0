"""The real default model (SmolLM2-135M-Instruct) end to end against transformers float32 on the same
GGUF: full-prompt logits, greedy continuations, and the chat template."""

import numpy as np
import pytest

from refengine.engine.kv_cache import KVCache
from refengine.model.llama import ForwardBatch
from tolerances import assert_close

torch = pytest.importorskip("torch")

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a terse assistant."},
     {"role": "user", "content": "List three prime numbers."}],
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Write a haiku about autumn leaves."}],
    [{"role": "user", "content": "Translate to French: the cat sleeps on the warm windowsill."}],
]


def our_logits(pipe, ids):
    kv = KVCache.allocate(pipe.model.cfg, -(-len(ids) // 64), 64)
    batch = ForwardBatch.single(ids, 0, np.arange(kv.num_blocks), 64, all_logits=True)
    return pipe.model.forward(batch, kv)


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_chat_template_and_ids_match_transformers(demo_pipeline, hf_demo_tokenizer, messages):
    ours = demo_pipeline.tokenizer.encode_chat(messages)
    theirs = hf_demo_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                   return_dict=True)["input_ids"]
    assert ours == list(theirs)
    assert demo_pipeline.tokenizer.render_chat(messages) == hf_demo_tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False)


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_logits_match_transformers(demo_pipeline, hf_demo_model, messages):
    ids = demo_pipeline.tokenizer.encode_chat(messages)
    got = our_logits(demo_pipeline, ids)
    with torch.inference_mode():
        ref = hf_demo_model(torch.tensor(ids)[None]).logits[0].float().numpy()
    print(f"max |logit diff| over {len(ids)} positions: {np.abs(got - ref).max():.3g}")
    assert_close(got, ref, "logits", "float32")


@pytest.mark.parametrize("messages", CONVERSATIONS[:3])
def test_greedy_continuation_matches_transformers_for_32_tokens(demo_pipeline, hf_demo_model, messages):
    ids = demo_pipeline.tokenizer.encode_chat(messages)
    ours = demo_pipeline.generate(ids, temperature=0, max_new_tokens=32, ignore_eos=True).token_ids
    assert ours == hf_greedy(hf_demo_model, ids, 32)


def hf_greedy(model, ids, n):
    """transformers' greedy decode that runs past end-of-turn (generate() would stop there, or with
    min_new_tokens forbid it — either way not the argmax continuation we compare against)."""
    out, past = [], None
    x = torch.tensor(ids)[None]
    with torch.inference_mode():
        for _ in range(n):
            res = model(x, past_key_values=past, use_cache=True)
            past = res.past_key_values
            out.append(int(res.logits[0, -1].argmax()))
            x = torch.tensor([[out[-1]]])
    return out


def test_the_capital_of_france(demo_pipeline):
    reply = demo_pipeline("What is the capital of France?", temperature=0, max_new_tokens=20)
    assert reply.text == "The capital of France is Paris."
    assert reply.finish_reason == "stop"
