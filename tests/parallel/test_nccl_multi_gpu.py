"""Two or more GPUs: tp = 2 and 4 through the real runtime (one process per GPU, NCCL) against the plain
one-GPU model — logits of a packed, paged batch and greedy tokens through the Engine. Skipped with fewer
GPUs than a case needs (never run so far: no multi-GPU machine was available; docs/tensor_parallel.md).

    python -m pytest -q tests/parallel/test_nccl_multi_gpu.py
"""

import pytest

from tests.parallel.gpu_cases import agreeing_prefixes, config, greedy_tokens, prompts, require_gpu_nccl

cp = require_gpu_nccl(min_gpus=2)

from refengine.engine.kv_cache import KVCache  # noqa: E402
from refengine.model.llama import LlamaModel  # noqa: E402
from refengine.model.loader import load_model  # noqa: E402
from refengine.ops import cuda  # noqa: E402
from refengine.parallel import build_model  # noqa: E402
from tests.parallel.tp_cases import BLOCK, steps  # noqa: E402
from tests.tolerances import assert_close, max_abs_diff  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A float16 HF directory the worker processes can load themselves (they load the spec, not our arrays)."""
    pytest.importorskip("transformers")
    from tests.hf_models import make_tiny_model
    c = config()
    path, _ = make_tiny_model("llama", tmp_path_factory.mktemp("tp-gpu"), dtype="float16",
                              hidden_size=c.hidden_size, num_hidden_layers=c.num_layers,
                              num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads,
                              head_dim=c.head_dim, intermediate_size=c.intermediate_size, vocab_size=c.vocab_size,
                              max_position_embeddings=c.max_position_embeddings)
    return str(path), load_model(str(path))


@pytest.mark.parametrize("tp", [2, 4])
def test_tp_on_gpus_equals_one_gpu(checkpoint, tp):
    if cp.cuda.runtime.getDeviceCount() < tp:
        pytest.skip(f"tp {tp} needs {tp} GPUs")
    spec, loaded = checkpoint
    cfg = loaded.config
    plain = LlamaModel(cfg, loaded.weights, cuda)
    kv_plain = KVCache.allocate(cfg, 8, BLOCK, dtype=plain.dtype, xp=cp)
    model = build_model(loaded, "cupy", tp=tp, spec=spec)
    try:
        kv = model.allocate_kv(8, BLOCK)
        for i, batch in enumerate(steps(cfg)):
            want, got = plain.forward(batch, kv_plain).get(), model.forward(batch, kv).get()
            print(f"tp {tp} step {i}: max |tp - one GPU| = {max_abs_diff(got, want):.3g}")
            assert_close(got, want, "logits", "float16", f"tp {tp} step {i}")
            assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.95
        ps = prompts(cfg.vocab_size)
        prefix = agreeing_prefixes(greedy_tokens(model, ps), greedy_tokens(plain, ps))
        print(f"tp {tp}: agreeing greedy prefixes {prefix}")
        assert min(prefix) >= 8, prefix
    finally:
        model.close()
    assert not any(w.process.is_alive() for w in model.workers)
