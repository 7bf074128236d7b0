"""The transformers side of `--against transformers`: tools/dump_transformers.py run in a child process.

refengine never imports torch or transformers (tests/test_no_torch_at_run_time.py), so the reference runs
in its own interpreter and hands back a DUMP.npz: the comparison then reads it exactly like a dump a user
wrote with another engine — one code path for both `--against` forms.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from refengine.diff.errors import ReferenceUnavailableError
from refengine.share import share_dir

SCRIPT = share_dir("tools") / "dump_transformers.py"
REQUIRED = ("torch", "transformers")
INSTALL_HINT = "pip install 'refengine[test]'  (or: pip install torch transformers accelerate)"
CANNOT_LOAD = 3          # the script's exit code for "transformers cannot load this model"


def missing_packages() -> list[str]:
    """The packages the dump script needs that are not installed (find_spec locates without importing)."""
    missing = []
    for name in REQUIRED:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):        # a broken installation counts as missing
            found = False
        if not found:
            missing.append(name)
    return missing


def check_available() -> None:
    missing = missing_packages()
    if missing:
        raise ReferenceUnavailableError(f"--against transformers needs {' and '.join(missing)}, which "
                                        f"{'is' if len(missing) == 1 else 'are'} not installed: {INSTALL_HINT}")


def model_location(spec: str) -> Path:
    """The local directory or GGUF file that refengine loaded for `spec` (a hub id: its cached snapshot)."""
    from refengine.model.loader import resolve_source
    kind, where = resolve_source(spec)
    if kind == "hub":
        from refengine.model.hf import download_from_hub
        return download_from_hub(where)
    return Path(where)


class TransformersRun:
    """The dump script running in a child process; `wait()` returns the DUMP.npz path it wrote.

    Started before refengine's own forward passes, so that the two run side by side."""

    def __init__(self, location: Path, prompt_ids: list[list[int]], dtype: str, max_new_tokens: int,
                 workdir: Path):
        self.out = workdir / "transformers.npz"
        self.log = workdir / "transformers.log"
        ids_file = workdir / "ids.json"
        ids_file.write_text(json.dumps({"prompts": prompt_ids}))
        cmd = [sys.executable, str(SCRIPT), "--model", str(location), "--ids", str(ids_file),
               "--out", str(self.out), "--dtype", dtype, "--max-new-tokens", str(max_new_tokens)]
        # quiet progress bars; the log is shown only on failure
        env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
               "TQDM_DISABLE": "1"}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env)

    def wait(self) -> Path:
        code = self.proc.wait()
        if code == 0 and self.out.is_file():
            return self.out
        lines = [l for l in self.log.read_text(errors="replace").splitlines() if l.strip()]
        last = lines[-1].strip() if lines else f"exit code {code}"
        if code == CANNOT_LOAD:
            raise ReferenceUnavailableError(f"{last} (compare against a dump instead: --against DUMP.npz, "
                                            f"see docs/diff.md)")
        raise ReferenceUnavailableError(f"the transformers dump script failed (exit code {code}): {last}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
