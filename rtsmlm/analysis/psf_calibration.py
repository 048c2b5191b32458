"""Astigmatic PSF calibration from a z-stack of beads (``rtsmlm calibrate-psf``).

Every isolated bead of the stack's maximum projection is fitted slice by slice with a pixel-integrated
elliptical Gaussian (σx, σy). Beads do not sit at exactly the same height: each bead's curves are shifted
so that its σx = σy crossing lies at z = 0 (the stack's middle focus), then all beads are pooled and each
axis is fitted with the astigmatic focus curve of Huang et al. (Science 2008), as Picasso and ThunderSTORM
do::

    σ(z) = σ0 · sqrt(1 + u² + A·u³ + B·u⁴),   u = (z − focus) / depth

The result maps onto the simulator's and the trainer's astigmatic PSF (``psf.model = "astigmatic"``: one
σ0, foci at ∓``astig_focal_offset_nm``, one depth), and keeps the full per-axis fit for the report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rtsmlm.core.errors import RtsmlmError

__all__ = ["AstigmaticCalibration", "AxisFit", "BeadCurve", "PsfCalibrationError", "bead_curves", "calibrate_astigmatic",
           "check_stack", "slice_depths"]

MIN_SLICES = 10
MIN_BEADS = 2
BEAD_SIGNIFICANCE = 10.0
"""A bead's mean flux over the stack (its box above the box's 2-pixel edge), in standard errors of that mean, at
least: noise peaks of the maximum projection sit near 0 (measured: two passed as beads in 3-bead EMCCD stacks of
161 slices, and wrecked the spline average); a bead of 50,000 photons per slice on background 10 sits at
thousands."""
PLAUSIBLE_DEPTH_NM = (100.0, 3000.0)
"""Focus depths of astigmatic set-ups (cylindrical lens + high-NA objective): a fit outside means a wrong z step."""


class PsfCalibrationError(RtsmlmError, ValueError):
    """The bead stack cannot give a PSF calibration; the message says what to supply."""


@dataclass(frozen=True)
class AxisFit:
    """One axis's focus curve: σ(z) = σ0 · sqrt(1 + u² + a·u³ + b·u⁴), u = (z − focus) / depth (px, nm)."""

    sigma0_px: float
    focus_nm: float
    depth_nm: float
    a: float = 0.0
    b: float = 0.0

    def sigma(self, z_nm: np.ndarray) -> np.ndarray:
        u = (np.asarray(z_nm, float) - self.focus_nm) / self.depth_nm
        return self.sigma0_px * np.sqrt(np.maximum(1.0 + u**2 + self.a * u**3 + self.b * u**4, 1e-6))


@dataclass(frozen=True)
class AstigmaticCalibration:
    """The calibration: both axes' curves, the pooled bead data it was fitted to, and quality figures."""

    x: AxisFit
    y: AxisFit
    pixel_size_nm: float
    beads: int
    slices: int
    z_step_nm: float
    z_nm: np.ndarray = field(repr=False)
    sigma_x_px: np.ndarray = field(repr=False)
    sigma_y_px: np.ndarray = field(repr=False)

    @property
    def residual_pct(self) -> float:
        """RMS of the data's relative deviation from the fitted curves, in %."""
        rx = self.sigma_x_px / self.x.sigma(self.z_nm) - 1.0
        ry = self.sigma_y_px / self.y.sigma(self.z_nm) - 1.0
        return float(100.0 * np.sqrt(np.mean(np.concatenate([rx, ry]) ** 2)))

    def psf_config(self) -> dict[str, Any]:
        """The ``[psf]`` table of the simulator's astigmatic model closest to this calibration."""
        return {"model": "astigmatic", "sigma_nm": round(0.5 * (self.x.sigma0_px + self.y.sigma0_px) * self.pixel_size_nm, 2),
                "astig_focal_offset_nm": round(0.5 * (self.x.focus_nm - self.y.focus_nm), 1),
                "astig_depth_nm": round(0.5 * (self.x.depth_nm + self.y.depth_nm), 1),
                "z_range_nm": round(float(np.max(np.abs(self.z_nm))), 0)}

    def to_json(self) -> dict[str, Any]:
        return {"x": asdict(self.x), "y": asdict(self.y), "pixel_size_nm": self.pixel_size_nm, "beads": self.beads,
                "slices": self.slices, "z_step_nm": self.z_step_nm, "residual_pct": self.residual_pct,
                "psf": self.psf_config()}


