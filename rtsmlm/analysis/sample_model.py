"""The sample as the simulator describes it — emitter density, brightness, on-time — from the movie's spots.

What a spot finder counts in a movie is not what the sample holds: dim emitters, emitters that switch on or
off during a frame (dim in it) and overlapping ones go unfound, so the detected spots per frame undercount the
emitters, their brightness is that of the spots bright enough to find, and a spot found again in the next frame
mixes the on-time with the chance of being found twice. Measured (300 frames of 64², 0.3 emitters/µm², mean
on-times 1 / 2 / 5 frames, a 160 nm EMCCD and a 130 nm sCMOS): the detected spots were 0.11–0.14 per µm²,
and a simulation of those figures taken at face value held 2.4–2.8 times fewer emitters than the movie, each
frame's median emitter 15–33 % dimmer. Thresholds, a brightness floor or a fine-tune chosen on such a
simulation are chosen for a sparser, dimmer sample than the user's.

So the sample is fitted by the method of simulated moments: simulate the calibrated microscope (camera, PSF,
background) with a guess of the sample, find its spots exactly as in the movie (:func:`spot_statistics`), and
correct the guess by the ratio of each measured figure to the simulated one — detected density → emitter
density, the spots' median brightness (and their 10–90 % spread) → the emitters' brightness (and spread), the
spots' persistence → the mean on-time — until the simulated spots look like the movie's (each figure depends
mostly on its own parameter, monotonically; the round that came closest is kept). The same random numbers are
used in every round, so the rounds converge instead of chasing noise. Two kinds of photophysics are fitted:
molecules switching at any moment (dyes) and, for synthetic movies, only between frames; the second is taken
only when it alone reproduces the spots (:data:`LOCKED_MARGIN`).

Where the emitters are matters too: on a structured sample (filaments) isolated spots are rarer and brighter
(overlaps) than an even spread of the same emitters gives, so a fit that spreads them evenly reads the density
low and the brightness high (README, "The sample behind the spots"). So the simulated emitters are placed where
the movie's are (:func:`sample_map`: the movie's mean signal above its background, the part of its variation that
is not noise), evenly when the movie shows no structure beyond its noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from rtsmlm.localization.spots import BOX, find_isolated_spots

__all__ = ["SampleModel", "SpotStatistics", "fit_sample", "misfit", "on_frames", "sample_map", "spot_statistics",
           "worst_figure"]

MIN_SPOTS = 30
"""Spots below which no sample is fitted to them."""
ON_FRAMES_MIN_SPOTS = 10
"""Spots below which no on-time is read from them."""
ROUNDS = 8
"""Simulate-and-correct rounds at most; they stop once every figure agrees within :data:`CONVERGED`."""
CONVERGED = 0.03
"""|log ratio| of every simulated spot figure to the movie's below which the fit stops."""
FIT_SPOTS = 1500
"""Spots the simulation of each round should hold (more frames for a sparse sample): the moments to ~3 %."""
FIT_SIZE = 128
"""Side of the simulated field (px), or the movie's when smaller: enough spots, short rounds."""
MAX_STEP = 4.0
"""A round changes a parameter by at most this factor (a first guess far off must not overshoot)."""


@dataclass(frozen=True)
class SpotStatistics:
    """What the spot finder sees in frames in photons: isolated spots per frame per µm², their brightness (sum
    above the background in a 7×7 box, photons: quantiles), and how long a spot stays (mean frames)."""

    density_per_um2: float
    photons: dict[str, float]
    on_frames: float | None
    spots: int


