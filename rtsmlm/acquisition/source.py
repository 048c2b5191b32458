"""The ``Source`` protocol every frame source implements, its optional capabilities, and :class:`Frame`.

:class:`~rtsmlm.core.camera.CameraModel` and :class:`~rtsmlm.core.errors.SourceError` are re-exported here for
sources."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, runtime_checkable

import numpy as np

from rtsmlm.core.camera import CameraModel
from rtsmlm.core.errors import SourceError

__all__ = ["CameraModel", "Control", "Frame", "PublishesTruth", "ReportsCameraLosses", "Source", "SourceError",
           "TruthRecord"]


@dataclass(frozen=True)
class Frame:
    """One camera frame: 0-based index, arrival time (``time.perf_counter()`` seconds) and pixels."""

    index: int
    timestamp: float
    data: np.ndarray


@runtime_checkable
class Control(Protocol):
    """Device properties of a source (lasers, stages) for feedback plugins."""

    def set_property(self, device: str, prop: str, value: Any) -> None:
        """Set ``device.prop``; takes effect on frames acquired after the call returns."""

    def get_property(self, device: str, prop: str) -> Any:
        """Read ``device.prop`` back from the device."""


@runtime_checkable
class Source(Protocol):
    """A camera or a recording that delivers frames in order.

    The pipeline calls :meth:`start` once, then iterates :meth:`frames` from its producer thread until
    it ends or :meth:`stop` is called from another thread; :meth:`close` releases the device or file.
    """

    @property
    def shape(self) -> tuple[int, int]:
        """Frame height and width in pixels; known before :meth:`start`."""

    @property
    def dtype(self) -> np.dtype:
        """Pixel type of the delivered frames (uint16 for cameras)."""

    @property
    def camera(self) -> CameraModel:
        """Pixel size and the ADU → photon conversion of these frames."""

    @property
    def n_frames(self) -> int | None:
        """Total frames when known in advance (a file), else None (a live camera)."""

    @property
    def control(self) -> Control | None:
        """Handle to device properties, or None where the source has none (a file)."""

    def start(self) -> None:
        """Begin acquisition or replay. Called once, before :meth:`frames`."""

    def frames(self) -> Iterator[Frame]:
        """Yield frames in order, blocking until each is available; ends at end of source or stop."""

    def stop(self) -> None:
        """Ask :meth:`frames` to end soon; safe to call from any thread, more than once."""

    def close(self) -> None:
        """Release the device or file. Called once after the last frame was consumed."""


# --------------------------------------------------------------------------------------------------
# Optional capabilities: a source declares one by implementing it; the engine asks with isinstance.


@dataclass(frozen=True)
class TruthRecord:
    """The ground truth of one frame a simulated source delivered: its emitters (fields frame, x, y, z,
    photons; nm) and the sample's true displacement (dx, dy nm, and dz when the drift moves z) at that
    frame, None without drift."""

    frame: int
    emitters: np.ndarray
    drift_nm: tuple[float, ...] | None = None


@runtime_checkable
class PublishesTruth(Protocol):
    """A source that knows the truth of its frames (the simulator)."""

    def set_truth_sink(self, sink: Callable[[TruthRecord], None]) -> None:
        """Called once before :meth:`Source.start`: ``sink`` takes each frame's truth, called from the
        producer thread before the frame is delivered (it only queues: microseconds)."""


@runtime_checkable
class ReportsCameraLosses(Protocol):
    """A source whose device can drop frames before rtsmlm sees them (Micro-Manager's circular buffer)."""

    @property
    def lost_frames(self) -> int:
        """Frames the device dropped so far."""


@runtime_checkable
class DescribesDevice(Protocol):
    """A source with device details and counters worth keeping in the run summary."""

    def describe(self) -> dict[str, Any]:
        """The device: name, model, settings (JSON types)."""

    def stats(self) -> dict[str, Any]:
        """Counters of the device (frames read, dropped, buffer use) at the end of the run."""
