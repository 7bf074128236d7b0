"""refengine agrees with transformers: every tiny family (through the dump script's own functions), the
precisions, and the default model end to end through the child process."""

from __future__ import annotations

import pytest

from refengine.diff import compare
from refengine.model.loader import load_model
from tests.diff.diff_helpers import NEW_TOKENS, TINY_PROMPTS, dump_script, prompt_ids, reference_dump
from tests.hf_models import FAMILIES, make_tiny_model

pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_tiny_family_agrees_layer_by_layer(family, tmp_path):
    # InternLM / InternLM2 have no transformers class: their reference is the Llama they were re-saved from
    path, ref = make_tiny_model(family, tmp_path)
    dump = reference_dump(ref, prompt_ids(path), tmp_path / "ref.npz")
    report = compare(load_model(str(path)), TINY_PROMPTS, against=str(dump), chat=False)
    for p in report.prompts:
        assert p.ok, (family, p.first_bad, p.logits, p.greedy)
        assert len(p.layers) == ref.config.num_hidden_layers + 1
        assert max(l.rel_err for l in p.layers) < 1e-5
        assert p.logits.top1_agree == p.logits.positions
        assert p.greedy.first_diff is None and p.greedy.compared == NEW_TOKENS


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precisions_agree_within_their_table_rows(dtype, tmp_path):
    """transformers loads and computes in `dtype`; refengine rounds its weights the same way."""
    path, _ = make_tiny_model("llama", tmp_path)
    theirs = dump_script().load_model(str(path), dtype)
    dump = reference_dump(theirs, prompt_ids(path), tmp_path / "ref.npz")
    report = compare(str(path), TINY_PROMPTS, against=str(dump), dtype=dtype, chat=False)
    assert report.ok, [(p.first_bad, p.logits) for p in report.prompts]
    worst = max(l.rel_err for p in report.prompts for l in p.layers)
    assert 1e-5 < worst < report.tolerance.hidden_rtol      # a real half-precision difference, inside the bound
    # and the float32 tolerance would have flagged it: the rows are not loose for nothing
    assert not compare(str(path), TINY_PROMPTS, against=str(dump), dtype=dtype, chat=False,
                       atol=1e-6, rtol=1e-5).ok


@pytest.mark.slow
def test_default_model_against_transformers_end_to_end(demo_gguf_dir):
    """The target: on the default model in float32 every layer within 1e-5 relative error of transformers
    (run in the child process on the same GGUF) and the greedy continuation identical."""
    report = compare("demo", ["What is the capital of France?"], max_new_tokens=8)
    p = report.prompts[0]
    assert report.ok and report.reference.startswith("transformers ")
    assert len(p.layers) == 31
    assert max(l.rel_err for l in p.layers) < 1e-5
    assert min(l.cosine for l in p.layers) > 1 - 1e-9
    assert p.logits.top1_agree == p.logits.positions and p.logits.kl_max < 1e-6
    assert p.greedy.first_diff is None and p.greedy.ours_rest.startswith("The capital of France is Paris.")
