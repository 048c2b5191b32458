"""What the live view shows, prepared off the GUI thread (no Qt in this module).

pyqtgraph is fast when it is handed small ``uint8`` images with fixed levels and a 256-entry lookup
table, and slow when it has to scan a large float image for its levels (~40 ms per update for a
2048×2048 float32 image). So a :class:`DisplayWorker` thread does the expensive part: it takes the
newest camera frame from the ring, the newest render snapshot and the pipeline's stats history, pools
large images down, computes percentile levels, maps to ``uint8`` and publishes one immutable
:class:`LiveView`. The GUI thread only swaps the latest ``LiveView`` into its widgets.

Everything here is plain numpy and threads, so it can be driven synchronously in a test
(:meth:`DisplayWorker.prepare`).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rtsmlm.analysis.render import colour_by_depth, percentile_levels, pool, to_uint8
from rtsmlm.engine.view import RunView

__all__ = [
    "CameraView",
    "DisplayWorker",
    "LiveView",
    "SRView",
    "TimeSeries",
    "format_length",
    "nice_ceil",
    "nice_length",
    "percentile_levels",
    "pool",
    "series_from_stats",
    "to_uint8",
]

DISPLAY_MAX_PX = 1024
"""Largest side of an image handed to pyqtgraph; larger images are pooled down by the worker."""



# --------------------------------------------------------------------------------------------------
# Image helpers


def nice_length(target_nm: float) -> float:
    """The largest 1-2-5 × 10^k length (nm) not above ``target_nm`` — a scale bar's length."""
    if not (math.isfinite(target_nm) and target_nm > 0):
        raise ValueError(f"scale bar target length must be a positive number of nm, got {target_nm!r}")
    decade = 10.0 ** math.floor(math.log10(target_nm))
    for step in (5.0, 2.0, 1.0):
        if step * decade <= target_nm * (1 + 1e-9):
            return step * decade
    return decade  # pragma: no cover — 1·decade <= target always holds


_CEIL_STEPS = (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)


def nice_ceil(value: float) -> float:
    """The smallest round number (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 × 10^k) ≥ ``value`` (1 for values ≤ 0
    or not finite): a plot's axis limit that changes only every ~20 % of growth, so pyqtgraph reuses its
    drawn axis between updates while the data still fill most of the plot."""
    if not (math.isfinite(value) and value > 0):
        return 1.0
    decade = 10.0 ** math.floor(math.log10(value))
    for step in _CEIL_STEPS:
        if step * decade >= value * (1 - 1e-9):
            return step * decade
    return 10.0 * decade  # pragma: no cover


def format_length(nm: float) -> str:
    """``"500 nm"``, ``"2 µm"``, ``"1.5 mm"`` — the label of a scale bar."""
    for unit, size in (("mm", 1e6), ("µm", 1e3)):
        if nm >= size:
            return f"{nm / size:g} {unit}"
    return f"{nm:g} nm"


# --------------------------------------------------------------------------------------------------
# What the GUI thread receives


@dataclass(frozen=True)
class CameraView:
    """The newest camera frame, mapped to uint8 with its own contrast."""

    index: int  # 0-based frame index
    image: np.ndarray  # uint8 (H', W'), pooled when the camera is large
    pixel_nm: float  # size of one pixel of ``image`` in nm (camera pixel × pooling factor)
    levels_adu: tuple[float, float]  # the raw ADU values mapped to 0 and 255


@dataclass(frozen=True)
class SRView:
    """The accumulated super-resolution image, mapped to uint8 at the requested percentile and coloured."""

    image: np.ndarray  # uint8 (H', W'): 0 = empty, 255 = at or above the white level
    rgb: np.ndarray  # uint8 (H', W', 3): ``image`` through the colour map's lookup table
    pixel_nm: float  # size of one pixel of ``image`` in nm
    render_pixel_nm: float  # the renderer's SR pixel size (before display pooling)
    n_locs: int
    percentile: float
    white_level: float  # the SR value shown as 255 (NaN when the renderer's own mapping is shown as is)
    snapshot: Any = field(repr=False, compare=False, default=None)  # the renderer's snapshot
    z_range_nm: tuple[float, float] | None = None  # 3D run: ``rgb`` is coloured by depth over this range


