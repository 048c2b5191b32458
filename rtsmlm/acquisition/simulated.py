"""The simulated camera: the physics simulator behind the ``Source`` protocol.

It is the embedded default source. Frames are paced at the configured exposure (``realtime``) or
delivered as fast as they are simulated. Its ``control`` exposes the activation laser, so feedback
plugins close the loop exactly as on a microscope: device ``ActivationLaser``, property ``Power``
(relative activation power; 1 = the power that gives ``sim.density``).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterator

import numpy as np

from rtsmlm.acquisition.source import CameraModel, Frame, SourceError, TruthRecord
from rtsmlm.core.config import Config
from rtsmlm.sim import Simulator

LASER_DEVICE = "ActivationLaser"
LASER_PROPERTY = "Power"

class SimulatorControl:
    """Device properties of the simulated microscope."""

    def __init__(self, sim: Simulator) -> None:
        self._sim = sim

    def set_property(self, device: str, prop: str, value: Any) -> None:
        if (device, prop) != (LASER_DEVICE, LASER_PROPERTY):
            raise SourceError(f"the simulated microscope has no property {device}.{prop}; "
                              f"it has {LASER_DEVICE}.{LASER_PROPERTY}")
        try:
            power = float(value)
        except (TypeError, ValueError):
            raise SourceError(f"{device}.{prop} must be a power ≥ 0, got {value!r}") from None
        if not power >= 0.0:
            raise SourceError(f"{device}.{prop} must be a power ≥ 0, got {value!r}")
        self._sim.activation_power = power

    def get_property(self, device: str, prop: str) -> Any:
        if (device, prop) != (LASER_DEVICE, LASER_PROPERTY):
            raise SourceError(f"the simulated microscope has no property {device}.{prop}; "
                              f"it has {LASER_DEVICE}.{LASER_PROPERTY}")
        return self._sim.activation_power


class SimulatedCamera:
    """A camera that images the simulated sample.

    It publishes its ground truth (:class:`~rtsmlm.acquisition.source.PublishesTruth`): the emitters and
    the sample's true drift of every frame, before the frame is delivered, so a run can write the ground
    truth of exactly the frames it acquired.
    """

    def __init__(self, cfg: Config, *, realtime: bool = False, max_frames: int | None = None,
                 seed: int | None = None) -> None:
        self.sim = Simulator(cfg, seed=seed)
        self._realtime = realtime
        self._period = cfg.camera.exposure_ms / 1000.0
        self._max_frames = max_frames if max_frames else None
        self._truth_sink: Callable[[TruthRecord], None] | None = None
        self._drift = cfg.sim.drift.enabled
        self._stop = threading.Event()
        self._control = SimulatorControl(self.sim)
        self._camera = self.sim.camera

    @property
    def shape(self) -> tuple[int, int]:
        return self.sim.shape

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint16)

    @property
    def camera(self) -> CameraModel:
        return self._camera

    @property
    def n_frames(self) -> int | None:
        return self._max_frames

    @property
    def control(self) -> SimulatorControl:
        return self._control

    def set_truth_sink(self, sink: Callable[[TruthRecord], None]) -> None:
        self._truth_sink = sink

    def start(self) -> None:
        self._stop.clear()

    def frames(self) -> Iterator[Frame]:
        t0 = time.perf_counter()
        i = 0
        while not self._stop.is_set() and (self._max_frames is None or i < self._max_frames):
            data, truth = self.sim.step()
            if self._realtime:
                # Sleep to the exposure schedule (not per frame), so pacing error does not accumulate.
                delay = t0 + (i + 1) * self._period - time.perf_counter()
                if delay > 0 and self._stop.wait(delay):
                    break
            if self._truth_sink is not None:
                drift = None
                if self._drift:
                    dx, dy = self.sim.drift.at(i)
                    drift = (float(dx), float(dy), *((float(self.sim.drift.at_z(i)),) if self.sim.drift.has_z else ()))
                self._truth_sink(TruthRecord(i, truth, drift))
            yield Frame(i, time.perf_counter(), data)
            i += 1

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
