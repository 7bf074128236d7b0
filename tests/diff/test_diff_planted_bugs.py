"""A bug planted on refengine's side of a tiny 3-layer Llama is caught, and the right layer is named.

The reference is the unmodified checkpoint (dumped by transformers); refengine loads an edited copy.
hidden 64 = 4 heads × 16, so the attention output projection is square and can be transposed."""

from __future__ import annotations

import numpy as np
import pytest

from refengine.cli.main import cli
from refengine.cli.options import run_click
from refengine.diff import compare
from refengine.diff.render import MARK
from tests.diff.diff_helpers import TINY_PROMPTS, edit_tensors, prompt_ids, reference_dump
from tests.hf_models import edit_config, make_tiny_model

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """(checkpoint path, reference dump) of the unmodified model."""
    tmp = tmp_path_factory.mktemp("planted")
    path, ref = make_tiny_model("llama", tmp)
    assert ref.config.num_hidden_layers == 3
    return path, reference_dump(ref, prompt_ids(path), tmp / "ref.npz")


def assert_first_bad(report, layer):
    assert not report.ok
    for p in report.prompts:
        bad = p.first_bad
        assert bad is not None and bad.layer == layer, [(l.name, l.tol_used) for l in p.layers]
        assert all(l.ok for l in p.layers[:layer + 1])          # embedding .. layer - 1 still agree


def test_a_perturbed_weight_names_its_layer(original, tmp_path):
    path, dump = original
    name = "model.layers.1.mlp.down_proj.weight"
    def perturb(t):    # 0.1% noise on one layer's down projection
        noise = np.random.default_rng(0).standard_normal(t[name].shape).astype(np.float32)
        t[name] = t[name] + 1e-3 * np.abs(t[name]).mean() * noise
    bad = edit_tensors(path, tmp_path / "perturbed", perturb)
    assert_first_bad(compare(str(bad), TINY_PROMPTS, against=str(dump), chat=False), layer=1)


def test_a_wrong_rope_theta_is_caught_in_the_first_layer(original, tmp_path):
    path, dump = original
    bad = edit_tensors(path, tmp_path / "rope", lambda t: None)
    edit_config(bad, rope_theta=20000.0)            # refengine reads rope_theta first; transformers saw 10000
    report = compare(str(bad), TINY_PROMPTS, against=str(dump), chat=False)
    assert_first_bad(report, layer=0)
    assert report.prompts[1].logits.top1_agree < report.prompts[1].logits.positions


def test_a_transposed_output_projection_names_its_layer(original, tmp_path):
    path, dump = original
    name = "model.layers.2.self_attn.o_proj.weight"
    def transpose(t):
        assert t[name].shape[0] == t[name].shape[1]
        t[name] = np.ascontiguousarray(t[name].T)
    bad = edit_tensors(path, tmp_path / "transposed", transpose)
    assert_first_bad(compare(str(bad), TINY_PROMPTS, against=str(dump), chat=False), layer=2)


def test_the_cli_exits_1_and_marks_the_layer(original, tmp_path, capsys):
    path, dump = original
    name = "model.layers.2.self_attn.o_proj.weight"
    bad = edit_tensors(path, tmp_path / "transposed", lambda t: t.update({name: np.ascontiguousarray(t[name].T)}))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(TINY_PROMPTS) + "\n")
    code = run_click(cli, ["diff", str(bad), "--prompts", str(prompts), "--against", str(dump), "--raw"], "refengine")
    out = capsys.readouterr().out
    assert code == 1, out
    marked = [line for line in out.splitlines() if MARK in line]
    assert len(marked) == 2 and all(line.split()[:2] == ["layer", "2"] for line in marked), out
    assert "result: FAIL" in out
