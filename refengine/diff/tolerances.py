"""How close refengine and the reference must be, per compute dtype, and why.

Two checks, both of the form  |difference| ≤ atol + rtol·|reference|:

- hidden states (embedding output and each decoder layer's output, the residual stream): per token
  position, on root-mean-square values —  rms(Δ_t) ≤ atol + rtol·rms(ref_t)  for every position t.
  Not elementwise, because real models carry a few "massive activations" in the residual stream
  (SmolLM2-135M: two channels of the first token at ~2.5e4, the rest O(1..10)), and the float32
  rounding error of every element then scales with its row's magnitude (the rms_norm and the matmuls
  mix the whole row), not with the element's own value: elementwise, O(1) channels next to a 2.5e4 one
  fail a 1e-5 rtol while the row as a whole agrees to 5e-6. Per position, so that the first token's
  large norm cannot hide a bug at later positions.
- logits: elementwise, as in tests/tolerances.py (logits are what users look at, and O(1..40)).

The greedy continuations' log-prob vectors (every step both sides took from the same context) get the
logits check; a first differing token is a near tie (allowed) exactly when its step passes it: the two
implementations agree on the distribution within tolerance, and its top two were close enough for that
allowed noise to swap them.

Numbers measured on the default model (SmolLM2-135M-Instruct, 30 layers; 6 chat and 4 raw prompts of 6-45
tokens, 48 greedy tokens each) against transformers 5.18 on CPU; each bound is ≥ 3× the worst measured
value (docs/diff.md has the runs).
"""

from __future__ import annotations

from dataclasses import dataclass

from refengine.errors import RefengineError

DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class Tolerance:
    hidden_atol: float
    hidden_rtol: float
    logits_atol: float
    logits_rtol: float
    source: str                       # "float32 table" or "--atol/--rtol"

    def to_dict(self) -> dict:
        return dict(vars(self))


TABLE: dict[str, Tolerance] = {
    # float32 on both sides: only summation order differs (BLAS blocking, pairwise vs vectorised sums).
    # Measured: per-position relative rms error ≤ 4.7e-6 after 30 layers (growing ~1e-7 per layer),
    # logits max |Δ| 1.2e-4 at |logit| ≤ 38. Bounds 6× and ~4× that: deeper and wider models sum longer
    # dot products, and a CI gate must not flake; a 0.1% weight perturbation still moves a layer by 1e-3.
    "float32": Tolerance(1e-6, 3e-5, 4e-4, 1e-4, "float32 table"),
    # float16: transformers rounds every activation to float16 (unit roundoff 4.9e-4) while refengine
    # keeps float32 on the same rounded weights. Measured: per-position relative rms ≤ 1.9e-2 (30 layers of
    # a few roundings each, partly cancelling; worst on the short raw-text prompts), logits max |Δ| 0.25.
    "float16": Tolerance(1e-3, 6e-2, 0.75, 1e-2, "float16 table"),
    # bfloat16: 8 bits of mantissa (unit roundoff 3.9e-3, 8× float16's). Measured: per-position relative
    # rms ≤ 0.13, logits max |Δ| 1.5. A real bug (a wrong position, head, transposed weight or scale) moves a
    # layer's output by O(1) relative, still outside; small ones (a 0.1% weight error) hide in bfloat16 noise.
    "bfloat16": Tolerance(1e-2, 0.4, 4.0, 5e-2, "bfloat16 table"),
}


def resolve_tolerance(dtype: str, atol: float | None = None, rtol: float | None = None) -> Tolerance:
    """The table's tolerance for `dtype`; --atol/--rtol, when given, replace both the hidden-state and the
    logits values (the one not given keeps the table's values)."""
    if dtype not in TABLE:
        raise RefengineError(f"--dtype {dtype!r} is not supported (choose from: {', '.join(DTYPES)})")
    t = TABLE[dtype]
    if atol is None and rtol is None:
        return t
    for name, value in (("--atol", atol), ("--rtol", rtol)):
        if value is not None and not value >= 0:
            raise RefengineError(f"{name} must be ≥ 0, got {value}")
    return Tolerance(t.hidden_atol if atol is None else atol, t.hidden_rtol if rtol is None else rtol,
                     t.logits_atol if atol is None else atol, t.logits_rtol if rtol is None else rtol,
                     "--atol/--rtol")
