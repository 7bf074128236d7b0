"""Typed errors for everything a user can get wrong.

The CLI turns any `RefengineError` into one line on stderr and exit code 2; the HTTP server into a
4xx JSON body. Anything else that escapes is a bug in refengine, and keeps its traceback.
"""


class RefengineError(Exception):
    """Base class: a user mistake or an unusable input, explained in one line."""


class ModelLoadError(RefengineError):
    """A model directory, file or hub id that cannot be read (missing, corrupt, unreachable)."""


class UnsupportedModelError(ModelLoadError):
    """A readable model that refengine does not run (architecture, rope type, attention kind)."""


class ChatTemplateError(RefengineError):
    """An unknown chat template name, an unreadable template file, or a template that fails to render."""


class GenerationConfigError(RefengineError, ValueError):
    """A sampling / generation parameter out of range. `field` names the offending parameter."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
