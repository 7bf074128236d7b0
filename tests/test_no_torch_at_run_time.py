"""refengine never imports torch or transformers: loading every module of the package must leave them
out of sys.modules (they are test-only dependencies). Modules that need CuPy may be skipped on a machine
without it."""

import pkgutil
import subprocess
import sys

import refengine


def test_importing_every_module_pulls_in_no_torch():
    names = [m.name for m in pkgutil.walk_packages(refengine.__path__, "refengine.")]
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except ImportError as e:\n"
            "        if (e.name or '').split('.')[0] not in ('cupy', 'cupy_backends'):\n"
            "            raise\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
            "print(bad)\n"
            "sys.exit(1 if bad else 0)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(names) > 10
