"""The DUMP.npz path: the snippet in docs/diff.md writes a dump that round-trips (the doc cannot rot), and
a dump that does not fit the model or the prompts is one clear DumpError, before any forward pass."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from refengine.diff import DumpError, compare
from refengine.diff.dump_format import Dump, PromptDump, read_dump, write_dump
from refengine.model.loader import load_model
from tests.diff.diff_helpers import TINY_PROMPTS, prompt_ids, reference_dump, rewrite_dump
from tests.hf_models import make_tiny_model

torch = pytest.importorskip("torch")

DOC = Path(__file__).resolve().parents[2] / "docs" / "diff.md"


def doc_snippet() -> str:
    """The python block right after the `<!-- dump-snippet -->` marker in docs/diff.md."""
    match = re.search(r"<!-- dump-snippet -->\s*```python\n(.*?)```", DOC.read_text(), re.S)
    assert match, "docs/diff.md lost its dump snippet marker"
    return match.group(1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(checkpoint path, transformers model, LoadedModel, reference dump path) of a tiny Llama."""
    tmp = tmp_path_factory.mktemp("dump")
    path, ref = make_tiny_model("llama", tmp)
    return path, ref, load_model(str(path)), reference_dump(ref, prompt_ids(path), tmp / "ref.npz")


def test_the_documented_snippet_writes_a_dump_that_round_trips(tiny, tmp_path):
    path, ref, loaded, _ = tiny
    snippet = doc_snippet()
    assert len(snippet.strip().splitlines()) <= 20
    namespace = {}
    exec(compile(snippet, str(DOC), "exec"), namespace)
    out = tmp_path / "snippet.npz"
    namespace["write_dump"](ref, prompt_ids(path), str(out))
    report = compare(loaded, TINY_PROMPTS, against=str(out), chat=False)
    assert report.ok and all(p.greedy is None for p in report.prompts)      # the snippet writes no greedy part
    assert max(l.rel_err for p in report.prompts for l in p.layers) < 1e-5


def test_write_and_read_are_inverse(tmp_path):
    rng = np.random.default_rng(0)
    p = PromptDump(np.arange(3), rng.standard_normal((2, 3, 4)).astype(np.float32),
                   rng.standard_normal((3, 5)).astype(np.float32), np.array([1, 2]),
                   rng.standard_normal((2, 5)).astype(np.float32))
    write_dump(tmp_path / "d.npz", Dump([p, PromptDump(p.input_ids, p.hidden_states, p.logits)], "me"))
    back = read_dump(tmp_path / "d.npz")
    assert back.producer == "me" and back.prompts[1].greedy_ids is None
    for name, value in vars(p).items():
        np.testing.assert_array_equal(getattr(back.prompts[0], name), value)


def drop_a_layer(a):
    a["p0.hidden_states"] = a["p0.hidden_states"][:-1]


def other_ids(a):
    a["p1.input_ids"] = a["p1.input_ids"].copy()
    a["p1.input_ids"][5] += 1


BAD_DUMPS = {
    "hidden_states has shape": drop_a_layer,
    "p1.input_ids differs from the prompt's token ids at position 5": other_ids,
    "p0.logits has shape": lambda a: a.update({"p0.logits": a["p0.logits"][:, :-1]}),
    "num_prompts is 1, but 2 prompts were given": lambda a: a.update({"num_prompts": np.array(1)}),
    "missing p1.logits": lambda a: a.pop("p1.logits"),
    "format_version 2 is not supported": lambda a: a.update({"format_version": np.array(2)}),
    "p0.input_ids has 3 tokens": lambda a: a.update({"p0.input_ids": a["p0.input_ids"][:3]}),
    "greedy_ids and p0.greedy_logprobs come together": lambda a: a.pop("p0.greedy_logprobs"),
    "p0.logits has dtype int64": lambda a: a.update({"p0.logits": a["p0.logits"].astype(np.int64)}),
}


@pytest.mark.parametrize("needle", sorted(BAD_DUMPS))
def test_a_dump_that_does_not_fit_is_one_clear_error(tiny, tmp_path, needle):
    _, _, loaded, dump = tiny
    bad = rewrite_dump(dump, tmp_path / "bad.npz", BAD_DUMPS[needle])
    with pytest.raises(DumpError) as e:
        compare(loaded, TINY_PROMPTS, against=str(bad), chat=False)
    message = str(e.value)
    assert needle in message and str(bad) in message and "\n" not in message


@pytest.mark.parametrize("content", [b"not a zip at all", b""])
def test_a_file_that_is_not_an_npz_is_one_clear_error(tiny, tmp_path, content):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(content)
    with pytest.raises(DumpError, match="not a readable .npz dump"):
        compare(tiny[2], TINY_PROMPTS, against=str(bad), chat=False)


def test_a_dump_with_a_shorter_greedy_part_is_compared_on_its_length(tiny, tmp_path):
    _, _, loaded, dump = tiny
    def shorten(a):
        for i in range(2):
            for key in (f"p{i}.greedy_ids", f"p{i}.greedy_logprobs"):
                a[key] = a[key][:2]
    short = rewrite_dump(dump, tmp_path / "short.npz", shorten)
    report = compare(loaded, TINY_PROMPTS, against=str(short), chat=False, max_new_tokens=16)
    assert report.ok and [p.greedy.compared for p in report.prompts] == [2, 2]
