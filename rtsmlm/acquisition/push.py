"""Frames handed over by the user's own acquisition script (``source.kind = "push"``).

The script's thread calls :meth:`PushSource.push` for every image (from a pycromanager
``image_process_fn``, a pymmcore-plus ``frameReady`` handler, a loop over ``popNextImage``); the run's
producer thread takes them from a bounded hand-off queue into the ring. ``push`` never blocks and never
raises for a full queue: a frame the engine cannot take is dropped and counted (``lost_frames``, in the
summary as camera losses), so the acquisition never waits for the analysis.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator

import numpy as np

from rtsmlm.acquisition.source import CameraModel, Control, Frame, SourceError

__all__ = ["PushSource"]


class PushSource:
    """A :class:`~rtsmlm.acquisition.source.Source` fed by :meth:`push` (any thread, never blocking).

    ``capacity`` frames wait between the script and the run at most (more are dropped and counted);
    :meth:`end` (or :meth:`stop`) ends the run once the queued frames are delivered.
    """

    def __init__(self, shape: tuple[int, int], dtype: np.dtype | type = np.uint16, camera: CameraModel | None = None,
                 *, capacity: int = 1024, control: Control | None = None) -> None:
        self._shape = (int(shape[0]), int(shape[1]))
        self._dtype = np.dtype(dtype)
        self._camera = camera or CameraModel()
        self._control = control
        self._queue: deque[tuple[np.ndarray, float]] = deque()
        self._capacity = int(capacity)
        self._ready = threading.Condition()
        self._ended = False
        self._stopped = False
        self.frames_pushed = 0
        self.lost_frames = 0  # dropped at push: the queue was full (ReportsCameraLosses)
        self.frames_delivered = 0
        self._index = 0

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def camera(self) -> CameraModel:
        return self._camera

    @property
    def n_frames(self) -> int | None:
        return None

    @property
    def control(self) -> Control | None:
        return self._control

    def push(self, image: np.ndarray) -> bool:
        """Hand over one image (copied); False when it was dropped (queue full, or the run has ended)."""
        image = np.asarray(image)
        if image.shape != self._shape:
            raise SourceError(f"pushed image has shape {image.shape}, but this run analyses {self._shape[0]}x"
                              f"{self._shape[1]} frames (start a new run for another ROI/binning)")
        with self._ready:
            self.frames_pushed += 1
            if self._ended or self._stopped or len(self._queue) >= self._capacity:
                self.lost_frames += 1
                return False
            self._queue.append((np.array(image, dtype=self._dtype), time.perf_counter()))
            self._ready.notify()
        return True

    def end(self) -> None:
        """No more frames: the run ends after the queued ones."""
        with self._ready:
            self._ended = True
            self._ready.notify_all()

    def start(self) -> None:
        pass

    def frames(self) -> Iterator[Frame]:
        while True:
            with self._ready:
                while not self._queue and not self._ended and not self._stopped:
                    self._ready.wait(0.1)
                if self._stopped or (self._ended and not self._queue):
                    return
                data, t = self._queue.popleft()
            yield Frame(index=self._index, timestamp=t, data=data)
            self._index += 1
            self.frames_delivered = self._index

    def stop(self) -> None:
        with self._ready:
            self._stopped = True
            self._ready.notify_all()

    def close(self) -> None:
        self.stop()

    def describe(self) -> dict[str, object]:
        return {"kind": "push", "capacity": self._capacity}

    def stats(self) -> dict[str, object]:
        return {"frames_pushed": self.frames_pushed, "frames_dropped_at_push": self.lost_frames,
                "frames_delivered": self.frames_delivered}
