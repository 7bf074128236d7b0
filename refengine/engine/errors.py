"""Typed errors of the engine's request API: what a caller can get wrong about sessions and limits.

Each is a `RefengineError` (the CLI prints one line, the server answers 4xx) and is raised to the one
caller that made the mistake; the engine keeps serving everyone else.
"""

from refengine.errors import RefengineError


class EngineConfigError(RefengineError, ValueError):
    """An engine setting out of range, or a KV cache too small for one session."""


class SessionError(RefengineError):
    """A request that does not fit the state of its session. `session_id` names the session."""

    def __init__(self, session_id, message: str):
        super().__init__(f"session {session_id!r}: {message}")
        self.session_id = session_id


class UnknownSessionError(SessionError, KeyError):
    """Continuing (sequence_start=False) a session the engine does not hold."""

    def __str__(self) -> str:     # KeyError would quote the message
        return self.args[0]


class SessionBusyError(SessionError):
    """A second request on a session whose previous turn is still being generated."""


class SessionLengthError(SessionError, ValueError):
    """A prompt (with the session's history) that does not fit in session_len tokens."""
