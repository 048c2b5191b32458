"""The engine inside your own acquisition script: :class:`EmbeddedRun` (see :mod:`rtsmlm.embed.session`)."""

from rtsmlm.embed.session import EmbeddedRun

__all__ = ["EmbeddedRun"]
