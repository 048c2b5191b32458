"""Activation-laser feedback: keep the number of localizations per frame at a target.

As the emitter pool bleaches, fewer molecules are left to switch on and the density of localizations
falls; raising the activation (e.g. 405 nm) power compensates. This plugin closes that loop on the live
localization stream::

    [plugins.activation_feedback]
    target_locs_per_frame = 30
    device = "ActivationLaser"   # the device property driven: the simulated microscope's names;
    property = "Power"           # on a rig, the Micro-Manager device and property of the 405 nm laser
    min_power = 0.01             # in the property's own units; must be > 0 (control is on log power)
    max_power = 100.0
    # initial_power = 1.0        # default: read the property when the run starts

Control law — PI on log(power), in incremental ("velocity") form, clocked by acquisition time
(frames × exposure), updated every ``update_interval_s``:

* measurement m: localizations per analysed frame, exponentially smoothed with time constant
  ``smoothing_s`` (bias-corrected, so it is the plain mean until that much data exists). Frames the
  localizer dropped are skipped, not read as empty.
* error e = log(target) − log(m): density responds in proportion to activation power, so in logs the
  plant has unit gain at any operating point and one set of gains fits every pool size and target.
* Δu = kp·(e − e_prev) + ki·Δt·e, with u = log(power). The actuator position is the integrator, so
  clamping u to [log min_power, log max_power] is the anti-windup: the loop leaves a limit as soon as the
  error changes sign instead of first unwinding a hidden integral.
* Rate limit: |Δu| ≤ log(max_factor_per_s)·Δt — the power changes by at most that factor per second.

With the default measurement lag (1.5 s) the gains kp = 0.5, ki = 0.35 /s put the closed-loop poles
near critical damping (τ·s² + (1 + kp)·s + ki = 0), so a 5× wrong start settles in ~10 s without
overshoot worth mentioning.

Every set-point written to the device is logged to ``<output_dir>/<log_file>`` (CSV: frame, time_s,
power, measured, target) with the last analysed frame it was decided on; the summary of the run gets
the same figures via :meth:`ActivationFeedback.report`.

Prior art: htSMLM (Micro-Manager, EMU) updates the activation pulse with a multiplicative step,
``p ← p·(1 + f·(1 − N/N₀))``, from the count N of a single frame pair; see
``benchmarks/bench_feedback.py`` for the comparison on the simulator.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from rtsmlm.core.locs import LocBatch
from rtsmlm.engine.listener import Listener, RunEnd, RunStart

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeedbackSettings:
    """The plugin's ``[plugins.NAME]`` table, validated."""

    target_locs_per_frame: float
    device: str = "ActivationLaser"
    property: str = "Power"
    min_power: float = 0.01
    max_power: float = 100.0
    initial_power: float | None = None
    smoothing_s: float = 1.5
    kp: float = 0.5
    ki_per_s: float = 0.35
    max_factor_per_s: float = 2.0
    update_interval_s: float = 0.25
    measurement_floor: float = 0.01  # fraction of the target an empty measurement is read as
    log_file: str = "activation_feedback.csv"

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> "FeedbackSettings":
        """Validate a config table; errors name the key and the value."""
        known = {f.name: f for f in fields(cls)}
        unknown = [k for k in table if k not in known]
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r}; allowed keys: {', '.join(known)}")
        if "target_locs_per_frame" not in table:
            raise ValueError("'target_locs_per_frame' is required (localizations per frame to hold)")
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key in ("device", "property", "log_file"):
                if not isinstance(value, str) or not value:
                    raise ValueError(f"'{key}' must be a non-empty string, got {value!r}")
            elif value is None and key == "initial_power":
                pass
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"'{key}' must be a finite number, got {value!r}")
            else:
                value = float(value)
            values[key] = value
        s = cls(**values)
        positive = ("target_locs_per_frame", "min_power", "smoothing_s", "update_interval_s",
                    "measurement_floor")
        for key in positive:
            if getattr(s, key) <= 0:
                raise ValueError(f"'{key}' must be > 0, got {getattr(s, key)!r}")
        if s.max_power <= s.min_power:
            raise ValueError(f"'max_power' ({s.max_power:g}) must be above 'min_power' ({s.min_power:g})")
        if s.kp < 0 or s.ki_per_s < 0:
            raise ValueError(f"gains must be >= 0, got kp={s.kp:g}, ki_per_s={s.ki_per_s:g}")
        if s.max_factor_per_s <= 1:
            raise ValueError(f"'max_factor_per_s' must be > 1 (a factor per second), got {s.max_factor_per_s!r}")
        if s.initial_power is not None and s.initial_power <= 0:
            raise ValueError(f"'initial_power' must be > 0, got {s.initial_power!r}")
        return s


