"""The run behind the live window: start, stop, drain and finish it without blocking the GUI thread.

A :class:`LiveSession` holds the current :class:`rtsmlm.engine.run.Run`. :meth:`LiveSession.start` starts its
pipeline and a supervisor thread that does what ``rtsmlm run`` does in its main loop: wait until the
pipeline has drained (source ended or :meth:`LiveSession.stop` called), then ``run.finish()``, which lets
every listener flush and writes ``summary.json``. The GUI polls :attr:`LiveSession.state` from its
timer. Starting again after a finished run builds a new run into a fresh output folder
(``<output.dir>-002``, ``-003``, …) on a background thread, since opening the model takes seconds.
No Qt here.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rtsmlm.core.config import Config, replace, to_dict

log = logging.getLogger("rtsmlm.gui")

IDLE, STARTING, RUNNING, STOPPING, FINISHED, FAILED = "idle", "starting", "running", "stopping", "finished", "failed"
"""Session states. ``starting``: a new run is being built; ``stopping``: draining and flushing."""


def next_output_dir(base: Path) -> Path:
    """The first of ``base-002``, ``base-003``, … that does not exist or is an empty folder."""
    k = 2
    while True:
        candidate = base.with_name(f"{base.name}-{k:03d}")
        if not candidate.exists() or (candidate.is_dir() and not any(candidate.iterdir())):
            return candidate
        k += 1


class LiveSession:
    """One live window's runs. Methods are called from the GUI thread; work happens on threads here."""

    def __init__(self, cfg: Config, *, realtime: bool = False, run: Any = None,
                 build: Callable[..., Any] | None = None) -> None:
        """``run``: an already built (not started) :class:`rtsmlm.engine.run.Run` for the first acquisition;
        without it the first :meth:`start` builds one. ``build`` defaults to :func:`rtsmlm.engine.run.build_run`."""
        if build is None:
            from rtsmlm.engine.run import build_run as build
        self.cfg = cfg
        self.realtime = realtime
        self._build = build
        self._lock = threading.Lock()
        self._state = IDLE
        self._stop_requested = False
        self.run = run
        self.summary: dict[str, Any] | None = None
        self.error: str | None = None
        self.n_runs = 0
        self._thread: threading.Thread | None = None

    @property
    def state(self) -> str:
        return self._state

    @property
    def active(self) -> bool:
        """True while a run is being built, running or draining (closing the window must wait)."""
        return self._state in (STARTING, RUNNING, STOPPING)

    def start(self) -> None:
        """Start acquisition: the prepared run, or a new one after a finished run. Ignored while active."""
        with self._lock:
            if self.active:
                return
            fresh = self._state == IDLE and self.run is not None  # the prepared run, never started
            self._stop_requested = False
            self.summary = None
            self.error = None
            self._state = STARTING
        if fresh:
            self._start_pipeline()
        else:
            self._thread = threading.Thread(target=self._build_and_start, name="rtsmlm-live-build", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop acquisition; the supervisor drains, flushes and writes the summary (state → finished)."""
        with self._lock:
            self._stop_requested = True
            state, run = self._state, self.run
            if state == RUNNING:
                self._state = STOPPING
        if state in (RUNNING, STOPPING) and run is not None:
            run.stop()

    # ---------------------------------------------------------------------------------- threads

    def _build_and_start(self) -> None:
        try:
            cfg = self.cfg
            if self.n_runs > 0:
                out = next_output_dir(Path(cfg.output.dir))
                cfg = replace(cfg, output={**to_dict(cfg.output), "dir": str(out)})
            self.run = self._build(cfg, realtime=self.realtime)
        except Exception as e:
            log.error("could not start a new run:\n%s", traceback.format_exc())
            with self._lock:
                self.error = str(e)
                self._state = FAILED
            return
        self._start_pipeline(spawned=True)

    def _start_pipeline(self, spawned: bool = False) -> None:
        run = self.run
        try:
            run.start()
        except Exception as e:
            log.error("could not start the pipeline:\n%s", traceback.format_exc())
            with self._lock:
                self.error = str(e)
                self._state = FAILED
            return
        with self._lock:
            self.n_runs += 1
            self._state = RUNNING
            stop_now = self._stop_requested
        if stop_now:  # stop was pressed while the run was being built
            self.stop()
        if spawned:
            self._supervise(run)
        else:
            self._thread = threading.Thread(target=self._supervise, args=(run,), name="rtsmlm-live-supervisor",
                                            daemon=True)
            self._thread.start()

    def _supervise(self, run: Any) -> None:
        """Wait for the pipeline to drain, then finish the run (listeners flush, summary.json)."""
        try:
            while not run.wait(timeout=0.25):
                pass
            with self._lock:
                if self._state == RUNNING:  # the source ended on its own
                    self._state = STOPPING
            summary = run.finish()
        except Exception as e:
            log.error("finishing the run failed:\n%s", traceback.format_exc())
            with self._lock:
                self.error = str(e)
                self._state = FAILED
            return
        with self._lock:
            self.summary = summary
            self.error = "; ".join(summary.get("errors", [])) or None
            self._state = FAILED if summary.get("errors") else FINISHED
