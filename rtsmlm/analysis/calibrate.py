"""Camera and sample calibration from the movie itself (``rtsmlm calibrate``).

From an SMLM movie (and optionally a dark movie taken with the shutter closed) it estimates what a model
needs to fit the microscope, each with an uncertainty and the method used:

* **baseline** (ADU): the dark movie's mean when given (with per-pixel offset and read-noise maps for an
  sCMOS); else the intercept of the photon-transfer line, which needs a background that varies across
  the field (an illumination profile) and takes the read noise from the prior camera.
* **gain** (ADU per photo-electron, EM gain included) from photon transfer: the temporal variance of
  background pixels grows as ``F · gain · (mean − baseline)`` plus the read noise, with the excess-noise
  factor F = 2 for an EMCCD (EM gain) and 1 for an sCMOS. Which of the two the movie is, is read off the
  skewness of the same pixels (an EM register makes it 1.5× that of a Poisson camera), unless given.
  Pixels near a detected spot, or whose neighbours are brighter than usual, are left out frame by frame, so
  blinking emitters do not count as noise.
* **PSF σ** (nm), **background** (photons/px), **emitter brightness** (photons) from pixel-integrated
  Gaussian fits of isolated spots in the movie converted to photons with the calibrated camera;
  **density** of detected spots (a lower bound: dim and overlapping emitters are missed) and their
  **on-time** in frames (how often a spot is found again at the same place in the next frame).
* **the sample** behind those spots — emitter density, brightness, on-time, and whether molecules switch at any
  moment or only between frames — by simulating the calibrated microscope until its spots look like the movie's
  (:mod:`rtsmlm.analysis.sample_model`): what the config's ``[sim]`` holds, on which the detection thresholds,
  the brightness floor and a fine-tune are chosen.

"Photons" after calibration are detected photo-electrons (QE 1): the camera's quantum efficiency cannot be
told from its counts and does not matter to localization.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from rtsmlm.analysis.sample_model import (
    SampleModel,
    SpotStatistics,
    fit_sample,
    misfit,
    sample_map,
    spot_statistics,
    worst_figure,
)
from rtsmlm.core.camera import CameraModel
from rtsmlm.core.errors import RtsmlmError
from rtsmlm.localization.spots import find_isolated_spots, psf_width_fits, smooth_background

log = logging.getLogger(__name__)

MIN_FRAMES = 10
"""Fewer frames give no usable temporal statistics."""
MIN_KEPT_FRAMES = MIN_FRAMES // 2
"""A pixel's statistics need this many frames left after the masks."""
MIN_NOISE_PIXELS = 5000
"""Pixels (with MIN_KEPT_FRAMES frames each) that the noise statistics need, or half the field if smaller."""
MOMENT_ROWS = 64
"""Rows of the frames whose moments are computed at once (memory: a few copies of T × 64 × W, not of the movie)."""
TREND_FRAMES = 25
"""A pixel's noise is its spread about the mean of its frames within ± this many: slower changes of the
background (bleaching, drift of the illumination) are not noise."""
EXCESS_NOISE = {"emccd": 2.0, "scmos": 1.0}
EMCCD_SKEW_RATIO = 1.5
"""Skewness of an EMCCD's output relative to a Poisson camera's at the same mean and variance: per photo-
electron the EM register's output is exponential, so third moment × mean / variance² is 6/4 (Poisson: 1)."""
SKEW_DECISION = 1.1
"""Ratios at or below this read as an sCMOS, above as an EMCCD. Measured on the six simulated cameras of
``bench_calibrate`` (300 frames, 0.3 and 1 emitters/µm²): with the dark movie 0.72–0.87 sCMOS, 1.30–1.37
EMCCD; without it (the photon-transfer slope's error enters) 0.68–0.76 and 1.14–1.32. Below the ideal 1 and
1.5: the median of per-pixel ratios from the frames left reads low."""
SKEW_MAX = 1.9
"""No camera's noise is this skewed: above it, emitter light is left in the statistics (too dense a movie)
and the ratio says nothing of the camera."""
MIN_SPOTS = 10
MAX_BASELINE_SD_ADU = 25.0
MIN_PTC_SPAN = 0.3
"""A photon-transfer intercept less certain than this is no baseline: ask for a dark movie instead."""
MIN_PTC_STRUCTURE = 3.0
"""Without a dark movie, the pixel means must spread at least this many times more (in variance) than their
own noise gives (measured: flat fields 1.1–1.3 on EMCCDs; illumination profiles 8–10,000)."""
MASK_SIGMAS = 5.0
MASKS = ((5, 2), (3, 1), (2, 0))
"""Spot masks for the photon-transfer line (px and frames around a peak MASK_SIGMAS robust sigmas up), tried
in this order until enough of every pixel's frames are left (a dense movie needs a tight mask)."""
SPREAD_BOX = 15
"""Pixels (a square this wide) whose median temporal spread is the noise a spot must stand out of: wider than a
spot, narrower than an illumination profile."""
SKEW_MASK = (3, 1)
"""The tighter spot mask for the skewness test: a wide mask also trims the camera's own noise tail, which is
what tells an EMCCD from an sCMOS. The light of dim or distant emitters that it leaves is caught by
:func:`_busy_neighbourhood` instead."""
QUIET_RADIUS = 2
QUIET_SIGMAS = 0.5
"""A pixel's frame counts in the noise statistics only when its neighbourhood (the box of QUIET_RADIUS
around it, without the pixel) is at most QUIET_SIGMAS robust sigmas above that neighbourhood's lower
quartile over time (see :func:`_busy_neighbourhood`)."""


