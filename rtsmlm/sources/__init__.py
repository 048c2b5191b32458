"""Frame sources: the simulated camera, file replay, Micro-Manager.

Use :func:`rtsmlm.sources.open_source` to build the source a config names.
"""

from rtsmlm.sources.base import CameraModel, Frame, Source, SourceError

__all__ = ["CameraModel", "Frame", "Source", "SourceError"]
