"""Seeded random weights for a Llama shape, one block at a time (a 7B model never sits in memory whole).

Scales keep activations sane at any width (they do not blow up or vanish over 32 layers):

    linear W [out, in]      N(0, 1/in)      (so x @ W.T keeps the size of x: logits of std ~1)
    embedding [V, hidden]   N(0, 1)         (RMSNorm comes next: only its direction matters)
    norm weights            1
    int4 linears            random codes 0..15 (uniform), float16 scales ≈ σ/4.6 · (1 + N(0, 0.1²)) with
                            σ = 1/√in (uniform codes have std 4.6 steps, so W' has std ≈ σ like the float
                            case), integer zero points drawn from 6..9 (stored float16): what AWQ's
                            scales and zeros look like for such weights

Speed: a normal float16 weight is a uniform random 16-bit index into a seeded table of 65536 N(0, 1)
draws, scaled to the tensor's σ and rounded to float16 once (~4 ns a weight on one core instead of ~35 for
standard_normal + scale + cast; the table is a large enough sample that the distribution is the normal's).
Tensors are filled in row chunks on a thread pool; every chunk has its own generator, seeded by
(seed, layer, tensor, chunk), so the weights do not depend on the number of threads.
"""

from __future__ import annotations

from concurrent.futures import Executor

import numpy as np

from refengine.bench.shapes import linear_shapes
from refengine.config import ModelConfig
from refengine.model.weights import LayerWeights
from refengine.quant.primitives import PACK, Int4Weight

TABLE_SIZE = 1 << 16                 # indexed by a uniform uint16
CHUNK_ELEMENTS = 1 << 24             # a thread's share of one tensor
ZERO_POINTS = (6, 10)                # drawn from [6, 10)
UNIFORM_CODE_STD = float(np.sqrt((16 ** 2 - 1) / 12))      # 4.61: std of a uniform code 0..15
# SeedSequence keys of each tensor (the layer number + 1 is the other key; the globals use 0)
TENSOR_KEYS = {"embed": 1, "lm_head": 2, "qkv": 3, "o": 4, "gate_up": 5, "down": 6}
PART_KEYS = {"weight": 0, "qweight": 1, "scales": 2, "zeros": 3}


class RandomWeights:
    """Random tensors of one model; `pool` (any Executor) fills the row chunks of a tensor in parallel."""

    def __init__(self, cfg: ModelConfig, seed: int = 0, pool: Executor | None = None):
        self.cfg = cfg
        self.seed = seed
        self.pool = pool
        self.table = np.random.default_rng([seed, TABLE_SIZE]).standard_normal(TABLE_SIZE)

    # ---------------------------------------------------------------- whole tensors

    def embed(self) -> np.ndarray:
        return self.normal((self.cfg.vocab_size, self.cfg.hidden_size), 1.0, (0, TENSOR_KEYS["embed"]))

    def lm_head(self) -> np.ndarray:
        c = self.cfg
        return self.normal((c.vocab_size, c.hidden_size), c.hidden_size ** -0.5, (0, TENSOR_KEYS["lm_head"]))

    def norm(self) -> np.ndarray:
        return np.ones(self.cfg.hidden_size, np.float16)

    def layer(self, i: int, group_size: int | None = None) -> LayerWeights:
        """Block i: float16 linears, or packed int4 ones when group_size is given."""
        linears = {}
        for role, (out_f, in_f) in linear_shapes(self.cfg).items():
            key = (i + 1, TENSOR_KEYS[role])
            linears[role] = (self.int4((out_f, in_f), group_size, key) if group_size
                             else self.normal((out_f, in_f), in_f ** -0.5, key))
        return LayerWeights(attn_norm=self.norm(), qkv=linears["qkv"], qkv_bias=None, o=linears["o"], o_bias=None,
                            mlp_norm=self.norm(), gate_up=linears["gate_up"], gate_up_bias=None,
                            down=linears["down"], down_bias=None)

    def normal(self, shape: tuple[int, int], std: float, key: tuple[int, int]) -> np.ndarray:
        """float16 [rows, cols] ~ N(0, std²)."""
        table16 = (self.table * std).astype(np.float16)
        out = np.empty(shape, np.float16)

        def fill(rng, rows):
            out[rows] = table16[rng.integers(0, TABLE_SIZE, size=out[rows].shape, dtype=np.uint16)]
        self._chunked(shape, key + (PART_KEYS["weight"],), fill)
        return out

    def int4(self, shape: tuple[int, int], group_size: int, key: tuple[int, int]) -> Int4Weight:
        """A packed [out, in] int4 linear (layout of refengine/quant/primitives.py) with plausible scales/zeros."""
        out_f, in_f = shape
        qweight = np.empty((out_f, in_f // PACK), np.uint32)
        groups = (out_f, in_f // group_size)
        scales, zeros = np.empty(groups, np.float16), np.empty(groups, np.float16)
        step = in_f ** -0.5 / UNIFORM_CODE_STD

        def fill_codes(rng, rows):
            qweight[rows] = rng.integers(0, 1 << 32, size=qweight[rows].shape, dtype=np.uint32)

        def fill_groups(rng, rows):
            n = scales[rows].shape
            scales[rows] = step * np.abs(1 + 0.1 * rng.standard_normal(n, dtype=np.float32))
            zeros[rows] = rng.integers(*ZERO_POINTS, size=n)
        self._chunked(shape, key + (PART_KEYS["qweight"],), fill_codes)
        self._chunked(shape, key + (PART_KEYS["scales"],), fill_groups)
        return Int4Weight(qweight, scales, zeros, group_size)

    # ---------------------------------------------------------------- chunking

    def _chunked(self, shape: tuple[int, int], key: tuple[int, ...], fill) -> None:
        """fill(rng, rows) over row chunks of ~CHUNK_ELEMENTS elements, each with its own seeded generator."""
        rows_per = max(1, CHUNK_ELEMENTS // shape[1])
        chunks = [(np.random.default_rng([self.seed, *key, c]), slice(start, start + rows_per))
                  for c, start in enumerate(range(0, shape[0], rows_per))]
        if self.pool is None:
            for rng, rows in chunks:
                fill(rng, rows)
        else:
            for done in [self.pool.submit(fill, rng, rows) for rng, rows in chunks]:
                done.result()             # re-raises a worker's exception here
