"""Point-spread functions: the expected photons per pixel of a point emitter.

All PSFs implement :class:`PSF`. Positions are in pixels from the top-left corner of the image (pixel
(i, j) spans x in [j, j+1), y in [i, i+1)); z in nm. A calibrated cubic-spline PSF fits the same
protocol (:class:`rtsmlm.sim.spline_psf.SplinePSF`): it only has to turn (x, y, z, photons) into
pixel-integrated expected counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy.special import erf

_SQRT2 = np.sqrt(2.0)


class PSF(Protocol):
    """Turns emitters into an image of expected photons per pixel."""

    def render(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, photons: np.ndarray,
               shape: tuple[int, int]) -> np.ndarray:
        """Expected photons per pixel (float64, ``shape``) of emitters at (x, y) px, z nm."""


def _axis_fractions(centre: np.ndarray, sigma: np.ndarray, start: np.ndarray, k: int) -> np.ndarray:
    """Fraction of a 1D Gaussian's mass in each of ``k`` unit pixels starting at ``start``: (n, k)."""
    edges = start[:, None] + np.arange(k + 1)[None, :]
    cdf = erf((edges - centre[:, None]) / (_SQRT2 * sigma[:, None]))
    return 0.5 * np.diff(cdf, axis=1)


def render_separable(x: np.ndarray, y: np.ndarray, sigma_x: np.ndarray, sigma_y: np.ndarray,
                     photons: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixel-integrated (erf) elliptical Gaussians, each on a patch of ±4.5 sigma, summed into an image.

    Mass that falls outside the image is lost, as on a real camera.
    """
    h, w = shape
    img = np.zeros(h * w, dtype=np.float64)
    if len(x) == 0:
        return img.reshape(shape)
    k = int(np.ceil(9.0 * max(float(np.max(sigma_x)), float(np.max(sigma_y))))) + 2
    x0 = np.floor(x - k / 2.0).astype(np.int64)
    y0 = np.floor(y - k / 2.0).astype(np.int64)
    fx = _axis_fractions(x, sigma_x, x0.astype(np.float64), k)  # (n, k)
    fy = _axis_fractions(y, sigma_y, y0.astype(np.float64), k)
    patch = photons[:, None, None] * fy[:, :, None] * fx[:, None, :]  # (n, k, k): rows = y
    rows = y0[:, None] + np.arange(k)[None, :]
    cols = x0[:, None] + np.arange(k)[None, :]
    r = np.broadcast_to(rows[:, :, None], patch.shape)
    c = np.broadcast_to(cols[:, None, :], patch.shape)
    inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
    flat = (r * w + c)[inside]
    img += np.bincount(flat, weights=patch[inside], minlength=h * w)
    return img.reshape(shape)


@dataclass(frozen=True)
class GaussianPSF:
    """Isotropic 2D Gaussian integrated over each pixel (z ignored)."""

    sigma_px: float

    def render(self, x, y, z, photons, shape):
        s = np.full(len(x), self.sigma_px)
        return render_separable(np.asarray(x, float), np.asarray(y, float), s, s,
                                np.asarray(photons, float), shape)

    def sigmas(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = np.full(np.shape(z), self.sigma_px)
        return s, s

    def width_curves(self, z):
        """σx, σy (px) and their slopes by z (zero): the astigmatic PSF's interface, for numpy or torch ``z``."""
        flat = z * 0.0
        return flat + self.sigma_px, flat + self.sigma_px, flat, flat


@dataclass(frozen=True)
class AstigmaticPSF:
    """Astigmatic Gaussian for 3D: the x and y foci sit at ∓focal_offset in z (Huang et al. 2008).

    sigma_x(z) = sigma0 · sqrt(1 + ((z − c)/d)²), sigma_y(z) = sigma0 · sqrt(1 + ((z + c)/d)²).
    """

    sigma_px: float
    focal_offset_nm: float
    depth_nm: float

    def sigmas(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sx, sy, _, _ = self.width_curves(np.asarray(z, float))
        return sx, sy

    def width_curves(self, z):
        """σx(z), σy(z) in px and their slopes dσx/dz, dσy/dz in px per nm. Plain arithmetic, so ``z`` may
        be a numpy array or a torch tensor on any device (the MLE refinement fits z through these curves)."""
        ux = (z - self.focal_offset_nm) / self.depth_nm
        uy = (z + self.focal_offset_nm) / self.depth_nm
        sx = self.sigma_px * (1.0 + ux * ux) ** 0.5
        sy = self.sigma_px * (1.0 + uy * uy) ** 0.5
        return sx, sy, self.sigma_px**2 * ux / (self.depth_nm * sx), self.sigma_px**2 * uy / (self.depth_nm * sy)

    def render(self, x, y, z, photons, shape):
        sx, sy = self.sigmas(z)
        return render_separable(np.asarray(x, float), np.asarray(y, float), sx, sy,
                                np.asarray(photons, float), shape)


def psf_from_config(psf_cfg, pixel_size_nm: float) -> PSF:
    """Build the PSF a :class:`rtsmlm.core.config.PSFConfig` describes."""
    sigma_px = psf_cfg.sigma_nm / pixel_size_nm
    if psf_cfg.model == "gaussian":
        return GaussianPSF(sigma_px)
    if psf_cfg.model == "astigmatic":
        return AstigmaticPSF(sigma_px, psf_cfg.astig_focal_offset_nm, psf_cfg.astig_depth_nm)
    if psf_cfg.model == "spline":
        from rtsmlm.sim.spline_psf import SplinePSF

        return SplinePSF.load(psf_cfg.file, pixel_size_nm)
    raise ValueError(f"psf.model = {psf_cfg.model!r} is not a PSF model; use 'gaussian', 'astigmatic' or 'spline'")
