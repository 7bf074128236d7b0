"""refengine: a readable LLM deployment toolkit in pure Python (NumPy, CuPy RawKernels, .cu kernels)."""

from refengine.errors import (ChatTemplateError, GenerationConfigError, ModelLoadError, RefengineError,
                              UnsupportedModelError)
from refengine.config import EngineConfig
from refengine.sampling_params import GenerationConfig

# Imported before `pipeline` (the function) is defined: a submodule imported later would otherwise
# replace the function with the module `refengine.pipeline` in this namespace.
from refengine.pipeline import Pipeline  # noqa: E402  (isort: skip)

__version__ = "0.1.0"


def pipeline(model: str, **kwargs) -> Pipeline:
    """Load MODEL (HF dir, hub id, GGUF file, workspace or `demo`) and return a `Pipeline`."""
    return Pipeline.from_model(model, **kwargs)


__all__ = ["pipeline", "Pipeline", "GenerationConfig", "EngineConfig", "RefengineError", "ModelLoadError", "UnsupportedModelError",
           "ChatTemplateError", "GenerationConfigError", "__version__"]
