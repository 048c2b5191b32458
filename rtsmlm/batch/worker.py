"""What a Dask worker runs: localize one time chunk of one movie.

A chunk reports frames ``start``..``stop - 1`` and reads ``context`` frames more on each side (the model's
temporal window), so every reported frame is localized with the same neighbours as in a run over the
whole movie; at the ends of the movie the same edge padding applies. The worker reads only its frames
from the file (a memory-mapped TIFF, a chunked OME-Zarr), never the whole movie, and sends back the
localization table; the client writes it. The opened backend and localizer are kept per worker process
(opening one loads and warms up the network, which costs far more than a chunk).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from rtsmlm.core.config import Config

__all__ = ["ChunkResult", "ChunkTask", "localize_chunk"]


@dataclass(frozen=True)
class ChunkTask:
    """One chunk of one movie: the frames it reports and the frames it reads."""

    path: str
    start: int
    stop: int
    read_start: int
    read_stop: int
    judge_range: bool = False  # the movie's first chunk: is the movie inside the model's training range?


@dataclass(frozen=True)
class ChunkResult:
    """A localized chunk: its localizations (frames ``start``..``stop - 1``), where and how fast."""

    start: int
    stop: int
    locs: np.ndarray
    seconds: float
    worker: str
    range_verdict: dict[str, Any] | None = None
    nonfinite_frames: int = 0


# Per worker process: the localizers opened so far, by (checkpoint, backend, camera, frame shape). Two at
# most (a batch mixing two cameras); a third replaces the oldest.
_LOCALIZERS: dict[tuple[Any, ...], Any] = {}
_LOCK = threading.Lock()


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except (ImportError, ValueError):
        return f"pid {os.getpid()}"


def _choose_gpu() -> None:
    """One worker per GPU: a worker named k (LocalCluster names them 0..N-1) takes GPU k mod the count."""
    import torch

    n = torch.cuda.device_count()
    if n > 1:
        name = _worker_name()
        if name.isdigit():
            torch.cuda.set_device(int(name) % n)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def _relax_malloc_trim() -> None:
    """Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, so glibc hands freed memory back to the
    system at once, and setting it also fixes glibc's mmap threshold at 128 kB: every activation tensor is then
    mapped and unmapped anew each batch, and the page faults made a worker run at half the speed of the
    same code in a plain process (measured: 14 s against 7 s for 500 frames of 64²). Put both thresholds
    back up in this process (glibc only; elsewhere nothing changes)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)  # glibc's maximum
        libc.mallopt(_M_TRIM_THRESHOLD, 256 * 2**20)
    except (OSError, AttributeError):
        pass


def _localizer(cfg: Config, camera: Any, shape: tuple[int, int]) -> Any:
    from rtsmlm.localization.backends import open_backend
    from rtsmlm.localization.checkpoint import check_compatible
    from rtsmlm.localization.localizer import StreamingLocalizer

    # The camera: what the file records (describe()) on top of the config's, whose maps file gives the maps.
    key = (cfg.model, cfg.backend, cfg.pipeline.max_batch, cfg.pipeline.memory_mb, cfg.camera, cfg.psf,
           json.dumps(camera.describe(), sort_keys=True, default=str), shape)
    with _LOCK:
        if key in _LOCALIZERS:
            return _LOCALIZERS[key]
        if not _LOCALIZERS:
            _relax_malloc_trim()
        if cfg.backend.device != "cpu":
            _choose_gpu()
        backend, meta = open_backend(cfg.backend, cfg.model.checkpoint)
        check_compatible(meta, camera.describe(), f"checkpoint {cfg.model.checkpoint!r}")
        loc = StreamingLocalizer.for_run(backend, meta, camera, shape, cfg)
        while len(_LOCALIZERS) >= 2:
            _LOCALIZERS.pop(next(iter(_LOCALIZERS)))
        _LOCALIZERS[key] = loc
        return loc


_CAMERAS: dict[tuple[str, Any], Any] = {}


def _camera(cfg: Config, path: str, movie: Any) -> Any:
    """The movie's camera as a file run sees it: the config's, with what the file records (its pixel size,
    its camera settings) field by field; per-pixel maps are loaded once per process."""
    from rtsmlm.acquisition.file import camera_from_metadata
    from rtsmlm.core.camera import CameraModel

    key = (path, cfg.camera)
    if key not in _CAMERAS:
        base = CameraModel.from_config(cfg.camera)
        _CAMERAS.clear()
        _CAMERAS[key] = camera_from_metadata(movie.metadata, movie.pixel_size_nm, base, path)[0]
    return _CAMERAS[key]


def localize_chunk(cfg: Config, task: ChunkTask) -> ChunkResult:
    """Read frames ``read_start..read_stop - 1`` of ``task.path``, localize them as one sequence, keep the
    localizations of frames ``start..stop - 1``. Runs on a Dask worker (any process)."""
    from rtsmlm.io.movies import open_movie
    from rtsmlm.localization.localizer import localize_movie

    t0 = time.perf_counter()
    with open_movie(task.path) as movie:
        camera = _camera(cfg, task.path, movie)
        frames = movie.read_range(task.read_start, task.read_stop)
        shape = movie.shape
    localizer = _localizer(cfg, camera, shape)
    localizer.restart(check_range=task.judge_range)
    localizer.nonfinite = {}
    locs = localize_movie(localizer, frames, first_index=task.read_start)
    keep = (locs["frame"] >= task.start) & (locs["frame"] < task.stop)
    verdict = localizer.range_verdict.to_json() if task.judge_range and localizer.range_verdict is not None \
        and localizer.range_verdict.frames else None
    return ChunkResult(task.start, task.stop, locs[keep], time.perf_counter() - t0, _worker_name(),
                       verdict, len(localizer.nonfinite))


def single_thread_config(cfg: Config) -> Config:
    """``cfg`` with one inference thread per worker unless ``backend.threads`` is set: a LocalCluster runs
    one worker process per core."""
    if cfg.backend.threads:
        return cfg
    return replace(cfg, backend=replace(cfg.backend, threads=1))
