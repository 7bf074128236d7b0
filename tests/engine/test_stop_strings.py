"""StopStringMatcher: stop strings split over deltas, overlapping prefixes, flush, and a property test
against a plain search over the whole text."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from refengine.engine.stop_strings import StopStringMatcher


def run(stops, deltas) -> tuple[list[str], bool, str]:
    m = StopStringMatcher(stops)
    out, stopped = [], False
    for d in deltas:
        text, stopped = m.feed(d)
        out.append(text)
    return out, stopped, m.flush()


def reference_cut(stops, text: str) -> tuple[str, bool]:
    """Character by character: the text before the first stop string to complete (longest one there)."""
    for end in range(1, len(text) + 1):
        starts = [end - len(s) for s in stops if s and text[:end].endswith(s)]
        if starts:
            return text[:min(starts)], True
    return text, False


def test_stop_split_over_many_deltas():
    out, stopped, rest = run(["<|im_end|>"], ["Hello", " <|", "im", "_e", "nd", "|> ignored"])
    assert out == ["Hello", " ", "", "", "", ""] and stopped and rest == ""


def test_false_start_is_released():
    out, stopped, rest = run(["###"], ["a #", "# b", "#", "#"])
    assert out == ["a ", "## b", "", ""] and not stopped and rest == "##"


def test_held_text_is_flushed_at_the_end():
    out, stopped, rest = run(["STOP"], ["the end S", "T"])
    assert "".join(out) == "the end " and not stopped and rest == "ST"


def test_no_hold_when_no_prefix_matches():
    out, _, rest = run(["xyz"], ["abc", "def"])
    assert out == ["abc", "def"] and rest == ""


def test_overlapping_prefixes():
    # "aab": after "aa" the tail "a" and "aa" are both prefixes; the stop must still be found.
    out, stopped, _ = run(["aab"], ["a", "a", "a", "b", "c"])
    assert "".join(out) == "a" and stopped
    # Self-overlapping stop string.
    out, stopped, _ = run(["abab"], ["aba", "bab"])
    assert "".join(out) == "" and stopped


def test_first_completed_stop_wins():
    # "c" completes (at char 3) before "abcd" would (at char 4): generation stops at "c".
    assert run(["abcd", "c"], ["abcd"])[:2] == (["ab"], True)
    # Both complete at the same character: the longer one (earlier start) is trimmed.
    assert run(["b", "ab"], ["xab"])[:2] == (["x"], True)


def test_stop_inside_one_delta_and_after_stop():
    m = StopStringMatcher(["\n\n"])
    assert m.feed("line one\n\nline two") == ("line one", True)
    assert m.feed("more") == ("", True)
    assert m.flush() == ""


def test_no_stops_and_empty_stops():
    assert run([], ["a", "b"]) == (["a", "b"], False, "")
    assert run([""], ["a"]) == (["a"], False, "")


@settings(max_examples=300, deadline=None, database=None)
@given(stops=st.lists(st.text(alphabet="ab\n<|>", min_size=1, max_size=4), max_size=3),
       deltas=st.lists(st.text(alphabet="ab\n<|>x", max_size=6), max_size=8))
def test_emitted_plus_flush_is_text_up_to_first_stop(stops, deltas):
    out, stopped, rest = run(stops, deltas)
    want, want_stopped = reference_cut(stops, "".join(deltas))
    assert "".join(out) + rest == want
    assert stopped == want_stopped
    # Nothing is held without reason: after each delta the held text is the longest tail of the text so
    # far that could still become a stop string.
    m, fed, emitted = StopStringMatcher(stops), "", ""
    for d in deltas:
        text, hit = m.feed(d)
        if hit:
            break
        fed, emitted = fed + d, emitted + text
        held = fed[len(emitted):]
        tails = [k for k in range(len(fed) + 1) for s in stops if k < len(s) and fed.endswith(s[:k])]
        assert len(held) == max(tails, default=0)
