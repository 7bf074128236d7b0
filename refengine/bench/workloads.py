"""The requests a benchmark sends: random prompt ids (seeded) with an exact output length each.

Every request runs with ignore_eos, so it generates exactly `output_tokens` tokens whatever the weights say.

    fixed_requests     n × (prompt_tokens, output_tokens)             profile_generation
    spread_requests    lengths from a clipped lognormal, below        profile_throughput, synthetic
    sharegpt_requests  lengths of a ShareGPT-style json's first turns  profile_throughput --dataset

The synthetic spread imitates chat traffic (ShareGPT's prompt and reply lengths are roughly lognormal,
a long right tail): length = round(median · exp(sigma · N(0, 1))), clipped to [median / 8, median · 8].
With the defaults (prompt median 256, output median 128, sigma 0.7) the means are ~330 and ~165 tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from refengine.bench.errors import BenchError

SPREAD = 8                        # lengths are clipped to [median / SPREAD, median · SPREAD]
SHAREGPT_MIN_TOKENS = 4           # LMDeploy's profile_throughput filter: drop tiny prompts and replies


@dataclass(frozen=True)
class BenchRequest:
    prompt_ids: list[int]
    output_tokens: int


def random_prompt(rng: np.random.Generator, length: int, vocab_size: int) -> list[int]:
    """Uniform random ids, clear of the first ids (special and byte tokens in most vocabularies)."""
    low = min(300, vocab_size // 2)
    return rng.integers(low, vocab_size, length).tolist()


def fixed_requests(n: int, prompt_tokens: int, output_tokens: int, vocab_size: int, seed: int) -> list[BenchRequest]:
    rng = np.random.default_rng([seed, n, prompt_tokens, output_tokens])
    return [BenchRequest(random_prompt(rng, prompt_tokens, vocab_size), output_tokens) for _ in range(n)]


def lognormal_lengths(rng: np.random.Generator, n: int, median: int, sigma: float) -> np.ndarray:
    lengths = np.rint(median * np.exp(sigma * rng.standard_normal(n)))
    return np.clip(lengths, max(1, median // SPREAD), median * SPREAD).astype(int)


def spread_requests(n: int, prompt_median: int, output_median: int, sigma: float, vocab_size: int,
                    seed: int) -> list[BenchRequest]:
    rng = np.random.default_rng(seed)
    prompts = lognormal_lengths(rng, n, prompt_median, sigma)
    outputs = lognormal_lengths(rng, n, output_median, sigma)
    return [BenchRequest(random_prompt(rng, int(p), vocab_size), int(o)) for p, o in zip(prompts, outputs)]


def sharegpt_requests(path: Path, n: int, tokenizer, seed: int, max_total: int) -> list[BenchRequest]:
    """n requests from a ShareGPT-style json: [{"conversations": [{"from": "human", "value": ...},
    {"from": "gpt", "value": ...}, ...]}, ...]. The first two turns give the prompt (tokenized with the
    model's tokenizer) and the output length (the reply's token count); pairs with fewer than 4 tokens on
    either side or more than max_total together are dropped; n are drawn (seeded) from the rest."""
    pairs = _first_turns(path)
    rng = np.random.default_rng(seed)
    requests = []
    for i in rng.permutation(len(pairs)):
        prompt = tokenizer.encode(pairs[i][0])
        output = len(tokenizer.encode(pairs[i][1], add_special_tokens=False))
        if min(len(prompt), output) >= SHAREGPT_MIN_TOKENS and len(prompt) + output <= max_total:
            requests.append(BenchRequest(prompt, output))
            if len(requests) == n:
                return requests
    raise BenchError(f"--dataset {path}: only {len(requests)} usable conversations (prompt and reply of "
                     f"{SHAREGPT_MIN_TOKENS}+ tokens, {max_total} tokens at most together), {n} asked for")


def _first_turns(path: Path) -> list[tuple[str, str]]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BenchError(f"--dataset {path}: no such file") from None
    except (OSError, ValueError) as e:
        raise BenchError(f"--dataset {path}: not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise BenchError(f"--dataset {path}: expected a JSON list of conversations")
    pairs = []
    for item in data:
        turns = item.get("conversations") if isinstance(item, dict) else None
        if isinstance(turns, list) and len(turns) >= 2 and all(isinstance(t, dict) for t in turns[:2]):
            prompt, reply = turns[0].get("value"), turns[1].get("value")
            if isinstance(prompt, str) and isinstance(reply, str):
                pairs.append((prompt, reply))
    return pairs


def check_fits(requests: list[BenchRequest], session_len: int) -> None:
    """Every request must fit a session, or it would be cut short (and the counts would be wrong)."""
    longest = max(requests, key=lambda r: len(r.prompt_ids) + r.output_tokens)
    total = len(longest.prompt_ids) + longest.output_tokens
    if total > session_len:
        raise BenchError(f"a request of {len(longest.prompt_ids)} prompt + {longest.output_tokens} output tokens "
                         f"does not fit session_len {session_len}: lower the lengths or raise --session-len")
