"""Classical spot finding and fitting on frames in photons: isolated local maxima, each fitted with a
pixel-integrated Gaussian (least squares). Used where the network is not the right tool: the range guard
(is this movie inside the model's training range?) and camera calibration (PSF width, brightness)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

BOX = 7
"""Side of the square fitted around a spot, in pixels (odd)."""
SPOT_DTYPE = np.dtype([("frame", "<i8"), ("y", "<f8"), ("x", "<f8"), ("photons", "<f8"), ("sigma_px", "<f8"),
                       ("sigma_x_px", "<f8"), ("sigma_y_px", "<f8"), ("bg", "<f8")])
"""``sigma_px`` is the geometric mean of the two axes' widths; an elongated spot (two emitters, or an
astigmatic PSF out of focus) has ``sigma_x_px`` and ``sigma_y_px`` apart."""
ROUND_MAX_LOG_RATIO = 0.15
"""A spot whose x and y widths differ by more than ~16 % is taken for two emitters (or out of focus)."""


def find_isolated_spots(photons: np.ndarray, bg: float | np.ndarray, *, snr: float = 2.0,
                        box: int = BOX, exclusive: bool = False) -> list[tuple[int, int, int]]:
    """(frame, y, x) of local maxima of the 3×3-smoothed frames more than ``snr`` shot-noise sigmas above
    ``bg`` with no higher maximum within ``box`` pixels, away from the border; brightest first.
    ``exclusive``: no other maximum above the threshold at all within ``box`` pixels — a dimmer neighbour
    inside the fitted box widens the fit too (dense movies), so PSF widths are measured on these."""
    photons = np.asarray(photons, dtype=np.float64)
    half = box // 2
    bg_map = np.broadcast_to(np.asarray(bg, dtype=np.float64), photons.shape[1:])
    noise = np.sqrt(np.maximum(bg_map, 1.0))
    found: list[tuple[float, int, int, int]] = []
    for k, frame in enumerate(photons):
        smooth = ndimage.uniform_filter(frame, 3)
        # Every maximum above the threshold (5x5: a noise ripple on one spot is not a second one), then those
        # alone or highest in the square of ±box pixels around them. Maxima, not pixels: a brighter spot just
        # over box pixels away has shoulder pixels within it, and they must not hide this one (a bead 18 px from
        # a brighter one was lost in a 17-px box).
        peaks = (smooth == ndimage.maximum_filter(smooth, 5)) & (smooth > bg_map + snr * noise)
        if exclusive:
            ys, xs = np.nonzero(peaks)
            crowd = ndimage.uniform_filter(peaks.astype(np.float64), 2 * box + 1, mode="constant")
            alone = np.round(crowd[ys, xs] * (2 * box + 1) ** 2) <= 1  # itself only
            peaks = np.zeros_like(peaks)
            peaks[ys[alone], xs[alone]] = True
        else:
            value = np.where(peaks, smooth, -np.inf)
            peaks &= value >= ndimage.maximum_filter(value, 2 * box + 1)
        for y, x in zip(*np.nonzero(peaks)):
            if half <= y < frame.shape[0] - half and half <= x < frame.shape[1] - half:
                found.append((float(smooth[y, x] - bg_map[y, x]), k, int(y), int(x)))
    found.sort(reverse=True)
    return [(k, y, x) for _, k, y, x in found]


def fit_spot(patch: np.ndarray, bg: float, *, elliptical: bool = True
             ) -> tuple[float, float, float, float, float, float] | None:
    """(photons, dy, dx, sigma_x px, sigma_y px, background) of a pixel-integrated Gaussian fitted to a
    square patch centred on a spot (offsets from the centre pixel), or None when the fit fails. Elliptical
    (axes along x and y) by default; ``elliptical=False`` fits one width (a third faster)."""
    from scipy.optimize import least_squares
    from scipy.special import erf

    half = patch.shape[0] // 2
    edges = np.arange(-half, half + 2) - 0.5

    def model(params: np.ndarray) -> np.ndarray:
        n, cx, cy, sx, sy, b = params
        fx = 0.5 * np.diff(erf((edges - cx) / (np.sqrt(2.0) * sx)))
        fy = 0.5 * np.diff(erf((edges - cy) / (np.sqrt(2.0) * sy)))
        return n * fy[:, None] * fx[None, :] + b

    start = np.array([max(patch.sum() - bg * patch.size, 1.0), 0.0, 0.0, 1.2, 1.2, bg])
    lo, hi = [0.0, -1.5, -1.5, 0.3, 0.3, -np.inf], [np.inf, 1.5, 1.5, 5.0, 5.0, np.inf]
    if not elliptical:  # the same model with sigma_y tied to sigma_x
        keep = [0, 1, 2, 3, 5]
        full = lambda q: np.array([q[0], q[1], q[2], q[3], q[3], q[4]])  # noqa: E731
        residual = lambda q: (model(full(q)) - patch).ravel()  # noqa: E731
        start, lo, hi = start[keep], [lo[k] for k in keep], [hi[k] for k in keep]
    else:
        full = lambda q: q  # noqa: E731
        residual = lambda q: (model(q) - patch).ravel()  # noqa: E731
    try:
        fit = least_squares(residual, start, bounds=(lo, hi))
    except ValueError:
        return None
    if not fit.success:
        return None
    n, cx, cy, sx, sy, b = (float(v) for v in full(fit.x))
    return n, cy, cx, sx, sy, b


def fit_spots(photons: np.ndarray, spots: list[tuple[int, int, int]], bg: float | np.ndarray,
              box: int = BOX, *, elliptical: bool = True) -> np.ndarray:
    """Fit every spot of :func:`find_isolated_spots`; a structured array (:data:`SPOT_DTYPE`) of the fits
    that converged."""
    photons = np.asarray(photons, dtype=np.float64)
    bg_map = np.broadcast_to(np.asarray(bg, dtype=np.float64), photons.shape[1:])
    half = box // 2
    rows = []
    for k, y, x in spots:
        fit = fit_spot(photons[k, y - half:y + half + 1, x - half:x + half + 1], float(bg_map[y, x]),
                       elliptical=elliptical)
        if fit is not None:
            n, dy, dx, sx, sy, b = fit
            rows.append((k, y + dy, x + dx, n, float(np.sqrt(sx * sy)), sx, sy, b))
    return np.array(rows, dtype=SPOT_DTYPE) if rows else np.zeros(0, SPOT_DTYPE)


def background_map(photons: np.ndarray) -> np.ndarray:
    """The smooth background of frames in photons: the temporal median (a blinking emitter is off in most
    frames), through :func:`smooth_background`. A structured illumination or a per-pixel offset error is
    followed, which one number for the whole movie would not."""
    return smooth_background(np.median(np.asarray(photons, np.float64), axis=0))


def smooth_background(level: np.ndarray) -> np.ndarray:
    """A per-pixel background level median-filtered over 9 px: what remains of long-lived emitters goes."""
    return ndimage.median_filter(level, size=9)


MIN_ALONE_FRACTION = 0.06
"""Below this fraction of spots alone in their box the field is too crowded to measure a PSF width from
spots: the few that look alone are mostly overlapping emitters that fit as one round, wider spot (+40 %
at 3 emitters/µm² with 160 nm pixels, where 2 % were alone; movies with ≥ 7 % alone read within 6 %)."""


DECIDE_SPOTS = 20
"""Spots fitted in the standard box to decide whether the PSF is wide enough for a wider one."""


def psf_width_fits(photons: np.ndarray, bg_map: np.ndarray, *, max_spots: int = 2000, min_spots: int = 5) -> np.ndarray:
    """Fits of single emitters to measure the PSF width from: spots with no other spot in their box
    (``exclusive``), fitted on the background-subtracted frames (the fit's background then only absorbs
    what the map missed: a free background at 800 photons/px trades off against the width), round
    (:func:`round_spots`); for a wide PSF (σ > 1.2 px) again in a box of ±2.5 σ, as a 7-px box cuts the
    tails off. Brightest spots first, at most ``max_spots``. No fits (an empty table) in a field too crowded
    for it (:data:`MIN_ALONE_FRACTION`): no width is better than a wrong one."""
    photons = np.asarray(photons, np.float64)
    signal = photons - bg_map
    alone = find_isolated_spots(photons, bg_map, exclusive=True)
    if len(alone) < MIN_ALONE_FRACTION * len(find_isolated_spots(photons, bg_map, box=2)):  # every 5x5 maximum
        return np.zeros(0, SPOT_DTYPE)
    # The box is decided on the brightest few, so a wide PSF is not fitted twice over (the fits are the
    # cost: ~6 ms each, and the range guard runs beside the localizer at the start of every run).
    first = fit_spots(signal, alone[:min(max_spots, DECIDE_SPOTS)], 0.0)
    good = round_spots(first)
    if len(good) >= min_spots and np.median(good["sigma_px"]) > 1.2:
        box = 2 * int(np.ceil(2.5 * float(np.median(good["sigma_px"])))) + 1
        spots = find_isolated_spots(photons, bg_map, box=box, exclusive=True)
        return round_spots(fit_spots(signal, spots[:max_spots], 0.0, box=box))
    rest = fit_spots(signal, alone[DECIDE_SPOTS:max_spots], 0.0)
    return round_spots(np.concatenate([first, rest]))


def round_spots(fits: np.ndarray) -> np.ndarray:
    """Fits of single emitters: converged inside the bounds, and round (two emitters closer than the box
    fit as one elongated spot, which would widen the PSF estimate)."""
    sx, sy = fits["sigma_x_px"], fits["sigma_y_px"]
    ok = (np.minimum(sx, sy) > 0.35) & (np.maximum(sx, sy) < 4.9) & (fits["photons"] > 0)
    ok &= np.abs(np.log(np.maximum(sx, 1e-9) / np.maximum(sy, 1e-9))) < ROUND_MAX_LOG_RATIO
    return fits[ok]
