"""Sources by kind: ``source.kind`` in the config names one of :data:`SOURCES`.

Each entry opens its source from the config; the module that implements it is imported only when it is
chosen (Micro-Manager needs pycromanager). A new kind of source is one entry here.
"""

from __future__ import annotations

from collections.abc import Callable

from rtsmlm.acquisition.source import CameraModel, Source, SourceError
from rtsmlm.core.config import Config, effective_max_frames

__all__ = ["SOURCES", "open_source"]


def _simulator(cfg: Config, realtime: bool) -> Source:
    from rtsmlm.acquisition.simulated import SimulatedCamera

    return SimulatedCamera(cfg, realtime=realtime, max_frames=effective_max_frames(cfg.source) or None)


def _file(cfg: Config, realtime: bool) -> Source:
    from rtsmlm.acquisition.file import FileSource

    src = cfg.source
    if not src.path:
        raise SourceError("source.kind is 'file' but source.path is empty (use --source FILE)")
    source = FileSource(src.path, fps=src.fps, max_frames=effective_max_frames(src),
                        camera=CameraModel.from_config(cfg.camera), loop=src.loop)
    maps = source.camera.offset_map
    if maps is not None and tuple(maps.shape) != tuple(source.shape):
        raise SourceError(f"camera.maps_file {cfg.camera.maps_file} holds {maps.shape[0]}x{maps.shape[1]} maps but "
                          f"{src.path} has {source.shape[0]}x{source.shape[1]} frames: calibrate with dark frames of "
                          "the same camera region")
    return source


def _micromanager(cfg: Config, realtime: bool) -> Source:
    from rtsmlm.acquisition.micromanager import open_micromanager_source

    return open_micromanager_source(cfg)


def _watch(cfg: Config, realtime: bool) -> Source:
    from rtsmlm.acquisition.growing_stack import GrowingStackSource

    if not cfg.source.path:
        raise SourceError("source.kind is 'watch' but source.path is empty (the stack's first file)")
    return GrowingStackSource(cfg.source.path, CameraModel.from_config(cfg.camera),
                              idle_timeout_s=cfg.source.idle_timeout_s, max_frames=effective_max_frames(cfg.source))


def _push(cfg: Config, realtime: bool) -> Source:
    raise SourceError("source.kind 'push' takes frames from your acquisition script: start it with "
                      "rtsmlm.embedded.EmbeddedRun, not from a config")


SOURCES: dict[str, Callable[[Config, bool], Source]] = {
    "simulator": _simulator,
    "file": _file,
    "micromanager": _micromanager,
    "watch": _watch,
    "push": _push,
}
"""``source.kind`` → a function ``(config, realtime) -> Source``."""


def open_source(cfg: Config, *, realtime: bool = False) -> Source:
    """The frame source ``cfg.source`` names. ``realtime`` paces a simulated camera at its exposure."""
    try:
        opener = SOURCES[cfg.source.kind]
    except KeyError:
        raise SourceError(f"source.kind {cfg.source.kind!r} is not a source; use one of {', '.join(SOURCES)}") \
            from None
    return opener(cfg, realtime)