@dataclass(frozen=True)
class SetPoint:
    """One decision of the controller."""

    frame: int  # last analysed frame the decision is based on (0-based)
    time_s: float  # acquisition time at the end of that frame
    power: float  # the new set-point
    measured: float  # smoothed localizations per frame
    target: float
    saturated: bool  # clamped at min_power or max_power


class ActivationController:
    """The control law alone: feed it localization counts per frame range, get set-points back.

    Pure and synchronous (no device, no files), so it can be driven by a test plant or a simulator.
    """

    def __init__(self, settings: FeedbackSettings, frame_period_s: float, initial_power: float) -> None:
        if frame_period_s <= 0:
            raise ValueError(f"frame period must be > 0 s, got {frame_period_s!r}")
        self.s = settings
        self.dt = float(frame_period_s)
        self._u_min = math.log(settings.min_power)
        self._u_max = math.log(settings.max_power)
        self.u = min(max(math.log(initial_power), self._u_min), self._u_max)
        self._decay_per_frame = math.exp(-self.dt / settings.smoothing_s)
        self._ema = 0.0  # exponentially weighted sum of per-frame densities…
        self._weight = 0.0  # …and of their weights (bias correction while the filter fills)
        self._next_frame: int | None = None  # first frame not yet counted
        self._t_last_update: float | None = None
        self._e_prev: float | None = None
        self.frames_seen = 0

    @property
    def power(self) -> float:
        return math.exp(self.u)

    @property
    def measured(self) -> float | None:
        """Smoothed localizations per frame (None before the first frame)."""
        return self._ema / self._weight if self._weight > 0 else None

    def add(self, first_frame: int, last_frame: int, n_locs: int) -> SetPoint | None:
        """Count ``n_locs`` localizations found in frames ``first_frame..last_frame`` (inclusive);
        return a new set-point when one is due, else None."""
        n_frames = last_frame - first_frame + 1
        if n_frames <= 0:
            return None
        if self._next_frame is not None and first_frame < self._next_frame:
            log.warning("frames %d..%d arrived twice or out of order; ignored", first_frame, last_frame)
            return None
        # The batch's mean density stands for each of its frames (batches are a few frames long).
        decay = self._decay_per_frame ** n_frames
        self._ema = self._ema * decay + (1.0 - decay) * (n_locs / n_frames)
        self._weight = self._weight * decay + (1.0 - decay)
        self._next_frame = last_frame + 1
        self.frames_seen += n_frames
        t = (last_frame + 1) * self.dt
        if self._t_last_update is None:
            self._t_last_update = (first_frame) * self.dt
        if t - self._t_last_update < self.s.update_interval_s - 1e-12:
            return None
        return self._update(last_frame, t)

    def _update(self, frame: int, t: float) -> SetPoint:
        s = self.s
        elapsed = t - (self._t_last_update if self._t_last_update is not None else t)
        self._t_last_update = t
        m = self.measured or 0.0
        e = math.log(s.target_locs_per_frame) - math.log(max(m, s.measurement_floor * s.target_locs_per_frame))
        du = s.ki_per_s * elapsed * e
        if self._e_prev is not None:
            du += s.kp * (e - self._e_prev)
        self._e_prev = e
        limit = math.log(s.max_factor_per_s) * elapsed
        du = min(max(du, -limit), limit)
        u = self.u + du
        saturated = u <= self._u_min or u >= self._u_max
        self.u = min(max(u, self._u_min), self._u_max)
        return SetPoint(frame, t, self.power, m, s.target_locs_per_frame, saturated)


