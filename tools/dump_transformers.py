"""Dump what transformers computes for given token ids, in refengine's DUMP.npz format (docs/diff.md).

    python dump_transformers.py --model PATH --ids IDS.json --out DUMP.npz [--dtype float32] [--max-new-tokens 16]

PATH is a Hugging Face model directory or a GGUF file; IDS.json is {"prompts": [[id, ...], ...]}.
transformers loads the model as refengine does (AutoModelForCausalLM, `gguf_file=` for GGUF), in --dtype,
with eager attention (the plainest reference), and sees exactly the ids it is given: it never tokenizes.

This file is package data, not a refengine module: it imports torch and transformers, which refengine
itself never does. `refengine diff --against transformers` runs it in a child process.

Exit codes: 0 written; 3 transformers cannot load the model (one line on stderr); anything else is a bug.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import transformers

FORMAT_VERSION = 1
CANNOT_LOAD = 3


def load_model(path: str, dtype: str) -> torch.nn.Module:
    kwargs = dict(dtype=getattr(torch, dtype), attn_implementation="eager")
    p = Path(path)
    if p.is_file():
        model = transformers.AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, **kwargs)
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(p, **kwargs)
    return model.eval()


def decoder_layers(model: torch.nn.Module):
    """The decoder layers of a Llama-family CausalLM (model.model.layers)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__} has no model.layers: not a Llama-family model")
    return layers


def reset_rope_state(model: torch.nn.Module) -> None:
    """Forget dynamic-NTK growth from an earlier prompt: each prompt is an independent sequence
    (transformers otherwise keeps the largest inv_freq it has seen)."""
    for module in model.modules():
        if hasattr(module, "original_inv_freq") and hasattr(module, "original_max_seq_len"):
            module.inv_freq = module.original_inv_freq.clone()
            module.max_seq_len_cached = module.original_max_seq_len


@torch.no_grad()
def dump_prompt(model: torch.nn.Module, ids: list[int], max_new_tokens: int) -> dict[str, np.ndarray]:
    """input_ids, hidden_states [L+1, T, hidden], logits [T, V], greedy_ids [N], greedy_logprobs [N, V]."""
    reset_rope_state(model)
    outputs = []   # each decoder layer's output: the residual stream before the final norm
    capture = lambda module, args, out: outputs.append(out[0] if isinstance(out, tuple) else out)
    hooks = [layer.register_forward_hook(capture) for layer in decoder_layers(model)]
    try:
        # output_hidden_states' first entry is the embedding output; its last is after the final norm,
        # which is why the layers' own outputs come from the hooks.
        result = model(torch.tensor([ids]), output_hidden_states=True, use_cache=True)
    finally:
        for hook in hooks:
            hook.remove()
    hidden = torch.cat([result.hidden_states[0]] + outputs)                 # [L+1, T, hidden]
    greedy, logprobs = greedy_continuation(model, result, max_new_tokens)
    return {"input_ids": np.asarray(ids, dtype=np.int64), "hidden_states": hidden.float().numpy(),
            "logits": result.logits[0].float().numpy(), "greedy_ids": np.asarray(greedy, dtype=np.int64),
            "greedy_logprobs": logprobs}


@torch.no_grad()
def greedy_continuation(model, result, n: int) -> tuple[list[int], np.ndarray]:
    """n argmax tokens after the prompt through the KV cache, past any end-of-turn token (generate()
    would stop there), and the log-softmax [n, V] each was chosen from."""
    past, last, greedy, logprobs = result.past_key_values, result.logits[0, -1], [], []
    for step in range(n):
        logprobs.append(torch.log_softmax(last.float(), dim=-1))
        greedy.append(int(last.argmax()))
        if step + 1 < n:
            step_out = model(torch.tensor([[greedy[-1]]]), past_key_values=past, use_cache=True)
            past, last = step_out.past_key_values, step_out.logits[0, -1]
    V = result.logits.shape[-1]
    return greedy, (torch.stack(logprobs).numpy() if logprobs else np.zeros((0, V), np.float32))


def write_dump(path: str, prompts: list[dict[str, np.ndarray]], producer: str) -> None:
    arrays = {"format_version": np.array(FORMAT_VERSION), "num_prompts": np.array(len(prompts)),
              "producer": np.array(producer)}
    for i, p in enumerate(prompts):
        arrays.update({f"p{i}.{name}": value for name, value in p.items()})
    np.savez(path, **arrays)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="Hugging Face model directory or GGUF file")
    parser.add_argument("--ids", required=True, help='JSON file {"prompts": [[id, ...], ...]}')
    parser.add_argument("--out", required=True, help="the DUMP.npz to write")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args(argv)
    prompts = json.loads(Path(args.ids).read_text())["prompts"]
    try:
        model = load_model(args.model, args.dtype)
        decoder_layers(model)
    except (OSError, ValueError, KeyError, ImportError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        print(f"transformers cannot load {args.model}: {first}", file=sys.stderr)
        return CANNOT_LOAD
    dumps = [dump_prompt(model, ids, args.max_new_tokens) for ids in prompts]
    write_dump(args.out, dumps, f"transformers {transformers.__version__} ({args.dtype}, eager attention)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
