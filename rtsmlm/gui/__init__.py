"""The live view: a PyQt5 + pyqtgraph window over a running pipeline (``rtsmlm live``).

* :mod:`rtsmlm.gui.display` — what the window shows, prepared on a worker thread (no Qt).
* :mod:`rtsmlm.gui.session` — start/stop/finish of the run behind the window (no Qt).
* :mod:`rtsmlm.gui.widgets` — scale bar, dark theme, colour maps (Qt).
* :mod:`rtsmlm.gui.app` — :class:`~rtsmlm.gui.app.LiveWindow` and :func:`~rtsmlm.gui.app.live_main`.
* :mod:`rtsmlm.gui.probe` — measures GUI event-loop delay (tests, benchmark).

Importing this package does not import Qt; the Qt modules raise :class:`GuiUnavailableError` with the
install command when PyQt5 or pyqtgraph is missing.
"""

from __future__ import annotations

from typing import Any

from rtsmlm.core.errors import RtsmlmError


class GuiUnavailableError(RtsmlmError, RuntimeError):
    """PyQt5 or pyqtgraph (or a system library Qt needs) is not installed."""


def require_qt() -> tuple[Any, Any, Any, Any]:
    """Import and return ``(QtCore, QtGui, QtWidgets, pyqtgraph)``, or say what to install."""
    try:
        import pyqtgraph
        from PyQt5 import QtCore, QtGui, QtWidgets
    except ImportError as e:
        raise GuiUnavailableError(
            f"the live view needs PyQt5 and pyqtgraph (pip install 'rtsmlm[gui]'; on Linux also the "
            f"system libraries libgl1 libglib2.0-0 libfontconfig1): {e}") from None
    return QtCore, QtGui, QtWidgets, pyqtgraph
