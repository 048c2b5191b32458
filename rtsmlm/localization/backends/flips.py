"""Test-time flips: the network run on each frame and its mirror images, the output maps averaged.

A Gaussian or astigmatic PSF, the camera's noise and a uniformly random sample look the same mirrored in x or
in y, so a network trained on them should give mirrored answers for mirrored frames; where it does not, the
difference is its error (variance of a finite network, a preference for one side of a pixel), and the average
of the mirrored answers has less of it. ``backend.test_time_flips`` = 2 runs the frame and its 180° rotation
(mirrored in both axes), 4 the frame mirrored in x, in y and in both. It costs that many times the network's
arithmetic; the feature cache of the streaming localizer holds all copies (``feature_channels`` grows by the
same factor), and thresholds and brightness floors are chosen on the averaged maps as on any other
(``rtsmlm calibrate`` runs the configured backend).

A spline PSF calibrated from beads is in general not mirror-symmetric (coma, tilted astigmatism): a flipped
frame would show the network a PSF it was not trained on, so :func:`check_flips` refuses such a model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rtsmlm.localization.backends.protocol import Backend, BackendError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from rtsmlm.localization.checkpoint import ModelMeta

FLIP_SETS: dict[int, tuple[tuple[int, ...], ...]] = {
    2: ((), (-2, -1)),
    4: ((), (-1,), (-2,), (-2, -1)),
}
"""Per ``test_time_flips``: the tensor axes each copy is mirrored in (-1 = x, columns; -2 = y, rows)."""

MIRROR_SYMMETRIC_PSFS = ("gaussian", "astigmatic")


def flip_axes(flips: int) -> tuple[tuple[int, ...], ...]:
    """The mirror axes of each copy for ``flips`` copies (:data:`FLIP_SETS`); one sentence for another count."""
    if flips not in FLIP_SETS:
        raise BackendError(f"backend.test_time_flips = {flips}: must be 1 (off), 2 or 4")
    return FLIP_SETS[flips]


def check_flips(flips: int, meta: "ModelMeta", checkpoint: str) -> None:
    """One sentence when ``flips`` copies cannot be averaged for this model: an unknown count, or a PSF the
    mirror images of which the model was not trained on."""
    if flips != 1:
        flip_axes(flips)
    psf_model = str(meta.psf.get("model", "gaussian"))
    if flips > 1 and psf_model not in MIRROR_SYMMETRIC_PSFS:
        raise BackendError(f"backend.test_time_flips = {flips} needs a mirror-symmetric PSF, but checkpoint "
                           f"{checkpoint!r} was trained on a {psf_model} PSF: set test_time_flips = 1")


class FlippedBackend:
    """A :class:`Backend` that runs ``inner`` on ``flips`` mirror images of every frame and averages the maps.

    Features of the copies are kept side by side along the channel axis (copy-major), so the localizer's
    frame cache and window assembly work unchanged: a window's input ``(B, window * flips * C, H, W)`` is
    split back into one window per copy for ``inner.decode``. Each copy's maps are mirrored back (the x or y
    offset, measured from the pixel centre, changes sign with its axis) before they are averaged.
    """

    def __init__(self, inner: Backend, flips: int) -> None:
        self._axes = flip_axes(flips)
        self.inner = inner
        self.flips = flips
        self.name = inner.name
        self.device = inner.device
        self.precision = inner.precision
        self.window = inner.window
        self.in_channels = inner.in_channels
        self.feature_channels = inner.feature_channels * flips
        self.size_multiple = inner.size_multiple

    def warmup(self, height: int, width: int, encode_batch: int, decode_batch: int) -> None:
        self.inner.warmup(height, width, encode_batch, decode_batch)

    def upload(self, frames: "np.ndarray") -> "torch.Tensor":
        return self.inner.upload(frames)

    def encode(self, frames: "torch.Tensor") -> "torch.Tensor":
        import torch

        # Each inner result is valid only until the next inner call (Backend protocol): copied before the next.
        copies = [self.inner.encode(torch.flip(frames, axes) if axes else frames).clone() for axes in self._axes]
        return torch.cat(copies, dim=1)

    def decode(self, features: "torch.Tensor") -> "torch.Tensor":
        import torch

        from rtsmlm.localization.net import CH_X, CH_Y

        b, _, h, w = features.shape
        c = self.inner.feature_channels
        per_copy = features.reshape(b, self.window, self.flips, c, h, w)
        total = None
        for k, axes in enumerate(self._axes):
            maps = self.inner.decode(per_copy[:, :, k].reshape(b, self.window * c, h, w)).float()
            if axes:
                maps = torch.flip(maps, axes)  # a copy, in float32: safe to change in place
                for axis, channel in ((-1, CH_X), (-2, CH_Y)):
                    if axis in axes:
                        maps[:, channel] = -maps[:, channel]
            total = maps.clone() if total is None else total.add_(maps)
        assert total is not None
        return total.div_(self.flips)

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "test_time_flips": self.flips}
