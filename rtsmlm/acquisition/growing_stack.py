"""A Micro-Manager stack that is still being written, analysed as it grows (``source.kind = "watch"``).

Micro-Manager's own multi-dimensional acquisition writes the movie; this source follows the files
(:class:`rtsmlm.io.mm_tiff.MMStackFollower`), delivers each frame once it is wholly on disk, and ends
when Micro-Manager closes the last file (its closing metadata) or when nothing was added for
``idle_timeout_s`` (an acquisition stopped without closing, a crashed Micro-Manager). The frames are on
disk already: the run may make this source wait (backpressure) and records no raw copy.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from rtsmlm.acquisition.source import CameraModel, Control, Frame, SourceError
from rtsmlm.io.mm_tiff import MMStackFollower

__all__ = ["GrowingStackSource"]

log = logging.getLogger("rtsmlm.acquisition.growing_stack")


class GrowingStackSource:
    """Frames of a growing Micro-Manager stack (implements :class:`rtsmlm.acquisition.source.Source`).

    The constructor waits (up to ``idle_timeout_s``) for the file's header and first frame, which give
    the frame size and type. ``camera``: the config's camera; the stack's pixel size replaces its own.
    """

    def __init__(self, first: str | Path, camera: CameraModel | None = None, *, idle_timeout_s: float = 10.0,
                 poll_interval_s: float = 0.01, max_frames: int = 0) -> None:
        self.path = Path(first)
        self.idle_timeout_s = float(idle_timeout_s)
        self.poll_interval_s = float(poll_interval_s)
        self.max_frames = int(max_frames)
        self.follower = MMStackFollower(self.path)
        self._stop = threading.Event()
        self._pending: list[np.ndarray] = []
        deadline = time.monotonic() + self.idle_timeout_s
        while self.follower.shape is None:
            self._pending += self.follower.poll(1)
            if self.follower.shape is not None:
                break
            if self.follower.finished:
                raise SourceError(f"{self.path}: the acquisition ended without a frame")
            if time.monotonic() > deadline:
                raise SourceError(f"{self.path}: no complete frame after {self.idle_timeout_s:g} s (not a "
                                  "Micro-Manager stack being written?)")
            time.sleep(self.poll_interval_s)
        base = camera or CameraModel()
        if self.follower.pixel_size_nm:
            from dataclasses import replace

            base = replace(base, pixel_size_nm=self.follower.pixel_size_nm)
        self._camera = base
        self.frames_delivered = 0
        self.ended_by = ""  # "closed" (Micro-Manager closed the stack), "idle", "stopped", "max_frames"

    @property
    def shape(self) -> tuple[int, int]:
        assert self.follower.shape is not None
        return self.follower.shape

    @property
    def dtype(self) -> np.dtype:
        assert self.follower.dtype is not None
        return self.follower.dtype

    @property
    def camera(self) -> CameraModel:
        return self._camera

    @property
    def n_frames(self) -> int | None:
        planned = self.follower.planned_frames
        if self.max_frames:
            return min(self.max_frames, planned) if planned else None
        return planned

    @property
    def control(self) -> Control | None:
        return None

    def start(self) -> None:
        pass

    def frames(self) -> Iterator[Frame]:
        last_growth = time.monotonic()
        k = 0
        while not self._stop.is_set():
            new = self._pending + self.follower.poll()
            self._pending = []
            if new:
                last_growth = time.monotonic()
            for data in new:
                yield Frame(index=k, timestamp=time.perf_counter(), data=data)
                k += 1
                self.frames_delivered = k
                if self.max_frames and k >= self.max_frames:
                    self.ended_by = "max_frames"
                    return
            if self.follower.finished:
                self.ended_by = "closed"
                return
            if not new:
                if time.monotonic() - last_growth > self.idle_timeout_s:
                    log.warning("%s: no new frame for %.1f s: taking the acquisition as ended (%d frames)",
                                self.path, self.idle_timeout_s, k)
                    self.ended_by = "idle"
                    return
                self._stop.wait(self.poll_interval_s)
        self.ended_by = "stopped"

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        self.follower.close()

    def describe(self) -> dict[str, object]:
        return {"kind": "micro-manager stack", "path": str(self.path), "summary": self.follower.summary}

    def stats(self) -> dict[str, object]:
        return {"frames_read": self.follower.frames_read, "ended_by": self.ended_by}
