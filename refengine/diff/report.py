"""What a diff found, as plain dataclasses: `DiffReport.ok`, `.to_dict()` (JSON-ready), render.py prints it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from refengine.diff.tolerances import Tolerance


@dataclass
class LayerDiff:
    """One hidden state: the embedding output (layer None) or decoder layer `layer`'s output."""
    name: str                   # "embedding" | "layer 0" ...
    layer: int | None
    max_abs: float              # max |Δ| over all elements
    rel_err: float              # ‖Δ‖ / ‖ref‖ over the whole [T, hidden] state
    cosine: float               # cosine similarity of the flattened states
    tol_used: float             # max over positions of rms(Δ_t) / (atol + rtol·rms(ref_t)); ≤ 1 passes
    ok: bool


@dataclass
class LogitsDiff:
    max_abs: float              # max |Δ| over all positions and the vocabulary
    tol_used: float             # max of |Δ| / (atol + rtol·|ref|); ≤ 1 passes
    kl_max: float               # KL(ref ‖ ours) of the next-token distributions, worst position
    kl_mean: float              # ... and averaged over positions
    top1_agree: int             # positions whose argmax agrees
    positions: int
    ok: bool

    @property
    def top1_fraction(self) -> float:
        return self.top1_agree / self.positions if self.positions else 1.0


@dataclass
class Candidate:
    """A token one implementation chose where the continuations first differ, and its log-prob under each."""
    token_id: int
    text: str
    logprob_ours: float
    logprob_ref: float


@dataclass
class GreedyDiff:
    ours_ids: list[int]
    ref_ids: list[int]
    compared: int                       # tokens compared: min(len(ours), len(ref))
    first_diff: int | None              # index of the first differing token, None when all agree
    prefix_text: str                    # decoded common prefix (the continuation before first_diff)
    ours_rest: str                      # decoded continuations from first_diff on (whole text when equal)
    ref_rest: str
    # The steps whose context is the same on both sides (all of them, or up to and including first_diff):
    # their log-prob vectors are checked like the logits, which covers the decode path (KV cache,
    # positions past the prompt) that the prompt-position checks never run.
    steps_max_abs: float = 0.0          # max |Δ log p| over those steps and the vocabulary
    steps_tol_used: float = 0.0         # max of |Δ log p| / (atol + rtol·|ref log p|), logits tolerance
    steps_kl_max: float = 0.0           # worst KL(ref ‖ ours) of those steps
    ours_choice: Candidate | None = None
    ref_choice: Candidate | None = None
    near_tie: bool = False              # the differing step's log-probs agree within tolerance
    ok: bool = True


@dataclass
class PromptReport:
    prompt: str                          # the prompt as the user wrote it (one-line label)
    num_tokens: int
    layers: list[LayerDiff]
    logits: LogitsDiff
    greedy: GreedyDiff | None            # None when the dump has no greedy continuation
    ok: bool = field(init=False)

    def __post_init__(self):
        self.ok = (all(l.ok for l in self.layers) and self.logits.ok
                   and (self.greedy is None or self.greedy.ok))

    @property
    def first_bad(self) -> LayerDiff | None:
        """The first hidden state past the tolerance: where the two implementations part."""
        return next((l for l in self.layers if not l.ok), None)


@dataclass
class DiffReport:
    model: str
    against: str                         # "transformers" or the dump path
    reference: str                       # what produced the reference numbers (the dump's producer)
    dtype: str
    tolerance: Tolerance
    prompts: list[PromptReport]

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.prompts)

    def to_dict(self) -> dict:
        """Plain JSON-ready data (non-finite floats become null: JSON has no NaN)."""
        data = asdict(self)
        for p, d in zip(self.prompts, data["prompts"]):
            d["first_bad_layer"] = p.first_bad.name if p.first_bad else None
            d["logits"]["top1_fraction"] = p.logits.top1_fraction
        data["ok"] = self.ok
        return _finite(data)


def _finite(x):
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x
