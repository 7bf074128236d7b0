"""Named Llama shapes for random-weight benchmark models: the published configs' dimensions, nothing else.

    name          hidden  layers  heads  kv heads  head_dim  intermediate  vocab    rope theta  context
    llama2-7b     4096    32      32     32        128       11008         32000    1e4         4096
    llama3-8b     4096    32      32     8         128       14336         128256   5e5         8192
    internlm2-7b  4096    32      32     8         128       14336         92544    1e6         32768
    1b            2048    22      32     4         64        5632          32000    1e4         2048   (TinyLlama-1.1B)
    tiny          128     2       4      2         32        256           384      1e4         1024   (tests)

Every shape is a plain Llama (family "llama", no biases, untied LM head, default rope): internlm2-7b is
InternLM2's dimensions on Llama's graph — its chat models' dynamic-NTK rope would change nothing a
benchmark measures except disabling CUDA graphs, so it is left out.
"""

from __future__ import annotations

from refengine.bench.errors import BenchError
from refengine.config import ModelConfig

SHAPES: dict[str, dict] = {
    "llama2-7b": dict(hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=32, head_dim=128,
                      intermediate_size=11008, vocab_size=32000, rope_theta=10000.0, max_position_embeddings=4096),
    "llama3-8b": dict(hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128,
                      intermediate_size=14336, vocab_size=128256, rope_theta=500000.0,
                      max_position_embeddings=8192),
    "internlm2-7b": dict(hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128,
                         intermediate_size=14336, vocab_size=92544, rope_theta=1000000.0,
                         max_position_embeddings=32768),
    "1b": dict(hidden_size=2048, num_layers=22, num_heads=32, num_kv_heads=4, head_dim=64,
               intermediate_size=5632, vocab_size=32000, rope_theta=10000.0, max_position_embeddings=2048),
    "tiny": dict(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=32,
                 intermediate_size=256, vocab_size=384, rope_theta=10000.0, max_position_embeddings=1024),
}


def shape_config(name: str) -> ModelConfig:
    """The ModelConfig of a named shape, or a BenchError listing the names."""
    if name not in SHAPES:
        raise BenchError(f"unknown shape {name!r} (choose from {', '.join(SHAPES)})")
    return ModelConfig(family="llama", rms_norm_eps=1e-5, **SHAPES[name])


def linear_shapes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """[out, in] of the four fused linears of a block, in the workspace's names."""
    return {"qkv": (cfg.qkv_size, cfg.hidden_size), "o": (cfg.hidden_size, cfg.q_size),
            "gate_up": (2 * cfg.intermediate_size, cfg.hidden_size),
            "down": (cfg.hidden_size, cfg.intermediate_size)}
