"""Runs each :class:`~rtsmlm.engine.listener.Listener` on a thread of its own.

One :class:`ListenerRelay` per listener follows the :class:`~rtsmlm.core.locs.LocalizationStream` from
its own position (the stream keeps a batch until every relay has taken it), takes side events (stats,
ground truth) from a bounded queue, and calls the listener's hooks in order:

* **bounded lag, counted loss**: a listener more than ``max_lag_batches`` behind the localizer skips to
  the newest batch; the batches and localizations it lost are counted and reported (a live view or a
  subscriber that cannot keep up must not make the run hold every batch in memory). Side events beyond
  the queue's size are dropped oldest first, counted. ``max_lag_batches = None`` never drops (the files).
* **watchdog**: hooks of listeners from outside rtsmlm (plugins) run through a
  :class:`~rtsmlm.engine.watchdog.HookCaller` with ``pipeline.hook_timeout_s`` per call; a hook that
  raises or overruns disables that listener with one logged line, and the run goes on.
* **failure policy**: a listener that fails is dropped; when it is ``critical`` the run stops too.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rtsmlm.core.locs import LocalizationStream
from rtsmlm.engine.listener import ProvidesDrift, RunEnd, RunStart, hooks_of, run_end_argument
from rtsmlm.engine.watchdog import HookCaller, log_plugin_disabled

log = logging.getLogger(__name__)

DEFAULT_MAX_LAG_BATCHES = 2048
"""How many batches a listener may fall behind before it loses batches (≈ 20 s of a fast camera)."""
SIDE_QUEUE_EVENTS = 4096
"""Side events (stats, ground truth) waiting for one listener at most; older ones are dropped, counted."""
START_TIMEOUT_S = 30.0

FailureHandler = Callable[[str, str, bool, "BaseException | None"], None]
"""``(where, one-line error or traceback, stop_the_run, exception)`` — the pipeline's failure handler."""


@dataclass(frozen=True)
class ListenerReport:
    """How one listener fared, for the run summary (``listeners.NAME``)."""

    critical: bool
    active: bool
    error: str | None
    calls: int
    time_s: float
    batches: int
    batches_lost: int
    locs_lost: int
    events_lost: int
    abandoned: bool


