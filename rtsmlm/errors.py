"""Which exceptions are the user's to fix (bad file, bad config, missing device) rather than bugs.

Every error class defined inside rtsmlm (SourceError, CheckpointError, LocFileError, ConfigError, …)
carries one sentence naming the file, key or value; the CLI prints it without a traceback.
"""

from __future__ import annotations


def is_user_error(exc: BaseException) -> bool:
    return any(cls.__module__.startswith("rtsmlm") for cls in type(exc).__mro__)
