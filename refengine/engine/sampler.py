"""Pick the next token from one row of logits (NumPy). The order of the logit processors follows
Hugging Face / vLLM so that the same settings give the same distribution:

    repetition penalty (prompt + output tokens; divide positive logits, multiply negative ones)
    presence / frequency penalty (output tokens only; OpenAI's definition)
    temperature → top-k → top-p → min-p → sample        (temperature 0 or top-k 1: argmax)

Log-probabilities are those of the model's own distribution (log_softmax of the raw logits), as
vLLM and the OpenAI API report them, whatever the sampling settings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refengine.sampling_params import GenerationConfig


@dataclass
class TokenChoice:
    token_id: int
    logprob: float | None = None                          # of the chosen token
    top_logprobs: list[tuple[int, float]] | None = None   # (token id, logprob), best first


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def apply_penalties(logits: np.ndarray, cfg: GenerationConfig, prompt_ids, output_ids) -> np.ndarray:
    logits = logits.astype(np.float32, copy=True)
    if cfg.repetition_penalty != 1.0:
        seen = np.unique(np.concatenate([np.asarray(prompt_ids, np.int64), np.asarray(output_ids, np.int64)]))
        vals = logits[seen]
        logits[seen] = np.where(vals > 0, vals / cfg.repetition_penalty, vals * cfg.repetition_penalty)
    if (cfg.presence_penalty or cfg.frequency_penalty) and len(output_ids):
        ids, counts = np.unique(np.asarray(output_ids, np.int64), return_counts=True)
        logits[ids] -= cfg.presence_penalty + cfg.frequency_penalty * counts
    return logits


def filter_logits(logits: np.ndarray, cfg: GenerationConfig) -> np.ndarray:
    """Temperature, then top-k, top-p and min-p cuts (cut tokens get -inf). Input: penalised logits [V]."""
    logits = logits / np.float32(cfg.temperature)
    if 0 < cfg.top_k < logits.size:
        kth = np.partition(logits, -cfg.top_k)[-cfg.top_k]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(log_softmax(logits))
    if cfg.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        # keep the smallest prefix whose mass reaches top_p (the token crossing the line stays in)
        drop = order[np.searchsorted(cumulative, cfg.top_p) + 1:]
        logits[drop] = -np.inf
        probs[drop] = 0.0
    if cfg.min_p > 0.0:
        logits = np.where(probs < cfg.min_p * probs.max(), -np.inf, logits)
    return logits


def sample(logits: np.ndarray, cfg: GenerationConfig, rng: np.random.Generator,
           prompt_ids=(), output_ids=()) -> TokenChoice:
    """Choose one token from logits [V] (float32)."""
    if not isinstance(logits, np.ndarray):         # a device array (CUDA backend): the same steps on the GPU
        from refengine.ops.cuda_sampling import sample_on_device
        return sample_on_device(logits, cfg, rng, prompt_ids, output_ids)
    processed = apply_penalties(logits, cfg, prompt_ids, output_ids)
    if cfg.greedy:
        token = int(np.argmax(processed))
    else:
        probs = np.exp(log_softmax(filter_logits(processed, cfg)))
        token = int(rng.choice(probs.size, p=probs / probs.sum()))
    if cfg.logprobs is None:
        return TokenChoice(token)
    logp = log_softmax(logits)
    top = np.argsort(-logp, kind="stable")[:cfg.logprobs]
    return TokenChoice(token, float(logp[token]), [(int(t), float(logp[t])) for t in top])


class SampledTokens:
    """The tokens of one sampling launch: `ids` [E] int64 (on the logits' device) are there at once, for the next
    step's input; `read()` brings the choices to the host — on a GPU the step's one wait."""

    def __init__(self, ids, choices: list[TokenChoice]):
        self.ids = ids
        self._choices = choices

    def read(self) -> list[TokenChoice]:
        return self._choices


def start_sampling(logits, rows, configs, rngs, contexts) -> SampledTokens:
    """One token per entry: entry i samples row rows[i] of logits [R, V] with configs[i], rngs[i] and its
    penalty context contexts[i] = (prompt ids, output ids). Several entries may share a row (the n > 1
    completions of one prompt). On a GPU all entries go to the device sampler at once and nothing waits
    until read()."""
    if isinstance(logits, np.ndarray) or not rows:
        choices = [sample(logits[r], c, g, *ctx) for r, c, g, ctx in zip(rows, configs, rngs, contexts)]
        return SampledTokens(np.array([c.token_id for c in choices], dtype=np.int64), choices)
    import cupy as cp
    from refengine.ops.cuda_sampling import start_sample_batch
    gathered = logits if list(rows) == list(range(logits.shape[0])) else logits[cp.asarray(rows)]
    return start_sample_batch(gathered, configs, rngs, contexts)
