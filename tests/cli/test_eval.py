"""`refengine eval ppl`: perplexity from the command line, and its user errors."""

import json
import math

import numpy as np

from refengine import ops
from refengine.model.llama import LlamaModel
from refengine.model.loader import load_model
from refengine.quant.eval import chunk_nll, perplexity
from tests.cli_helpers import run
from tests.hf_models import make_tiny_model

TEXT = "It was the best of times, it was the worst of times. " * 12


def test_eval_ppl_matches_a_direct_computation(tmp_path, capsys):
    path, _ = make_tiny_model("llama", tmp_path)
    data = tmp_path / "text.txt"
    data.write_text(TEXT)
    code, out, err = run(["eval", "ppl", str(path), "--data", str(data), "--seqlen", "32", "--max-chunks", "3",
                          "--backend", "numpy", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert (result["chunks"], result["tokens"], result["seqlen"]) == (3, 3 * 31, 32)
    assert "perplexity" in err                                 # the progress bar
    loaded = load_model(str(path))
    ids = loaded.tokenizer.encode(TEXT)
    model = LlamaModel(loaded.config, loaded.weights, ops.reference)
    direct = perplexity(model, ids, 32, 3)
    assert math.isclose(result["perplexity"], direct.perplexity, rel_tol=1e-5)     # batched attention: same math
    # the nll by hand: softmax over the vocabulary, the probability of each next token
    logits = np.random.default_rng(0).standard_normal((5, 7))
    chunk = np.array([0, 3, 1, 6, 2])
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    assert math.isclose(chunk_nll(logits, chunk), -sum(np.log(p[t - 1, chunk[t]]) for t in range(1, 5)))


def test_eval_ppl_user_errors(tmp_path, capsys):
    path, _ = make_tiny_model("llama", tmp_path)
    for args, needle in [(["--data", str(tmp_path / "none.txt")], "none.txt"),
                         (["--data", __file__, "--seqlen", "100000"], "fewer than one chunk"),
                         (["--seqlen", "64"], "--data")]:
        code, _, err = run(["eval", "ppl", str(path), *args], capsys)
        lines = [l for l in err.splitlines() if "error:" in l]
        assert code == 2 and len(lines) == 1 and needle in lines[0], err
