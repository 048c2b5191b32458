"""User-facing errors: the ones that are the user's to fix (bad file, bad config, missing device), not bugs.

Every error class defined inside rtsmlm derives from :class:`RtsmlmError` (also from the built-in class
it specialises, e.g. ``ValueError``) and carries one sentence naming the file, key or value; the CLI
prints it without a traceback.
"""

from __future__ import annotations


class RtsmlmError(Exception):
    """Base of every user-facing rtsmlm error."""


class SourceError(RtsmlmError, RuntimeError):
    """A source cannot be opened or read; the message names the file or device and what is wrong."""


def is_user_error(exc: BaseException) -> bool:
    """True for rtsmlm's own error types (printed as one line), False for bugs (traceback)."""
    return isinstance(exc, RtsmlmError)
