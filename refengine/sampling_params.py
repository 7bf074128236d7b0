"""GenerationConfig: how to pick the next token and when to stop, validated on construction.

Field names follow LMDeploy's GenerationConfig and OpenAI's request fields where they overlap, so the
server can map a request onto it one to one.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from refengine.errors import GenerationConfigError


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 512
    temperature: float = 0.8          # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0                    # 0 means no top-k cut
    min_p: float = 0.0
    repetition_penalty: float = 1.0   # > 1 discourages tokens already in the prompt or output
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()        # stop strings of any token length, trimmed from the output
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    logprobs: int | None = None       # None: no log-probs; k >= 0: chosen token's plus the top k

    def __post_init__(self):
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        self._check()

    def _check(self):
        def bad(name, why):
            raise GenerationConfigError(name, f"{why}, got {getattr(self, name)!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 0:
            bad("max_new_tokens", "must be an integer >= 0")
        if not 0.0 <= self.temperature <= 2.0:
            bad("temperature", "must be in [0, 2]")
        if not 0.0 < self.top_p <= 1.0:
            bad("top_p", "must be in (0, 1]")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            bad("top_k", "must be an integer >= 0")
        if not 0.0 <= self.min_p <= 1.0:
            bad("min_p", "must be in [0, 1]")
        if not self.repetition_penalty > 0:
            bad("repetition_penalty", "must be > 0")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                bad(name, "must be in [-2, 2]")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            bad("seed", "must be an integer >= 0")
        if any(not isinstance(s, str) or not s for s in self.stop):
            bad("stop", "must be non-empty strings")
        if self.logprobs is not None and (not isinstance(self.logprobs, int) or not 0 <= self.logprobs <= 20):
            bad("logprobs", "must be an integer in [0, 20]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    def updated(self, **changes) -> "GenerationConfig":
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise GenerationConfigError(sorted(unknown)[0], "unknown generation parameter")
        return replace(self, **changes)