def _fit_axis(z: np.ndarray, s: np.ndarray) -> AxisFit:
    from scipy.optimize import least_squares

    k = int(np.argmin(s))
    start = np.array([max(float(s[k]), 0.3), float(z[k]), 400.0, 0.0, 0.0])

    def residual(p: np.ndarray) -> np.ndarray:
        return AxisFit(*p).sigma(z) / s - 1.0

    fit = least_squares(residual, start, bounds=([0.1, -5000.0, 20.0, -5.0, -5.0], [20.0, 5000.0, 10000.0, 5.0, 5.0]),
                        loss="soft_l1", f_scale=0.05)
    return AxisFit(*(float(v) for v in fit.x))


def _crossing(z: np.ndarray, d: np.ndarray) -> float | None:
    """The z where σx − σy changes sign, nearest the middle of the stack (linear interpolation)."""
    sign = np.sign(d)
    idx = np.flatnonzero(sign[:-1] * sign[1:] < 0)
    if len(idx) == 0:
        return None
    k = idx[np.argmin(np.abs(z[idx]))]
    return float(z[k] - d[k] * (z[k + 1] - z[k]) / (d[k + 1] - d[k]))


@dataclass(frozen=True)
class BeadCurve:
    """One bead of a stack: its box's centre pixel (row, column), and per usable slice the slice's z (nm, stack
    middle = 0), the fitted centre (px, absolute) and widths σx, σy (px)."""

    row: int
    col: int
    z_nm: np.ndarray
    x_px: np.ndarray
    y_px: np.ndarray
    sigma_x_px: np.ndarray
    sigma_y_px: np.ndarray

    def focus_nm(self) -> float | None:
        """Where σx = σy (the astigmatic convention's z = 0), nearest the stack's middle; None if never."""
        return _crossing(self.z_nm, self.sigma_x_px - self.sigma_y_px)


def slice_depths(n_slices: int, z_step_nm: float) -> np.ndarray:
    """The z of each slice of a stack taken ``z_step_nm`` apart, nm, the stack's middle at 0."""
    return (np.arange(n_slices) - (n_slices - 1) / 2.0) * z_step_nm


def check_stack(photons: np.ndarray, z_step_nm: float, where: str) -> np.ndarray:
    """The stack as float64 (slices, height, width); one sentence if it cannot be a PSF calibration's."""
    stack = np.asarray(photons, dtype=np.float64)
    if stack.ndim != 3 or len(stack) < MIN_SLICES:
        n = len(stack) if stack.ndim == 3 else 1
        raise PsfCalibrationError(f"{where} has {n} slice(s); a PSF calibration needs a z-stack of at least "
                                  f"{MIN_SLICES} slices over the z range (e.g. ±800 nm in 10–50 nm steps)")
    if not z_step_nm > 0:
        raise PsfCalibrationError(f"--z-step must be a positive number of nm, got {z_step_nm}")
    return stack


def bead_curves(stack: np.ndarray, z_step_nm: float, *, box: int = 17, snr: float = 20.0) -> list[BeadCurve]:
    """Every isolated bead of the stack's maximum projection (≥ ``box`` px from any other), fitted slice by
    slice with a pixel-integrated elliptical Gaussian; beads with fewer than :data:`MIN_SLICES` fits dropped."""
    from rtsmlm.localization.spots import find_isolated_spots, fit_spot

    n_slices = len(stack)
    z = slice_depths(n_slices, z_step_nm)
    bg = np.median(stack, axis=(1, 2))
    projection = (stack - bg[:, None, None]).max(axis=0)
    half = box // 2
    edge = np.ones((2 * half + 1,) * 2, bool)  # the box's 2-pixel edge, for the bead's local background
    edge[2:-2, 2:-2] = False
    beads = []
    for _, y, x in find_isolated_spots(projection[None], 0.0, snr=snr, box=box):
        if not (half <= y < stack.shape[1] - half and half <= x < stack.shape[2] - half):
            continue
        # The maximum projection of many noisy slices has outliers that pass as spots: a bead's light is in every
        # slice, so its box's light above the box's own edge (not the frame's median, which an EMCCD's skewed
        # noise puts below the mean) must stand far above its scatter over the slices.
        cut = stack[:, y - half:y + half + 1, x - half:x + half + 1]
        flux = (cut[:, ~edge] - cut[:, edge].mean(axis=1, keepdims=True)).sum(axis=1)
        if flux.mean() < BEAD_SIGNIFICANCE * flux.std() / np.sqrt(n_slices):
            continue
        rows = []
        for k in range(n_slices):
            fit = fit_spot(cut[k], float(bg[k]))
            if fit is not None and fit[0] > 0:
                rows.append((z[k], x + 0.5 + fit[2], y + 0.5 + fit[1], fit[3], fit[4]))
        if len(rows) >= MIN_SLICES:
            beads.append(BeadCurve(y, x, *(np.array(c) for c in zip(*rows))))
    return beads


