"""Atomic creation of a workspace directory: build it in a temporary directory beside the destination,
then rename. A failure or Ctrl-C at any point leaves neither a workspace nor temporary files.

    dst.parent/.dst.tmp-<pid>-<random>/   everything is written here
        └── rename ──► dst/               only once complete (rename within one filesystem is atomic)

With `force`, an existing workspace at dst is moved aside first and deleted only after the new one is
in place. A non-empty directory that is not a workspace is never deleted, even with force.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import threading
from pathlib import Path

from refengine.errors import RefengineError
from refengine.workspace.format import MANIFEST


class DestinationError(RefengineError):
    """--dst exists and may not be replaced."""


def check_destination(dst: Path, force: bool) -> None:
    """Refuse early (before any work) a destination we would not be allowed to replace."""
    if not dst.exists() and not dst.is_symlink():
        if not dst.parent.is_dir():
            raise DestinationError(f"--dst {dst}: the parent directory {dst.parent} does not exist")
        return
    if not dst.is_dir():
        raise DestinationError(f"--dst {dst} exists and is not a directory")
    if not any(dst.iterdir()):
        return
    if not force:
        raise DestinationError(f"--dst {dst} exists and is not empty (use --force to replace a workspace)")
    if not (dst / MANIFEST).is_file():
        raise DestinationError(f"--dst {dst} is a non-empty directory that is not a refengine workspace: "
                               f"refusing to delete it, even with --force")


@contextlib.contextmanager
def atomic_directory(dst: Path, force: bool = False):
    """Yield a fresh temporary directory; on normal exit it becomes `dst`, on any exception it is removed."""
    dst = Path(dst)
    check_destination(dst, force)
    tmp = dst.parent / f".{dst.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        with _sigterm_as_exit():
            yield tmp
            _replace(tmp, dst, force)
    except BaseException:             # KeyboardInterrupt and SystemExit too: never leave a half-workspace
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def _sigterm_as_exit():
    """While a workspace is being written, SIGTERM (kill, a job scheduler) unwinds like Ctrl-C does, so
    the cleanup above runs. Only the main thread may set signal handlers; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_now(signum, frame):
        raise SystemExit(128 + signum)
    previous = signal.signal(signal.SIGTERM, exit_now)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _replace(tmp: Path, dst: Path, force: bool) -> None:
    check_destination(dst, force)     # again: something may have appeared there while we worked
    old = None
    if dst.exists():
        if any(dst.iterdir()):
            old = dst.parent / f".{dst.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
            dst.rename(old)
        else:
            dst.rmdir()
    try:
        tmp.rename(dst)
    except BaseException:
        if old is not None:
            old.rename(dst)           # put the previous workspace back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