class ListenerRelay:
    """One listener, its thread, its position in the stream and its side-event queue."""

    def __init__(self, listener: object, stream: LocalizationStream, *, flush_interval_s: float,
                 on_failure: FailureHandler, hook_timeout_s: float | None = None, name: str = "",
                 origin: str = "") -> None:
        """``hook_timeout_s``: None calls the hooks directly on the relay's thread (rtsmlm's own
        listeners); a number runs each call under the watchdog with that limit (plugins)."""
        self.listener = listener
        self.name: str = name or str(getattr(listener, "name", None) or type(listener).__name__)
        self.critical = bool(getattr(listener, "critical", False))
        lag = getattr(listener, "max_lag_batches", DEFAULT_MAX_LAG_BATCHES)
        self.max_lag_batches: int | None = None if lag is None else max(1, int(lag))
        self.origin = origin or type(listener).__module__
        self._hooks = hooks_of(listener)
        self._caller = HookCaller(self.name, hook_timeout_s)
        self._contained = hook_timeout_s is not None  # a plugin: its failures do not fail the run
        self._stream = stream
        self._flush_interval_s = flush_interval_s
        self._on_failure = on_failure
        # A lossless listener (the files, the ground truth) also takes every side event.
        self._side: deque[tuple[str, Any]] = deque(maxlen=None if self.max_lag_batches is None else SIDE_QUEUE_EVENTS)
        self._side_lock = threading.Lock()
        self._wake = threading.Event()
        self.started = threading.Event()
        self.thread: threading.Thread | None = None
        self.error: str | None = None
        self.abandoned = False
        self.n_batches = 0
        self.batches_lost = 0
        self.locs_lost = 0
        self.events_lost = 0
        # A listener without on_batch (the ground truth, a stats-only plugin) does not follow the stream: it
        # wakes for its side events and ticks only, not for every batch (fewer thread switches).
        self._follows_stream = "on_batch" in self._hooks
        if self._follows_stream:
            stream.add_reader(self.name)

    @property
    def active(self) -> bool:
        return self.error is None and not self.abandoned

    # ------------------------------------------------------------------------------- from the engine

    def start(self, run: RunStart) -> None:
        """Start the thread; it calls ``on_run_start`` first, then follows the stream."""
        self.thread = threading.Thread(target=self._serve, args=(run,), name=f"rtsmlm-{self.name}", daemon=True)
        self.thread.start()

    def post(self, hook: str, arg: Any) -> None:
        """Queue a side event (``on_stats``, ``on_truth``) for this listener; never blocks."""
        if hook not in self._hooks or not self.active:
            return
        with self._side_lock:
            if len(self._side) == self._side.maxlen:
                self.events_lost += 1
            self._side.append((hook, arg))
        if not self._follows_stream:
            self._wake.set()

    def end(self, end: RunEnd) -> Mapping[str, Any] | None:
        """After the thread has finished: call ``on_run_end`` (on the caller's thread, or under the
        watchdog) and return the listener's summary section. Legacy plugins get the summary mapping."""
        try:
            if not self.active or "on_run_end" not in self._hooks:
                return None
            own_name, _ = self._hooks["on_run_end"]
            try:
                out = self._call("on_run_end", run_end_argument(own_name, end))
            except _Disabled:
                return None  # reported by _call; the other listeners still end
            return out if isinstance(out, Mapping) else None
        finally:
            self._caller.close()

    def abandon(self, why: str) -> None:
        """Give up on a listener whose thread is stuck (its daemon thread stays blocked)."""
        self.abandoned = True
        self.error = self.error or why
        self._stream.remove_reader(self.name)

    def report(self) -> ListenerReport:
        return ListenerReport(self.critical, self.active, self.error, self._caller.calls,
                              round(self._caller.time_s, 6), self.n_batches, self.batches_lost, self.locs_lost,
                              self.events_lost, self.abandoned)

    # --------------------------------------------------------------------------------- its thread

    def _call(self, hook: str, arg: Any = None) -> Any:
        """Call one hook; on failure disable the listener. A plugin's failure is contained (logged and
        reported in its summary entry); one of rtsmlm's own listeners is an error of the run, which
        stops when the listener is critical."""
        own_name, fn = self._hooks[hook]
        outcome = self._caller.call(fn, arg, no_arg=hook == "on_tick")
        if outcome.ok:
            return outcome.value
        self.error = f"{own_name}: {outcome.error}"
        if self._contained:
            log_plugin_disabled(self.name, own_name, outcome)
        else:
            self._on_failure(f"listener {self.name} ({own_name})", outcome.traceback or self.error, self.critical,
                             outcome.exception)
        raise _Disabled

    def _serve(self, run: RunStart) -> None:
        seq = 0
        next_tick = time.perf_counter() + self._flush_interval_s
        try:
            try:
                if "on_run_start" in self._hooks:
                    self._call("on_run_start", run)
            finally:
                self.started.set()
            if not self._follows_stream:
                self._serve_side_events(next_tick)
                return
            while True:
                # Wake no later than the next tick, so a batch is flushed at most one interval after it
                # was appended (the crash-safety promise), however quiet the stream is.
                wait = min(0.2, max(0.0, next_tick - time.perf_counter()))
                self._drain_side()
                batches = self._stream.batches_since(seq, timeout=wait)
                if self.max_lag_batches is not None and len(batches) > self.max_lag_batches:
                    dropped = batches[:-self.max_lag_batches]
                    self.batches_lost += len(dropped)
                    self.locs_lost += sum(len(b.locs) for b in dropped)
                    batches = batches[-self.max_lag_batches:]
                    seq += len(dropped)
                    log.warning("listener %s fell %d batches behind; %d localizations dropped for it",
                                self.name, self.max_lag_batches, self.locs_lost)
                for b in batches:
                    self._drain_side()  # ground truth of a frame before its localizations
                    if "on_batch" in self._hooks and not (b.late and self._hooks["on_batch"][0] == "on_localizations"):
                        self._call("on_batch", b)  # (plugins of the old API never saw late batches)
                    self.n_batches += 1
                    seq += 1
                    self._stream.consumed(self.name, seq)
                next_tick = self._tick_if_due(next_tick)
                if not batches and self._stream.closed and seq >= self._stream.n_batches:
                    break
            self._drain_side()
            if "on_tick" in self._hooks:
                self._call("on_tick")
        except _Disabled:
            self._stream.remove_reader(self.name)
        except BaseException:  # SystemExit from a listener too: never end a thread silently
            import traceback

            self._stream.remove_reader(self.name)
            self.error = traceback.format_exc().strip().splitlines()[-1]
            self._on_failure(f"listener {self.name}", traceback.format_exc(), self.critical, None)

    def _serve_side_events(self, next_tick: float) -> None:
        """The loop of a listener that takes no batches: side events as they come, ticks, until the end."""
        while True:
            self._wake.wait(min(0.2, max(0.0, next_tick - time.perf_counter())))
            self._wake.clear()
            self._drain_side()
            next_tick = self._tick_if_due(next_tick)
            if self._stream.closed:
                break
        self._drain_side()  # the source's last events were posted before the stream closed
        if "on_tick" in self._hooks:
            self._call("on_tick")

    def _tick_if_due(self, next_tick: float) -> float:
        """Call ``on_tick`` when its time has come; the time of the next one."""
        if time.perf_counter() < next_tick:
            return next_tick
        if "on_tick" in self._hooks:
            self._call("on_tick")
        return time.perf_counter() + self._flush_interval_s

    def _drain_side(self) -> None:
        while True:
            with self._side_lock:
                if not self._side:
                    return
                hook, arg = self._side.popleft()
            self._call(hook, arg)


