"""Offline localization of whole in-memory movies: raw frames in, one localization table out.

For benchmarks, notebooks and tests that hold a movie as an array. It opens the backend, checks the
checkpoint against the camera and runs the same :class:`rtsmlm.localization.localizer.StreamingLocalizer` a live
run uses (through :func:`rtsmlm.localization.localizer.localize_movie`), so the numbers it gives are those of
the real-time path. :class:`OfflineLocalizer` keeps the backend open across movies (opening one traces
and warms up the network, which costs far more than a short movie); :func:`localize_frames` is the
one-call form.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from rtsmlm.core.config import BackendConfig, ModelConfig

if TYPE_CHECKING:
    from rtsmlm.core.camera import CameraModel
    from rtsmlm.localization.localizer import StreamingLocalizer

__all__ = ["OfflineLocalizer", "localize_frames"]


class OfflineLocalizer:
    """One checkpoint on one opened backend, localizing any number of movies in turn.

    Args:
        checkpoint: 'default' (the shipped model) or a checkpoint path prefix.
        backend_cfg: which engine runs it (None = the config default, 'auto').
        p_threshold, candidate_threshold, refine, min_photons, residual_threshold, merge_splits: as ``[model]`` in config.toml (a negative p threshold:
            the model's own).

    Call :meth:`localize` once per movie, from one thread.
    """

    def __init__(self, checkpoint: str = "default", backend_cfg: BackendConfig | None = None,
                 p_threshold: float = -1.0, candidate_threshold: float = 0.3, refine: str = "off",
                 min_photons: float = 0.0, residual_threshold: float = ModelConfig.residual_threshold,
                 merge_splits: bool = ModelConfig.merge_splits) -> None:
        from rtsmlm.localization.backends import open_backend

        self.checkpoint = checkpoint
        self.p_threshold = p_threshold
        self.candidate_threshold = candidate_threshold
        self.refine = refine
        self.min_photons = min_photons
        self.residual_threshold = residual_threshold
        self.merge_splits = merge_splits
        self.backend_cfg = backend_cfg if backend_cfg is not None else BackendConfig()
        self.backend, self.meta = open_backend(self.backend_cfg, checkpoint)

    @property
    def step(self) -> int:
        """Training step of the loaded weights."""
        return self.meta.step

    def localize(self, frames: np.ndarray, camera: "CameraModel", *, first_index: int = 0,
                 batch_size: int = 0, psf_sigma_nm: float | None = None) -> np.ndarray:
        """Localize every frame of ``frames`` ((n, H, W) raw camera counts) into a LOC_DTYPE table.

        ``camera`` converts counts to photons and gives the pixel size. Frames are numbered from
        ``first_index``; the first and last are analysed with edge padding, as at the ends of a live run.
        A camera that differs from the one the model was trained for is warned about, not refused.
        ``psf_sigma_nm``: the PSF σ (``psf.sigma_nm``), which a conditioned model needs.
        """
        from rtsmlm.localization.checkpoint import check_compatible
        from rtsmlm.localization.localizer import localize_movie

        frames = np.asarray(frames)
        if frames.ndim != 3:
            raise ValueError(f"localize() expects a movie of shape (n, height, width), got {frames.shape}.")
        check_compatible(self.meta, camera.describe(), f"checkpoint {self.checkpoint!r} on this movie")
        localizer = self.streaming(camera, frames.shape[1:], batch_size=batch_size, psf_sigma_nm=psf_sigma_nm)
        return localize_movie(localizer, frames, first_index=first_index)

    def streaming(self, camera: "CameraModel", frame_shape: tuple[int, int], *, batch_size: int = 0,
                  psf_sigma_nm: float | None = None) -> "StreamingLocalizer":
        """A fresh :class:`StreamingLocalizer` on this backend with these thresholds, for frames of
        ``frame_shape``: what :meth:`localize` pushes a movie through, for callers that push frames
        themselves (with gaps, in chunks)."""
        from rtsmlm.localization.localizer import StreamingLocalizer

        return StreamingLocalizer(self.backend, self.meta, camera, tuple(frame_shape), self.p_threshold,
                                  self.candidate_threshold, batch_size=batch_size, refine=self.refine,
                                  min_photons=self.min_photons, residual_threshold=self.residual_threshold,
                                  merge_splits=self.merge_splits,
                                  psf_sigma_px=None if psf_sigma_nm is None else psf_sigma_nm / camera.pixel_size_nm)


def localize_frames(frames: np.ndarray, camera: "CameraModel", checkpoint: str = "default",
                    backend_cfg: BackendConfig | None = None, p_threshold: float = -1.0,
                    candidate_threshold: float = 0.3, *, first_index: int = 0,
                    batch_size: int = 0, psf_sigma_nm: float | None = None) -> np.ndarray:
    """Open ``checkpoint`` on a backend and localize one movie (see :class:`OfflineLocalizer`)."""
    return OfflineLocalizer(checkpoint, backend_cfg, p_threshold, candidate_threshold).localize(
        frames, camera, first_index=first_index, batch_size=batch_size, psf_sigma_nm=psf_sigma_nm)

