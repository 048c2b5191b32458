"""Simulated z-stacks of fluorescent beads: the input of ``rtsmlm calibrate-psf`` with a known PSF.

A bead stack is taken by stepping the focus through a field of sub-diffraction beads on a coverslip. Each
bead sits at its own small z offset (the coverslip is never perfectly flat) and is imaged at every focus
position through the PSF under test, with the camera's noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rtsmlm.core.camera import CameraModel
from rtsmlm.sim.psf import PSF, AstigmaticPSF

__all__ = ["BeadStack", "TwoLobePSF", "bead_stack"]


@dataclass(frozen=True)
class BeadStack:
    """Raw frames (slices, height, width) in ADU; the PSF's z of each slice for a bead at offset 0 (nm);
    the beads' x, y (px) and z offsets (nm)."""

    frames: np.ndarray
    z_nm: np.ndarray
    x_px: np.ndarray
    y_px: np.ndarray
    z_offset_nm: np.ndarray


def bead_stack(psf: PSF, camera: CameraModel, *, n_beads: int = 8, size: int = 96, z_range_nm: float = 800.0,
               z_step_nm: float = 20.0, photons: float = 20000.0, bg_photons: float = 10.0,
               z_offset_sigma_nm: float = 15.0, seed: int = 0) -> BeadStack:
    """Beads at least 16 px apart and 10 px from the border, imaged at z from −``z_range_nm`` to
    +``z_range_nm`` in ``z_step_nm`` steps."""
    rng = np.random.default_rng(seed)
    xs: list[float] = []
    ys: list[float] = []
    for _ in range(1000 * n_beads):
        if len(xs) == n_beads:
            break
        x, y = rng.uniform(10, size - 10, 2)
        if all((x - a) ** 2 + (y - b) ** 2 >= 16**2 for a, b in zip(xs, ys)):
            xs.append(float(x))
            ys.append(float(y))
    x_px, y_px = np.array(xs), np.array(ys)
    offsets = rng.normal(0.0, z_offset_sigma_nm, len(xs))
    z_nm = np.arange(-z_range_nm, z_range_nm + 0.5 * z_step_nm, z_step_nm)
    frames = np.empty((len(z_nm), size, size), np.uint16)
    for k, z in enumerate(z_nm):
        expected = psf.render(x_px, y_px, z + offsets, np.full(len(xs), photons), (size, size)) + bg_photons
        frames[k] = camera.expose(expected, rng)
    return BeadStack(frames, z_nm, x_px, y_px, offsets)


class TwoLobePSF:
    """A PSF no Gaussian describes, for testing a spline calibration: an astigmatic core (70 % of the light)
    and two side lobes 2.5 px out, opposite each other, that swing a quarter turn per 600 nm of z (so the
    spot's centre stays the emitter's). calibrate-psf puts z = 0 where a Gaussian fit of the spot is round,
    which the lobes move away from the core's focus."""

    def __init__(self, core: AstigmaticPSF | None = None) -> None:
        self.core = core or AstigmaticPSF(1.3, 300.0, 400.0)
        self.lobe = AstigmaticPSF(self.core.sigma_px, 0.0, 1e4)

    def render(self, x, y, z, photons, shape):
        z = np.asarray(z, float)
        angle = z / 600.0 * np.pi / 2
        photons = np.asarray(photons, float)
        img = self.core.render(x, y, z, 0.7 * photons, shape)
        for sign in (1.0, -1.0):
            img += self.lobe.render(x + sign * 2.5 * np.cos(angle), y + sign * 2.5 * np.sin(angle), z,
                                    0.15 * photons, shape)
        return img
