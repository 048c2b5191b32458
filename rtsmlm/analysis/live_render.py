"""The live super-resolution image of a run: drift-corrected incremental rendering + FRC.

A listener of the run (its own thread). Each localization batch is rendered with the current estimate of
the drift stage (:mod:`rtsmlm.analysis.drift_stage`, another listener sharing its thread-safe estimator)
into the canvas and into one of two half-canvases (even/odd drift blocks) for the Fourier ring
correlation. When the estimate moves by more than half an SR pixel, what it moved is redrawn. The live view pulls
:meth:`RenderListener.snapshot`; at the end of the run (after the drift stage's final refinement) the
image is redrawn with the final drift and goes to
``render.tif`` (32-bit, pixel size in the metadata) and ``render.png``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rtsmlm.core.config import Config
from rtsmlm.core.locs import LocBatch, LocSpill

log = logging.getLogger("rtsmlm.analysis.render")

MAX_CANVAS_SIDE = 8192
"""Largest side of the SR canvas in pixels (three float32 maps of 8192²: 0.8 GB)."""

RENDER_TIF = "render.tif"
RENDER_PNG = "render.png"
RENDER_Z_PNG = "render_z.png"  # 3D runs: colour = depth


@dataclass(frozen=True)
class RenderSnapshot:
    """What the live view shows; built on the listener's thread, read on the GUI thread."""

    image: np.ndarray  # float32 SR image (drift-corrected); the viewer maps it for display
    pixel_nm: float  # SR pixel size of ``image``
    n_locs: int
    drift_frames: np.ndarray
    drift_dx: np.ndarray
    drift_dy: np.ndarray
    frc_nm: float | None
    # 3D runs: per-SR-pixel localization count and z sum (the image's pixels) and the z range to colour.
    depth_count: np.ndarray | None = None
    depth_z_sum: np.ndarray | None = None
    z_range_nm: tuple[float, float] | None = None


@dataclass(frozen=True)
class RenderSummary:
    """The render listener's section of summary.json (``render``)."""

    sr_pixel_nm: float
    mode: str
    frc_resolution_nm: float | None
    files: list[str] | None = None


