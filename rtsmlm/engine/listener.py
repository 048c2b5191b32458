"""The one observer model of a run: a :class:`Listener` with optional hooks.

Everything that follows a run is a listener — the localization files, the ground truth of a simulated
sample, the live render, the ZeroMQ stream, feedback plugins, a user's script — and the engine runs each
one on a thread of its own through :class:`~rtsmlm.engine.relay.ListenerRelay` (bounded lag, loss
counting, a watchdog), so a slow or stuck listener never slows the localizer or another listener.

A listener defines any of the hooks below; the relay calls only those it has. Writing one::

    class CountLocs:
        name = "count"            # optional: its key in the summary (default: the class name)

        def __init__(self):
            self.n = 0

        def on_batch(self, batch):
            self.n += len(batch.locs)

        def on_run_end(self, end):
            return {"count": {"n_locs": self.n}}   # merged into summary.json

Hooks that a plugin from before this protocol defines (``on_start``, ``on_localizations``, ``on_stop``)
are still called, as ``on_run_start``, ``on_batch`` and ``on_run_end`` (:data:`LEGACY_HOOKS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from rtsmlm.acquisition.source import TruthRecord
from rtsmlm.core.locs import LocBatch

if TYPE_CHECKING:
    from rtsmlm.acquisition.source import Control
    from rtsmlm.core.config import Config

__all__ = ["HOOKS", "LEGACY_HOOKS", "Listener", "ProvidesDrift", "RunEnd", "RunStart", "TruthRecord", "hooks_of",
           "run_end_argument"]


@dataclass(frozen=True)
class RunStart:
    """What a listener learns about the run in :meth:`Listener.on_run_start`.

    ``control`` sets and reads device properties (lasers, stages) — None when the source has none (file
    replay). ``output_dir`` is where the run writes its outputs; a listener writes its own files there.
    ``exposure_ms`` is the frame period, the clock of frame-based control loops. ``info`` is the run's
    description as written to summary.json (source, camera, backend, model).
    """

    run_id: str
    control: Control | None = None
    output_dir: Path | None = None
    exposure_ms: float = 10.0
    pixel_size_nm: float = 100.0
    frame_shape: tuple[int, int] | None = None
    config: Config | None = None
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunEnd:
    """What a listener learns in :meth:`Listener.on_run_end`.

    ``summary`` is the engine's part of the run summary (counts, losses, timings, errors) as it will be
    written; ``sections`` holds what the listeners that ended before this one returned, in order (files
    end after the render, so they find its final drift). ``drift`` is the run's final drift trajectory
    once the drift stage has ended (None before, or without drift correction).
    """

    summary: Mapping[str, Any]
    sections: Mapping[str, Any] = field(default_factory=dict)
    drift: Any = None


class Listener(Protocol):
    """Follows a run. Every hook is optional; each is called on the listener's own thread, in order.

    Attributes read when present: ``name`` (its key in the summary; default the class name),
    ``critical`` (True: the run stops when it fails, as for the files that hold the data; default
    False: it is dropped and the run goes on), ``max_lag_batches`` (how far it may fall behind the
    localizer before batches are dropped for it, counted; None: never drop — only for listeners that
    must see everything and are fast, like the files; default
    :data:`~rtsmlm.engine.relay.DEFAULT_MAX_LAG_BATCHES`).
    """

    name: str

    def on_run_start(self, run: RunStart) -> None:
        """Once, before the first frame is acquired (acquisition waits for every listener's return, up
        to 30 s): bind sockets, read device state, open files here."""

    def on_batch(self, batch: LocBatch) -> None:
        """For every localization batch, in frame order: ``batch.first_frame..last_frame`` inclusive,
        frames with nothing found included. ``batch.late`` marks frames analysed after the acquisition
        from the raw recording (the live localizer had skipped or lost them)."""

    def on_truth(self, record: TruthRecord) -> None:
        """For every frame a simulated source delivered, before its localizations: the ground truth."""

    def on_stats(self, stats: Mapping[str, Any]) -> None:
        """Once per ``pipeline.stats_interval_s``: rates, counts, ring fill, losses, latency, memory."""

    def on_tick(self) -> None:
        """About every ``output.flush_interval_s``, also when nothing arrived: flush files here, so a
        crash loses at most that much."""

    def on_run_end(self, end: RunEnd) -> Mapping[str, Any] | None:
        """Once, after the last batch: close files, write final outputs. The mapping returned is merged
        into summary.json (a listener owns its keys; nested mappings are merged one level deep)."""


@runtime_checkable
class ProvidesDrift(Protocol):
    """A listener that estimates the run's drift (the render listener): after its ``on_run_end`` the
    engine hands :meth:`final_drift` to the listeners that end after it (``RunEnd.drift``)."""

    def final_drift(self) -> Any:
        """The final per-frame drift (:class:`~rtsmlm.io.tables.DriftTrajectory`), or None."""


HOOKS = ("on_run_start", "on_batch", "on_truth", "on_stats", "on_tick", "on_run_end")
LEGACY_HOOKS = {"on_start": "on_run_start", "on_localizations": "on_batch", "on_stop": "on_run_end"}
"""Hook names of the plugin API before :class:`Listener` (still called; the summary names them as the
plugin does)."""


def hooks_of(listener: object) -> dict[str, tuple[str, Any]]:
    """The hooks ``listener`` defines: protocol name → (the listener's own method name, bound method).
    A protocol hook wins over its legacy name when a class defines both."""
    found: dict[str, tuple[str, Any]] = {}
    for legacy, hook in LEGACY_HOOKS.items():
        fn = getattr(listener, legacy, None)
        if callable(fn):
            found[hook] = (legacy, fn)
    for hook in HOOKS:
        fn = getattr(listener, hook, None)
        if callable(fn) and not _is_protocol_stub(listener, hook):
            found[hook] = (hook, fn)
    return found


def run_end_argument(own_name: str, end: RunEnd) -> Any:
    """What a listener's end hook is called with: the ``RunEnd``, or for a plugin's old ``on_stop`` the
    summary mapping it was written for."""
    return dict(end.summary) if own_name == "on_stop" else end


def _is_protocol_stub(listener: object, hook: str) -> bool:
    """True when ``hook`` is the do-nothing body inherited from :class:`Listener` (a subclass that
    does not override it): the relay does not call it."""
    for klass in type(listener).__mro__:
        if hook in vars(klass):
            return klass is Listener
    return False
