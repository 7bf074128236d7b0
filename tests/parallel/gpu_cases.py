"""Shared by the GPU tensor-parallel tests: skip without a usable GPU and NCCL; greedy tokens by engine."""

from __future__ import annotations

import numpy as np
import pytest

from refengine.config import EngineConfig, ModelConfig
from refengine.engine.engine import Engine
from refengine.sampling_params import GenerationConfig

# llama-shaped, GQA (8 heads, 2 KV heads), odd vocabulary (no tp divides it), int4-friendly shares at tp <= 4
SHAPE = dict(family="llama", hidden_size=512, num_layers=4, num_heads=8, num_kv_heads=2, head_dim=64,
             intermediate_size=1536, vocab_size=3001, max_position_embeddings=1024, rms_norm_eps=1e-5)


def require_gpu_nccl(min_gpus: int = 1):
    """cupy, or a module-level skip: no CuPy, no usable GPU, no NCCL, or fewer than min_gpus GPUs."""
    from tests.kernels.helpers import require_gpu
    cp = require_gpu()
    from cupy.cuda import nccl
    if not getattr(nccl, "available", False):
        pytest.skip("CuPy cannot load NCCL here (pip install nvidia-nccl-cu13 / -cu12)", allow_module_level=True)
    count = cp.cuda.runtime.getDeviceCount()
    if count < min_gpus:
        pytest.skip(f"needs {min_gpus} GPUs, {count} visible", allow_module_level=True)
    return cp


def config() -> ModelConfig:
    return ModelConfig(**SHAPE)


def greedy_tokens(model, prompts, n: int = 24) -> list[list[int]]:
    config = EngineConfig(cache_max_entry_count=256, cache_block_seq_len=16, max_batch_size=8)
    gen = GenerationConfig(temperature=0, max_new_tokens=n, ignore_eos=True)
    with Engine(model, None, config) as engine:
        return [list(engine.infer(input_ids=p, gen_config=gen)[0].token_ids) for p in prompts]


def agreeing_prefixes(a: list[list[int]], b: list[list[int]]) -> list[int]:
    return [next((i for i, (x, y) in enumerate(zip(s, t)) if x != y), len(s)) for s, t in zip(a, b)]


def prompts(vocab: int) -> list[list[int]]:
    rng = np.random.default_rng(11)
    return [rng.integers(0, vocab, n).tolist() for n in (1, 9, 40, 130)]
