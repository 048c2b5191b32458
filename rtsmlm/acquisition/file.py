"""Replay a recorded movie as if it came from a camera: the file source.

Frames are read from any format :func:`rtsmlm.io.movies.open_movie` opens and delivered in order, either
as fast as the consumer takes them (``fps=0``) or paced to a fixed frame rate. Pacing follows an absolute
schedule (frame k is due ``k / fps`` seconds after the first), so the time spent reading and consuming
frames does not add up into drift; a consumer that falls behind gets the overdue frames at once, as from
a camera's buffer.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from rtsmlm.acquisition.source import CameraModel, Control, Frame, SourceError
from rtsmlm.io.movies import MovieReader, open_movie

__all__ = ["FileSource", "camera_from_metadata", "FrameSchedule"]

# CameraModel fields a movie's metadata may set (the per-pixel maps are not stored in movie metadata).
_CAMERA_SCALARS = ("model", "pixel_size_nm", "baseline_adu", "e_per_adu", "em_gain", "qe",
                   "read_noise_e", "exposure_ms")


def camera_from_metadata(metadata: dict[str, Any], pixel_size_nm: float | None, base: CameraModel,
                         where: str = "movie") -> tuple[CameraModel, tuple[str, ...]]:
    """``base`` with the camera settings a movie records, and the names of the fields the file set.

    Settings are the :class:`CameraModel` field names at the top level of ``metadata`` (what
    ``CameraModel.describe()`` produces, so a recorded run replays with its own camera) or inside a
    ``"camera"`` table; ``pixel_size_nm`` is the file's calibration. A value of the wrong type raises
    :class:`SourceError` naming ``where`` and the key.
    """
    found: dict[str, Any] = {}
    nested = metadata.get("camera")
    for table in (nested if isinstance(nested, dict) else {}, metadata):
        for key in _CAMERA_SCALARS:
            if key in table and key not in found:
                found[key] = table[key]
    if pixel_size_nm is not None:
        found["pixel_size_nm"] = pixel_size_nm
    updates: dict[str, Any] = {}
    for key, value in found.items():
        if key == "model":
            if value not in ("emccd", "scmos"):
                raise SourceError(f"{where}: camera 'model' must be 'emccd' or 'scmos', got {value!r}")
            updates[key] = value
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            raise SourceError(f"{where}: camera '{key}' must be a number, got {value!r}")
        updates[key] = float(value)
    return dataclasses.replace(base, **updates), tuple(sorted(updates))


class FrameSchedule:
    """When frame k is due at ``fps`` frames per second, counted from :meth:`begin`.

    ``wait_until_due`` sleeps until the absolute due time of frame k (never earlier), waking early only
    when ``stop`` is set. ``clock`` and ``wait`` are ``time.perf_counter`` and ``stop.wait``; they are
    parameters so the schedule can be checked against a clock under the caller's control.
    """

    def __init__(self, fps: float, stop: threading.Event,
                 clock: Callable[[], float] = time.perf_counter,
                 wait: Callable[[float], bool] | None = None) -> None:
        if not fps > 0:
            raise ValueError(f"fps must be > 0 for a schedule, got {fps}")
        self.period = 1.0 / fps
        self._clock = clock
        self._wait = wait if wait is not None else stop.wait
        self._stop = stop
        self.t0 = 0.0

    def begin(self) -> None:
        """Start the schedule now: frame 0 is due immediately."""
        self.t0 = self._clock()

    def due(self, k: int) -> float:
        """Clock time frame ``k`` is due (multiplied out, not summed, so rounding does not accumulate)."""
        return self.t0 + k * self.period

    def wait_until_due(self, k: int) -> bool:
        """Block until frame ``k`` is due; False when ``stop`` was set first."""
        due = self.due(k)
        while True:
            if self._stop.is_set():
                return False
            remaining = due - self._clock()
            if remaining <= 0:
                return True
            if self._wait(remaining):  # Event.wait returns True as soon as stop is set
                return False


class FileSource:
    """A movie file replayed as a camera (implements :class:`rtsmlm.acquisition.source.Source`).

    ``fps`` paces the replay (0 = as fast as the consumer takes frames); ``max_frames`` > 0 ends the
    replay after that many frames; ``loop`` replays the movie from the start when it ends (frame indices
    keep counting up). The camera model comes from the file's metadata and pixel size where it records
    them, field by field, and from ``camera`` (or the defaults) for the rest; ``camera_from_file`` lists
    the fields the file set. There are no device properties (``control`` is None).
    """

    def __init__(self, path: str | os.PathLike[str], fps: float = 0.0, max_frames: int = 0,
                 camera: CameraModel | None = None, loop: bool = False) -> None:
        if not (fps >= 0 and np.isfinite(fps)):
            raise ValueError(f"{path}: fps must be >= 0 (0 = as fast as possible), got {fps}")
        if max_frames < 0:
            raise ValueError(f"{path}: max_frames must be >= 0 (0 = the whole movie), got {max_frames}")
        self.movie: MovieReader = open_movie(path)
        self.path = self.movie.path
        self.fps = float(fps)
        self.max_frames = int(max_frames)
        self.loop = bool(loop)
        try:
            self._camera, self.camera_from_file = camera_from_metadata(
                self.movie.metadata, self.movie.pixel_size_nm, camera or CameraModel(), str(self.path))
        except SourceError:
            self.movie.close()
            raise
        self._stop = threading.Event()
        self._started = False
        self._closed = False
        self.frames_delivered = 0

    @property
    def shape(self) -> tuple[int, int]:
        return self.movie.shape

    @property
    def dtype(self) -> np.dtype:
        return self.movie.dtype

    @property
    def camera(self) -> CameraModel:
        return self._camera

    @property
    def n_frames(self) -> int | None:
        n = self.movie.n_frames
        if self.loop and n > 0:
            return self.max_frames if self.max_frames else None
        return min(n, self.max_frames) if self.max_frames else n

    @property
    def control(self) -> Control | None:
        return None

    def start(self) -> None:
        """Get ready to replay; called once before :meth:`frames`."""
        if self._closed:
            raise SourceError(f"{self.path}: the file source is closed")
        self._started = True

    def frames(self) -> Iterator[Frame]:
        """Yield the frames in order until the end (of the movie or ``max_frames``) or :meth:`stop`."""
        if not self._started:
            raise RuntimeError(f"{self.path}: call start() before frames()")
        total = self.n_frames
        n_movie = self.movie.n_frames
        if n_movie == 0:
            return
        schedule = FrameSchedule(self.fps, self._stop) if self.fps > 0 else None
        if schedule is not None:
            schedule.begin()
        k = 0
        while total is None or k < total:
            if schedule is not None:
                if not schedule.wait_until_due(k):
                    return
            elif self._stop.is_set():
                return
            data = self.movie.read(k % n_movie)
            self.frames_delivered = k + 1
            yield Frame(index=k, timestamp=time.perf_counter(), data=data)
            k += 1

    def stop(self) -> None:
        """End :meth:`frames` before its next frame (from any thread; idempotent)."""
        self._stop.set()

    def close(self) -> None:
        """Close the movie file (idempotent)."""
        if not self._closed:
            self._closed = True
            self._stop.set()
            self.movie.close()

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"FileSource({str(self.path)!r}, fps={self.fps}, max_frames={self.max_frames}, "
                f"loop={self.loop}, n_frames={self.n_frames})")
