"""User-facing errors: each names the file or key at fault and gives a hint.

Entry points catch ``PvdalError`` and print one line instead of a stack trace (exit code 2).
"""

from __future__ import annotations


class PvdalError(Exception):
    """An error the user can fix; the message names the culprit and a hint."""

    def __init__(self, what: str, problem: str, hint: str = "") -> None:
        self.what, self.problem, self.hint = what, problem, hint
        msg = f"{what}: {problem}"
        if hint:
            msg += f" (hint: {hint})"
        super().__init__(msg)


class DataError(PvdalError):
    """Bad dataset files: missing, unreadable, inconsistent."""


class ConfigError(PvdalError):
    """A config key with a bad value."""


class CheckpointError(PvdalError):
    """A checkpoint that cannot be loaded as asked."""