class _Disabled(Exception):
    """A hook failed; the relay has reported it and stops calling the listener."""


def section_value(value: Any) -> Any:
    """A section's value as summary.json holds it: a (frozen) dataclass becomes a mapping of its fields,
    fields that are None left out."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if getattr(value, f.name) is not None}
    return value


def end_in_order(parts: Iterable[tuple[str, object, Callable[[RunEnd], Mapping[str, Any] | None],
                                       Callable[[], bool]]], summary: dict[str, Any]) -> dict[str, Any]:
    """End listeners in order and merge their sections into ``summary``; returns the sections by name.

    ``parts`` are (name, listener, end, is_active): ``end(RunEnd)`` calls the listener's ``on_run_end`` (through
    its relay in a live run, directly when a table is replayed). Each listener finds the sections of those
    before it; once a :class:`ProvidesDrift` listener has ended, its final drift goes to the ones after it.
    """
    sections: dict[str, Any] = {}
    drift = None
    for name, listener, end, is_active in parts:
        section = end(RunEnd(summary, dict(sections), drift))
        if section:
            sections[name] = section
            merge_section(summary, section, name)
        if isinstance(listener, ProvidesDrift) and is_active():
            drift = listener.final_drift()
    return sections


def merge_section(summary: dict[str, Any], section: Mapping[str, Any], owner: str) -> None:
    """Merge a listener's section into the summary: new keys are added, mappings (and the dataclasses
    listeners return) merged one level deep; a key another part already set to a plain value is kept and
    the clash logged."""
    for key, value in section.items():
        value = section_value(value)
        have = summary.get(key)
        if isinstance(have, dict) and isinstance(value, Mapping):
            have.update(value)
        elif key in summary and have is not None:
            log.warning("listener %s: summary key %r is already set; its value is not replaced", owner, key)
        else:
            summary[key] = dict(value) if isinstance(value, Mapping) else value