def calibrate_astigmatic(photons: np.ndarray, z_step_nm: float, pixel_size_nm: float, *, where: str = "the stack",
                         box: int = 17, snr: float = 20.0, beads: list[BeadCurve] | None = None
                         ) -> AstigmaticCalibration:
    """Calibrate from a bead stack in photons (slices, height, width) taken ``z_step_nm`` apart (``beads``: its
    :func:`bead_curves`, when already fitted)."""
    stack = check_stack(photons, z_step_nm, where)
    n_slices = len(stack)
    z = slice_depths(n_slices, z_step_nm)
    beads_z, beads_sx, beads_sy = [], [], []
    for bead in beads if beads is not None else bead_curves(stack, z_step_nm, box=box, snr=snr):
        offset = bead.focus_nm()
        if offset is None:
            continue
        beads_z.append(bead.z_nm - offset)
        beads_sx.append(bead.sigma_x_px)
        beads_sy.append(bead.sigma_y_px)
    if len(beads_z) < MIN_BEADS:
        raise PsfCalibrationError(f"{where}: {len(beads_z)} bead(s) with a usable focus curve were found (isolated, "
                                  f"bright, and with σx = σy somewhere in the stack); the calibration averages at "
                                  f"least {MIN_BEADS}: image a field with several beads ≥ {box} px apart, through the "
                                  "focus of both axes")
    zc, sx, sy = np.concatenate(beads_z), np.concatenate(beads_sx), np.concatenate(beads_sy)
    fx, fy = _fit_axis(zc, sx), _fit_axis(zc, sy)
    span = float(z.max() - z.min())
    for name, f in (("x", fx), ("y", fy)):
        lo, hi = PLAUSIBLE_DEPTH_NM
        if not (zc.min() < f.focus_nm < zc.max()) or not lo <= f.depth_nm <= hi or f.depth_nm > 2 * span:
            raise PsfCalibrationError(f"{where}: the {name} focus curve does not fit a stack of {n_slices} slices "
                                      f"{z_step_nm:g} nm apart (focus {f.focus_nm:.0f} nm, depth {f.depth_nm:.0f} nm): "
                                      "check --z-step, and that the stack passes through both foci")
    return AstigmaticCalibration(fx, fy, float(pixel_size_nm), len(beads_z), n_slices, float(z_step_nm), zc, sx, sy)


def write_report(cal: AstigmaticCalibration, path: Path) -> Path:
    """PNG: σx and σy of every bead slice against z, the fitted curves, and the residuals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, rx) = plt.subplots(2, 1, figsize=(6, 6), dpi=110, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    grid = np.linspace(cal.z_nm.min(), cal.z_nm.max(), 300)
    px = cal.pixel_size_nm
    ax.plot(cal.z_nm, cal.sigma_x_px * px, ".", ms=3, color="C0", alpha=0.5, label="σx, beads")
    ax.plot(cal.z_nm, cal.sigma_y_px * px, ".", ms=3, color="C3", alpha=0.5, label="σy, beads")
    ax.plot(grid, cal.x.sigma(grid) * px, "-", color="C0", label="σx fit")
    ax.plot(grid, cal.y.sigma(grid) * px, "-", color="C3", label="σy fit")
    ax.set_ylabel("PSF σ (nm)")
    ax.set_title(f"{cal.beads} beads, {cal.slices} slices {cal.z_step_nm:g} nm apart; residual {cal.residual_pct:.1f} %")
    ax.legend(fontsize=8)
    rx.plot(cal.z_nm, 100 * (cal.sigma_x_px / cal.x.sigma(cal.z_nm) - 1), ".", ms=3, color="C0")
    rx.plot(cal.z_nm, 100 * (cal.sigma_y_px / cal.y.sigma(cal.z_nm) - 1), ".", ms=3, color="C3")
    rx.axhline(0, color="k", lw=0.5)
    rx.set_ylabel("residual %")
    rx.set_xlabel("z (nm, 0 = where σx = σy)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
