"""How responsive the GUI event loop is: the delay of events posted to it from another thread.

A probe thread posts a timestamped event to a receiver living on the GUI thread every ``interval_s``;
the receiver records how long each event waited before the event loop handled it. A busy GUI thread
(a long ``setImage``, a level computation on a big float image) shows up as a long delay. Used by the
tests and ``benchmarks/bench_gui.py``.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from rtsmlm.gui import require_qt

QtCore, QtGui, QtWidgets, pg = require_qt()

_EVENT_TYPE = QtCore.QEvent.Type(QtCore.QEvent.registerEventType())


class _StampedEvent(QtCore.QEvent):
    def __init__(self, posted_at: float) -> None:
        super().__init__(_EVENT_TYPE)
        self.posted_at = posted_at


class _Receiver(QtCore.QObject):
    def __init__(self) -> None:
        super().__init__()
        self.delays: list[float] = []

    def event(self, ev: QtCore.QEvent) -> bool:  # runs on the GUI thread
        if ev.type() == _EVENT_TYPE:
            self.delays.append(time.perf_counter() - ev.posted_at)
            return True
        return super().event(ev)


class EventDelayProbe:
    """Create on the GUI thread; :meth:`start`, run the event loop, :meth:`stop` → delays in seconds."""

    def __init__(self, interval_s: float = 0.01) -> None:
        self.interval_s = interval_s
        self._receiver = _Receiver()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.n_posted = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._post_loop, name="rtsmlm-gui-probe", daemon=True)
        self._thread.start()

    def _post_loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            QtCore.QCoreApplication.postEvent(self._receiver, _StampedEvent(time.perf_counter()))
            self.n_posted += 1

    def stop(self) -> np.ndarray:
        """Stop posting, let the GUI thread handle what is queued, return every measured delay (s)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        QtCore.QCoreApplication.processEvents()
        return np.asarray(self._receiver.delays, dtype=np.float64)

    @property
    def delays(self) -> np.ndarray:
        return np.asarray(self._receiver.delays, dtype=np.float64)
