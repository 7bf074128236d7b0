"""Sampling on the GPU for the engine: what refengine.engine.sampler.sample does, for logits that are CuPy
arrays, with the kernels of kernels_cu/sampling.cu. The only device->host copy is the one that brings
back the chosen ids (and log-probabilities when asked for), once for all the rows given.

Seeding: each row's uniform number is drawn on the host from the request's own numpy Generator — the
single draw Generator.choice makes — so a seeded request picks the same token on either backend (up to
float32 vs float64 rounding of the cumulative sum at a boundary).
"""

from __future__ import annotations

from typing import Sequence

import cupy as cp
import cupyx
import numpy as np

from refengine.engine.sampler import TokenChoice
from refengine.ops import cuda
from refengine.sampling_params import GenerationConfig


def _penalty_csr(contexts: Sequence[tuple], configs: Sequence[GenerationConfig]):
    """Distinct seen ids per row, their output counts, and the row offsets (reference.apply_penalties_rows)."""
    ids, counts, offsets = [], [], [0]
    for (prompt_ids, output_ids), cfg in zip(contexts, configs):
        penalised = cfg.repetition_penalty != 1.0 or cfg.presence_penalty or cfg.frequency_penalty
        if penalised:
            out = np.asarray(output_ids, dtype=np.int64)
            seen = np.unique(np.concatenate([np.asarray(prompt_ids, dtype=np.int64), out]))
            if cfg.repetition_penalty == 1.0:             # presence / frequency only: the output's tokens
                seen = np.unique(out)
            uniq, cnt = np.unique(out, return_counts=True)
            row_counts = np.zeros(seen.size, dtype=np.int64)
            row_counts[np.searchsorted(seen, uniq)] = cnt
            if not (cfg.presence_penalty or cfg.frequency_penalty):
                row_counts[:] = 0
            ids.append(seen)
            counts.append(row_counts)
        offsets.append(offsets[-1] + (ids[-1].size if penalised else 0))
    cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0, np.int64)
    return cat(ids), cat(counts), np.asarray(offsets, dtype=np.int64)


class DeviceSampledTokens:
    """SampledTokens on the GPU: the chosen ids stay on the device (`ids`, int64 [R]) while one asynchronous copy
    brings them — and the log-probabilities, when asked — to pinned host memory. read() waits for that copy
    alone: work queued on the GPU after this launch (the next step's graph) does not delay it."""

    def __init__(self, tokens, packed, configs: Sequence[GenerationConfig], num_top: int | None):
        self.ids = tokens
        self._configs, self._num_top = configs, num_top
        src = self._src = packed if packed is not None else tokens     # kept alive until read
        self._host = cupyx.empty_pinned(src.shape, src.dtype)
        stream = cp.cuda.get_current_stream()
        cp.cuda.runtime.memcpyAsync(self._host.ctypes.data, src.data.ptr, src.nbytes,
                                    cp.cuda.runtime.memcpyDeviceToHost, stream.ptr)
        self._copied = cp.cuda.Event(disable_timing=True)
        self._copied.record(stream)

    def read(self) -> list[TokenChoice]:
        self._copied.synchronize()
        if self._num_top is None:
            return [TokenChoice(int(t)) for t in self._host]
        packed, num_top, out = self._host, self._num_top, []
        for r, cfg in enumerate(self._configs):
            token = int(packed[r, 0])
            if cfg.logprobs is None:
                out.append(TokenChoice(token))
                continue
            ids_r, lp_r = packed[r, 2:2 + num_top], packed[r, 2 + num_top:]
            out.append(TokenChoice(token, float(packed[r, 1]),
                                   [(int(i), float(lp)) for i, lp in zip(ids_r[:cfg.logprobs], lp_r[:cfg.logprobs])]))
        return out


def start_sample_batch(logits, configs: Sequence[GenerationConfig], rngs: Sequence[np.random.Generator],
                       contexts: Sequence[tuple] | None = None) -> DeviceSampledTokens:
    """Launch the sampling of one token per row of logits [R, V] (CuPy, float32): row r with configs[r], rngs[r]
    and penalty context contexts[r] = (prompt ids, output ids). Every kernel that reads the logits is queued
    here, so the logits buffer may be overwritten by work queued after this call."""
    R = logits.shape[0]
    contexts = contexts if contexts is not None else [((), ())] * R
    plain = lambda c: c.repetition_penalty == 1.0 and not c.presence_penalty and not c.frequency_penalty
    if all(c.greedy and plain(c) and c.logprobs is None for c in configs):     # greedy: one kernel, no uploads
        return DeviceSampledTokens(cuda.argmax_rows(logits), None, configs, None)
    uniforms = np.array([0.0 if c.greedy else rng.random() for c, rng in zip(configs, rngs)], dtype=np.float32)
    processed = logits
    if any(c.repetition_penalty != 1.0 or c.presence_penalty or c.frequency_penalty for c in configs):
        ids, counts, offsets = _penalty_csr(contexts, configs)
        processed = cuda.apply_penalties_rows(
            logits, ids, counts, offsets, [c.repetition_penalty for c in configs],
            [c.presence_penalty for c in configs], [c.frequency_penalty for c in configs])
    tokens = cuda.sample_rows(processed, [c.temperature for c in configs], [c.top_k for c in configs],
                              [c.top_p for c in configs], [c.min_p for c in configs], uniforms)
    num_top = max((c.logprobs for c in configs if c.logprobs is not None), default=None)
    if num_top is None:
        return DeviceSampledTokens(tokens, None, configs, None)
    chosen, top_ids, top_lp = cuda.logprobs_rows(logits, tokens, num_top)
    packed = cp.concatenate([tokens.astype(cp.float64)[:, None], chosen.astype(cp.float64)[:, None],
                             top_ids.astype(cp.float64), top_lp.astype(cp.float64)], axis=1)   # one copy back
    return DeviceSampledTokens(tokens, packed, configs, num_top)


def sample_batch(logits, configs: Sequence[GenerationConfig], rngs: Sequence[np.random.Generator],
                 contexts: Sequence[tuple] | None = None) -> list[TokenChoice]:
    """One token per row of logits [R, V]: start_sample_batch(...).read()."""
    return start_sample_batch(logits, configs, rngs, contexts).read()


def sample_on_device(logits, cfg: GenerationConfig, rng: np.random.Generator, prompt_ids=(), output_ids=()
                     ) -> TokenChoice:
    """sampler.sample for one row of logits [V] on the GPU."""
    return sample_batch(logits.reshape(1, -1), [cfg], [rng], [(prompt_ids, output_ids)])[0]
