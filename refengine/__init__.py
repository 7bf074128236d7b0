"""refengine: a readable LLM deployment toolkit in pure Python (NumPy, CuPy RawKernels, .cu kernels)."""

from refengine.errors import (ChatTemplateError, GenerationConfigError, ModelLoadError, RefengineError,
                              UnsupportedModelError)
from refengine.sampling_params import GenerationConfig

__version__ = "0.1.0"


def pipeline(model: str, **kwargs):
    """Load MODEL (HF dir, hub id, GGUF file or `demo`) and return a `Pipeline` for generate/stream."""
    from refengine.pipeline import Pipeline
    return Pipeline.from_model(model, **kwargs)


__all__ = ["pipeline", "GenerationConfig", "RefengineError", "ModelLoadError", "UnsupportedModelError",
           "ChatTemplateError", "GenerationConfigError", "__version__"]
