"""Op backends. Model code calls `ops.<name>(...)` on whichever backend it was given:

    numpy  refengine.ops.reference  the specification, runs anywhere
    auto   the fastest backend usable on this machine

Every backend exposes the same names with the same signatures (see reference.py for the list).
"""

from __future__ import annotations

from types import ModuleType

from refengine.errors import RefengineError

BACKENDS = ("auto", "numpy")


def get_backend(name: str = "auto") -> ModuleType:
    if name not in BACKENDS:
        raise RefengineError(f"--backend {name!r} is not available (choose from: {', '.join(BACKENDS)})")
    from refengine.ops import reference
    return reference
