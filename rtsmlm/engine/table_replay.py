"""Listeners driven over localizations that already exist (a batch re-analysis), on the caller's thread.

A live run feeds its listeners through relays, each on its own thread, while frames arrive. A batch has
the whole table at the end: it calls the same hooks in the same order — ``on_run_start``, ``on_batch`` for
each batch in frame order, then ``on_run_end`` in the listeners' order with each one's final drift handed
on (:func:`~rtsmlm.engine.relay.end_in_order`) — so the outputs are those a run writes. A failing hook
raises: a batch reports that movie as failed rather than pass off partial outputs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rtsmlm.core.locs import LocBatch
from rtsmlm.engine.listener import RunStart, hooks_of, run_end_argument
from rtsmlm.engine.relay import end_in_order

__all__ = ["replay_table"]


def replay_table(listeners: Sequence[object], run: RunStart, batches: Iterable[LocBatch],
                 summary: dict[str, Any]) -> dict[str, Any]:
    """Drive ``listeners`` over ``batches``; their sections are merged into ``summary`` (also returned by
    name)."""
    hooks = [(listener, hooks_of(listener)) for listener in listeners]
    for _, h in hooks:
        if "on_run_start" in h:
            h["on_run_start"][1](run)
    for batch in batches:
        for _, h in hooks:
            if "on_batch" in h:
                h["on_batch"][1](batch)

    def ender(h: dict[str, tuple[str, Any]]) -> Any:
        if "on_run_end" not in h:
            return lambda end: None
        own_name, fn = h["on_run_end"]
        return lambda end: fn(run_end_argument(own_name, end))

    return end_in_order(((str(getattr(x, "name", type(x).__name__)), x, ender(h), lambda: True) for x, h in hooks),
                        summary)
