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

from rtsmlm.localization.spots import background_map, psf_width_fits

log = logging.getLogger("rtsmlm.range")

FRAMES = 20
"""Frames the guard looks at (the run's first)."""


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
    psf_sigma_told_px: float | None = None  # what a conditioned model was told (psf.sigma_nm / pixel size)

    @property
    def ok(self) -> bool:
        return not self.out_of_range

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


PENDING = RangeVerdict(0, None, None, None, 0, {})
"""Placeholder while the check runs (so it starts once)."""


SLACK = {"background_photons": (0.7, 1.6), "psf_sigma_px": (1.0, 1.0), "spot_photons": (0.3, 1.5)}
"""How far outside its trained range (factors of the range's ends) a measured quantity passes.
Brightness: a spot's sum in a 7x7 box misses the tails and partial blinks are dimmer. Background above the
range: measured (benchmarks/bench_range_guard.py), the default model (trained on 20-150 photons/px) kept its
Jaccard to 1.33x the range's top (0.789 at 200 vs 0.830 at 150 on its camera, 0.855 vs 0.881 on an EMCCD of
107 nm pixels: still above broad_2d's 0.779 / 0.831) and fell behind broad_2d at 2x (300: 0.664 vs 0.752,
0.735 vs 0.778), collapsing at 3x (0.42): warn from 1.6x, where the broad model wins."""


def trained_ranges(meta: Any) -> dict[str, list[float]]:
    """Background (photons/px), PSF sigma (px) and brightness (photons) the checkpoint was trained on."""
    t = dict(meta.train or {})
    out: dict[str, list[float]] = {}
    if "bg_min" in t and "bg_max" in t:
        out["background_photons"] = [float(t["bg_min"]), float(t["bg_max"])]
    if t.get("broad"):
        out["psf_sigma_px"] = [float(t.get("sigma_min_px", 0.7)), float(t.get("sigma_max_px", 2.0))]
    elif (meta.psf or {}).get("sigma_nm") and meta.pixel_size_nm:
        psf = meta.psf
        s = float(psf["sigma_nm"]) / float(meta.pixel_size_nm)
        if psf.get("model", "gaussian") in ("astigmatic", "spline"):
            # The fitted width (geometric mean of the two axes) grows away from focus: from sigma0 at the
            # middle to its value at the edge of the trained z range. A spline PSF's config carries the
            # astigmatic focus curves calibrate-psf fitted beside it (else the defaults: a typical defocus).
            c, d = float(psf.get("astig_focal_offset_nm", 0.0)), max(float(psf.get("astig_depth_nm", 1.0)), 1.0)
            zr = float(psf.get("z_range_nm", 0.0))
            far = s * ((1 + ((zr + c) / d) ** 2) * (1 + ((zr - c) / d) ** 2)) ** 0.25
            out["psf_sigma_px"] = [0.85 * s, 1.15 * far]
        else:
            out["psf_sigma_px"] = [0.85 * s, 1.15 * s]  # one PSF in training; ±15 % is what it tolerates
    if "photons_min" in t and "photons_max" in t:
        out["spot_photons"] = [float(t["photons_min"]), float(t["photons_max"])]
    return out


def measure(photons: np.ndarray, max_spots: int = 60) -> tuple[float, float | None, float | None, int]:
    """(background, PSF sigma px, median spot photons, spots fitted) of frames already in photons. The
    width and brightness come from single round spots on the smooth background
    (:func:`rtsmlm.localization.spots.psf_width_fits`); a dense, structured or high-background movie
    would otherwise read wider than its PSF (a false warning)."""
    photons = np.asarray(photons, dtype=np.float64)
    bg = float(np.median(photons))
    fits = psf_width_fits(photons, background_map(photons), max_spots=max_spots)  # the brightest: best widths
    if len(fits) < 5:
        return bg, None, None, len(fits)
    return bg, float(np.median(fits["sigma_px"])), float(np.median(fits["photons"])), len(fits)


TOLD_SIGMA_TOLERANCE = 0.15
"""A conditioned model told a PSF σ more than this fraction away from the movie's measured σ is warned about."""


def check(photons: np.ndarray, meta: Any, told_sigma_px: float | None = None) -> RangeVerdict:
    """The verdict for frames in photons against ``meta``'s training ranges; warns once per quantity.
    ``told_sigma_px``: the configured PSF σ (the one a conditioned model is given), checked against the
    measured one, and against the training range when the movie is too crowded to measure it."""
    bg, sigma, bright, n_spots = measure(photons)
    ranges = trained_ranges(meta)
    measured = {"background_photons": bg, "psf_sigma_px": sigma, "spot_photons": bright}
    names = {"background_photons": ("background", "photons/px"), "psf_sigma_px": ("PSF sigma", "px"),
             "spot_photons": ("spot brightness", "photons")}
    if sigma is None and told_sigma_px is not None:
        # Too crowded to measure: the configured width (psf.sigma_nm / pixel size) stands in for it, so another
        # pixel size is still caught (checkpoint.CAMERA_KEYS leaves it to this guard).
        measured["psf_sigma_px"] = told_sigma_px
        names["psf_sigma_px"] = ("configured PSF sigma (psf.sigma_nm / pixel size)", "px")
    out = []
    for key, value in measured.items():
        if value is None or key not in ranges:
            continue
        lo, hi = ranges[key]
        if value < lo * SLACK[key][0] or value > hi * SLACK[key][1]:
            what, unit = names[key]
            out.append(key)
            log.warning("the movie's %s is %.3g %s, outside the %.3g–%.3g %s this model was trained on: expect "
                        "false or missed detections; use a model for this camera (rtsmlm train with a config "
                        "describing it, or the broad model: --model broad_2d)", what, value, unit, lo, hi, unit)
    told = told_sigma_px if "psf_sigma" in getattr(meta.scales, "conditioning", ()) else None
    if told is not None and sigma is not None and abs(sigma / told - 1.0) > TOLD_SIGMA_TOLERANCE:
        out.append("psf_sigma_told")
        log.warning("the movie's PSF sigma is %.2f px but the model is told %.2f px (psf.sigma_nm): it will look "
                    "for spots of the wrong size; measure the PSF with `rtsmlm calibrate movie.tif` and run with "
                    "its config", sigma, told)
    return RangeVerdict(len(photons), bg, sigma, bright, n_spots, ranges, out, told)
