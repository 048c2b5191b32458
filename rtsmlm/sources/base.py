"""The ``Source`` protocol every frame source implements, and the camera model it reports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Protocol, runtime_checkable

import numpy as np


class SourceError(RuntimeError):
    """A source cannot be opened or read; the message names the file or device and what is wrong."""


@dataclass(frozen=True)
class CameraModel:
    """How camera counts (ADU) relate to photons: what the localizer needs to scale its input.

    photo-electrons = (ADU - baseline) * e_per_adu / em_gain; photons = photo-electrons / qe.
    ``offset_map``/``gain_map``/``variance_map`` are per-pixel sCMOS maps when known (else None).
    """

    model: str = "emccd"  # "emccd" | "scmos"
    pixel_size_nm: float = 100.0
    baseline_adu: float = 100.0
    e_per_adu: float = 45.0
    em_gain: float = 100.0
    qe: float = 1.0
    read_noise_e: float = 74.4
    exposure_ms: float = 10.0
    offset_map: np.ndarray | None = None
    gain_map: np.ndarray | None = None
    variance_map: np.ndarray | None = None

    @classmethod
    def from_config(cls, camera) -> "CameraModel":
        """The camera a :class:`rtsmlm.config.CameraConfig` describes (no pixel maps; EM gain 1 for sCMOS).

        Used where the frames do not say: files without camera metadata, camera properties
        Micro-Manager does not report."""
        em_gain = camera.em_gain if camera.model == "emccd" else 1.0
        return cls(camera.model, camera.pixel_size_nm, camera.baseline_adu, camera.e_per_adu, em_gain,
                   camera.qe, camera.read_noise_e, camera.exposure_ms)

    def to_photons(self, adu: np.ndarray) -> np.ndarray:
        """Convert raw counts to photons (float32), pixel maps included when present."""
        offset = self.offset_map if self.offset_map is not None else self.baseline_adu
        gain = self.gain_map if self.gain_map is not None else self.e_per_adu
        scale = np.asarray(gain, dtype=np.float32) / np.float32(self.em_gain * self.qe)
        return (adu.astype(np.float32) - np.asarray(offset, dtype=np.float32)) * scale

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary (maps reduced to their means)."""
        d = {k: getattr(self, k) for k in ("model", "pixel_size_nm", "baseline_adu", "e_per_adu",
                                           "em_gain", "qe", "read_noise_e", "exposure_ms")}
        d["has_pixel_maps"] = self.offset_map is not None
        return d


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
