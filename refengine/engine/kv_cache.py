"""The paged KV cache storage: per layer, one array for keys and one for values.

    k_caches[layer]: [num_blocks, block_size, kv_heads, head_dim]

A sequence's tokens live in the blocks its block table lists, in order; token p of the sequence sits
at block_table[p // block_size], offset p % block_size — its "slot" is block · block_size + offset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refengine.config import ModelConfig


@dataclass
class KVCache:
    k_caches: list
    v_caches: list
    block_size: int

    @property
    def num_blocks(self) -> int:
        return self.k_caches[0].shape[0]

    @classmethod
    def allocate(cls, cfg: ModelConfig, num_blocks: int, block_size: int, dtype=np.float32, xp=np) -> "KVCache":
        shape = (num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim)
        return cls([xp.zeros(shape, dtype) for _ in range(cfg.num_layers)],
                   [xp.zeros(shape, dtype) for _ in range(cfg.num_layers)], block_size)

    @staticmethod
    def bytes_per_block(cfg: ModelConfig, block_size: int, itemsize: int) -> int:
        return 2 * cfg.num_layers * block_size * cfg.kv_size * itemsize