class CalibrationError(RtsmlmError, ValueError):
    """The movie cannot be calibrated; the message says what is missing and what to supply."""


@dataclass(frozen=True)
class Estimate:
    """One calibrated quantity: value, one-sigma uncertainty (None when unknown) and how it was obtained."""

    value: float
    uncertainty: float | None
    method: str


@dataclass(frozen=True)
class Calibration:
    """Everything ``rtsmlm calibrate`` measured, for the report, the config and the benchmark."""

    camera_model: str
    camera_model_method: str
    skew_ratio: float | None
    baseline_adu: Estimate
    gain_adu_per_e: Estimate
    read_noise_adu: Estimate
    psf_sigma_nm: Estimate | None
    background_photons: dict[str, float]
    spot_photons: dict[str, float]
    """Brightness of the fitted isolated spots (photons: median, p10, p90)."""
    spots: SpotStatistics
    """What the spot finder sees: detected density (a lower bound), brightness in a box, persistence."""
    pixel_size_nm: float
    frames_used: int
    spots_fitted: int
    ptc: dict[str, list[float]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    offset_sd_adu: float = 0.0
    """Pixel-to-pixel spread of the dark level (sCMOS fixed-pattern offsets; 0 without a dark movie)."""
    pixel_maps: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = field(default=None, repr=False)
    """(offset ADU, read-noise variance ADU², relative response or None) per pixel: the first two from the
    dark movie, the response of an sCMOS from the movie's background (:func:`_response_map`)."""
    sample: SampleModel | None = None
    """The emitters (density, brightness, on-time) whose simulation shows the movie's spots: what the config's
    ``[sim]`` holds (None only while :func:`calibrate` fits it)."""

    def camera(self, exposure_ms: float = 10.0, em_gain: float | None = None) -> CameraModel:
        """The calibrated camera: ``e_per_adu`` chosen so that ADU → photons uses the measured gain (an
        EMCCD keeps its EM gain, ``em_gain`` or 100 when not known)."""
        if self.camera_model == "emccd":
            g_em = float(em_gain or 100.0)
            e_per_adu = g_em / self.gain_adu_per_e.value
        else:
            g_em = 1.0
            e_per_adu = 1.0 / self.gain_adu_per_e.value
        read_e = self.read_noise_adu.value * e_per_adu
        return CameraModel(self.camera_model, self.pixel_size_nm, self.baseline_adu.value, e_per_adu, g_em, 1.0,
                           read_e, exposure_ms)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("pixel_maps")
        return out


# --------------------------------------------------------------------------------------------------
# Photon transfer


def _spot_peaks(frames: np.ndarray) -> np.ndarray:
    """Where emitters are, frame by frame: local maxima of the 3×3-smoothed frame that stand out of the
    temporal spread of the pixels around (MASK_SIGMAS robust sigmas). Around, not the pixel's own: in a short
    movie (tens of frames) a pixel that emitters reach in a few frames reads a wide spread of its own, and its
    emitters went unmasked (10 frames: gain +20 % from the strictest mask)."""
    smooth = ndimage.uniform_filter(frames.astype(np.float64), size=(1, 3, 3))
    med = np.median(smooth, axis=0)
    own = 1.4826 * np.median(np.abs(smooth - med), axis=0)
    spread = ndimage.median_filter(own, size=SPREAD_BOX, mode="nearest") + 1e-9
    return (smooth == ndimage.maximum_filter(smooth, size=(1, 5, 5))) & (smooth > med + MASK_SIGMAS * spread)


def _spot_mask(peaks: np.ndarray, radius: int = 5, frames_around: int = 2) -> np.ndarray:
    """True where a pixel of a frame may hold emitter light: within ``radius`` px of a peak
    (:func:`_spot_peaks`), in that frame and ``frames_around`` before and after it (an emitter switching on or
    off mid-frame is dim there). Left out of the noise statistics, so blinking does not count as camera noise."""
    return ndimage.binary_dilation(peaks, structure=np.ones((2 * frames_around + 1, 2 * radius + 1, 2 * radius + 1), bool))


def camera_type_from_skew(ratio: float | None) -> str | None:
    """'scmos' or 'emccd' from the noise skewness ratio (see SKEW_DECISION); None when it tells nothing."""
    if ratio is None or not ratio <= SKEW_MAX:
        return None
    return "emccd" if ratio > SKEW_DECISION else "scmos"


def _busy_neighbourhood(frames: np.ndarray, radius: int = QUIET_RADIUS, sigmas: float = QUIET_SIGMAS) -> np.ndarray:
    """True where a pixel's neighbours (the box of ``radius`` around it, the pixel itself left out) are
    brighter in that frame than when no emitter is near: light of emitters too dim or too far for the spot
    mask. The choice uses only the neighbours, whose noise is independent of the pixel's own, so it trims
    the emitters' light from the pixel's statistics without trimming the camera's noise. The reference is the
    lower quartile over time, not the median: in a dense movie (1 emitter/µm² and more) most frames have an
    emitter near every pixel, and a median would take their light for background."""
    side = 2 * radius + 1
    around = ndimage.uniform_filter(frames, size=(1, side, side), mode="nearest") * side * side - frames
    q05, q25 = np.percentile(around, [5, 25], axis=0)
    spread = (q25 - q05) / 0.971 + 1e-9  # q25 − q05 of a normal distribution is 0.971 σ
    return around > q25 + sigmas * spread


def _quiet_background(mean_photons: np.ndarray, n: np.ndarray) -> np.ndarray:
    """The background map in photons: each pixel's mean over the frames the noise statistics kept (no
    emitter near), smoothed as :func:`rtsmlm.localization.spots.background_map` smooths its temporal median of
    all frames, which a dense movie's emitters lift: +21–32 % at 1 emitter/µm² on a dim background. Pixels
    with fewer than MIN_KEPT_FRAMES kept take the field's median."""
    m = np.asarray(mean_photons, np.float64).copy()
    thin = n < MIN_KEPT_FRAMES
    m[thin] = np.median(m[~thin]) if (~thin).any() else np.median(m)
    return smooth_background(m)


def _pixel_moments(frames: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel over the unmasked frames: mean, variance, third central moment and frame count. The variance
    is taken about the pixel's local mean (its unmasked frames within ±TREND_FRAMES), not its mean over the
    movie: a background that bleaches or drifts (a STORM movie's does) adds its trend to the spread about the
    movie's mean (measured: 30 % bleaching over 300 frames, gain +5 %; 60 %, +13 %). Each squared residual is
    divided by 1 − 1/m (m frames in its window), so a movie shorter than the window gets the usual unbiased
    variance. The third moment stays the one about the mean: a trend adds no third cumulant (a linear one's
    values are symmetric about their mean)."""
    moments = [np.empty(frames.shape[1:]) for _ in range(4)]
    # A band of rows at a time: the window sums hold several copies of the frames.
    for r in range(0, frames.shape[1], MOMENT_ROWS):
        band = slice(r, r + MOMENT_ROWS)
        for out, value in zip(moments, _band_moments(frames[:, band], mask[:, band])):
            out[band] = value
    mean, var, m3, n = moments
    return mean, var, m3, n


def _band_moments(frames: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, ...]:
    keep = ~mask
    n = keep.sum(axis=0).astype(np.float64)
    x = np.where(keep, frames, 0.0)
    mean = x.sum(axis=0) / np.maximum(n, 1)
    d = np.where(keep, frames - mean, 0.0)
    m3 = (d ** 3).sum(axis=0) / np.maximum(n, 1)
    t = frames.shape[0]
    sums = np.concatenate([np.zeros((1, *x.shape[1:])), np.cumsum(x, axis=0)])
    counts = np.concatenate([np.zeros((1, *x.shape[1:])), np.cumsum(keep, axis=0, dtype=np.float64)])
    lo = np.clip(np.arange(t) - TREND_FRAMES, 0, t)
    hi = np.clip(np.arange(t) + TREND_FRAMES + 1, 0, t)
    m = counts[hi] - counts[lo]
    local = (sums[hi] - sums[lo]) / np.maximum(m, 1)
    use = keep & (m >= 2)
    r2 = np.where(use, (frames - local) ** 2 / np.maximum(1.0 - 1.0 / np.maximum(m, 2), 0.5), 0.0)
    var = r2.sum(axis=0) / np.maximum(use.sum(axis=0), 1)
    return mean, var, m3, n


def _binned(mean: np.ndarray, values: list[np.ndarray], weights: np.ndarray, n_bins: int = 24) -> tuple[np.ndarray, ...]:
    """Pixels binned by their mean (equal counts): the weighted mean of each quantity per bin."""
    mean, weights = mean.ravel(), weights.ravel() + 1e-12
    order = np.argsort(mean)
    chunks = np.array_split(order, n_bins)
    out = [np.array([np.average(mean[c], weights=weights[c]) for c in chunks if len(c)])]
    for v in values:
        v = v.ravel()
        out.append(np.array([np.average(v[c], weights=weights[c]) for c in chunks if len(c)]))
    return tuple(out)


LIT_TOLERANCE = 0.1
"""A photon-transfer point more than this (relative) above the line through the dimmer half of the points, and
above their own scatter, holds emitter light (5 % dropped the brightest point of a clean movie)."""


def _theil_sen(x: np.ndarray, y: np.ndarray):
    """The line through the median of the pairwise slopes (robust to a third of the points being off)."""
    i, j = np.triu_indices(len(x), 1)
    dx = x[j] - x[i]
    ok = dx != 0
    slope = float(np.median((y[j] - y[i])[ok] / dx[ok])) if ok.any() else 0.0
    icpt = float(np.median(y - slope * x))
    return lambda v: slope * v + icpt


def _lit_points(x: np.ndarray, y: np.ndarray, through_origin: bool) -> np.ndarray:
    """Photon-transfer points (pixel mean, variance; binned by the mean) that lie above the line of the dimmer
    ones: their pixels still hold emitter light in the frames the masks kept. On a dense structured sample
    (filaments at 1 emitter/µm²) the pixels on the structure are never free of it and read as brighter background
    with far more than its noise: a line through them took the gain 16× too high. Only points above are suspect
    (emitter light adds variance faster than it adds mean), and the dimmer half of the pixels sets the line (the
    structure's pixels are the brighter ones). ``through_origin``: x and y are measured from the baseline and the
    read noise (a dark movie or a given baseline), so the line is y = slope·x; else a free line. None are
    dropped when fewer than half would be left."""
    lit = np.zeros(len(x), bool)
    if len(x) < 6:
        return lit
    dim = np.argsort(x)[: len(x) // 2]
    if through_origin:
        ratio = y[dim] / np.maximum(x[dim], 1e-12)
        slope = float(np.median(ratio))
        line = lambda v: slope * v  # noqa: E731
    else:
        line = _theil_sen(x[dim], y[dim])
    fit = np.maximum(np.abs(line(x)), 1e-12)
    rel = y / fit - 1.0
    scatter = 1.4826 * float(np.median(np.abs(rel[dim] - np.median(rel[dim]))))
    lit = rel > max(LIT_TOLERANCE, 4.0 * scatter)
    return lit if (~lit).sum() >= len(x) / 2 else np.zeros(len(x), bool)


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """Least-squares line y = a·x + b: (a, b, sigma_a, sigma_b)."""
    A = np.column_stack([x, np.ones_like(x)])
    coef, res, *_ = np.linalg.lstsq(A, y, rcond=None)
    dof = max(len(x) - 2, 1)
    s2 = float(np.sum((A @ coef - y) ** 2)) / dof
    cov = s2 * np.linalg.inv(A.T @ A)
    return float(coef[0]), float(coef[1]), float(np.sqrt(cov[0, 0])), float(np.sqrt(cov[1, 1]))


# --------------------------------------------------------------------------------------------------
# The calibration


def calibrate(frames: np.ndarray, *, pixel_size_nm: float, dark: np.ndarray | None = None,
              camera_model: str | None = None, prior: CameraModel | None = None,
              baseline_adu: float | None = None) -> Calibration:
    """Calibrate from ``frames`` (T, H, W) in ADU; see the module docstring. ``camera_model`` ('emccd' or
    'scmos') overrides the detection; ``prior`` supplies the read noise when there is no dark movie;
    ``baseline_adu`` is a known baseline (no dark movie needed)."""
    frames = np.asarray(frames, dtype=np.float64)
    if frames.ndim != 3 or frames.shape[0] < MIN_FRAMES:
        raise CalibrationError(f"the movie has {frames.shape[0] if frames.ndim == 3 else 0} frames; calibration "
                               f"needs at least {MIN_FRAMES} (temporal noise statistics)")
    if camera_model not in (None, "emccd", "scmos"):
        raise CalibrationError(f"camera model {camera_model!r} is not 'emccd' or 'scmos'")
    warnings: list[str] = []
    saturated = float(np.mean(frames >= 65535))
    if saturated > 1e-4:
        warnings.append(f"{saturated:.2%} of the pixels are saturated (65535 ADU): their noise is clipped; "
                        "lower the EM gain or the exposure")
    prior = prior or CameraModel()

    # Baseline and read noise: from the dark movie when there is one.
    dark_mean = dark_var = None
    if dark is not None:
        dark = np.asarray(dark, dtype=np.float64)
        if dark.ndim != 3 or dark.shape[1:] != frames.shape[1:]:
            raise CalibrationError(f"the dark movie's frames are {dark.shape[1:] if dark.ndim == 3 else dark.shape}, "
                                   f"the movie's {frames.shape[1:]}: take the dark frames with the same camera "
                                   "settings and region")
        if dark.shape[0] < 2:
            raise CalibrationError("the dark movie needs at least 2 frames (its noise is measured over time)")
        dark_mean = dark.mean(axis=0)
        dark_var = dark.var(axis=0, ddof=1)

    # Masks from the strictest to the loosest. The noise statistics take the strictest that leaves enough
    # pixels (MIN_NOISE_PIXELS) MIN_KEPT_FRAMES frames each (a short movie's loose masks let emitter light in:
    # storm-analysis' 10 frames read gain 1.45 for 1); the background map and the response take the strictest
    # that leaves most pixels MIN_KEPT_FRAMES frames (they are per pixel). The quiet-neighbourhood test keeps
    # under half of a pixel's frames: a short movie (tens of frames) goes without it rather than be refused.
    peaks = _spot_peaks(frames)
    busy = _busy_neighbourhood(frames)
    enough = min(MIN_NOISE_PIXELS, frames.shape[1] * frames.shape[2] // 2)
    noise_moments = background_moments = use_busy = None
    for busy_mask, (radius, around) in [(True, m) for m in MASKS] + [(False, m) for m in MASKS]:
        mask = _spot_mask(peaks, radius, around) | (busy if busy_mask else False)
        mean, var, _, n = _pixel_moments(frames, mask)
        if noise_moments is None and np.count_nonzero(n >= MIN_KEPT_FRAMES) >= enough:
            noise_moments, use_busy = (var, n), busy_mask
        if background_moments is None and np.median(n) >= MIN_KEPT_FRAMES:
            background_moments = (mean, var, n)
        if noise_moments is not None and background_moments is not None:
            break
    if noise_moments is None or background_moments is None:
        raise CalibrationError("nearly every pixel is covered by a spot in most frames: the movie is too dense "
                               "to see the camera's noise; give a movie (or frames) with fewer emitters on")
    mean, var, n = background_moments
    noise_var, noise_n = noise_moments
    # The photon-transfer points: each pixel's level from the background mask (more frames: a noisy level
    # flattens the line), its noise from the noise mask's frames, weighted by their degrees of freedom.
    noise_kept = (noise_n >= MIN_KEPT_FRAMES) & (n >= MIN_KEPT_FRAMES)
    if noise_kept.any() and (dark_mean is not None or baseline_adu is not None):
        # The quieter half of those pixels (the most frames free of spots): on a structured sample the pixels on
        # the structure are the busy ones, and even their kept frames hold emitter light (dense filaments, gain
        # +9.3 → +3.1 %, +11.9 → +9.0 %); on an even sample it only halves the pixels (gain within 1 % of
        # before). Not for a line with its intercept free: that needs the brightest levels too (without them one
        # bench_calibrate movie was refused, another read +6.7 % for +4.7 %).
        noise_kept &= noise_n >= np.median(noise_n[noise_kept])
    if dark_mean is not None:
        signal = mean - dark_mean
        excess_var = noise_var - dark_var
    else:
        signal, excess_var = mean, noise_var
    xb, vb = _binned(signal[noise_kept], [excess_var[noise_kept]], noise_n[noise_kept] - 1)
    prior_read_adu = prior.read_noise_e / prior.e_per_adu
    if dark_mean is not None:
        lit = _lit_points(xb, vb, through_origin=True)
    elif baseline_adu is not None:
        lit = _lit_points(xb - baseline_adu, vb - prior_read_adu ** 2, through_origin=True)
    else:
        lit = _lit_points(xb, vb, through_origin=False)
    if lit.any():
        warnings.append(f"{int(lit.sum())} of {len(xb)} photon-transfer points (pixels of mean "
                        f"{xb[lit].min():.0f}–{xb[lit].max():.0f} ADU) are noisier than the line through the dimmer "
                        "pixels': emitter light the masks did not remove (a dense or structured sample), left out of "
                        "the gain")
        xb, vb = xb[~lit], vb[~lit]
    # Neither the dark movie nor the baseline given: the photon-transfer line with its intercept free.
    free_line = _line(xb, vb) if dark_mean is None and baseline_adu is None else None
    skew_mask = _spot_mask(peaks, *SKEW_MASK) | (busy if use_busy else False)
    mean_s, var_s, m3_s, n_s = _pixel_moments(frames, skew_mask)
    xs, m3b = _binned(mean_s - dark_mean if dark_mean is not None else mean_s, [m3_s], n_s)

    # Excess noise: an EMCCD's output is 1.5x as skewed as a Poisson camera's at the same mean and variance.
    # Per pixel (no photon-transfer slope, which a flat field leaves undetermined), then the median: a pixel
    # that an emitter still reaches has a wild third moment, and the median ignores it where a mean would not.
    skew_ratio = None
    if dark_mean is not None:
        above_px, shot_var = mean_s - dark_mean, var_s - dark_var
    elif baseline_adu is not None:
        above_px, shot_var = mean_s - baseline_adu, var_s - prior_read_adu ** 2
    else:
        # The line's zero-variance point stands in for the baseline (the read noise folded into it).
        above_px = var_s / free_line[0] if free_line[0] > 0 else np.zeros_like(var_s)
        shot_var = var_s
    ok = (above_px > 0) & (shot_var > 0) & (n_s >= MIN_KEPT_FRAMES)
    if ok.sum() >= 100:
        skew_ratio = float(np.median(m3_s[ok] * above_px[ok] / shot_var[ok] ** 2))
    detected = camera_type_from_skew(skew_ratio)
    if camera_model is None:
        if detected is None:
            why = (f"its noise is more skewed than any camera's (ratio {skew_ratio:.2f}): emitter light is left in "
                   "the statistics" if skew_ratio is not None else "too few pixels have a background to measure")
            raise CalibrationError(f"cannot tell an EMCCD from an sCMOS from this movie ({why}): give --camera "
                                   "emccd or scmos")
        camera_model = detected
        model_method = f"detected from the noise skewness (ratio {skew_ratio:.2f}; about 1 sCMOS, 1.5 EMCCD)"
        warnings.append(f"the camera type ({camera_model}) was guessed from the noise skewness, which emitters "
                        "and a high background blur: if it is wrong the gain is off by 2x; give --camera emccd "
                        "or scmos (you know which camera you have)")
    else:
        model_method = "given"
        if detected is not None and detected != camera_model:
            warnings.append(f"the noise looks like an {detected} (skewness ratio {skew_ratio:.2f}), but the camera "
                            f"was given as {camera_model}: check --camera")
    F = EXCESS_NOISE[camera_model]

    # Gain and baseline from the photon-transfer line.
    if dark_mean is None and baseline_adu is not None:
        read_adu = prior_read_adu
        x0 = xb - baseline_adu
        vr = vb - read_adu ** 2
        slope = float(np.sum(vr * x0) / np.sum(x0 * x0))
        slope_sd = float(np.sqrt(np.sum((vr - slope * x0) ** 2) / max(len(xb) - 1, 1) / np.sum(x0 * x0)))
        baseline = Estimate(float(baseline_adu), None, "given")
        read = Estimate(float(read_adu), None, "prior camera")
    elif dark_mean is not None:
        # Through the origin: the dark frames fixed the baseline and the read noise exactly.
        w = np.maximum(xb, 1e-9)
        slope = float(np.sum(vb * w) / np.sum(w * w))
        resid = vb - slope * xb
        slope_sd = float(np.sqrt(np.sum(resid ** 2) / max(len(xb) - 1, 1) / np.sum(w * w)))
        baseline = Estimate(float(np.mean(dark_mean)), float(np.std(dark_mean) / math.sqrt(dark_mean.size)),
                            f"dark movie ({dark.shape[0]} frames)")
        read = Estimate(float(np.sqrt(np.mean(dark_var))), None, "dark movie")
    else:
        read_adu = prior_read_adu
        slope, icpt, slope_sd, icpt_sd = free_line
        # v = slope * (mean - baseline) + read²  →  baseline = (read² - icpt) / slope
        b = (read_adu ** 2 - icpt) / slope if slope > 0 else float("nan")
        b_sd = math.hypot(icpt_sd / slope, 0.5 * read_adu ** 2 / slope) if slope > 0 else float("inf")
        # The line needs a real spread of background levels (an illumination profile), not the scatter of a
        # flat field: the pixel means must span a good part of the signal above the baseline.
        span = float(xb[-1] - xb[0]) / max(float(np.median(xb)) - b, 1e-9) if np.isfinite(b) else 0.0
        # And more than their noise does: on a flat field an EMCCD's skewed noise makes the pixels that read
        # brighter also read noisier, a line with no photon transfer in it (+60 % gain, +38 ADU baseline).
        kept = n >= MIN_KEPT_FRAMES
        spread = 1.4826 * np.median(np.abs(mean[kept] - np.median(mean[kept])))
        structure = spread ** 2 / float(np.median(var[kept] / n[kept]))
        if not (b_sd <= MAX_BASELINE_SD_ADU and span >= MIN_PTC_SPAN and structure >= MIN_PTC_STRUCTURE):
            raise CalibrationError(
                f"the background varies too little across the field (pixel means {xb[0]:.1f}–{xb[-1]:.1f} ADU) for "
                f"the photon-transfer line to fix the baseline (±{b_sd:.1f} ADU): give a dark movie (--dark, 20+ "
                "frames with the shutter closed) or the known baseline (--baseline-adu)")
        if b_sd > 1.0:
            warnings.append(f"the baseline from the photon-transfer intercept is uncertain by ±{b_sd:.1f} ADU (and "
                            "by the read noise assumed): a dark movie (--dark) measures it to ±0.1 ADU")
        baseline = Estimate(float(b), float(b_sd), "photon-transfer intercept (read noise of the prior camera)")
        read = Estimate(float(read_adu), None, "prior camera")
    if not slope > 0:
        raise CalibrationError("the pixel variance does not grow with the signal: no photon-transfer line (is the "
                               "movie already converted to photons, or the background zero?)")
    gain = Estimate(slope / F, slope_sd / F, f"photon transfer, excess-noise factor {F:g} ({camera_model})")

    # The sample, in photons of the calibrated camera.
    cal_camera = CameraModel(camera_model, pixel_size_nm, baseline.value, 1.0 / gain.value, 1.0, 1.0,
                             read.value / gain.value, 10.0,
                             offset_map=dark_mean.astype(np.float32) if (dark_mean is not None and camera_model == "scmos") else None)
    photons = cal_camera.to_photons(frames.astype(np.float32)).astype(np.float64)
    bg_map = _quiet_background(cal_camera.to_photons(mean.astype(np.float32)), n)
    spots = find_isolated_spots(photons, bg_map)
    good = psf_width_fits(photons, bg_map, min_spots=MIN_SPOTS)  # single round spots; box widened for a wide PSF
    sigma = None
    if len(good) >= MIN_SPOTS:
        s = good["sigma_px"] * pixel_size_nm
        sigma = Estimate(float(np.median(s)), float(1.2533 * np.std(s) / math.sqrt(len(s))),
                         f"median of {len(good)} fitted isolated round spots")
    else:
        warnings.append(f"only {len(good)} isolated spots could be fitted: no PSF width (need {MIN_SPOTS}); give a "
                        "longer movie or one with separated emitters")
    spot_stats = spot_statistics(photons, bg_map, pixel_size_nm, spots)
    bgv = bg_map.ravel()
    bg = {"median": float(np.median(bgv)), "p05": float(np.percentile(bgv, 5)), "p95": float(np.percentile(bgv, 95))}
    ph = ({"median": float(np.median(good["photons"])), "p10": float(np.percentile(good["photons"], 10)),
           "p90": float(np.percentile(good["photons"], 90))} if len(good) else {})
    ptc = {"signal_adu": xb.tolist(), "variance_adu2": vb.tolist(), "skew_signal_adu": xs.tolist(),
           "third_moment_adu3": m3b.tolist()}
    offset_sd = float(np.std(dark_mean)) if dark_mean is not None else 0.0
    maps = None
    if dark_mean is not None:
        response = (_response_map(mean - dark_mean, var / np.maximum(n, 1) + dark_var / dark.shape[0], n)
                    if camera_model == "scmos" else None)
        maps = (dark_mean.astype(np.float32), dark_var.astype(np.float32), response)
    cal = Calibration(camera_model, model_method, skew_ratio, baseline, gain, read, sigma, bg, ph, spot_stats,
                      float(pixel_size_nm), int(frames.shape[0]), int(len(good)), ptc, warnings, offset_sd, maps)
    # Where the emitters are: only a fit with a PSF to simulate uses it.
    where = sample_map(photons, bg_map, psf_sigma_px=sigma.value / pixel_size_nm) if sigma else None
    return _with_sample(cal, frames.shape, where)


def _with_sample(cal: Calibration, shape: tuple[int, int, int], where: np.ndarray | None = None) -> Calibration:
    """``cal`` with the sample whose simulation shows its spots (:func:`~rtsmlm.analysis.sample_model.fit_sample`,
    ~1 s): the calibrated microscope is simulated with the config written from ``cal`` itself."""
    from rtsmlm.core import config as config_mod

    if cal.psf_sigma_nm is None:  # no PSF to simulate with: the detected figures
        return replace(cal, sample=fit_sample(cal.spots, None, shape=shape[1:]))
    cfg = config_mod.loads(config_toml(cal), None, "the calibrated config")
    sample = fit_sample(cal.spots, cfg, shape=shape[1:], where=where)
    warnings = list(cal.warnings)
    worst = worst_figure(sample.agreement)
    if worst is not None and misfit(sample.agreement) > SAMPLE_MISFIT_WARNING:
        figure, ratio = worst
        warnings.append(f"no simulated sample reproduces the movie's spots (their {figure.replace('_', ' ')} "
                        f"{ratio:.2f}× the movie's at best): the thresholds and a fine-tune chosen "
                        "on the calibrated conditions may not fit this sample")
    return replace(cal, sample=sample, warnings=warnings)


SAMPLE_MISFIT_WARNING = 0.25
"""A fitted sample whose simulated spots still miss the movie's by more than this (largest |log ratio|) is
warned about."""


RESPONSE_BOX = 7
"""Pixels around each pixel (a square this wide) whose median background is that pixel's expected one: wider
than a spot, narrower than out-of-focus structure."""


def _response_map(signal: np.ndarray, signal_var: np.ndarray, n: np.ndarray) -> np.ndarray | None:
    """Each pixel's response relative to its neighbourhood (an sCMOS's photo-response non-uniformity, a few
    per cent from pixel to pixel: its own amplifier), from the movie itself: the pixel's mean background over
    its quiet frames (``signal``, ADU above its dark level; ``signal_var`` that difference's variance: the
    frames' noise over their number ``n`` plus the dark level's) over the median of its 7×7 neighbourhood.
    Left uncorrected it is a fixed pattern as strong as the shot noise at a background of several hundred
    photons, static from frame to frame, which a network reads as dim emitters (measured: bench_calibrate's
    sCMOS at background 800, Jaccard 0.32 without, 0.74 with). The ratios are shrunk towards 1 by the share of
    their spread that noise explains (signal_var / level²), so a dim background, where the ratios are mostly
    noise, gives no map (None)."""
    from scipy.ndimage import median_filter

    local = median_filter(signal, size=RESPONSE_BOX, mode="nearest")
    ok = (signal > 0) & (local > 0) & (n >= MIN_KEPT_FRAMES)
    if ok.sum() < 100:
        return None
    ratio = np.ones_like(signal)
    ratio[ok] = signal[ok] / local[ok]
    noise = float(np.mean(signal_var[ok] / local[ok] ** 2))
    spread = float(np.var(ratio[ok]))
    keep = 1.0 - noise / spread if spread > 0 else 0.0
    if keep <= 0.5:  # mostly noise: a map would add more error than it removes
        return None
    return np.clip(1.0 + keep * (ratio - 1.0), 0.5, 2.0).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Outputs: a config for run/train, and a PNG report


def config_toml(cal: Calibration, *, exposure_ms: float = 10.0, em_gain: float | None = None,
                maps_file: str | None = None) -> str:
    """A config file (camera, PSF, sample and training ranges) that ``rtsmlm run``/``train`` take with
    ``--config``; ``maps_file`` names the sCMOS per-pixel maps written beside it."""
    cam = cal.camera(exposure_ms, em_gain)
    lines = ["# Written by rtsmlm calibrate: the camera, PSF and sample measured from the movie.",
             "# 'photons' are detected photo-electrons (QE 1).", "[camera]",
             f'model = "{cam.model}"', f"pixel_size_nm = {cam.pixel_size_nm:.6g}",
             f"baseline_adu = {cam.baseline_adu:.6g}", f"e_per_adu = {cam.e_per_adu:.6g}",
             f"em_gain = {cam.em_gain:.6g}", "qe = 1.0", f"read_noise_e = {cam.read_noise_e:.6g}",
             f"exposure_ms = {exposure_ms:.6g}"]
    if cam.model == "scmos":
        # The measured fixed-pattern offsets: a model and threshold chosen on simulated data must see them.
        lines += [f"scmos_offset_sigma_adu = {cal.offset_sd_adu:.3g}", "scmos_gain_sigma = 0.0"]
        if maps_file:
            lines.append(f"maps_file = {json.dumps(str(maps_file))}")
    else:
        lines += ["spurious_charge = 0.0"]
    lines += ["", "[psf]", 'model = "gaussian"']
    if cal.psf_sigma_nm is not None:
        lines.append(f"sigma_nm = {cal.psf_sigma_nm.value:.4g}")
    bg = cal.background_photons
    lines += ["", "[sim]", f"bg_photons = {bg['median']:.4g}"]
    sample = cal.sample
    if sample is not None:
        # The sample whose simulation shows the movie's spots (analysis.sample_model): what the thresholds,
        # the brightness floor and a fine-tune are chosen on.
        lines += [f"# {sample.method}; emitters spread evenly (as the fit simulates them)",
                  'structure = "uniform"', f"density = {sample.density_per_um2:.3g}",
                  f"photons_mean = {sample.photons_mean:.4g}", f"photons_sigma = {sample.photons_sigma:.4g}",
                  f"mean_on_frames = {sample.mean_on_frames:.3g}"]
        if sample.frame_locked:
            lines.append("frame_locked = true")
    # Without a sample (only while calibrate fits it, on this config's camera, PSF and background): no sample keys.
    lines += ["", "[train]", "# Ranges around what was measured (a model trained on them fits this microscope).",
              f"bg_min = {max(0.5 * bg['p05'], 0.5):.4g}", f"bg_max = {max(1.5 * bg['p95'], 2.0):.4g}"]
    if cal.spot_photons:
        lines += [f"photons_min = {max(0.25 * cal.spot_photons['p10'], 50.0):.4g}",
                  f"photons_max = {max(2.0 * cal.spot_photons['p90'], 500.0):.4g}"]
    # Detected spots undercount (dim and overlapping ones are missed): train well above them.
    lines += ["density_min = 0.0", f"density_max = {max(4.0 * cal.spots.density_per_um2, 2.0):.3g}",
              "# All cores: a fine-tune for this microscope is the machine's work while it runs (1500 steps: 7.7 min",
              "# on a 2-core CPU, 3.3 steps/s against one thread's 2.1); set 1 on a machine shared with an acquisition.",
              "threads = 0"]
    return "\n".join(lines) + "\n"


def write_report(cal: Calibration, path: Path) -> None:
    """A PNG with the photon-transfer line, the skewness test and the numbers."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    x = np.asarray(cal.ptc["signal_adu"])
    v = np.asarray(cal.ptc["variance_adu2"])
    F = EXCESS_NOISE[cal.camera_model]
    ax = axes[0]
    ax.plot(x, v, "o", label="background pixels (binned)")
    xx = np.linspace(min(0.0, float(x.min())), float(x.max()), 50)
    ax.plot(xx, F * cal.gain_adu_per_e.value * xx + (v[0] - F * cal.gain_adu_per_e.value * x[0]), "-",
            label=f"F·gain = {F:g} × {cal.gain_adu_per_e.value:.3g} ADU/e⁻")
    ax.set_xlabel("signal (ADU above the dark level, or raw)")
    ax.set_ylabel("temporal variance (ADU²)")
    ax.set_title("photon transfer")
    ax.legend()
    ax = axes[1]
    m3 = np.asarray(cal.ptc["third_moment_adu3"])
    ax.plot(np.asarray(cal.ptc["skew_signal_adu"]), m3, "o", label="third central moment")
    ax.set_xlabel("signal (ADU)")
    ax.set_title(f"noise skewness: {cal.camera_model} ({cal.camera_model_method})", fontsize=9)
    ax.legend()
    ax = axes[2]
    ax.axis("off")
    text = [f"camera: {cal.camera_model}",
            f"baseline: {cal.baseline_adu.value:.2f} ± {cal.baseline_adu.uncertainty or 0:.2f} ADU",
            f"  ({cal.baseline_adu.method})",
            f"gain: {cal.gain_adu_per_e.value:.4g} ± {cal.gain_adu_per_e.uncertainty or 0:.2g} ADU per photo-electron",
            f"read noise: {cal.read_noise_adu.value:.3g} ADU ({cal.read_noise_adu.method})"]
    if cal.psf_sigma_nm is not None:
        text.append(f"PSF sigma: {cal.psf_sigma_nm.value:.1f} ± {cal.psf_sigma_nm.uncertainty:.1f} nm")
    text += [f"background: {cal.background_photons['median']:.1f} photons/px "
             f"(5–95 %: {cal.background_photons['p05']:.1f}–{cal.background_photons['p95']:.1f})"]
    if cal.spot_photons:
        text.append(f"spots: {cal.spot_photons['median']:.0f} photons (10–90 %: {cal.spot_photons['p10']:.0f}–"
                    f"{cal.spot_photons['p90']:.0f}), {cal.spots_fitted} fitted")
    text.append(f"detected density: {cal.spots.density_per_um2:.3g} /µm²/frame (lower bound)")
    if cal.spots.on_frames is not None:
        text.append(f"spots seen for {cal.spots.on_frames:.2g} frames on average")
    if cal.sample is not None:
        text.append(f"sample (simulated to match): {cal.sample.density_per_um2:.3g} emitters/µm²/frame, "
                    f"{cal.sample.photons_mean:.0f} ± {cal.sample.photons_sigma:.0f} photons, on "
                    f"{cal.sample.mean_on_frames:.2g} frames")
    text += [f"warning: {w}" for w in cal.warnings]
    ax.text(0.0, 1.0, "\n".join(text), va="top", family="monospace", fontsize=8, wrap=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
