"""Shared by the tensor-parallel tests: a fixed sequence of packed forward passes over a paged cache, and a
batch of greedy generations through the Engine, each run with any Engine model (tp = 1 or split)."""

import asyncio

import numpy as np

from refengine.engine.engine import Engine
from refengine.engine.kv_cache import KVCache
from refengine.model.llama import ForwardBatch, LlamaModel
from refengine.ops import reference
from refengine.sampling_params import GenerationConfig
from tests.engine.tiny_engine import CharTokenizer, engine_config

BLOCK = 8


def steps(cfg) -> list[ForwardBatch]:
    """Three forward passes over one paged cache of 8 blocks (scattered block tables): sequence A's first
    22 tokens; A's next 3 packed with B's 9-token prefill; a decode step of both (A at position 25: past
    the 24 positions of the tiny dynamic-rope checkpoints, whose rope base then grows). All rows get logits."""
    rng = np.random.default_rng(7)
    ids = lambda n: rng.integers(0, cfg.vocab_size, n)
    table_a, table_b = np.array([5, 2, 7, 0]), np.array([1, 6, 3, 4])

    def batch(seqs):                    # seqs: (ids, start position, block table)
        pos = np.concatenate([np.arange(s, s + len(t)) for t, s, _ in seqs])
        tables = np.stack([tb for _, _, tb in seqs]).astype(np.int32)
        row_seq = np.repeat(np.arange(len(seqs)), [len(t) for t, _, _ in seqs])
        slots = tables[row_seq, pos // BLOCK].astype(np.int64) * BLOCK + pos % BLOCK
        cu = np.concatenate([[0], np.cumsum([len(t) for t, _, _ in seqs])])
        ctx = np.array([s + len(t) for t, s, _ in seqs])
        return ForwardBatch(np.concatenate([t for t, _, _ in seqs]).astype(np.int64), pos, cu, ctx, tables, slots,
                            np.arange(cu[-1]))
    return [batch([(ids(22), 0, table_a)]), batch([(ids(3), 22, table_a), (ids(9), 0, table_b)]),
            batch([(ids(1), 25, table_a), (ids(1), 9, table_b)])]


def run_steps(model, kv, cfg) -> np.ndarray:
    return np.concatenate([model.forward(b, kv) for b in steps(cfg)])


def tp1_logits(cfg, weights) -> np.ndarray:
    model = LlamaModel(cfg, weights, reference)
    return run_steps(model, KVCache.allocate(cfg, 8, BLOCK), cfg)


PROMPTS = ["the cat sat on", "the cat sat on the mat", "hello world!", "a"]


def generations(model, tokenizer=None) -> list[list[list[int]]]:
    """Greedy completions of PROMPTS submitted together (one step batches them all; shared prefixes share
    blocks); the second asks for n = 2, whose completions fork a half-full block. Per prompt: the tokens of
    each completion, by completion index."""
    tok = tokenizer or CharTokenizer()
    greedy = GenerationConfig(temperature=0, max_new_tokens=12, ignore_eos=True)
    config = engine_config(num_blocks=64, block_size=4, session_len=120, enable_prefix_caching=True)
    with Engine(model, tok, config) as engine:
        async def one(i, prompt):
            tokens: dict[int, list[int]] = {}
            async for o in engine.stream_infer(f"s{i}", input_ids=tok.encode(prompt), gen_config=greedy,
                                               n=2 if i == 1 else 1):
                tokens.setdefault(o.index, []).extend(o.token_ids)
            return [tokens[k] for k in sorted(tokens)]

        async def every():
            return await asyncio.gather(*[one(i, p) for i, p in enumerate(PROMPTS)])
        return asyncio.run(every())
