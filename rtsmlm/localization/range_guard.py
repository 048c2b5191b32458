"""Is this movie inside what the model was trained on? Checked from the first frames of a run.

A network fails quietly outside its training range: on a background five times higher than any it saw
it reports thousands of false positives and wrong photon counts, with no error. The guard estimates,
from the first frames converted to photons with the run's camera, the background (median photons per
pixel), the PSF width (pixel-integrated Gaussians fitted to the brightest spots) and their brightness, and
compares them with the ranges stored in the checkpoint's training config. Differences the input
conversion makes harmless (baseline, e⁻/ADU, EM gain) are not the guard's concern.

The verdict is one :class:`RangeVerdict`: logged as one warning per quantity out of range (naming the
measured value, the trained range and the fix) and written into ``summary.json``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

log = logging.getLogger("rtsmlm.range")

FRAMES = 20
"""Frames the guard looks at (the run's first)."""
_BOX = 7


@dataclass(frozen=True)
class RangeVerdict:
    """Measured conditions, the model's trained ranges, and what is outside them."""

    frames: int
    background_photons: float | None
    psf_sigma_px: float | None
    spot_photons_median: float | None
    spots: int
    trained: dict[str, list[float]]
    out_of_range: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.out_of_range

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


PENDING = RangeVerdict(0, None, None, None, 0, {})
"""Placeholder while the check runs (so it starts once)."""


def trained_ranges(meta: Any) -> dict[str, list[float]]:
    """Background (photons/px), PSF sigma (px) and brightness (photons) the checkpoint was trained on."""
    t = dict(meta.train or {})
    out: dict[str, list[float]] = {}
    if "bg_min" in t and "bg_max" in t:
        out["background_photons"] = [float(t["bg_min"]), float(t["bg_max"])]
    if t.get("broad"):
        out["psf_sigma_px"] = [float(t.get("sigma_min_px", 0.7)), float(t.get("sigma_max_px", 2.0))]
    elif (meta.psf or {}).get("sigma_nm") and meta.pixel_size_nm:
        s = float(meta.psf["sigma_nm"]) / float(meta.pixel_size_nm)
        out["psf_sigma_px"] = [0.85 * s, 1.15 * s]  # one PSF in training; ±15 % is what it tolerates
    if "photons_min" in t and "photons_max" in t:
        out["spot_photons"] = [float(t["photons_min"]), float(t["photons_max"])]
    return out


def _fit_sigma(box: np.ndarray, bg: float) -> tuple[float, float] | None:
    """(sigma px, photons) of a pixel-integrated Gaussian fitted to a spot's box (least squares)."""
    from scipy.optimize import least_squares
    from scipy.special import erf

    half = box.shape[0] // 2
    edges = np.arange(-half, half + 2) - 0.5

    def model(params: np.ndarray) -> np.ndarray:
        n, cx, cy, s, b = params
        fx = 0.5 * np.diff(erf((edges - cx) / (np.sqrt(2.0) * s)))
        fy = 0.5 * np.diff(erf((edges - cy) / (np.sqrt(2.0) * s)))
        return n * fy[:, None] * fx[None, :] + b

    start = np.array([max(box.sum() - bg * box.size, 1.0), 0.0, 0.0, 1.2, bg])
    try:
        fit = least_squares(lambda q: (model(q) - box).ravel(), start,
                            bounds=([0.0, -1.5, -1.5, 0.3, 0.0], [np.inf, 1.5, 1.5, 5.0, np.inf]))
    except ValueError:
        return None
    return (float(fit.x[3]), float(fit.x[0])) if fit.success else None


def measure(photons: np.ndarray, max_spots: int = 60) -> tuple[float, float | None, float | None, int]:
    """(background, PSF sigma px, median spot photons, spots fitted) of frames already in photons."""
    photons = np.asarray(photons, dtype=np.float64)
    bg = float(np.median(photons))
    noise = float(np.sqrt(max(bg, 1.0)))
    half = _BOX // 2
    candidates = []  # (peak height, frame, y, x) of local maxima with no other spot nearby
    for k, frame in enumerate(photons):
        smooth = ndimage.uniform_filter(frame, 3)
        peaks = (smooth == ndimage.maximum_filter(smooth, 2 * _BOX + 1)) & (smooth > bg + 2 * noise)
        for y, x in zip(*np.nonzero(peaks)):
            if half <= y < frame.shape[0] - half and half <= x < frame.shape[1] - half:
                candidates.append((smooth[y, x] - bg, k, y, x))
    candidates.sort(reverse=True)
    sigmas, brightness = [], []
    for _, k, y, x in candidates[:max_spots]:  # the brightest: the best-determined widths
        fit = _fit_sigma(photons[k, y - half:y + half + 1, x - half:x + half + 1], bg)
        if fit is not None:
            sigmas.append(fit[0])
            brightness.append(fit[1])
    if len(sigmas) < 5:
        return bg, None, None, len(sigmas)
    return bg, float(np.median(sigmas)), float(np.median(brightness)), len(sigmas)


def check(photons: np.ndarray, meta: Any) -> RangeVerdict:
    """The verdict for frames in photons against ``meta``'s training ranges; warns once per quantity."""
    bg, sigma, bright, n_spots = measure(photons)
    ranges = trained_ranges(meta)
    measured = {"background_photons": bg, "psf_sigma_px": sigma, "spot_photons": bright}
    names = {"background_photons": ("background", "photons/px"), "psf_sigma_px": ("PSF sigma", "px"),
             "spot_photons": ("spot brightness", "photons")}
    # Brightness slack: a spot's sum in a 7x7 box misses the tails and partial blinks are dimmer.
    slack = {"background_photons": (0.7, 1.3), "psf_sigma_px": (1.0, 1.0), "spot_photons": (0.3, 1.5)}
    out = []
    for key, value in measured.items():
        if value is None or key not in ranges:
            continue
        lo, hi = ranges[key]
        if value < lo * slack[key][0] or value > hi * slack[key][1]:
            what, unit = names[key]
            out.append(key)
            log.warning("the movie's %s is %.3g %s, outside the %.3g–%.3g %s this model was trained on: expect "
                        "false or missed detections; use a model for this camera (rtsmlm train with a config "
                        "describing it, or the broad model: --model broad_2d)", what, value, unit, lo, hi, unit)
    return RangeVerdict(len(photons), bg, sigma, bright, n_spots, ranges, out)
