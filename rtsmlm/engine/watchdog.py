"""Calls into code we do not control (plugins, third-party listeners) with a time limit.

A plugin that blocks in a hook (a serial port that never answers, an ``input()`` left in) must not hang
the run, and one that calls ``sys.exit()`` must not end a thread silently. :class:`HookWorker` runs the
calls of one plugin on a daemon thread of its own; the caller waits at most ``timeout_s`` for each. A
call that overruns is abandoned — its thread stays blocked, and the worker refuses further calls — and
the caller is told so; any exception, ``BaseException`` included, comes back as a :class:`HookOutcome`.
:class:`HookCaller` is what the relay and the plugin host use: direct calls for rtsmlm's own code, the
worker for the rest, and the count and time of calls either way.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["HookCaller", "HookOutcome", "HookWorker", "log_plugin_disabled"]


log = logging.getLogger("rtsmlm.engine.plugins")


@dataclass(frozen=True)
class HookOutcome:
    """How one call ended: ``ok`` with its ``value``, or ``error`` (one line) with the traceback, or
    ``timed_out``."""

    ok: bool
    error: str | None = None
    traceback: str | None = None
    timed_out: bool = False
    value: Any = None
    exception: BaseException | None = None


def _run(fn: Callable[..., Any], arg: Any, no_arg: bool) -> HookOutcome:
    try:
        return HookOutcome(True, value=fn() if no_arg else fn(arg))
    except BaseException as e:  # noqa: BLE001 - SystemExit/KeyboardInterrupt from a hook too
        return HookOutcome(False, f"{type(e).__name__}: {e}".rstrip(": "), traceback.format_exc(), exception=e)


class HookWorker:
    """One daemon thread that runs calls handed to it, one at a time, with a deadline per call."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._calls: queue.SimpleQueue[tuple[Callable[..., Any], Any, bool, threading.Event, list[HookOutcome]] | None] = (
            queue.SimpleQueue())
        self._thread = threading.Thread(target=self._serve, name=f"rtsmlm-hook-{name}", daemon=True)
        self._thread.start()
        self.abandoned = False

    def _serve(self) -> None:
        while True:
            item = self._calls.get()
            if item is None:
                return
            fn, arg, no_arg, done, box = item
            box.append(_run(fn, arg, no_arg))
            done.set()

    def call(self, fn: Callable[..., Any], arg: Any, timeout_s: float, *, no_arg: bool = False) -> HookOutcome:
        """Run ``fn(arg)`` (``fn()`` with ``no_arg``) on the worker's thread; wait at most ``timeout_s``."""
        if self.abandoned:
            return HookOutcome(False, "an earlier call never returned", timed_out=True)
        done = threading.Event()
        box: list[HookOutcome] = []
        self._calls.put((fn, arg, no_arg, done, box))
        if not done.wait(timeout_s):
            self.abandoned = True  # its thread is stuck in fn; it is a daemon and dies with the process
            return HookOutcome(False, f"did not return within {timeout_s:g} s", timed_out=True)
        return box[0]

    def close(self) -> None:
        """Let the thread end once it has served what was handed to it (no wait)."""
        if not self.abandoned:
            self._calls.put(None)


class HookCaller:
    """Calls one listener's hooks: directly (``timeout_s`` None) or through a :class:`HookWorker` with
    that limit per call; counts calls and the time spent in them."""

    def __init__(self, name: str, timeout_s: float | None) -> None:
        self.timeout_s = timeout_s
        self._worker = HookWorker(name) if timeout_s is not None else None
        self.calls = 0
        self.time_s = 0.0

    def call(self, fn: Callable[..., Any], arg: Any = None, *, no_arg: bool = False) -> HookOutcome:
        t0 = time.perf_counter()
        if self._worker is None:
            outcome = _run(fn, arg, no_arg)
        else:
            assert self.timeout_s is not None
            outcome = self._worker.call(fn, arg, self.timeout_s, no_arg=no_arg)
        self.calls += 1
        self.time_s += time.perf_counter() - t0
        return outcome

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()


def log_plugin_disabled(name: str, hook: str, outcome: HookOutcome) -> None:
    """The one line (plus traceback) that says a plugin was disabled and the acquisition goes on."""
    if outcome.timed_out:
        log.error("plugin %s: %s %s; plugin disabled (pipeline.hook_timeout_s), the acquisition continues",
                  name, hook, outcome.error)
    else:
        log.error("plugin %s raised in %s and is disabled; the acquisition continues\n%s", name, hook,
                  outcome.traceback)
