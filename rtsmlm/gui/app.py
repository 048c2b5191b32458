"""The live window (PyQt5 + pyqtgraph) and ``rtsmlm live``.

Layout: the accumulating super-resolution (SR) image on the left (zoom/pan, scale bar, render mode, SR
pixel size, percentile contrast, colour map); on the right the newest camera frame with its own
contrast and the time plots (localizations per frame, camera vs localized frame rate, ring fill,
frames lost, drift x/y); a toolbar (start/stop acquisition, pause display, save SR image, open output
folder) and a status line (backend, model, latency, localizations, elapsed time, FRC resolution,
losses).

Threading, the way pyqtgraph wants it: pipeline threads and the :class:`~rtsmlm.gui.display.DisplayWorker`
never touch a Qt object. The worker pools large images, computes the contrast levels (percentiles), maps
to uint8 and colours the SR image through the colour map's 256-entry lookup table; a ``QTimer`` at
``gui.refresh_hz`` takes its latest prepared view and hands the pixels to
``ImageItem.setImage(autoLevels=False)`` — nothing is scanned or mapped on the GUI thread, so an update
costs ~1.5 ms of GUI time whatever the camera or SR size (``benchmarks/bench_gui.py``). Repaints are
paced: one view per tick, each view at most every ``paint time / GUI_DUTY``, plot axes redrawn only when
their rounded limits change.

``rtsmlm live`` is ``rtsmlm run`` with this window: same config, same flags, same output files. Closing
the window stops acquisition, waits while the pipeline drains and every listener flushes, writes
``summary.json`` and only then closes.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from rtsmlm.core.config import Config
from rtsmlm.engine.run import final_line, signal_name, stop_signals
from rtsmlm.gui import require_qt
from rtsmlm.gui.display import DisplayWorker, LiveView, SRView, nice_ceil, percentile_levels, to_uint8
from rtsmlm.gui.session import FAILED, FINISHED, IDLE, RUNNING, STARTING, STOPPING, LiveSession

QtCore, QtGui, QtWidgets, pg = require_qt()

from rtsmlm.gui.widgets import ACCENT, COLORMAPS, ScaleBar, TimedGraphicsWidget, apply_dark_theme, lookup_table  # noqa: E402

log = logging.getLogger("rtsmlm.gui")

SR_PIXEL_CHOICES_NM = (5.0, 10.0, 15.0, 20.0, 30.0, 50.0)
"""SR pixel sizes offered in the toolbar (``render.pixel_size_nm`` is added when it is not one)."""

_PLOT_FONT_PT = 8

GUI_DUTY = 0.05
"""Largest fraction of wall time the GUI thread spends repainting a view: a view gets a new image only
when at least ``paint time / GUI_DUTY`` has passed since its last one. On an idle machine a repaint
takes a few ms and images follow the refresh rate; on a saturated one they update less often and the
event loop stays responsive (and the GUI's share of the GIL stays small)."""


MIN_INTERVAL_S = {"camera": 0.0, "sr": 0.0, "series": 1.0}
"""Shortest time between two uploads of each view besides the refresh period (the display worker already
limits camera frames to 10/s and SR images to 5/s): the plots follow stats that arrive about once a
second, and redrawing their axes is the costliest repaint of the window."""


def _title_label(text: str) -> QtWidgets.QLabel:
    """A one-line label whose changing text never re-lays out the window (a re-layout resizes and
    repaints the image views)."""
    label = QtWidgets.QLabel(text)
    label.setSizePolicy(QtWidgets.QSizePolicy.Ignored, QtWidgets.QSizePolicy.Fixed)
    label.setTextFormat(QtCore.Qt.RichText)
    return label


def _configure_pyqtgraph() -> None:
    # Row-major images: array axis 0 is y (rows), as everywhere in rtsmlm; the y axis points down.
    pg.setConfigOptions(imageAxisOrder="row-major", background="#141417", foreground="#c8c8cc",
                        antialias=False)


class LiveWindow(QtWidgets.QMainWindow):
    """The live view of a :class:`~rtsmlm.gui.session.LiveSession`.

    Signals: ``run_finished`` when the session's run has drained and its summary is written;
    ``closed`` once the window has really closed (after the run finished).
    """

    run_finished = QtCore.pyqtSignal()
    closed = QtCore.pyqtSignal()

    def __init__(self, session: LiveSession, cfg: Config, *, parent: QtWidgets.QWidget | None = None) -> None:
        _configure_pyqtgraph()
        super().__init__(parent)
        self.session = session
        self.cfg = cfg
        app = QtWidgets.QApplication.instance()
        if app is not None:
            apply_dark_theme(app)
        self.setWindowTitle("rtsmlm live")
        self.resize(1600, 1000)
        self._paused = False
        self._close_requested = False
        self._was_active = False
        self._finished_at_prepared: int | None = None
        self._worker: DisplayWorker | None = None
        self._worker_run: Any = None
        self._shown: dict[str, int] = {"view": -1, "camera": -1, "sr": -1, "series": -1}
        self._last_upload: dict[str, float] = {}
        self._ranges: dict[tuple[str, str], tuple[float, float]] = {}
        self._sr_view: SRView | None = None
        self._camera_shape: tuple[int, int, float] | None = None
        self._sr_geometry: tuple[int, int, float] | None = None
        self.n_refreshes = 0
        self._lut = lookup_table(cfg.gui.colormap)
        self._z_range: tuple[float, float] | None = None  # the user's depth colour range, kept across runs
        self._build_ui()
        self._bind_worker()
        self._timer = QtCore.QTimer(self)
        self._timer.setInterval(max(1, int(round(1000.0 / cfg.gui.refresh_hz))))
        self._timer.timeout.connect(self.refresh)
        self._timer.start()
        self._sync_controls()

    # ------------------------------------------------------------------------------------- layout

    def _build_ui(self) -> None:
        self._build_toolbar()
        splitter = QtWidgets.QSplitter(QtCore.Qt.Horizontal)
        splitter.addWidget(self._build_sr_panel())
        splitter.addWidget(self._build_side_panel())
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        splitter.setSizes([1000, 600])
        self.setCentralWidget(splitter)
        self.status_label = _title_label("")
        self.statusBar().addWidget(self.status_label, 1)
        self.statusBar().setSizeGripEnabled(False)

    def _build_toolbar(self) -> None:
        tb = self.addToolBar("acquisition")
        tb.setMovable(False)
        tb.setToolButtonStyle(QtCore.Qt.ToolButtonTextBesideIcon)
        style = self.style()
        self.action_start = tb.addAction(style.standardIcon(QtWidgets.QStyle.SP_MediaPlay), "Start")
        self.action_start.setToolTip("Start acquisition (a new run goes to a new output folder)")
        self.action_start.triggered.connect(self.start_acquisition)
        self.action_stop = tb.addAction(style.standardIcon(QtWidgets.QStyle.SP_MediaStop), "Stop")
        self.action_stop.setToolTip("Stop acquisition; the run drains, flushes its files and writes summary.json")
        self.action_stop.triggered.connect(self.stop_acquisition)
        tb.addSeparator()
        self.action_pause = tb.addAction(style.standardIcon(QtWidgets.QStyle.SP_MediaPause), "Pause display")
        self.action_pause.setCheckable(True)
        self.action_pause.setToolTip("Freeze the images (acquisition and analysis go on)")
        self.action_pause.toggled.connect(self.set_paused)
        self.action_fit = tb.addAction("Fit")
        self.action_fit.setToolTip("Show the whole field of view")
        self.action_fit.triggered.connect(lambda: self._fit(self.sr_view, self.sr_item))
        tb.addSeparator()
        self.action_save = tb.addAction(style.standardIcon(QtWidgets.QStyle.SP_DialogSaveButton), "Save SR image…")
        self.action_save.setToolTip("Save the SR image: 32-bit TIFF (values, calibrated) or PNG (as shown)")
        self.action_save.triggered.connect(self._save_dialog)
        self.action_open = tb.addAction(style.standardIcon(QtWidgets.QStyle.SP_DirOpenIcon), "Open output folder")
        self.action_open.triggered.connect(self.open_output_folder)
        spacer = QtWidgets.QWidget()
        spacer.setSizePolicy(QtWidgets.QSizePolicy.Expanding, QtWidgets.QSizePolicy.Preferred)
        tb.addWidget(spacer)
        self._build_render_controls(tb)

    def _build_render_controls(self, tb: QtWidgets.QToolBar) -> None:
        """SR image settings: render mode and pixel size (applied by the renderer), contrast and colours."""
        def label(text: str) -> QtWidgets.QLabel:
            w = QtWidgets.QLabel(text)
            w.setContentsMargins(10, 0, 4, 0)
            return w

        tb.addWidget(label("render"))
        self.mode_box = QtWidgets.QComboBox()
        self.mode_box.addItems(["gaussian", "histogram"])
        self.mode_box.setCurrentText(self.cfg.render.mode)
        self.mode_box.setToolTip("Gaussian: each localization drawn with its predicted uncertainty; "
                                 "histogram: counts per SR pixel")
        self.mode_box.currentTextChanged.connect(self.set_render_mode)
        tb.addWidget(self.mode_box)
        tb.addWidget(label("SR pixel"))
        self.pixel_box = QtWidgets.QComboBox()
        choices = sorted({*SR_PIXEL_CHOICES_NM, float(self.cfg.render.pixel_size_nm)})
        for nm in choices:
            self.pixel_box.addItem(f"{nm:g} nm", nm)
        self.pixel_box.setCurrentIndex(choices.index(float(self.cfg.render.pixel_size_nm)))
        self.pixel_box.currentIndexChanged.connect(lambda i: self.set_sr_pixel_nm(self.pixel_box.itemData(i)))
        tb.addWidget(self.pixel_box)
        tb.addWidget(label("white at"))
        self.percentile_box = QtWidgets.QDoubleSpinBox()
        self.percentile_box.setRange(90.0, 100.0)
        self.percentile_box.setDecimals(1)
        self.percentile_box.setSingleStep(0.1)
        self.percentile_box.setSuffix(" percentile")
        self.percentile_box.setToolTip("The SR value shown white: this percentile of the non-empty SR pixels")
        self.percentile_box.setValue(self.cfg.gui.contrast_percentile)
        self.percentile_box.setKeyboardTracking(False)
        self.percentile_box.valueChanged.connect(self.set_percentile)
        tb.addWidget(self.percentile_box)
        tb.addWidget(label("colours"))
        self.cmap_box = QtWidgets.QComboBox()
        names = list(COLORMAPS) if self.cfg.gui.colormap in COLORMAPS else [self.cfg.gui.colormap, *COLORMAPS]
        self.cmap_box.addItems(names)
        self.cmap_box.setCurrentText(self.cfg.gui.colormap)
        self.cmap_box.currentTextChanged.connect(self.set_colormap)
        tb.addWidget(self.cmap_box)
        # 3D runs: the depth range the colours span (the run's own until the user changes it).
        z_max = float(self.cfg.psf.z_range_nm) or 500.0
        self.z_boxes = []
        tb.addWidget(label("depth"))
        for value, tip in ((-z_max, "Depth (nm) shown in the colour map's first colour"),
                           (z_max, "Depth (nm) shown in the colour map's last colour")):
            box = QtWidgets.QSpinBox()
            box.setRange(-5000, 5000)
            box.setSingleStep(50)
            box.setSuffix(" nm")
            box.setValue(int(round(value)))
            box.setToolTip(tip + "; 3D runs only")
            box.setKeyboardTracking(False)
            box.setEnabled(self.cfg.psf.model != "gaussian")
            box.valueChanged.connect(lambda _v: self.set_z_range(self.z_boxes[0].value(), self.z_boxes[1].value()))
            tb.addWidget(box)
            self.z_boxes.append(box)

    def _build_sr_panel(self) -> QtWidgets.QWidget:
        panel = QtWidgets.QWidget()
        layout = QtWidgets.QVBoxLayout(panel)
        layout.setContentsMargins(6, 6, 3, 6)
        layout.setSpacing(4)
        self.sr_title = _title_label("<b>Super-resolution</b>")
        layout.addWidget(self.sr_title)

        self.sr_widget = TimedGraphicsWidget()
        self.sr_widget.ci.setContentsMargins(0, 0, 0, 0)
        self.sr_view = self.sr_widget.addViewBox(lockAspect=True, invertY=True, enableMenu=True)
        self.sr_view.setBackgroundColor("#000000")
        # RGB pixels, coloured by the worker: no levels, no lookup table, nothing to compute here.
        self.sr_item = pg.ImageItem(levels=None)
        self.sr_view.addItem(self.sr_item)
        self.sr_view.disableAutoRange()  # re-fitting on every image update costs the GUI thread; see _fit
        self.sr_scalebar = ScaleBar(self.sr_view)
        self.sr_scalebar.setVisible(False)  # shown with the first image (an empty view has no scale)
        layout.addWidget(self.sr_widget, 1)
        return panel

    def _build_side_panel(self) -> QtWidgets.QWidget:
        panel = QtWidgets.QWidget()
        layout = QtWidgets.QVBoxLayout(panel)
        layout.setContentsMargins(3, 6, 6, 6)
        layout.setSpacing(4)
        self.camera_title = _title_label("<b>Camera</b>")
        layout.addWidget(self.camera_title)
        self.camera_widget = TimedGraphicsWidget()
        self.camera_widget.ci.setContentsMargins(0, 0, 0, 0)
        self.camera_view = self.camera_widget.addViewBox(lockAspect=True, invertY=True)
        self.camera_view.setBackgroundColor("#000000")
        self.camera_item = pg.ImageItem(levels=None)  # uint8 grey, mapped by the worker
        self.camera_view.addItem(self.camera_item)
        self.camera_view.disableAutoRange()
        self.camera_scalebar = ScaleBar(self.camera_view, fraction=0.25, margin_px=10, thickness_px=4)
        self.camera_scalebar.setVisible(False)
        layout.addWidget(self.camera_widget, 4)

        self.plots_widget = TimedGraphicsWidget()
        self.plots_widget.ci.setSpacing(2)
        self.plots: dict[str, pg.PlotItem] = {}
        self.curves: dict[str, pg.PlotDataItem] = {}
        specs = [("locs", "localizations / frame", "time (s)"),
                 ("fps", "frame rate (frames/s)", "time (s)"),
                 ("ring", "ring fill (%)", "time (s)"),
                 ("lost", "frames lost", "time (s)"),
                 ("drift", "drift (nm)", "frame")]
        for row, (key, title, xlabel) in enumerate(specs):
            plot = self.plots_widget.addPlot(row=row, col=0)
            plot.setTitle(title, size=f"{_PLOT_FONT_PT + 1}pt", color="#d8d8dc")
            plot.showGrid(x=False, y=True, alpha=0.15)
            plot.setMenuEnabled(False)
            plot.hideButtons()
            font = QtGui.QFont()
            font.setPointSize(_PLOT_FONT_PT)
            for name in ("left", "bottom"):
                axis = plot.getAxis(name)
                axis.setStyle(tickFont=font, tickTextOffset=2)
                axis.enableAutoSIPrefix(False)  # seconds, frames and nm stay as they are
            plot.getAxis("left").setWidth(40)
            plot.setLabel("bottom", xlabel, **{"font-size": f"{_PLOT_FONT_PT}pt"})
            plot.getAxis("bottom").label.setFont(font)
            self.plots[key] = plot
        for key in ("fps", "ring", "lost"):
            self.plots[key].setXLink(self.plots["locs"])
        for key in ("locs", "fps", "ring"):  # only the lowest of the linked time plots has a time axis
            self.plots[key].hideAxis("bottom")  # (each axis redraw costs the GUI thread milliseconds)
        self.plots["ring"].setYRange(-12, 112, padding=0)
        self.plots["ring"].getAxis("left").setTicks([[(0.0, "0"), (50.0, "50"), (100.0, "100")]])
        # Axis limits are set on each update to rounded values, so the axes (costly to draw) are
        # redrawn only when a limit changes, not at every update.
        for plot in self.plots.values():
            plot.disableAutoRange()
        self._titles = {key: title for key, title, _ in specs}
        if not self.cfg.drift.enabled:
            self._titles["drift"] += " &nbsp;<span style='color:#9a9aa0'>(drift correction off)</span>"
        self.curves["locs"] = self.plots["locs"].plot(pen=pg.mkPen(ACCENT["locs"], width=1.5))
        for key, plot_key in (("camera_fps", "fps"), ("localized_fps", "fps"), ("drift_x", "drift"),
                              ("drift_y", "drift")):
            name = key.split("_")[0] if plot_key == "fps" else key.split("_")[1]
            color = ACCENT[name]
            kw = dict(symbol="o", symbolSize=4, symbolPen=None, symbolBrush=color) if plot_key == "drift" else {}
            self.curves[key] = self.plots[plot_key].plot(pen=pg.mkPen(color, width=1.5), **kw)
            self._add_to_title(plot_key, name, color)
        if self.session.run is not None:  # one curve per ring reader, made now: a title change re-lays out
            for reader in self.session.run.view.reader_names:
                self._reader_curve("ring", reader)
                self._reader_curve("lost", reader)
        layout.addWidget(self.plots_widget, 8)
        return panel

    def _add_to_title(self, plot_key: str, name: str, color: str) -> None:
        """Name a curve in its plot's title, in the curve's colour (a legend box would hide data)."""
        self._titles[plot_key] += f" &nbsp;<span style='color:{color}'>&#9632; {name}</span>"
        self.plots[plot_key].setTitle(self._titles[plot_key], size=f"{_PLOT_FONT_PT + 1}pt", color="#d8d8dc")

    def _reader_curve(self, plot_key: str, reader: str) -> pg.PlotDataItem:
        """One curve per ring reader (localizer, recorder), created when the reader first appears."""
        key = f"{plot_key}:{reader}"
        if key not in self.curves:
            color = ACCENT.get(reader) or pg.intColor(len(self.curves), hues=9).name()
            self.curves[key] = self.plots[plot_key].plot(pen=pg.mkPen(color, width=1.5))
            self._add_to_title(plot_key, reader, color)
        return self.curves[key]

    # ---------------------------------------------------------------------------------- refresh

    def _bind_worker(self) -> None:
        """Give the session's current run its own display worker (a new run after a restart)."""
        run = self.session.run
        if run is None or run is self._worker_run:
            return
        if self._worker is not None:
            self._worker.stop()
        self._worker = DisplayWorker(run, refresh_hz=self.cfg.gui.refresh_hz,
                                     percentile=self.percentile_box.value())
        self._worker.set_lookup_table(self._lut)
        if self._z_range is not None:
            self._worker.set_z_range(self._z_range)
        self._worker_run = run
        # A new run started before the last one's final view arrived (a quick Start after a finish): that
        # wait counted the old worker's views, which the new worker never reaches; forget it.
        self._finished_at_prepared = None
        self._shown = {k: -1 for k in self._shown}
        self._worker.start()
        self.setWindowTitle(f"rtsmlm live — {run.out_dir}")

    @property
    def worker(self) -> DisplayWorker | None:
        return self._worker

    def refresh(self) -> None:
        """One timer tick on the GUI thread: follow the session, then show the newest prepared view."""
        self._follow_session()
        if self._worker is None:
            return
        view = self._worker.latest()
        if view is None:
            self._update_status(None)
            return
        if view.seq != self._shown["view"]:
            self._show(view)
        self._update_status(view)
        self.n_refreshes += 1

    def _due(self, key: str, widget: TimedGraphicsWidget, now: float) -> bool:
        """Whether ``widget`` may get new content now (see :data:`GUI_DUTY`)."""
        wait = max(MIN_INTERVAL_S[key], widget.paint_s / GUI_DUTY)
        return now - self._last_upload.get(key, -math.inf) >= wait

    def _show(self, view: LiveView) -> None:
        """Upload at most one view per tick, so a tick's repaint is one view's (short) repaint."""
        now = time.perf_counter()
        pending = []
        if not self._paused:
            if view.camera is not None and view.camera_seq != self._shown["camera"]:
                pending.append(("camera", self.camera_widget, self._show_camera))
            if view.sr is not None and view.sr_seq != self._shown["sr"]:
                pending.append(("sr", self.sr_widget, self._show_sr))
        if view.series_seq != self._shown["series"]:
            pending.append(("series", self.plots_widget, self._show_series))
        due = [p for p in pending if self._due(p[0], p[1], now)]
        if due:
            # The view waiting longest goes first, so a frequent camera frame cannot starve the others.
            key, _, show = min(due, key=lambda p: self._last_upload.get(p[0], -math.inf))
            show(view)
            self._last_upload[key] = now
            pending = [p for p in pending if p[0] != key]
        if not pending:  # else the next ticks show the parts held back
            self._shown["view"] = view.seq

    def _show_camera(self, view: LiveView) -> None:
        cam = view.camera
        self.camera_item.setImage(cam.image, autoLevels=False, levels=None)
        geometry = (*cam.image.shape, cam.pixel_nm)
        if geometry != self._camera_shape:  # nm coordinates: the frame covers [0, W·p) × [0, H·p)
            h, w = cam.image.shape
            self.camera_item.setRect(QtCore.QRectF(0, 0, w * cam.pixel_nm, h * cam.pixel_nm))
            if self._camera_shape is None or self._camera_shape[:2] != geometry[:2]:
                self._fit(self.camera_view, self.camera_item)
            self._camera_shape = geometry
            self.camera_scalebar.setVisible(True)
        lo, hi = cam.levels_adu
        self.camera_title.setText(f"<b>Camera</b> &nbsp; frame {cam.index:,} &nbsp; "
                                  f"<span style='color:#9a9aa0'>{lo:.0f}–{hi:.0f} ADU</span>")
        self._shown["camera"] = view.camera_seq

    def _show_sr(self, view: LiveView) -> None:
        sr = view.sr
        self.sr_item.setImage(sr.rgb, autoLevels=False, levels=None)
        geometry = (*sr.image.shape, sr.pixel_nm)
        if geometry != self._sr_geometry:  # a new SR pixel size keeps the nm extent and the zoom
            h, w = sr.image.shape
            self.sr_item.setRect(QtCore.QRectF(0, 0, w * sr.pixel_nm, h * sr.pixel_nm))
            if self._sr_geometry is None:
                self._fit(self.sr_view, self.sr_item)
            self._sr_geometry = geometry
            self.sr_scalebar.setVisible(True)
        self._sr_view = sr
        drift = "drift-corrected" if self.cfg.drift.enabled else "no drift correction"
        self.sr_title.setText(f"<b>Super-resolution</b> &nbsp; {sr.n_locs:,} localizations &nbsp; "
                              f"<span style='color:#9a9aa0'>{sr.render_pixel_nm:g} nm pixels, {drift}</span>"
                              + (f" &nbsp; {_depth_bar(sr.z_range_nm)}" if sr.z_range_nm is not None else ""))
        self._shown["sr"] = view.sr_seq

    @staticmethod
    def _fit(view: pg.ViewBox, item: pg.ImageItem) -> None:
        """Show the whole image (the field of view) in ``view``."""
        view.setRange(item.mapRectToParent(item.boundingRect()), padding=0.0)

    @property
    def shown_sr(self) -> SRView | None:
        """The :class:`~rtsmlm.gui.display.SRView` on screen (None before the first SR image)."""
        return self._sr_view

    def _show_series(self, view: LiveView) -> None:
        self._shown["series"] = view.series_seq
        s = view.series
        t = s.elapsed_s
        self.curves["locs"].setData(t, s.locs_per_frame, connect="finite")
        self.curves["camera_fps"].setData(t, s.camera_fps, connect="finite")
        self.curves["localized_fps"].setData(t, s.localized_fps, connect="finite")
        for reader, fill in s.ring_fill.items():
            self._reader_curve("ring", reader).setData(t, 100.0 * fill, connect="finite")
        top_lost = 0.0
        for reader, lost in s.frames_lost.items():
            self._reader_curve("lost", reader).setData(t, lost)
            top_lost = max(top_lost, float(np.nanmax(lost, initial=0.0)))
        # Margins keep the zero line and the edge labels visible; whole-frame ticks while none is lost.
        lost_top = nice_ceil(1.2 * top_lost) if top_lost > 0 else 1.0
        if self._set_range("lost", "y", -0.4 * lost_top if top_lost == 0 else -0.1 * lost_top, 1.4 * lost_top):
            self.plots["lost"].getAxis("left").setTicks([[(0.0, "0"), (1.0, "1")]] if top_lost == 0 else None)
        for key, values in (("locs", s.locs_per_frame), ("fps", np.concatenate([s.camera_fps, s.localized_fps]))):
            top = nice_ceil(1.1 * _finite_max(values))
            self._set_range(key, "y", -0.12 * top, 1.12 * top)  # margins: the 0 and top labels stay visible
        if len(t):
            self._set_range("locs", "x", 0.0, nice_ceil(float(t[-1])))  # the other time plots are linked
        self.curves["drift_x"].setData(s.drift_frames, s.drift_dx)
        self.curves["drift_y"].setData(s.drift_frames, s.drift_dy)
        if len(s.drift_frames):
            self._set_range("drift", "x", 0.0, nice_ceil(float(s.drift_frames[-1]) + 1))
            top = nice_ceil(1.2 * _finite_max(np.abs(np.concatenate([s.drift_dx, s.drift_dy]))))
            self._set_range("drift", "y", -top, top)

    def _set_range(self, key: str, axis: str, lo: float, hi: float) -> bool:
        """Set an axis range only when it changed (a change redraws the axis); True when it changed."""
        if self._ranges.get((key, axis)) == (lo, hi):
            return False
        self._ranges[(key, axis)] = (lo, hi)
        if axis == "x":
            self.plots[key].setXRange(lo, hi, padding=0)
        else:
            self.plots[key].setYRange(lo, hi, padding=0)
        return True

    def _update_status(self, view: LiveView | None) -> None:
        stats = view.stats if view is not None else {}
        parts = [f"<b>{_state_text(self.session)}</b>"]
        run = self.session.run
        if run is not None:
            b = run.view.backend
            if b:
                parts.append(" ".join(str(b[k]) for k in ("name", "device", "precision") if b.get(k)))
            model = run.view.model
            if model:
                name = Path(str(model.get("checkpoint", "?"))).name
                parts.append(f"model {name}" + (f" (step {model['step']:,})" if model.get("step") else ""))
            verdict = run.view.model_range()
            if verdict is not None:
                parts.append(_range_text(verdict))
        if stats:
            p50, p99 = stats.get("latency_ms_p50", math.nan), stats.get("latency_ms_p99", math.nan)
            if math.isfinite(p50):
                parts.append(f"latency {p50:.0f} / {p99:.0f} ms p50/p99")
            parts.append(f"{stats.get('n_locs', 0):,} localizations")
            parts.append(_format_elapsed(stats.get("elapsed_s", 0.0)))
            lost = sum(stats.get("frames_lost", {}).values())
            parts.append(f"<span style='color:#ff6b6b'>{lost:,} frames lost</span>" if lost else "0 frames lost")
            skipped = stats.get("frames_skipped_live", 0)
            if skipped:  # behind the camera: recent frames first, the skipped ones after the acquisition
                parts.append(f"<span style='color:#ffae42'>{skipped:,} skipped live (analysed at the end)</span>")
        if view is not None and view.frc_nm is not None:
            parts.append(f"FRC resolution {view.frc_nm:.0f} nm")
        if self._paused:
            parts.append("<span style='color:#ffae42'>display paused</span>")
        if self._worker is not None and self._worker.error:
            parts.append(f"<span style='color:#ff6b6b'>display error: {self._worker.error}</span>")
        if self.session.error:
            parts.append(f"<span style='color:#ff6b6b'>error: {self.session.error}</span>")
        self.status_label.setText(" &nbsp;·&nbsp; ".join(parts))
        self.status_label.setToolTip(self.session.error or "")

    def status_text(self) -> str:
        """The status line as plain text."""
        return QtGui.QTextDocumentFragment.fromHtml(self.status_label.text()).toPlainText()

    # ---------------------------------------------------------------------------------- session

    def _follow_session(self) -> None:
        state = self.session.state
        self._bind_worker()
        if state in (FINISHED, FAILED) and self._was_active:
            # Wait for a view prepared after the run finished: it has the renderer's final image
            # (global drift refinement, FRC) and the final stats.
            if self._finished_at_prepared is None:
                self._finished_at_prepared = self._worker.n_full if self._worker is not None else 0
                if self._worker is not None:
                    self._worker.request_full()
            ready = (self._worker is None or self._worker.error is not None
                     or self._worker.n_full > self._finished_at_prepared)
            if not ready:
                return
            self._was_active = False
            self._finished_at_prepared = None
            view = self._worker.latest() if self._worker is not None else None
            if view is not None:  # show the final state now, pacing aside
                if view.camera is not None and not self._paused:
                    self._show_camera(view)
                if view.sr is not None and not self._paused:
                    self._show_sr(view)
                self._show_series(view)
                self._shown["view"] = view.seq
            self._sync_controls()
            self.run_finished.emit()
            if self._close_requested:
                self.close()
                return
        elif self.session.active and not self._was_active:
            self._was_active = True
            self._sync_controls()
        elif state == STOPPING and self.action_stop.isEnabled():
            self._sync_controls()

    def _sync_controls(self) -> None:
        state = self.session.state
        self.action_start.setEnabled(state in (IDLE, FINISHED, FAILED) and not self._close_requested)
        self.action_stop.setEnabled(state in (STARTING, RUNNING))
        self.action_open.setEnabled(self.session.run is not None)

    def start_acquisition(self) -> None:
        """Start (or, after a finished run, restart into a new output folder)."""
        self.session.start()
        self._was_active = self.session.active
        self._sync_controls()

    def stop_acquisition(self) -> None:
        """Stop; the run drains and flushes in the background, the window stays open."""
        self.session.stop()
        self._sync_controls()

    def set_paused(self, paused: bool) -> None:
        """Freeze the images (acquisition, analysis, plots and status go on)."""
        self._paused = bool(paused)
        if self.action_pause.isChecked() != self._paused:
            self.action_pause.setChecked(self._paused)
        if not self._paused:
            self._shown["view"] = -1  # catch up at the next tick

    def set_render_mode(self, mode: str) -> None:
        run = self.session.run
        if run is not None:
            run.view.set_render_mode(mode)

    def set_sr_pixel_nm(self, nm: float) -> None:
        run = self.session.run
        if run is not None:
            run.view.set_render_pixel_nm(float(nm))

    def set_percentile(self, percentile: float) -> None:
        if self._worker is not None:
            self._worker.set_percentile(float(percentile))

    def set_z_range(self, low_nm: float, high_nm: float) -> None:
        """Colour a 3D run's SR image by depth from ``low_nm`` to ``high_nm``; an empty range is refused
        with a status message (the previous range stays)."""
        if low_nm >= high_nm:
            self.statusBar().showMessage(f"depth range {low_nm:g} to {high_nm:g} nm is empty: the low end must be "
                                         "below the high end", 5000)
            return
        self._z_range = (float(low_nm), float(high_nm))
        if self._worker is not None:
            self._worker.set_z_range(self._z_range)

    def set_colormap(self, name: str) -> None:
        try:
            self._lut = lookup_table(name)
        except ValueError as e:
            log.warning("%s", e)
            return
        if self._worker is not None:
            self._worker.set_lookup_table(self._lut)  # the worker re-colours; shown at the next tick

    # ----------------------------------------------------------------------------------- outputs

    def _save_dialog(self) -> None:
        run = self.session.run
        start = str((run.out_dir if run is not None else Path.cwd()) / "sr_image.tif")
        path, _ = QtWidgets.QFileDialog.getSaveFileName(
            self, "Save SR image", start, "32-bit TIFF, calibrated (*.tif *.tiff);;PNG as shown (*.png)")
        if path:
            try:
                saved = self.save_sr_image(path)
            except (ValueError, OSError) as e:
                QtWidgets.QMessageBox.warning(self, "Save SR image", str(e))
                return
            self.statusBar().showMessage(f"saved {saved}", 5000)

    def save_sr_image(self, path: str | os.PathLike[str]) -> Path:
        """Save the current SR image: ``.tif``/``.tiff`` = the renderer's float32 image at full
        resolution with its pixel size (Fiji opens it calibrated); ``.png`` = full resolution with the
        window's colour map and contrast percentile."""
        p = Path(path)
        suffix = p.suffix.lower()
        if suffix not in (".tif", ".tiff", ".png"):
            raise ValueError(f"cannot save the SR image as {p.name}: use a .tif, .tiff or .png name")
        sr = self._sr_view  # what is on screen (the frozen image while the display is paused)
        if sr is None or sr.snapshot is None:
            raise ValueError(f"cannot save {p.name}: there is no SR image yet")
        image = np.asarray(sr.snapshot.image, dtype=np.float32)
        if suffix == ".png":
            _, white = percentile_levels(image, 0.0, sr.percentile, nonzero=True)
            rgb = np.ascontiguousarray(self._lut[to_uint8(image, 0.0, white)])
            h, w = rgb.shape[:2]
            qimage = QtGui.QImage(rgb.data, w, h, 3 * w, QtGui.QImage.Format_RGB888)
            if not qimage.save(str(p), "PNG"):
                raise OSError(f"could not write {p}")
            return p
        from rtsmlm.io.movies import write_tiff_movie

        meta = {"content": "super-resolution render", "mode": self.mode_box.currentText(),
                "n_locs": sr.n_locs, "sr_pixel_nm": sr.render_pixel_nm}
        return write_tiff_movie(p, image[None], sr.render_pixel_nm, meta, overwrite=True)

    def open_output_folder(self) -> None:
        run = self.session.run
        if run is not None:
            QtGui.QDesktopServices.openUrl(QtCore.QUrl.fromLocalFile(str(run.out_dir)))

    def save_screenshot(self, path: str | os.PathLike[str]) -> Path:
        """Render the whole window into a PNG (works offscreen)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        QtWidgets.QApplication.processEvents()
        if not self.grab().save(str(p), "PNG"):
            raise OSError(f"could not write the screenshot {p}")
        return p

    # ------------------------------------------------------------------------------------ close

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:  # noqa: N802 (Qt API)
        """Closing stops the run and waits (without blocking the event loop) until every file is
        flushed and the summary written; the window then closes itself."""
        if self.session.active:
            self._close_requested = True
            self.session.stop()
            self._sync_controls()
            self.statusBar().showMessage("stopping: draining and flushing, the window closes when done")
            event.ignore()
            return
        self._timer.stop()
        if self._worker is not None:
            self._worker.stop()
        event.accept()
        self.closed.emit()


def _finite_max(values: np.ndarray) -> float:
    """The largest finite value (0 when there is none)."""
    finite = values[np.isfinite(values)]
    return float(finite.max()) if len(finite) else 0.0


def _depth_bar(z_range_nm: tuple[float, float], steps: int = 9) -> str:
    """A colour bar in rich text for a depth-coloured render: 'z −600 ■■■■■■■■■ +600 nm' in the turbo map."""
    import matplotlib

    cmap = matplotlib.colormaps["turbo"]
    blocks = "".join(f"<span style='color:{matplotlib.colors.to_hex(cmap(k / (steps - 1)))}'>&#9632;</span>"
                     for k in range(steps))
    lo, hi = z_range_nm
    return f"z {lo:+.0f} {blocks} {hi:+.0f} nm"


def _range_text(verdict: dict[str, Any]) -> str:
    """The range guard's verdict for the status line: green when the movie is inside what the model was
    trained on, else what is outside (and the fix is in the log and summary.json)."""
    if verdict.get("ok"):
        return "<span style='color:#7bd88f'>movie inside the model's training range</span>"
    names = {"background_photons": "background", "psf_sigma_px": "PSF width", "spot_photons": "brightness"}
    out = ", ".join(names.get(k, k) for k in verdict.get("out_of_range", []))
    return (f"<span style='color:#ff6b6b'>outside the model's training range: {out} (rtsmlm calibrate, then "
            "a model for this camera)</span>")


def _state_text(session: LiveSession) -> str:
    return {IDLE: "ready", STARTING: "starting…", RUNNING: "acquiring", STOPPING: "stopping: flushing…",
            FINISHED: "finished", FAILED: "failed"}[session.state]


def _format_elapsed(seconds: float) -> str:
    s = int(seconds)
    return f"elapsed {s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}"


# --------------------------------------------------------------------------------------------------
# Entry points


_APP: list[QtWidgets.QApplication] = []  # keeps the QApplication we create alive for the process


def ensure_app(*, offscreen: bool = False) -> QtWidgets.QApplication:
    """The process's QApplication (created when there is none; ``offscreen`` renders without a display)."""
    app = QtWidgets.QApplication.instance()
    if app is None:
        if offscreen:
            os.environ["QT_QPA_PLATFORM"] = "offscreen"
        app = QtWidgets.QApplication(["rtsmlm live"])
        _APP.append(app)
    return app


def open_live_window(cfg: Config, *, realtime: bool = False, run: Any = None, autostart: bool = True) -> LiveWindow:
    """Build the run (unless given), open the window on it and (by default) start acquisition."""
    ensure_app()
    if run is None:
        from rtsmlm.engine.run import build_run

        run = build_run(cfg, realtime=realtime)
    session = LiveSession(cfg, realtime=realtime, run=run)
    window = LiveWindow(session, cfg)
    window.show()
    if autostart:
        window.start_acquisition()
    return window


def live_main(cfg: Config, *, realtime: bool = False, screenshot: str | os.PathLike[str] | None = None) -> int:
    """``rtsmlm live``: the run of ``rtsmlm run`` with the live window; returns the exit code.

    With ``screenshot`` the window is rendered offscreen, the run goes to its end (``--max-frames``),
    the final view is saved to that PNG and the command exits.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ensure_app(offscreen=screenshot is not None)
    window = open_live_window(cfg, realtime=realtime)
    if screenshot is not None:
        def save_and_close() -> None:
            window.refresh()
            path = window.save_screenshot(screenshot)
            print(f"screenshot: {path}")
            window.close()

        window.run_finished.connect(save_and_close)
    loop = QtCore.QEventLoop()
    window.closed.connect(loop.quit)
    interrupted = []

    def on_signal(signum: int) -> None:
        # Runs between Qt events (the refresh timer lets Python see the signal); never raise from here.
        if interrupted:
            print("rtsmlm: second stop signal: leaving without waiting for the files", file=sys.stderr)
            loop.quit()
            return
        interrupted.append(True)
        print(f"\nstopping ({signal_name(signum)}): draining and flushing (Ctrl-C again to abort)",
              file=sys.stderr)
        window.close()

    t0 = time.perf_counter()
    with stop_signals(on_signal):
        loop.exec_()
    if window.session.active:  # left on a second Ctrl-C
        return 130
    summary = window.session.summary or {}
    run = window.session.run
    if summary:
        print(final_line(summary, run.out_dir))
    log.debug("live window open for %.1f s", time.perf_counter() - t0)
    errors = summary.get("errors", []) if summary else ([window.session.error] if window.session.error else [])
    for e in errors:
        print(f"rtsmlm: error: {e}")
    return 1 if errors else 0
