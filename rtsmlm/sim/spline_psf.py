"""A measured 3D PSF as a cubic spline: the model ``rtsmlm calibrate-psf`` fits to a bead stack (SMAP/DECODE's
approach), rendered by the simulator and the trainer like the analytic PSFs.

The PSF is stored as voxels ``psf[z, y, x]`` on the camera's pixel grid: the fraction of an emitter's photons
that falls in a camera pixel whose centre is (x − cx, y − cy) pixels from the emitter, at depth z (each slice
sums to 1 within the box; cx, cy is the box's middle). Because the samples are already camera pixels, the
model is pixel-integrated by construction, and between samples it is a tricubic B-spline interpolant.

Rendering uses that the grid's xy spacing is one camera pixel: every pixel of an emitter's box has the same
sub-pixel phase, so the box is a weighted sum of 4×4×4 shifted coefficient blocks: a few small array
operations per emitter batch, no per-pixel spline evaluation.

File (``psf.file``): ``.npz`` with ``psf`` (float32, z × y × x), ``z0_nm`` and ``dz_nm`` (the z of the first
slice and the slice step), ``pixel_size_nm``: a plain PSF stack any tool can open.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rtsmlm.core.errors import RtsmlmError

__all__ = ["SplinePSF", "SplinePSFError", "bspline_weights"]

_PAD = 3
"""Zero voxels around the box in x and y: the spline falls to 0 beyond the measured box instead of ringing."""


class SplinePSFError(RtsmlmError, ValueError):
    """A spline PSF file is missing, malformed or for another pixel size; the message names it."""


def bspline_weights(t: np.ndarray) -> np.ndarray:
    """Cubic B-spline weights of the 4 coefficients i−1 … i+2 at fraction ``t`` ∈ [0, 1): shape (..., 4)."""
    t = np.asarray(t, np.float64)[..., None]
    one = 1.0 - t
    w = np.concatenate([one**3, 3 * t**3 - 6 * t**2 + 4, -3 * t**3 + 3 * t**2 + 3 * t + 1, t**3], axis=-1)
    return w / 6.0


@dataclass(frozen=True)
class SplinePSF:
    """Tricubic-spline PSF over voxels ``psf`` (z, y, x) on the camera pixel grid, z from ``z0_nm`` in
    ``dz_nm`` steps. Depths beyond the measured range take the nearest measured slice."""

    psf: np.ndarray = field(repr=False)
    z0_nm: float
    dz_nm: float
    pixel_size_nm: float
    _coeff: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from scipy.ndimage import spline_filter

        vox = np.asarray(self.psf, np.float64)
        if vox.ndim != 3 or min(vox.shape) < 4:
            raise SplinePSFError(f"a spline PSF needs voxels (z, y, x) of at least 4 each, got shape {vox.shape}")
        padded = np.pad(vox, ((2, 2), (_PAD, _PAD), (_PAD, _PAD)), mode="constant")
        # z: the nearest measured slice continues beyond the range (no fall to 0 at the range's ends)
        padded[:2, :, :] = np.pad(vox[0], _PAD)[None]
        padded[-2:, :, :] = np.pad(vox[-1], _PAD)[None]
        object.__setattr__(self, "_coeff", spline_filter(padded, order=3, mode="mirror"))

    @property
    def z_range_nm(self) -> tuple[float, float]:
        return self.z0_nm, self.z0_nm + (len(self.psf) - 1) * self.dz_nm

    @property
    def box(self) -> int:
        return int(self.psf.shape[1])

    def render(self, x, y, z, photons, shape):
        """Expected photons per pixel (float64, ``shape``) of emitters at (x, y) px, z nm; mass outside the
        image is lost, as on a real camera."""
        h, w = shape
        img = np.zeros(h * w, dtype=np.float64)
        x = np.asarray(x, np.float64).ravel()
        if len(x) == 0:
            return img.reshape(shape)
        y = np.asarray(y, np.float64).ravel()
        z = np.broadcast_to(np.asarray(z, np.float64), x.shape)
        patch, y0, x0 = self.patches(x, y, z)
        patch *= np.asarray(photons, np.float64).ravel()[:, None, None]
        ky, kx = patch.shape[1:]
        rows = y0[:, None] + np.arange(ky)[None, :]
        cols = x0[:, None] + np.arange(kx)[None, :]
        r = np.broadcast_to(rows[:, :, None], patch.shape)
        c = np.broadcast_to(cols[:, None, :], patch.shape)
        inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        img += np.bincount((r * w + c)[inside], weights=patch[inside], minlength=h * w)
        return img.reshape(shape)

    def patches(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per emitter: the fraction of its photons in each pixel of a box (n, ky, kx), and the box's top-left
        pixel (row, column). The box is the measured one plus one pixel, so no mass is cut by the phase."""
        nz, ny, nx = self.psf.shape
        # Spline coordinate (padded voxel index) of pixel column j: u = (j + 0.5 − x) + cx + _PAD, cx = (nx − 1)/2.
        ux = 0.5 - x + (nx - 1) / 2.0 + _PAD
        uy = 0.5 - y + (ny - 1) / 2.0 + _PAD
        # The box starts at the column whose coordinate lies in [_PAD − 1, _PAD): it covers the measured voxels
        # whatever the phase, and its coefficients are always the same rows and columns of the padded grid.
        x0 = np.ceil(_PAD - 1 - ux).astype(np.int64)
        y0 = np.ceil(_PAD - 1 - uy).astype(np.int64)
        wx = bspline_weights(ux + x0 - (_PAD - 1))
        wy = bspline_weights(uy + y0 - (_PAD - 1))
        kx, ky = nx + 1, ny + 1
        uz = np.clip((z - self.z0_nm) / self.dz_nm, 0.0, nz - 1.0) + 2
        iz = np.minimum(np.floor(uz).astype(np.int64), nz + 1)
        wz = bspline_weights(uz - iz)
        c = self._coeff[:, _PAD - 2:_PAD + ny + 2, _PAD - 2:_PAD + nx + 2]  # (nz + 4, ky + 3, kx + 3)
        plane = wz[:, 0, None, None] * c[iz - 1]
        for a in range(1, 4):
            plane += wz[:, a, None, None] * c[iz - 1 + a]
        # Separable in x then y: output pixel k takes coefficients k … k+3 with the emitter's 4 weights.
        along_x = wx[:, 0, None, None] * plane[:, :, 0:kx]
        for a in range(1, 4):
            along_x += wx[:, a, None, None] * plane[:, :, a:a + kx]
        out = wy[:, 0, None, None] * along_x[:, 0:ky, :]
        for b in range(1, 4):
            out += wy[:, b, None, None] * along_x[:, b:b + ky, :]
        np.maximum(out, 0.0, out=out)  # the interpolant can ring slightly below 0 at the box edge
        return out, y0, x0

    @classmethod
    def sampled(cls, psf, pixel_size_nm: float, *, box: int = 25, z_nm: np.ndarray | None = None) -> "SplinePSF":
        """Any PSF sampled the way calibrate-psf stores one (an emitter at the middle pixel's centre, each slice
        normalised to unit sum), ``z_nm`` evenly spaced (default ±1000 nm in 10 nm steps): a known spline
        PSF to test a calibration against, or an analytic PSF in spline form."""
        z_nm = np.arange(-1000.0, 1000.5, 10.0) if z_nm is None else np.asarray(z_nm, np.float64)
        c = (box - 1) / 2.0 + 0.5
        vox = np.stack([psf.render(np.array([c]), np.array([c]), np.array([z]), np.ones(1), (box, box))
                        for z in z_nm])
        return cls(vox / vox.sum(axis=(1, 2), keepdims=True), float(z_nm[0]), float(z_nm[1] - z_nm[0]),
                   float(pixel_size_nm))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        np.savez(path, psf=self.psf.astype(np.float32), z0_nm=self.z0_nm, dz_nm=self.dz_nm,
                 pixel_size_nm=self.pixel_size_nm)
        return path

    @classmethod
    def load(cls, path: str | Path, pixel_size_nm: float | None = None) -> "SplinePSF":
        """Read ``psf.file``; with ``pixel_size_nm``, refuse a PSF measured on another pixel size."""
        p = Path(path)
        if not str(path):
            raise SplinePSFError("psf.model = 'spline' needs psf.file: the .npz written by rtsmlm calibrate-psf")
        try:
            with np.load(p) as f:
                psf = cls(np.array(f["psf"], np.float64), float(f["z0_nm"]), float(f["dz_nm"]),
                          float(f["pixel_size_nm"]))
        except FileNotFoundError:
            raise SplinePSFError(f"psf.file {p} does not exist (write it with rtsmlm calibrate-psf)") from None
        except (KeyError, ValueError, OSError) as e:
            raise SplinePSFError(f"psf.file {p} is not an rtsmlm spline PSF (psf, z0_nm, dz_nm, "
                                 f"pixel_size_nm): {e}") from None
        if pixel_size_nm is not None and abs(psf.pixel_size_nm - pixel_size_nm) > 1e-3 * pixel_size_nm:
            raise SplinePSFError(f"psf.file {p} was measured with {psf.pixel_size_nm:g} nm pixels but "
                                 f"camera.pixel_size_nm is {pixel_size_nm:g}: calibrate the PSF on this camera")
        return psf
