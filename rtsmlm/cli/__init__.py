"""Command-line entry points: ``rtsmlm`` (:func:`main`, in :mod:`.commands`) and its subcommands, one module
each (``simulate``, ``calibrate``, ``export``, ``listen``, ``bench``); one error policy: user errors as one
line and exit code 2."""

from rtsmlm.cli.commands import main

__all__ = ["main"]
