"""The comparison arithmetic on hand-made numbers: the per-position hidden-state check, the logits check,
and the greedy verdicts (identical, near tie, real disagreement, a decode step that disagrees)."""

from __future__ import annotations

import numpy as np

from refengine.diff.dump_format import PromptDump
from refengine.diff.metrics import greedy_diff, layer_diff, log_softmax, logits_diff
from refengine.diff.tolerances import TABLE, resolve_tolerance

F32 = TABLE["float32"]
V = 7


def test_a_massive_activation_does_not_hide_a_bug_at_a_later_position():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((4, 32))
    ref[0, 3] = 2.5e4                                  # an attention-sink token with one huge channel
    noise = ref * (1 + 1e-6 * rng.standard_normal(ref.shape))
    assert layer_diff("l", 0, noise, ref, F32).ok      # float32-sized noise everywhere passes
    bug = noise.copy()
    bug[3] += 1e-3                                     # one later position off by 1e-3
    d = layer_diff("l", 0, bug, ref, F32)
    assert d.rel_err < 1e-5                            # invisible in the whole-state relative error ...
    assert not d.ok and d.tol_used > 10                # ... but not per position


def test_nan_never_passes():
    ref = np.ones((2, 4))
    bad = ref.copy()
    bad[1, 2] = np.nan
    assert not layer_diff("l", 0, bad, ref, F32).ok
    assert not logits_diff(bad, ref, F32).ok


def test_logits_kl_and_top1():
    ref = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.9]])
    ours = ref + np.array([[0, 0, 0], [0, -0.2, 0]])
    d = logits_diff(ours, ref, F32)
    assert not d.ok and d.top1_agree == 1 and d.positions == 2
    assert d.kl_max > 0 and np.isclose(d.kl_mean, d.kl_max / 2)


def dump(greedy, logits_rows) -> PromptDump:
    lp = log_softmax(np.asarray(logits_rows, dtype=np.float64)).astype(np.float32)
    return PromptDump(np.arange(2), np.zeros((1, 2, 3), np.float32), np.zeros((2, V), np.float32),
                      np.asarray(greedy), lp)


def rows(*peaks):
    """One logits row per step: 5.0 at token t (or at each of a tuple of tokens, value given), 0 elsewhere."""
    out = np.zeros((len(peaks), V))
    for k, peak in enumerate(peaks):
        for t, value in (peak if isinstance(peak, dict) else {peak: 5.0}).items():
            out[k, t] = value
    return out


def decode(ids):
    return "".join(f"<{i}>" for i in ids)


def test_identical_continuations():
    g = greedy_diff(dump([1, 2, 3], rows(1, 2, 3)), dump([1, 2, 3], rows(1, 2, 3)), F32, decode)
    assert g.ok and g.first_diff is None and g.compared == 3 and g.ours_rest == "<1><2><3>"


def test_a_near_tie_is_allowed():
    ours = dump([1, 2, 4], rows(1, {2: 5.0, 5: 4.99995}, 4))
    ref = dump([1, 5, 6], rows(1, {2: 4.99995, 5: 5.0}, 6))      # top two swapped by 5e-5
    g = greedy_diff(ours, ref, F32, decode)
    assert g.first_diff == 1 and g.near_tie and g.ok
    assert g.prefix_text == "<1>" and g.ours_choice.token_id == 2 and g.ref_choice.token_id == 5
    assert g.ours_choice.logprob_ours > g.ref_choice.logprob_ours
    assert g.ref_choice.logprob_ref > g.ours_choice.logprob_ref


def test_a_real_disagreement_fails():
    g = greedy_diff(dump([1, 2], rows(1, 2)), dump([1, 5], rows(1, 5)), F32, decode)
    assert g.first_diff == 1 and not g.near_tie and not g.ok


def test_a_decode_step_that_disagrees_fails_even_with_the_same_argmax():
    """A decode-path bug (KV cache, positions) can shift the distribution without moving its argmax."""
    ours = dump([1, 2], rows(1, {2: 5.0, 3: 1.0}))
    ref = dump([1, 2], rows(1, {2: 5.0, 3: 2.0}))
    g = greedy_diff(ours, ref, F32, decode)
    assert g.first_diff is None and not g.ok and g.steps_tol_used > 1 and g.steps_kl_max > 0
    loose = resolve_tolerance("float32", atol=2.0, rtol=0.0)
    assert greedy_diff(ours, ref, loose, decode).ok


def test_tolerance_overrides():
    t = resolve_tolerance("bfloat16", rtol=0.5)
    assert (t.hidden_atol, t.hidden_rtol, t.logits_atol, t.logits_rtol) == (
        TABLE["bfloat16"].hidden_atol, 0.5, TABLE["bfloat16"].logits_atol, 0.5)
    assert t.source == "--atol/--rtol" and resolve_tolerance("float16") is TABLE["float16"]