@dataclass(frozen=True)
class TimeSeries:
    """Per-stats-tick curves for the time plots (x = elapsed seconds), and the drift estimate."""

    elapsed_s: np.ndarray
    locs_per_frame: np.ndarray  # localizations per analysed frame in each interval (NaN: none analysed)
    camera_fps: np.ndarray
    localized_fps: np.ndarray
    ring_fill: dict[str, np.ndarray]  # reader name -> fraction 0..1
    frames_lost: dict[str, np.ndarray]  # reader name -> cumulative frames lost
    drift_frames: np.ndarray
    drift_dx: np.ndarray  # nm, the sample's displacement
    drift_dy: np.ndarray

    @classmethod
    def empty(cls) -> TimeSeries:
        e = np.empty(0)
        return cls(e, e, e, e, {}, {}, e, e, e)


@dataclass(frozen=True)
class LiveView:
    """Everything one GUI refresh needs; ``seq`` grows whenever any part changed."""

    seq: int
    camera: CameraView | None
    sr: SRView | None
    series: TimeSeries
    stats: dict[str, Any]  # the latest pipeline stats record ({} before the first tick)
    frc_nm: float | None
    sr_seq: int  # grows when ``sr`` changed (the GUI re-uploads the image only then)
    camera_seq: int
    series_seq: int