def spot_statistics(photons: np.ndarray, bg_map: np.ndarray, pixel_size_nm: float,
                    spots: list[tuple[int, int, int]] | None = None) -> SpotStatistics:
    """The spot figures of frames (T, H, W) in photons over their background map (``spots``: their
    :func:`~rtsmlm.localization.spots.find_isolated_spots`, when already found)."""
    photons = np.asarray(photons, np.float64)
    if spots is None:
        spots = find_isolated_spots(photons, bg_map)
    t, h, w = photons.shape
    area_um2 = h * w * (pixel_size_nm / 1000.0) ** 2
    half = BOX // 2
    if spots:
        k, y, x = (np.array(v) for v in zip(*spots))
        dy, dx = np.mgrid[-half:half + 1, -half:half + 1]
        rows, cols = y[:, None, None] + dy, x[:, None, None] + dx  # find_isolated_spots keeps the box inside
        signal = photons[k[:, None, None], rows, cols] - np.asarray(bg_map, np.float64)[rows, cols]
        sums = signal.sum(axis=(1, 2))
        quantiles = {"median": float(np.median(sums)), "p10": float(np.percentile(sums, 10)),
                     "p90": float(np.percentile(sums, 90))}
    else:
        quantiles = {}
    return SpotStatistics(len(spots) / t / area_um2, quantiles, on_frames(spots), len(spots))


MAP_BLOCK = 10
"""Frames per block of the two interleaved halves whose maps' difference measures the mean map's noise (blocks,
not single frames: an emitter on for several frames would otherwise sit in both halves)."""


