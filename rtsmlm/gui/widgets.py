"""Qt pieces of the live view: a dark theme, colour-map lookup tables and a self-sizing scale bar."""

from __future__ import annotations

import math

import numpy as np

from rtsmlm.analysis.render import COLORMAPS
from rtsmlm.gui import require_qt
from rtsmlm.gui.display import format_length, nice_length

QtCore, QtGui, QtWidgets, pg = require_qt()


ACCENT = {"camera": "#7fb3ff", "localized": "#ffae42", "x": "#ff6b6b", "y": "#4ecdc4",
          "localizer": "#ffae42", "recorder": "#7fdc8a", "locs": "#e9e4f0"}
"""Curve colours: the same quantity has the same colour in every plot."""


def lookup_table(name: str) -> np.ndarray:
    """A (256, 3) uint8 lookup table for colour map ``name`` (pyqtgraph's bundled maps, matplotlib's,
    or ``gray``/``hot`` built here)."""
    x = np.linspace(0.0, 1.0, 256)
    if name in ("gray", "grey"):
        ramp = np.round(x * 255).astype(np.uint8)
        return np.stack([ramp] * 3, axis=1)
    if name == "hot":  # black → red → yellow → white, as ImageJ's and matplotlib's "hot"
        rgb = np.clip(np.stack([x * 3, x * 3 - 1, x * 3 - 2], axis=1), 0, 1)
        return np.round(rgb * 255).astype(np.uint8)
    cmap = None
    try:
        cmap = pg.colormap.get(name)
    except Exception:  # not bundled with pyqtgraph: try matplotlib's registry
        try:
            cmap = pg.colormap.get(name, source="matplotlib")
        except Exception:
            cmap = None
    if cmap is None:
        raise ValueError(f"gui.colormap {name!r} is not a known colour map (try one of {', '.join(COLORMAPS)})")
    return cmap.getLookupTable(0.0, 1.0, 256, alpha=False).astype(np.uint8)


def apply_dark_theme(app: QtWidgets.QApplication) -> None:
    """Fusion style with a dark palette: an SR image reads best on a dark surround."""
    app.setStyle("Fusion")
    pal = QtGui.QPalette()
    base, window, text, mid = QtGui.QColor(24, 24, 27), QtGui.QColor(36, 36, 40), QtGui.QColor(220, 220, 225), QtGui.QColor(60, 60, 66)
    for role, color in [(QtGui.QPalette.Window, window), (QtGui.QPalette.WindowText, text),
                        (QtGui.QPalette.Base, base), (QtGui.QPalette.AlternateBase, window),
                        (QtGui.QPalette.ToolTipBase, window), (QtGui.QPalette.ToolTipText, text),
                        (QtGui.QPalette.Text, text), (QtGui.QPalette.Button, QtGui.QColor(48, 48, 54)),
                        (QtGui.QPalette.ButtonText, text), (QtGui.QPalette.BrightText, QtGui.QColor(255, 90, 90)),
                        (QtGui.QPalette.Highlight, QtGui.QColor(255, 174, 66)),
                        (QtGui.QPalette.HighlightedText, QtGui.QColor(0, 0, 0)), (QtGui.QPalette.Mid, mid)]:
        pal.setColor(role, color)
    pal.setColor(QtGui.QPalette.Disabled, QtGui.QPalette.ButtonText, QtGui.QColor(110, 110, 115))
    pal.setColor(QtGui.QPalette.Disabled, QtGui.QPalette.WindowText, QtGui.QColor(110, 110, 115))
    app.setPalette(pal)


class ScaleBar(QtWidgets.QGraphicsObject):
    """A scale bar in the bottom-right corner of a :class:`pyqtgraph.ViewBox` whose data unit is nm.

    It is a child of the ViewBox itself (not of the zoomed content), so it keeps its place and
    thickness on screen; its length is re-chosen from the 1-2-5 series on every zoom or resize to about
    ``fraction`` of the view's width, and its label says the length ("500 nm", "2 µm").
    """

    def __init__(self, viewbox: pg.ViewBox, *, fraction: float = 0.18, margin_px: float = 16.0,
                 thickness_px: float = 5.0) -> None:
        super().__init__()
        self._vb = viewbox
        self.fraction = fraction
        self.margin_px = margin_px
        self.thickness_px = thickness_px
        self.setParentItem(viewbox)
        self.setZValue(1e6)  # above the image
        viewbox.sigRangeChanged.connect(self._relayout)
        viewbox.sigResized.connect(self._relayout)

    def _relayout(self, *_: object) -> None:
        self.prepareGeometryChange()
        self.update()

    def measure(self) -> tuple[float, float] | None:
        """(bar length in nm, bar length in screen pixels), or None while the view has no size."""
        nm_per_px = self._vb.viewPixelSize()[0]
        width = self._vb.width()
        if not (math.isfinite(nm_per_px) and nm_per_px > 0 and width > 0):
            return None
        length_nm = nice_length(nm_per_px * width * self.fraction)
        return length_nm, length_nm / nm_per_px

    def label(self) -> str:
        """The text the bar shows ("" while the view has no size)."""
        m = self.measure()
        return format_length(m[0]) if m else ""

    def boundingRect(self) -> QtCore.QRectF:  # noqa: N802 (Qt API)
        return self._vb.boundingRect()

    def paint(self, painter: QtGui.QPainter, *_: object) -> None:
        m = self.measure()
        if m is None:
            return
        length_nm, bar_px = m
        r = self._vb.boundingRect()
        x1, y1 = r.right() - self.margin_px, r.bottom() - self.margin_px
        bar = QtCore.QRectF(x1 - bar_px, y1 - self.thickness_px, bar_px, self.thickness_px)
        painter.setRenderHint(QtGui.QPainter.Antialiasing, False)
        painter.fillRect(bar.adjusted(-1, -1, 1, 1), QtGui.QColor(0, 0, 0, 160))  # outline on bright areas
        painter.fillRect(bar, QtGui.QColor(255, 255, 255))
        font = painter.font()
        font.setPointSizeF(10.0)
        font.setBold(True)
        painter.setFont(font)
        text_rect = QtCore.QRectF(bar.center().x() - 60, bar.top() - 22, 120, 18)
        flags = QtCore.Qt.AlignHCenter | QtCore.Qt.AlignBottom
        label = format_length(length_nm)
        painter.setPen(QtGui.QColor(0, 0, 0, 200))
        painter.drawText(text_rect.translated(1, 1), flags, label)
        painter.setPen(QtGui.QColor(255, 255, 255))
        painter.drawText(text_rect, flags, label)


class TimedGraphicsWidget(pg.GraphicsLayoutWidget):
    """A GraphicsLayoutWidget that measures how long its repaints take (wall time, GUI thread).

    The window uses it to pace image uploads: under a busy CPU a repaint can take many times its CPU
    time (the GUI thread waits for the GIL and for a core), and uploading images faster than the view
    can paint them would leave the event loop no time for anything else.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.paint_s = 0.0  # exponential average of the repaint wall time
        self.n_paints = 0

    def paintEvent(self, ev: QtGui.QPaintEvent) -> None:  # noqa: N802 (Qt API)
        import time

        t0 = time.perf_counter()
        super().paintEvent(ev)
        dt = time.perf_counter() - t0
        self.paint_s = dt if self.n_paints == 0 else 0.7 * self.paint_s + 0.3 * dt
        self.n_paints += 1

