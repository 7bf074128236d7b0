"""The numbers of a diff, from two PromptDumps (ours, ref). All arithmetic in float64, so that the
comparison adds no rounding of its own to what it measures. NaN or inf anywhere fails the check."""

from __future__ import annotations

import numpy as np

from refengine.diff.dump_format import PromptDump
from refengine.diff.report import Candidate, GreedyDiff, LayerDiff, LogitsDiff
from refengine.diff.tolerances import Tolerance


def _ratio(diff: np.ndarray, bound: np.ndarray) -> float:
    """max(diff / bound), where 0/0 counts as 0 (exact agreement under a zero tolerance) and NaN stays NaN."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where((diff == 0) & (bound == 0), 0.0, diff / bound)
    return float(np.max(r)) if r.size else 0.0


def _passes(used: float) -> bool:
    return bool(used <= 1.0)          # False for NaN


def layer_diff(name: str, layer: int | None, ours: np.ndarray, ref: np.ndarray, tol: Tolerance) -> LayerDiff:
    """ours, ref: [T, hidden]. The check is per position on rms values (see tolerances.py for why)."""
    a, r = ours.astype(np.float64), ref.astype(np.float64)
    d = a - r
    norm_d, norm_r, norm_a = (float(np.linalg.norm(v)) for v in (d, r, a))
    rel = norm_d / norm_r if norm_r else (0.0 if norm_d == 0 else float("inf"))
    cos = float(np.dot(a.ravel(), r.ravel()) / (norm_a * norm_r)) if norm_a and norm_r else float(norm_d == 0)
    rms_d = np.sqrt(np.mean(d * d, axis=-1))
    rms_r = np.sqrt(np.mean(r * r, axis=-1))
    used = _ratio(rms_d, tol.hidden_atol + tol.hidden_rtol * rms_r)
    max_abs = float(np.max(np.abs(d))) if d.size else 0.0
    return LayerDiff(name, layer, max_abs, rel, cos, used, _passes(used))


def layer_diffs(ours: PromptDump, ref: PromptDump, tol: Tolerance) -> list[LayerDiff]:
    """hidden_states[0] is the embedding output, hidden_states[i + 1] decoder layer i's output."""
    out = [layer_diff("embedding", None, ours.hidden_states[0], ref.hidden_states[0], tol)]
    for i in range(1, len(ref.hidden_states)):
        out.append(layer_diff(f"layer {i - 1}", i - 1, ours.hidden_states[i], ref.hidden_states[i], tol))
    return out


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def logits_diff(ours: np.ndarray, ref: np.ndarray, tol: Tolerance) -> LogitsDiff:
    """ours, ref: [T, V] logits at the prompt positions."""
    a, r = ours.astype(np.float64), ref.astype(np.float64)
    d = np.abs(a - r)
    used = _ratio(d, tol.logits_atol + tol.logits_rtol * np.abs(r))
    lp_ours, lp_ref = log_softmax(a), log_softmax(r)
    kl = np.sum(np.exp(lp_ref) * (lp_ref - lp_ours), axis=-1)           # KL(ref ‖ ours) per position
    agree = int(np.sum(np.argmax(a, axis=-1) == np.argmax(r, axis=-1)))
    return LogitsDiff(float(np.max(d)), used, float(np.max(kl)), float(np.mean(kl)), agree, len(r),
                      _passes(used))


def greedy_diff(ours: PromptDump, ref: PromptDump, tol: Tolerance, decode) -> GreedyDiff | None:
    """Compare the greedy continuations, and the log-prob vectors of every step both took from the same
    context. A first difference is a near tie when that step's log-probs agree within the logits
    tolerance: the implementations agree on the distribution, and its top two were close enough for the
    allowed noise to swap them. Otherwise they disagree about the distribution itself."""
    if ref.greedy_ids is None or ours.greedy_ids is None:
        return None
    n = min(len(ours.greedy_ids), len(ref.greedy_ids))
    a, b = [int(t) for t in ours.greedy_ids[:n]], [int(t) for t in ref.greedy_ids[:n]]
    first = next((k for k in range(n) if a[k] != b[k]), None)
    same_context = n if first is None else first + 1
    # Re-normalised in float64: a log-softmax computed and stored in float32 sums to 1 only to ~1e-7
    # relative to the largest logit, a constant offset that would otherwise dominate Δ and the KL.
    lp_o = log_softmax(ours.greedy_logprobs[:same_context])
    lp_r = log_softmax(ref.greedy_logprobs[:same_context])
    d = np.abs(lp_o - lp_r)
    per_step = [_ratio(d[k], tol.logits_atol + tol.logits_rtol * np.abs(lp_r[k])) for k in range(same_context)]
    with np.errstate(invalid="ignore"):      # exp(-inf) · (-inf - x): a token impossible under ref adds 0
        kl = np.nansum(np.exp(lp_r) * (lp_r - lp_o), axis=-1) if same_context else np.zeros(0)
    steps = dict(steps_max_abs=float(d.max()) if d.size else 0.0, steps_tol_used=max(per_step, default=0.0),
                 steps_kl_max=float(kl.max()) if kl.size else 0.0)
    steps_ok = _passes(steps["steps_tol_used"])
    if first is None:
        return GreedyDiff(a, b, n, None, "", decode(a), decode(b), **steps, ok=steps_ok)
    choice = lambda t: Candidate(t, decode([t]), float(lp_o[first, t]), float(lp_r[first, t]))
    near = _passes(per_step[first])
    return GreedyDiff(a, b, n, first, decode(a[:first]), decode(a[first:]), decode(b[first:]), **steps,
                      ours_choice=choice(a[first]), ref_choice=choice(b[first]), near_tie=near, ok=steps_ok)