def sample_map(photons: np.ndarray, bg_map: np.ndarray, smooth_px: float = 1.0,
               psf_sigma_px: float | None = None) -> np.ndarray | None:
    """Where the emitters of frames (T, H, W, photons) are: their mean signal above ``bg_map``, smoothed by
    ``smooth_px``, its deviations from the field's mean kept in the proportion that is structure, not noise, and
    (given the PSF) deconvolved by the PSF. Mean 1 over the field (a relative density); None when the movie shows
    no structure beyond its noise (or is too short to tell).

    Two kinds of noise are measured, not modelled. Which emitters happened to blink where, and the camera's
    noise: the maps of two interleaved halves of the movie (blocks of :data:`MAP_BLOCK` frames) differ by
    these alone. A pixel's own fixed pattern (an sCMOS pixel's gain, a background model a little off): it is
    not shared by the pixel's neighbours, while a structure seen through the PSF is. So the structure's
    variance is the covariance of neighbouring pixels of the mean map less that of the halves' difference,
    and its share of the map's variance is what the deviations keep — before the deconvolution and again after
    it (which sharpens the noise left as well as the structure). A movie of evenly spread emitters gives a flat
    map or none (no invented clusters), a filament sample its filaments."""
    photons = np.asarray(photons, np.float64)
    t = photons.shape[0]
    first = (np.arange(t) // MAP_BLOCK) % 2 == 0
    if first.all() or not first.any() or min(photons.shape[1:]) < 3:
        return None  # too short to split: no structure can be told from noise
    signal = photons - np.asarray(bg_map, np.float64)[None]
    full, a, b = signal.mean(axis=0), signal[first].mean(axis=0), signal[~first].mean(axis=0)
    level = float(full.mean())
    if level <= 0:
        return None
    # The halves' means hold n₁ and n₂ frames: their difference's (co)variance is t²/(n₁n₂) times the full mean's.
    noise = (a - b) * math.sqrt(first.sum() * (~first).sum()) / t
    structure = _neighbour_covariance(full) - _neighbour_covariance(noise)
    smooth = ndimage.gaussian_filter(full, smooth_px, mode="nearest")
    total = float(np.var(smooth))
    keep = float(np.clip(structure / total, 0.0, 1.0)) if total > 0 else 0.0
    if keep == 0.0:
        return None
    weights = np.clip(level + keep * (smooth - level), 0.0, None)
    if psf_sigma_px:
        # Deconvolution sharpens what noise the shrinkage left as well as the structure: shrunk again.
        sharp = _deconvolved(weights, math.hypot(psf_sigma_px, smooth_px))
        weights = np.clip(level + keep * (sharp * level / max(float(sharp.mean()), 1e-12) - level), 0.0, None)
    return weights / max(float(weights.mean()), 1e-12)


MAP_LABELS_PER_UM2 = 5000.0
"""Labels per µm² of a sample simulated from a map."""


def _neighbour_covariance(image: np.ndarray) -> float:
    """The covariance of horizontally and vertically neighbouring pixels about the image's mean: what a
    structure wider than a pixel has and a pixel's own noise has not."""
    d = image - image.mean()
    return float(0.5 * (np.mean(d[:, 1:] * d[:, :-1]) + np.mean(d[1:] * d[:-1])))


DECONVOLUTION_ROUNDS = 20
"""Richardson–Lucy rounds: enough to narrow a filament's light to a few pixels, few enough not to break a smooth
map into single-pixel spikes."""


def _deconvolved(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Richardson–Lucy deconvolution by a Gaussian blur (the PSF and the smoothing): the emitters' places
    narrower than their light."""
    blur = lambda a: ndimage.gaussian_filter(a, sigma_px, mode="nearest")  # noqa: E731
    est = np.full_like(image, max(float(image.mean()), 1e-12))
    for _ in range(DECONVOLUTION_ROUNDS):
        est = est * blur(image / np.maximum(blur(est), 1e-12))
    return est


def on_frames(spots: list[tuple[int, int, int]]) -> float | None:
    """Mean frames a detected spot stays on: from how often a spot (frame, row, column of its smoothed
    maximum) is found again in the next frame on its pixel or a neighbouring one (a geometric on-time:
    mean = 1 / (1 - p)). The maxima's pixels are enough: no fit needed."""
    if len(spots) < ON_FRAMES_MIN_SPOTS:
        return None
    table = np.array(spots, dtype=np.float64)
    by_frame: dict[int, np.ndarray] = {}
    for k in np.unique(table[:, 0]):
        by_frame[int(k)] = table[table[:, 0] == k, 1:]
    again = total = 0
    for k, pts in by_frame.items():
        total += len(pts)
        nxt = by_frame.get(k + 1)  # a frame is a key only when it has spots
        if nxt is not None:
            d = np.abs(pts[:, None, :] - nxt[None, :, :]).max(-1)  # Chebyshev distance, px
            again += int(np.sum(d.min(axis=1) <= 1.0))
    p = again / max(total, 1)
    return float(1.0 / max(1.0 - p, 1e-3))


@dataclass(frozen=True)
class SampleModel:
    """The simulator's sample parameters (``[sim]`` of a config) that reproduce the movie's spots."""

    density_per_um2: float
    photons_mean: float
    photons_sigma: float
    mean_on_frames: float
    method: str
    agreement: dict[str, float] = field(default_factory=dict)
    """Each spot figure of the closest simulation over the movie's (1 = reproduced)."""
    frame_locked: bool = False
    """Molecules switch only between frames (``sim.frame_locked``): chosen when only that reproduces the spots."""


def _spread(q: dict[str, float]) -> float:
    return max(q["p90"] - q["p10"], 1e-9)


def _normal_sigma(q: dict[str, float]) -> float:
    """The σ of a normal distribution with these 10–90 % quantiles."""
    return _spread(q) / 2.563


def _step(ratio: float) -> float:
    return float(np.clip(ratio, 1.0 / MAX_STEP, MAX_STEP)) if math.isfinite(ratio) and ratio > 0 else 1.0


def fit_sample(measured: SpotStatistics, config: Any, *, shape: tuple[int, int], seed: int = 0,
               rounds: int = ROUNDS, where: np.ndarray | None = None) -> SampleModel:
    """The sample that makes the calibrated microscope ``config`` (camera, PSF σ, ``sim.bg_photons``; None: not
    known) show the movie's spots ``measured``; ``shape``: the movie's frame (the field simulated is at most
    :data:`FIT_SIZE` px wide, for enough frames to hold :data:`FIT_SPOTS` spots); ``where``: the movie's
    :func:`sample_map` (None: emitters spread evenly). Too few spots to fit, or no config → the measured figures
    (the density × 1.5, as dim and overlapping emitters are missed), said in ``method``."""
    q = measured.photons
    tau0 = max(measured.on_frames or 1.0, 0.3)
    if config is None or measured.spots < MIN_SPOTS or not q or q["median"] <= 0:
        median = max(q.get("median", 1000.0), 1.0)
        why = "no PSF width to simulate with" if config is None else f"{measured.spots} spots: too few to fit to"
        return SampleModel(max(1.5 * measured.density_per_um2, 0.01), median,
                           max(_normal_sigma(q) if q else 0.0, 0.1 * median), tau0,
                           f"the detected spots ({why}), their density × 1.5")
    from rtsmlm.core import config as config_mod

    size = int(min(FIT_SIZE, *shape))
    labels = None
    if where is not None:  # drawn once: every round of both fits sees the same sample (like is compared with like)
        from rtsmlm.sim.structures import from_map

        # Many labels, each seldom on: the map already holds the movie's own labels' granularity, which labels
        # as sparse as the simulator's default would add a second time.
        labels = from_map(np.random.default_rng(seed + 1), _typical_crop(where, size), config.camera.pixel_size_nm,
                          MAP_LABELS_PER_UM2)
    area_um2 = (size * config.camera.pixel_size_nm / 1000.0) ** 2
    n_frames = int(np.clip(math.ceil(FIT_SPOTS / max(measured.density_per_um2 * area_um2, 1e-9)), 30, 400))
    # Molecules switching at any moment (real dyes) unless only switching with the frames reproduces the spots
    # (tried only when the former miss by more than LOCKED_MARGIN: within it they are kept whatever the other).
    params, agreement = _fit(config_mod, measured, config, size, n_frames, seed, rounds, False, labels)
    locked = False
    if misfit(agreement) > LOCKED_MARGIN:
        locked_params, locked_agreement = _fit(config_mod, measured, config, size, n_frames, seed, rounds, True, labels)
        if misfit(locked_agreement) < LOCKED_GAIN * misfit(agreement):
            params, agreement, locked = locked_params, locked_agreement, True
    how = "switching with the frames" if locked else "switching at any moment"
    spread = "evenly" if labels is None else "where the movie's are"
    return SampleModel(params["density"], params["photons_mean"], params["photons_sigma"], params["mean_on_frames"],
                       f"simulated until its spots matched the movie's ({how}, placed {spread}; {n_frames} frames of "
                       f"{size}²)", agreement, locked)


def _typical_crop(where: np.ndarray, size: int) -> np.ndarray:
    """The ``size``² part of a sample map (mean 1 over the movie's field) whose mean is closest to the field's: the
    simulated field must hold as many emitters per µm² as the movie on average, or the density fitted on it is
    that of a busier or emptier part."""
    h, w = where.shape
    if h <= size and w <= size:
        return where
    best = (math.inf, 0, 0)
    for r in range(0, h - size + 1, max(1, (h - size) // 8)):
        for c in range(0, w - size + 1, max(1, (w - size) // 8)):
            off = abs(float(where[r:r + size, c:c + size].mean()) - 1.0)
            if off < best[0]:
                best = (off, r, c)
    _, r, c = best
    crop = where[r:r + size, c:c + size]
    return crop / max(float(crop.mean()), 1e-12)


LOCKED_MARGIN = 0.15
LOCKED_GAIN = 0.5
"""Molecules that switch at any moment are the physics of dyes; switching with the frames is chosen only when
the former's simulated spots miss the movie's by more than LOCKED_MARGIN (largest |log ratio| of a figure) and
the latter's by less than LOCKED_GAIN times that. Measured (scratch, 300 frames of 64², 0.3/µm², the four
cameras of bench_calibrate with the widest range of pixel size and background, mean on-times 1 and 3 frames,
fits of 100 frames): movies of molecules switching at any moment were fitted by that kind with misfits
0.03–0.31 and by the other with 0.04–0.24 (so a margin of 0.15 alone would mistake some); movies switching with
the frames, on for 1 frame on average, by their own kind with 0.03–0.07 and by the other with 0.21–0.52; on for
3, both kinds fit (0.05–0.19) and the brightness is read 20–30 % high, the density within 17 %. The
storm-analysis test movie (each emitter on for exactly one frame): 1.36 against ~0.1."""


def worst_figure(agreement: dict[str, float]) -> tuple[str, float] | None:
    """The spot figure the simulation misses most (the largest |log ratio|) and its ratio; None: no figures."""
    scored = [(abs(math.log(a)), k) for k, a in agreement.items() if a > 0]
    if not scored:
        return None
    key = max(scored)[1]
    return key, agreement[key]


def misfit(agreement: dict[str, float]) -> float:
    """How far the simulated spot figures are from the movie's: the largest |log ratio| (inf: none)."""
    worst = worst_figure(agreement)
    return abs(math.log(worst[1])) if worst else math.inf


def _fit(config_mod: Any, measured: SpotStatistics, config: Any, size: int, n_frames: int, seed: int, rounds: int,
         frame_locked: bool, labels: np.ndarray | None) -> tuple[dict[str, float], dict[str, float]]:
    """The sample parameters of the round (of at most ``rounds`` of simulate-and-correct) whose spots came closest
    to the movie's, and that round's agreement (``labels``: the simulated sample's, None: spread evenly)."""
    q = measured.photons
    # First guess: the detected figures, the density doubled (about what is missed at moderate densities).
    params = {"density": 2.0 * measured.density_per_um2, "photons_mean": q["median"],
              "photons_sigma": max(_normal_sigma(q), 0.05 * q["median"]),
              "mean_on_frames": max(measured.on_frames or 1.0, 0.3)}
    # Which figure each parameter is corrected by, and the lowest value it may take.
    pairs = (("density", "density", 1e-3), ("photons_mean", "photons_median", 1.0),
             ("photons_sigma", "photons_spread", 0.0), ("mean_on_frames", "on_frames", 0.05))
    best: tuple[float, dict[str, float], dict[str, float]] = (math.inf, dict(params), {})
    previous: tuple[dict[str, float], dict[str, float]] | None = None
    for _ in range(rounds):
        sim_stats = _simulated_statistics(config_mod, config, params, size, n_frames, seed, frame_locked, labels)
        if sim_stats.spots < MIN_SPOTS or not sim_stats.photons:
            params["density"] = min(params["density"] * MAX_STEP, 20.0)  # nothing found: far too sparse a guess
            previous = None
            continue
        sq = sim_stats.photons
        agreement = {"density": sim_stats.density_per_um2 / measured.density_per_um2,
                     "photons_median": sq["median"] / q["median"], "photons_spread": _spread(sq) / _spread(q)}
        if measured.on_frames and sim_stats.on_frames:
            agreement["on_frames"] = sim_stats.on_frames / measured.on_frames
        if misfit(agreement) < best[0]:
            best = (misfit(agreement), dict(params), agreement)
        if best[0] < CONVERGED:
            break
        step = {}
        for key, figure, floor in pairs:
            if figure not in agreement:
                continue
            step[key] = max(params[key] * _step(1.0 / agreement[figure]), floor)
        # Detected spots grow more slowly than the emitters where they crowd (overlapping ones are not
        # isolated): the density's correction follows the secant's slope in log-log from the last round (the
        # other figures each follow their own parameter nearly in proportion, and the noise of the spots'
        # statistics would make their secants wild).
        if previous is not None and previous[0]["density"] > 0:
            dp = math.log(params["density"] / previous[0]["density"])
            if abs(dp) > 0.05:
                slope = float(np.clip(math.log(agreement["density"] / previous[1]["density"]) / dp, 0.3, 1.0))
                step["density"] = params["density"] * _step(agreement["density"] ** (-1.0 / slope))
        previous = (dict(params), agreement)
        params.update(step)
        params["density"] = min(params["density"], 20.0)
        params["photons_sigma"] = max(params["photons_sigma"], 0.05 * params["photons_mean"])
        params["mean_on_frames"] = min(params["mean_on_frames"], 1e4)
    return best[1], best[2]


def _simulated_statistics(config_mod: Any, config: Any, params: dict[str, float], size: int, frames: int,
                          seed: int, frame_locked: bool, labels: np.ndarray | None) -> SpotStatistics:
    from rtsmlm.sim.simulator import Simulator

    sim = config_mod.replace(config.sim, size=size, seed=seed, structure="uniform", bg_structured=False,
                             fiducials=0, bleach_probability=0.0, frame_locked=frame_locked, **params)
    camera = config_mod.replace(config.camera, maps_file="")  # the movie's maps are for its own field size
    cfg = config_mod.replace(config, sim=config_mod.to_dict(sim), camera=config_mod.to_dict(camera))
    simulator = Simulator(cfg, labels=labels)
    movie, _ = simulator.movie(frames)
    photons = simulator.camera.to_photons(movie.astype(np.float32)).astype(np.float64)
    bg = np.full(photons.shape[1:], float(np.median(simulator.background)))
    return spot_statistics(photons, bg, config.camera.pixel_size_nm)