class RenderListener:
    """Listener: the growing drift-corrected SR image, FRC; the final render files."""

    name = "render"
    critical = False  # the image can always be re-rendered from the saved localizations

    def __init__(self, cfg: Config, out_dir: Path | None, camera_pixel_nm: float, shape: tuple[int, int],
                 drift: Any = None) -> None:
        """``drift``: the drift stage's :class:`~rtsmlm.analysis.drift.OnlineDrift` (None: no correction)."""
        from rtsmlm.analysis.render import Canvas

        check_colormap(cfg.gui.colormap)
        self.cfg = cfg
        self.out_dir = out_dir
        self.extent_nm = (shape[0] * camera_pixel_nm, shape[1] * camera_pixel_nm)
        self.drift = drift
        self._drift_version = -1
        # Even/odd drift blocks alternate between the canvas halves (independent halves for the FRC).
        self._canvas_args = dict(mode=cfg.render.mode, min_sigma_nm=cfg.render.min_sigma_nm,
                                 max_sigma_nm=cfg.render.max_sigma_nm,
                                 half_block_frames=cfg.drift.block_frames)
        # The canvas (and its two FRC halves) must fit in memory: a 4096² camera at 10 nm SR pixels would
        # be 40960² pixels (20 GB). Coarser SR pixels keep it at MAX_CANVAS_SIDE per side.
        self.pixel_nm = max(cfg.render.pixel_size_nm, max(self.extent_nm) / MAX_CANVAS_SIDE)
        if self.pixel_nm > cfg.render.pixel_size_nm:
            log.warning("render: %.1f nm SR pixels instead of render.pixel_size_nm = %g for a %.0f µm field "
                        "(the image is at most %d pixels a side)", self.pixel_nm, cfg.render.pixel_size_nm,
                        max(self.extent_nm) / 1e3, MAX_CANVAS_SIDE)
        self.canvas = Canvas(self.extent_nm, self.pixel_nm, **self._canvas_args)
        # Every localization of the run, for re-rendering and the final drift-corrected files: spilled to
        # an anonymous temporary file so memory stays flat over an unbounded run; the recent ones are
        # also kept in memory for redrawing what a drift update moves.
        self._store = LocSpill()
        self._lock = threading.Lock()
        self._snapshot: RenderSnapshot | None = None
        self._dirty = False
        self._wanted = False
        self._last_snapshot_t = 0.0
        self._last_frc_t = time.perf_counter()
        self._frc_nm: float | None = None
        self._pending_settings: dict[str, Any] = {}
        self.depth: Any = None  # DepthMaps once the run turns out to be 3D (a localization with z)

    # -------------------------------------------------------------------------------- settings

    def set_pixel_nm(self, nm: float) -> None:
        """Change the SR pixel size (applied on the listener's thread by a re-render)."""
        with self._lock:
            self._pending_settings["pixel_nm"] = max(float(nm), max(self.extent_nm) / MAX_CANVAS_SIDE)

    def set_mode(self, mode: str) -> None:
        if mode not in ("histogram", "gaussian"):
            raise ValueError(f"render mode must be 'histogram' or 'gaussian', got {mode!r}")
        with self._lock:
            self._pending_settings["mode"] = mode

    # -------------------------------------------------------------------------------- listener

    def _corrected(self, locs: np.ndarray) -> np.ndarray:
        if self.drift is None:
            from rtsmlm.core.locs import with_drift_columns

            return with_drift_columns(locs)
        return self.drift.correct(locs)

    def rerender(self) -> None:
        """Rebuild the canvas from every stored localization with the current drift and settings."""
        with self._lock:
            settings, self._pending_settings = self._pending_settings, {}
        if "pixel_nm" in settings:
            self.pixel_nm = settings["pixel_nm"]
        if "mode" in settings:
            self._canvas_args["mode"] = settings["mode"]
        if settings:
            from rtsmlm.analysis.render import Canvas

            self.canvas = Canvas(self.extent_nm, self.pixel_nm, **self._canvas_args)
        every = self._corrected(self._store.all())
        self.canvas.rerender(every)
        if self.depth is not None:
            self._new_depth_maps(every)
        self._dirty = True

    def _new_depth_maps(self, corrected: np.ndarray) -> None:
        from rtsmlm.analysis.render import DepthMaps

        self.depth = DepthMaps(self.canvas.image.shape, self.pixel_nm)
        self.depth.add(corrected, x_column="x_dc", y_column="y_dc")

    def _draw(self, corrected: np.ndarray, weight: float = 1.0) -> None:
        """Draw drift-corrected localizations (``weight`` −1 takes them back) on the canvas and, in a 3D
        run, the depth maps."""
        self.canvas.add(corrected, weight=weight)
        if self.depth is not None:
            self.depth.add(corrected, weight, x_column="x_dc", y_column="y_dc")

    def on_batch(self, batch: LocBatch) -> None:
        locs = batch.locs
        self._store.append(locs)
        changed = False
        if self.drift is not None:
            # The drift stage feeds the estimator (on its own thread); here only whether it moved since
            # the last batch was drawn: then what it moved is redrawn.
            version = self.drift.version
            changed, self._drift_version = version != self._drift_version, version
        if self._pending_settings:
            self.rerender()
        else:
            if changed:
                self._redraw_stale()
            if len(locs):
                if self.depth is None and np.any(np.isfinite(locs["z"]) & (locs["z"] != 0)):
                    # A 3D model's first localizations: colour by depth from now on (and what came before).
                    self._new_depth_maps(self._corrected(self._store.all()[:-len(locs)]))
                self._draw(self._corrected(locs))
        self._dirty = True
        self._maybe_publish()

    def _redraw_stale(self) -> None:
        """Move the localizations whose drift correction changed by more than half an SR pixel: take
        them off the canvas as they were drawn and draw them again with the new estimate (far cheaper
        than re-rendering everything, since usually only recent frames move)."""
        stale = self.drift.stale_frames(0.5 * self.pixel_nm)
        if not len(stale):
            return
        lo, hi = int(stale.min()), int(stale.max())
        # Every stored batch but the newest (not drawn yet) whose frames overlap the stale range.
        drawn = self._store.frames_between(lo, hi, skip_newest=True)
        moved = drawn[np.isin(drawn["frame"], stale)]
        if len(moved):
            self._draw(self.drift.as_applied(moved), weight=-1.0)
            self._draw(self.drift.correct(moved))

    def on_tick(self) -> None:
        if self._pending_settings:
            self.rerender()
        now = time.perf_counter()
        if now - self._last_frc_t >= self.cfg.render.frc_interval_s:
            self._last_frc_t = now
            self._frc_nm = self.frc()
        self._maybe_publish()

    def _maybe_publish(self) -> None:
        """Build a new snapshot only when a viewer asked for one since the last, at most 5 times a
        second: a headless run pays nothing for the live view."""
        if self._dirty and self._wanted and time.perf_counter() - self._last_snapshot_t >= 0.2:
            self._publish_snapshot()

    def frc(self) -> float | None:
        """FRC resolution (nm) of the two half images, None while it cannot be read off the curve."""
        from rtsmlm.analysis.frc import frc

        a, b = self.canvas.halves
        if not (a.any() and b.any()):
            return None
        res = frc(a, b, self.pixel_nm).resolution_nm
        return float(res) if np.isfinite(res) else None

    def _publish_snapshot(self) -> None:
        image = self.canvas.image.copy()
        blocks = self.drift.block_estimates() if self.drift is not None else None
        if blocks is not None and len(blocks):
            frames, dx, dy = blocks.centre_frame, blocks.dx, blocks.dy
        else:
            frames = dx = dy = np.empty(0)
        depth: dict[str, Any] = {}
        if self.depth is not None:
            from rtsmlm.analysis.render import depth_range_nm

            z_max = self.cfg.psf.z_range_nm
            count, z_sum = self.depth.count.copy(), self.depth.z_sum.copy()
            depth = {"depth_count": count, "depth_z_sum": z_sum,
                     "z_range_nm": (-z_max, z_max) if z_max > 0 else depth_range_nm(count, z_sum)}
        snap = RenderSnapshot(image, self.pixel_nm, self._store.n,
                              np.asarray(frames), np.asarray(dx), np.asarray(dy), self._frc_nm, **depth)
        with self._lock:
            self._snapshot = snap
            self._wanted = False
        self._dirty = False
        self._last_snapshot_t = time.perf_counter()

    def snapshot(self) -> RenderSnapshot | None:
        """The latest rendered state (thread-safe; None before the first one is built). Calling it asks
        the listener's thread to build a fresh one."""
        with self._lock:
            self._wanted = True
            return self._snapshot

    # -------------------------------------------------------------------------------- finish

    def on_run_end(self, end: Any) -> dict[str, RenderSummary]:
        locs = self._store.all()
        self.rerender()  # with the final drift: the drift stage ended first
        self._frc_nm = self.frc()
        self._publish_snapshot()
        files = None
        if self.out_dir is not None and len(locs):
            self._write_images()
            files = [RENDER_TIF, RENDER_PNG]
            if np.any(locs["z"] != 0):  # a 3D model's run
                self._write_depth_image(locs)
                files.append(RENDER_Z_PNG)
        return {"render": RenderSummary(self.pixel_nm, str(self._canvas_args["mode"]), self._frc_nm, files)}

    def _write_images(self) -> None:
        from rtsmlm.io.movies import write_tiff_movie

        image = self.canvas.image.astype(np.float32)
        write_tiff_movie(self.out_dir / RENDER_TIF, image[None], self.pixel_nm,
                         {"content": "super-resolution render", "mode": self._canvas_args["mode"]},
                         overwrite=True)
        from rtsmlm.analysis.render import percentile_levels, to_uint8

        _, white = percentile_levels(image, 0.0, self.cfg.gui.contrast_percentile, nonzero=True)
        _write_png(self.out_dir / RENDER_PNG, to_uint8(image, 0.0, white), self.cfg.gui.colormap)


    def _write_depth_image(self, locs: np.ndarray) -> None:
        """render_z.png: the render coloured by depth, with a colour bar in nm (psf.z_range_nm when set,
        else the 1st–99th percentile of the localizations' z)."""
        from rtsmlm.analysis.render import write_z_png, z_colour_image

        z_max = self.cfg.psf.z_range_nm
        z_range = (-z_max, z_max) if z_max > 0 else tuple(float(v) for v in np.percentile(locs["z"], [1, 99]))
        corrected = self._corrected(locs)
        rgb = z_colour_image(self.canvas.image, corrected, self.pixel_nm, z_range,  # type: ignore[arg-type]
                             white_percentile=self.cfg.gui.contrast_percentile, x_column="x_dc", y_column="y_dc")
        write_z_png(self.out_dir / RENDER_Z_PNG, rgb, z_range, self.pixel_nm)  # type: ignore[operator, arg-type]


def check_colormap(name: str) -> None:
    """A colour map nobody knows is the user's typo: say so before the run, never silently use another."""
    import matplotlib

    if name not in matplotlib.colormaps:
        from rtsmlm.analysis.render import COLORMAPS
        from rtsmlm.core.config import ConfigError

        known = ", ".join(COLORMAPS)
        raise ConfigError(f"gui.colormap {name!r} is not a matplotlib colour map (for example {known})")


def _write_png(path: Path, image_u8: np.ndarray, colormap: str) -> None:
    """Colour-mapped PNG through matplotlib's image writer (no figure, no GUI backend)."""
    import matplotlib
    from matplotlib.image import imsave

    cmap = matplotlib.colormaps[colormap]
    imsave(path, image_u8, cmap=cmap, vmin=0, vmax=255)
