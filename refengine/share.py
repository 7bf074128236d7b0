"""Files refengine reads but never imports — the CUDA sources (kernels_cu/) and the transformers dump script
(tools/dump_transformers.py, run in a child process so that torch stays out of refengine's interpreter).

A checkout (source or editable install) has them beside the package; a wheel installs them under
<prefix>/share/refengine/ (setup.cfg's data_files).
"""

from __future__ import annotations

import sys
from pathlib import Path


def share_dir(name: str) -> Path:
    """The checkout's <name>/ if there is one, else <prefix>/share/refengine/<name>."""
    checkout = Path(__file__).resolve().parents[1] / name
    installed = Path(sys.prefix) / "share" / "refengine" / name
    return checkout if checkout.is_dir() or not installed.is_dir() else installed
