"""Typed errors of `refengine diff`: each is a user-side problem, explained in one line (exit code 2).

They subclass RefengineError, so the CLI's `handle_user_errors` and any caller that catches
RefengineError treat them like every other user mistake."""

from refengine.errors import RefengineError


class DiffError(RefengineError):
    """Base class of the diff command's user errors."""


class PromptsFileError(DiffError):
    """The prompts file cannot be read, is empty, or has a line that is not a prompt."""


class DumpError(DiffError):
    """A DUMP.npz that cannot be read or does not fit the model and prompts (shapes, token ids)."""


class ReferenceUnavailableError(DiffError):
    """The transformers side cannot run: torch/transformers missing, or transformers cannot load the model."""