class ActivationFeedback(Listener):
    """The plugin: drives ``device.property`` from the live localization stream (a
    :class:`~rtsmlm.engine.listener.Listener` with three hooks)."""

    name = "activation_feedback"

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.settings = FeedbackSettings.from_table(config)
        self.controller: ActivationController | None = None
        self.control: Any = None
        self.set_points: list[SetPoint] = []
        self._log_path: Path | None = None
        self._log_fh: Any = None
        self._log: Any = None
        self._last_written: float | None = None
        self._was_saturated = False

    def on_run_start(self, run: RunStart) -> None:
        s = self.settings
        if run.control is None:
            raise RuntimeError("this source has no device control (file replay?); activation feedback "
                               "cannot act and is switched off")
        self.control = run.control
        power = s.initial_power
        if power is None:
            current = self.control.get_property(s.device, s.property)
            try:
                power = float(current)
            except (TypeError, ValueError):
                raise RuntimeError(f"{s.device}.{s.property} reads {current!r}, not a number; set "
                                   f"initial_power in the plugin table") from None
            if power <= 0:
                power = s.min_power  # a laser that is off starts from the bottom of the range
        self.controller = ActivationController(s, run.exposure_ms / 1000.0, power)
        if run.output_dir is not None:
            self._log_path = Path(run.output_dir) / s.log_file
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_fh = self._log_path.open("w", newline="", encoding="utf-8")
            self._log = csv.writer(self._log_fh)
            self._log.writerow(["frame", "time_s", "power", "measured", "target"])
        # Start from a value inside the limits, and log it as the first set-point (frame -1 = before
        # the first frame).
        self._apply(SetPoint(-1, 0.0, self.controller.power, float("nan"), s.target_locs_per_frame,
                             False))

    def on_batch(self, batch: LocBatch) -> None:
        if self.controller is None or batch.late:
            return  # late: frames caught up after the acquisition, nothing left to act on
        sp = self.controller.add(batch.first_frame, batch.last_frame, len(batch.locs))
        if sp is not None and (self._last_written is None
                               or abs(sp.power / self._last_written - 1.0) > 1e-3):
            self._apply(sp)

    def on_run_end(self, end: RunEnd) -> None:
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def report(self) -> dict[str, Any]:
        """Figures for the run summary."""
        c = self.controller
        return {"target_locs_per_frame": self.settings.target_locs_per_frame,
                "set_points": len(self.set_points), "power": c.power if c else None,
                "measured_locs_per_frame": c.measured if c else None,
                "saturated": bool(self.set_points and self.set_points[-1].saturated),
                "log": str(self._log_path) if self._log_path else None}

    def _apply(self, sp: SetPoint) -> None:
        s = self.settings
        self.control.set_property(s.device, s.property, sp.power)
        self._last_written = sp.power
        self.set_points.append(sp)
        if self._log is not None:
            self._log.writerow([sp.frame, f"{sp.time_s:.6g}", f"{sp.power:.6g}", f"{sp.measured:.6g}",
                                f"{sp.target:g}"])
            self._log_fh.flush()  # a crash must not lose the record of what the laser did
        if sp.saturated and not self._was_saturated:
            log.info("activation power at its %s limit (%.4g) with %.3g locs/frame for target %g",
                     "upper" if sp.power >= s.max_power * (1 - 1e-9) else "lower", sp.power, sp.measured,
                     sp.target)
        self._was_saturated = sp.saturated


PLUGIN = ActivationFeedback
