"""Calls into code we do not control (plugins, listeners) with a time limit.

A plugin that blocks in a hook (a serial port that never answers, an ``input()`` left in) must not hang
the run, and one that calls ``sys.exit()`` must not end a thread silently. :class:`HookWorker` runs the
calls of one plugin on a daemon thread of its own; the caller waits at most ``timeout_s`` for each. A
call that overruns is abandoned — its thread stays blocked, and the worker refuses further calls — and
the caller is told so; any exception, ``BaseException`` included, comes back as a :class:`HookOutcome`.
"""

from __future__ import annotations

import queue
import threading
import traceback
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["HookOutcome", "HookWorker"]


@dataclass(frozen=True)
class HookOutcome:
    """How one call ended: ``ok``, or ``error`` (one line) with the traceback, or ``timed_out``."""

    ok: bool
    error: str | None = None
    traceback: str | None = None
    timed_out: bool = False


_OK = HookOutcome(True)


class HookWorker:
    """One daemon thread that runs calls handed to it, one at a time, with a deadline per call."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._calls: queue.SimpleQueue[tuple[Callable[[Any], Any], Any, threading.Event, list[HookOutcome]] | None] = (
            queue.SimpleQueue())
        self._thread = threading.Thread(target=self._serve, name=f"rtsmlm-hook-{name}", daemon=True)
        self._thread.start()
        self.abandoned = False

    def _serve(self) -> None:
        while True:
            item = self._calls.get()
            if item is None:
                return
            fn, arg, done, box = item
            try:
                fn(arg)
                box.append(_OK)
            except BaseException as e:  # noqa: BLE001 - SystemExit/KeyboardInterrupt from a hook too
                box.append(HookOutcome(False, f"{type(e).__name__}: {e}".rstrip(": "), traceback.format_exc()))
            finally:
                done.set()

    def call(self, fn: Callable[[Any], Any], arg: Any, timeout_s: float) -> HookOutcome:
        """Run ``fn(arg)`` on the worker's thread; wait at most ``timeout_s`` seconds for it."""
        if self.abandoned:
            return HookOutcome(False, "an earlier call never returned", timed_out=True)
        done = threading.Event()
        box: list[HookOutcome] = []
        self._calls.put((fn, arg, done, box))
        if not done.wait(timeout_s):
            self.abandoned = True  # its thread is stuck in fn; it is a daemon and dies with the process
            return HookOutcome(False, f"did not return within {timeout_s:g} s", timed_out=True)
        return box[0]

    def close(self) -> None:
        """Let the thread end once it has served what was handed to it (no wait)."""
        if not self.abandoned:
            self._calls.put(None)
