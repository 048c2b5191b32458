"""Run the engine inside a script that drives the microscope itself.

Scientists who script their microscope keep their acquisition (a pycromanager ``Acquisition``, a
pymmcore-plus MDA, their own loop) and hand each image to rtsmlm::

    from rtsmlm.embed import EmbeddedRun

    with EmbeddedRun(config="camera.toml", out="runs/cells_1") as run:          # the usual outputs
        with Acquisition(directory="data", name="cells", image_process_fn=run.image_process_fn) as acq:
            acq.acquire(multi_d_acquisition_events(num_time_points=10000))
    print(run.summary["n_locs"])

    # pymmcore-plus: mmc.mda.events.frameReady.connect(run.on_frame_ready)

The run is the one ``rtsmlm run`` builds (ring, localizer, files, ZeroMQ stream, plugins, live view with
``live=True``), fed by a :class:`~rtsmlm.acquisition.push.PushSource`. Handing over an image never blocks
the acquisition thread: the run is built on a thread of its own when the first image arrives (its size
and type fix the run's), frames wait in a bounded queue meanwhile, and an image the engine cannot take
is dropped and counted (``frames_lost_camera`` … in the summary) — never waited for.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rtsmlm.acquisition.push import PushSource
from rtsmlm.core import config as config_mod
from rtsmlm.core.camera import CameraModel
from rtsmlm.core.config import Config

__all__ = ["EmbeddedRun"]

log = logging.getLogger("rtsmlm.embed")


class EmbeddedRun:
    """An rtsmlm run fed image by image from the caller's acquisition.

    Args:
        config: a config path, a :class:`~rtsmlm.core.config.Config`, or None (defaults).
        out: output folder (default: ``output.dir`` or a new ``runs/run-…``).
        overrides: ``KEY=VALUE`` settings as ``--set`` takes them.
        shape, dtype: the frames' size and type when known in advance: the run is then built in the
            constructor (a few seconds), before acquisition starts; otherwise at the first image.
        capacity: frames that may wait between the acquisition and the run (more are dropped, counted).
        live: open the live window (needs a Qt event loop in the caller's main thread, e.g. napari/IPython
            ``%gui qt``).
        control: device properties for feedback plugins (a pycromanager/pymmcore core); optional.
    """

    def __init__(self, config: str | Path | Config | None = None, *, out: str | Path | None = None,
                 overrides: Sequence[str] = (), shape: tuple[int, int] | None = None, dtype: Any = np.uint16,
                 capacity: int = 1024, live: bool = False, control: Any = None) -> None:
        extra = ['source.kind="push"', *overrides]
        if out is not None:
            extra.append(f'output.dir="{Path(out).as_posix()}"')
        if isinstance(config, Config):
            if overrides:
                raise ValueError("overrides go with a config path; apply them to a Config yourself")
            tables = config_mod.to_dict(config)
            changes: dict[str, Any] = {"source": {**tables["source"], "kind": "push"}}
            if out is not None:
                changes["output"] = {**tables["output"], "dir": str(out)}
            self.cfg = config_mod.replace(config, **changes)
        else:
            self.cfg = config_mod.load(str(config) if config is not None else None, extra)
        self.capacity = int(capacity)
        self.live = live
        self.control = control
        self.source: PushSource | None = None
        self.run: Any = None
        self.summary: dict[str, Any] = {}
        self.error: BaseException | None = None
        self._built = threading.Event()
        self._lock = threading.Lock()
        self._window: Any = None
        self.frames_dropped_before_start = 0
        if shape is not None:
            self._open(tuple(shape), np.dtype(dtype), background=False)

    # ------------------------------------------------------------------------ from the acquisition

    def push(self, image: np.ndarray) -> bool:
        """Hand over one image; returns at once. False when it was dropped (counted in the summary)."""
        source = self.source
        if source is None:
            with self._lock:
                if self.source is None:
                    img = np.asarray(image)
                    self._open((int(img.shape[0]), int(img.shape[1])), img.dtype, background=True)
                source = self.source
        assert source is not None
        return source.push(image)

    def image_process_fn(self, image: np.ndarray, metadata: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        """pycromanager's ``Acquisition(image_process_fn=...)``: analyse the image, keep it for saving."""
        self.push(image)
        return image, metadata

    def on_frame_ready(self, image: np.ndarray, event: Any = None, metadata: Any = None) -> None:
        """pymmcore-plus: ``mmc.mda.events.frameReady.connect(run.on_frame_ready)``."""
        self.push(image)

    # ------------------------------------------------------------------------------------ the run

    def _open(self, shape: tuple[int, int], dtype: np.dtype, *, background: bool) -> None:
        self.source = PushSource(shape, dtype, CameraModel.from_config(self.cfg.camera), capacity=self.capacity,
                                 control=self.control)
        if background:
            threading.Thread(target=self._build, name="rtsmlm-embedded-build", daemon=True).start()
        else:
            self._build()
            if self.error is not None:
                raise self.error

    def _build(self) -> None:
        from rtsmlm.engine.run import build_run

        try:
            self.run = build_run(self.cfg, realtime=False, source=self.source)
            if self.live:
                from rtsmlm.gui.app import open_live_window

                self._window = open_live_window(self.cfg, run=self.run)
            else:
                self.run.start()
        except BaseException as e:  # reported by finish(); the acquisition itself goes on
            log.error("rtsmlm could not start the run: %s", e)
            self.error = e
            if self.source is not None:
                self.source.stop()
        finally:
            self._built.set()

    @property
    def out_dir(self) -> Path | None:
        return self.run.out_dir if self.run is not None else None

    def finish(self, timeout: float | None = None) -> dict[str, Any]:
        """The acquisition is over: analyse what is queued, flush, write summary.json; returns the summary."""
        if self.source is None:
            return {}
        self.source.end()
        self._built.wait(timeout)
        if self.error is not None:
            raise self.error
        if not self.run.wait(timeout):
            self.run.stop()
            self.run.wait(30)
        self.summary = dict(self.run.finish())
        return self.summary

    def __enter__(self) -> EmbeddedRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()