def series_from_stats(history: list[dict[str, Any]], drift: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> TimeSeries:
    """Turn the pipeline's stats records into plot curves.

    The stats record's own ``locs_per_frame`` is a whole-run average; the plot wants the current
    rate, so it is recomputed per interval from the cumulative counts.
    """
    if not history:
        base = TimeSeries.empty()
    else:
        t = np.array([s["elapsed_s"] for s in history], dtype=np.float64)
        n_locs = np.array([s["n_locs"] for s in history], dtype=np.float64)
        # Frames caught up from the recording after the live run add localizations too: count them as
        # analysed, or the last interval reads as hundreds of localizations per frame.
        n_frames = np.array([s["frames_localized"] + s.get("frames_caught_up", 0) for s in history],
                            dtype=np.float64)
        d_locs = np.diff(n_locs, prepend=0.0)
        d_frames = np.diff(n_frames, prepend=0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_frame = np.where(d_frames > 0, d_locs / d_frames, np.nan)
        readers = sorted({name for s in history for name in s.get("ring_fill", {})})
        fill = {r: np.array([s.get("ring_fill", {}).get(r, np.nan) for s in history]) for r in readers}
        lost = {r: np.array([s.get("frames_lost", {}).get(r, 0) for s in history], dtype=np.float64)
                for r in readers}
        base = TimeSeries(t, per_frame,
                          np.array([s.get("camera_fps", np.nan) for s in history], dtype=np.float64),
                          np.array([s.get("localized_fps", np.nan) for s in history], dtype=np.float64),
                          fill, lost, np.empty(0), np.empty(0), np.empty(0))
    if drift is None:
        return base
    frames, dx, dy = (np.asarray(a, dtype=np.float64) for a in drift)
    return TimeSeries(base.elapsed_s, base.locs_per_frame, base.camera_fps, base.localized_fps,
                      base.ring_fill, base.frames_lost, frames, dx, dy)


# --------------------------------------------------------------------------------------------------
# The worker


class DisplayWorker:
    """A thread that prepares :class:`LiveView` records from a running :class:`rtsmlm.engine.run.Run`.

    It never touches a Qt object. The GUI thread calls :meth:`latest` from its refresh timer and gets
    the newest complete record (or the same one again if nothing changed). Settings (:meth:`set_percentile`)
    may be changed from any thread; they apply at the next preparation.
    """

    def __init__(self, run: Any, *, refresh_hz: float = 20.0, percentile: float = 99.5,
                 camera_percentiles: tuple[float, float] = (0.5, 99.9),
                 max_px: int = DISPLAY_MAX_PX, camera_hz: float = 10.0, sr_hz: float = 5.0) -> None:
        """``run`` is an :class:`rtsmlm.engine.run.Run`; the worker reads it through ``run.view``
        (:class:`~rtsmlm.engine.view.RunView`) only.

        The worker prepares a new camera frame at most ``camera_hz`` times and a new SR image at most
        ``sr_hz`` times a second (neither faster than ``refresh_hz``): on a busy machine every millisecond of CPU
        the display takes is a millisecond the localizer may miss, and an SR image that grows slowly
        looks just as live at 5 updates/s."""
        self.run = run
        self.camera_interval_s = 1.0 / min(camera_hz, refresh_hz)
        self.sr_interval_s = 1.0 / min(sr_hz, refresh_hz)
        # No faster than there is something to prepare: each wake-up takes the GIL from the pipeline.
        self.interval_s = min(self.camera_interval_s, self.sr_interval_s)
        self._camera_t = -math.inf
        self._sr_t = -math.inf
        self._full = threading.Event()
        self.n_full = 0
        self.max_px = max_px
        self.camera_percentiles = camera_percentiles
        self._percentile = percentile
        self._z_range: tuple[float, float] | None = None  # the user's depth colour range; None = the run's
        self._lut = _gray_lut()
        self._lock = threading.Lock()
        self._latest: LiveView | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # What the last preparation used, to skip work when nothing changed.
        self._seq = 0
        self._camera: CameraView | None = None
        self._camera_seq = 0
        self._sr: SRView | None = None
        self._sr_key: tuple[Any, ...] | None = None
        self._sr_seq = 0
        self._series = TimeSeries.empty()
        self._series_key: tuple[int, int] | None = None
        self._series_seq = 0
        self.n_prepared = 0
        self.error: str | None = None

    # ---------------------------------------------------------------------------------- control

    def start(self) -> None:
        """Start the preparation thread (called once, by the window when it takes the run)."""
        self._thread = threading.Thread(target=self._loop, name="rtsmlm-display", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread; the last prepared view stays available."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def set_percentile(self, percentile: float) -> None:
        """Upper contrast percentile of the SR image (50..100)."""
        if not 50.0 <= percentile <= 100.0:
            raise ValueError(f"SR contrast percentile must be between 50 and 100, got {percentile!r}")
        with self._lock:
            self._percentile = float(percentile)

    @property
    def percentile(self) -> float:
        return self._percentile

    def set_z_range(self, z_range_nm: tuple[float, float] | None) -> None:
        """Depth colour range of a 3D run's SR image (nm, low to high): the colour map's ends, depths beyond
        take the end colours. None: the run's own (``psf.z_range_nm``, or the localizations' 1st-99th
        percentile)."""
        if z_range_nm is not None:
            lo, hi = (float(v) for v in z_range_nm)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"the depth colour range must be two finite depths, low < high; got {z_range_nm!r}")
            z_range_nm = (lo, hi)
        with self._lock:
            self._z_range = z_range_nm

    @property
    def z_range(self) -> tuple[float, float] | None:
        return self._z_range

    def set_lookup_table(self, lut: np.ndarray) -> None:
        """Colour map of the SR image: a (256, 3) uint8 table, applied here so the GUI thread only
        uploads RGB pixels."""
        lut = np.asarray(lut)
        if lut.shape != (256, 3) or lut.dtype != np.uint8:
            raise ValueError(f"the SR lookup table must be a (256, 3) uint8 array, got {lut.shape} {lut.dtype}")
        with self._lock:
            self._lut = lut

    def latest(self) -> LiveView | None:
        """The newest prepared view (None before the first)."""
        with self._lock:
            return self._latest

    def _loop(self) -> None:
        import logging
        import traceback

        while not self._stop.is_set():
            try:
                self.prepare()
            except Exception:  # a display bug must never take the run down; report it once
                if self.error is None:
                    self.error = traceback.format_exc().strip().splitlines()[-1]
                    logging.getLogger("rtsmlm.gui").error("display worker: %s", traceback.format_exc())
            self._stop.wait(self.interval_s)

    # ------------------------------------------------------------------------------ preparation

    def request_full(self) -> None:
        """Make the next preparation take everything as it is now, rate limits aside (the final view of a
        run); :attr:`n_full` counts the full preparations done."""
        self._full.set()

    def prepare(self, full: bool = False) -> LiveView:
        """Build (and publish) one view from the run's current state; cheap when nothing changed.
        ``full`` ignores the camera/SR rate limits."""
        full = full or self._full.is_set()
        self._full.clear()
        now = time.perf_counter()
        view = self.run.view
        changed = False
        if full or now - self._camera_t >= self.camera_interval_s:
            if self._prepare_camera(view):
                self._camera_t, changed = now, True
        snapshot = view.render_snapshot()
        if full or now - self._sr_t >= self.sr_interval_s or self._sr_settings_changed():
            if self._prepare_sr(snapshot):
                self._sr_t, changed = now, True
        changed |= self._prepare_series(view, snapshot)
        if changed or self._latest is None:
            self._seq += 1
        live = LiveView(self._seq, self._camera, self._sr, self._series, view.latest_stats(),
                        getattr(snapshot, "frc_nm", None), self._sr_seq, self._camera_seq, self._series_seq)
        with self._lock:
            self._latest = live
        self.n_prepared += 1
        if full:
            self.n_full += 1
        return live

    def _sr_settings_changed(self) -> bool:
        """A new percentile or colour map is shown at once, not at the next SR update."""
        with self._lock:
            key = (self._percentile, id(self._lut))
        return self._sr_key is not None and key != self._sr_key[1:]

    def _prepare_camera(self, view: RunView) -> bool:
        frame = view.latest_frame()
        if frame is None or (self._camera is not None and frame.index == self._camera.index):
            return False
        pooled, factor = pool(frame.data, self.max_px, "mean")
        lo, hi = percentile_levels(pooled, *self.camera_percentiles)
        pixel_nm = view.camera_pixel_nm * factor
        self._camera = CameraView(int(frame.index), to_uint8(pooled, lo, hi), pixel_nm, (lo, hi))
        self._camera_seq += 1
        return True

    def _prepare_sr(self, snapshot: Any) -> bool:
        if snapshot is None:
            return False
        with self._lock:
            percentile, lut, z_override = self._percentile, self._lut, self._z_range
        key = (id(snapshot), percentile, id(lut), z_override)
        if key == self._sr_key:
            return False
        self._sr_key = key
        render_pixel_nm = float(snapshot.pixel_nm)
        pooled, factor = pool(snapshot.image, self.max_px, "sum")
        _, white = percentile_levels(pooled, 0.0, percentile, nonzero=True)
        image, pixel_nm = to_uint8(pooled, 0.0, white), render_pixel_nm * factor
        z_range = getattr(snapshot, "z_range_nm", None)
        if z_range is not None and z_override is not None:
            z_range = z_override
        if z_range is not None and snapshot.depth_count is not None:
            # A 3D run: hue = the pixel's mean z, brightness = the render (the colour bar says the range).
            count, _ = pool(snapshot.depth_count, self.max_px, "sum")
            z_sum, _ = pool(snapshot.depth_z_sum, self.max_px, "sum")
            rgb = colour_by_depth(image / 255.0, count, z_sum, z_range)
        else:
            rgb = np.take(lut, image, axis=0)
        self._sr = SRView(image, rgb, pixel_nm, render_pixel_nm, int(snapshot.n_locs), percentile, white,
                          snapshot, z_range)
        self._sr_seq += 1
        return True

    def _prepare_series(self, view: RunView, snapshot: Any) -> bool:
        history = view.stats_history()
        n_drift = len(getattr(snapshot, "drift_frames", ()))
        key = (len(history) and id(history[-1]), n_drift)
        if key == self._series_key:
            return False
        self._series_key = key
        drift = None
        if snapshot is not None:
            drift = (snapshot.drift_frames, snapshot.drift_dx, snapshot.drift_dy)
        self._series = series_from_stats(history, drift)
        self._series_seq += 1
        return True


def _gray_lut() -> np.ndarray:
    ramp = np.arange(256, dtype=np.uint8)
    return np.stack([ramp, ramp, ramp], axis=1)
