"""Detection thresholds chosen for the conditions at hand: simulate them, run the network once, and keep
the ``p_threshold`` (and, for ``rtsmlm calibrate``, the ``candidate_threshold``, the brightness floor
``min_photons`` and whether the second detection pass, ``residual_threshold``, stays on) that maximise the
Jaccard index against the simulated truth.

Thresholds tuned for one camera's brightness, background and density are wrong for another's (a dim sample
needs a lower p threshold; a dense one a lower candidate threshold — an emitter near a pixel corner spreads
its probability over several pixels, none of them a high maximum — and a sparse one on a high background a
higher one, or noise blobs pass); this replaces tuning by hand. A broad model, trained on brightness down to
100 photons, scores a noise blob on a sharp PSF as a likely dim emitter whatever the threshold; where the
calibrated brightness makes such emitters rare, a floor on the read-out photons removes them (a model trained
for the camera learns that floor from its brightness range), unless an adjacent frame confirms them
(:mod:`rtsmlm.localization.brightness_floor`). The network's output maps are kept and
post-processed at every combination: exactly what a run at each would report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rtsmlm.analysis.metrics import evaluate
from rtsmlm.core.config import Config
from rtsmlm.sim.camera import SCMOS_PRESET

__all__ = ["BROAD_CONDITIONS", "CANDIDATE_GRID", "FLOOR_FRACTIONS", "GRID", "MIN_EMITTERS", "Key", "ThresholdChoice",
           "choose_for_model", "choose_thresholds", "frames_for", "residual_choices", "threshold_curve",
           "threshold_surface"]

GRID = tuple(np.round(np.arange(0.2, 0.91, 0.05), 2))
"""The p thresholds tried."""
DEFAULT_CANDIDATE = 0.3
"""``model.candidate_threshold``'s default: what a run uses unless calibrate or the user sets another."""
CANDIDATE_GRID = (DEFAULT_CANDIDATE,)
"""The candidate thresholds ``rtsmlm calibrate`` tries (a run uses min(candidate, p) as the localizer does).
Only the default: choosing it too, from (0.15, 0.2, 0.3), was measured (``bench_cameras.py
--calibrated-thresholds --candidates 0.15,0.2,0.3`` against ``--candidates 0.3``) at +0.001 mean Jaccard over
the 18 cells — the p threshold already takes the candidate threshold down with it (min(0.3, p))."""
FLOOR_FRACTIONS = (0.0, 0.1, 0.15, 0.2)
"""The brightness floors ``rtsmlm calibrate`` tries, as fractions of the calibrated median brightness
(``sim.photons_mean``): a floor at a fifth of the typical emitter loses few emitters that any method could
find (those on for a small part of the frame) and is tried only against no floor at all."""


Key = tuple[float, float, float, float]
"""A point of a threshold surface: (candidate threshold, p threshold, floor in photons, residual threshold)."""


@dataclass(frozen=True)
class ThresholdChoice:
    """The chosen ``p_threshold``, ``candidate_threshold``, ``min_photons`` and ``residual_threshold``, the
    Jaccard they gave, the curve at the chosen candidate threshold, floor and residual threshold (p threshold →
    Jaccard) and the whole surface (:data:`Key` → Jaccard)."""

    p_threshold: float
    candidate_threshold: float
    jaccard: float
    curve: dict[float, float]
    frames: int
    surface: dict[Key, float]
    min_photons: float = 0.0
    residual_threshold: float = 0.5


MIN_EMITTERS = 1000
"""A choice is made on at least this many simulated emitters (more frames for a sparse sample, up to
:data:`MAX_FRAMES`): on 100 frames of a 0.1/µm² sample (~170–400 emitters) the Jaccard's statistical spread,
±0.02–0.03, is larger than the differences between thresholds, and the choice follows the noise."""
MAX_FRAMES = 1000


def frames_for(cfg: Config, frames: int, size: int, min_emitters: int = MIN_EMITTERS) -> int:
    """``frames``, or more (at most :data:`MAX_FRAMES`) so that ``size``² frames of ``cfg``'s density and pixel
    size hold ``min_emitters`` emitters."""
    area_um2 = (size * cfg.camera.pixel_size_nm / 1000.0) ** 2
    per_frame = max(cfg.sim.density * area_um2, 1e-6)
    return int(max(frames, min(MAX_FRAMES, math.ceil(min_emitters / per_frame))))


def choose_thresholds(cfg: Config, checkpoint: str, *, frames: int = 100, size: int = 64,
                      tolerance_nm: float = 250.0, backend_cfg=None,
                      candidates: tuple[float, ...] = CANDIDATE_GRID,
                      floors: tuple[float, ...] = FLOOR_FRACTIONS,
                      residuals: tuple[float, ...] | None = None) -> ThresholdChoice:
    """Simulate ``frames`` frames (more for a sparse sample: :func:`frames_for`) of ``size``² with ``cfg``
    (camera, PSF, sample), run ``checkpoint`` on them and pick the (candidate, p, floor, residual) of
    ``candidates`` × :data:`GRID` × ``floors`` (fractions of ``cfg.sim.photons_mean``) × ``residuals`` (the
    second detection pass's thresholds; default :func:`residual_choices`) with the best Jaccard over all true
    emitters (within :data:`JACCARD_TOLERANCE`: no floor if it is as good, then the configured second pass,
    then the candidate threshold nearest the default, then the p threshold nearest the model's own — the
    choice leaves what a run would use only for a clear gain)."""
    from rtsmlm.localization.checkpoint import detection_threshold, load_meta

    frames = frames_for(cfg, frames, size)
    surface = threshold_surface(cfg, checkpoint, frames=frames, size=size, tolerance_nm=tolerance_nm,
                                backend_cfg=backend_cfg, candidates=candidates,
                                floors=tuple(f * cfg.sim.photons_mean for f in floors),
                                residuals=residual_choices(cfg) if residuals is None else residuals)
    own, _ = detection_threshold(load_meta(checkpoint), -1.0)
    return _best(surface, frames, prefer_p=own, prefer_residual=cfg.model.residual_threshold)


def residual_choices(cfg: Config) -> tuple[float, ...]:
    """The second detection passes ``rtsmlm calibrate`` tries: ``cfg``'s (``model.residual_threshold``) and
    none. The pass finds the partner of a close pair beside a detection; on a PSF several pixels wide (65 nm
    pixels) a model may spread one emitter's probability past the detection's reach, and the pass then reports
    it twice — measured on the camera matrix, turning it off gained up to 0.014 in such cells and lost up to
    0.044 in dense ones, so the simulated conditions decide."""
    return tuple(dict.fromkeys((float(cfg.model.residual_threshold), 0.0)))


JACCARD_TOLERANCE = 0.005
"""Thresholds whose simulated Jaccard is this close to the best are as good (the curve's statistical noise
on ~1000 emitters); of those the one nearest the usual 0.6 is kept when a model's own threshold is chosen,
and the default candidate threshold with the p threshold nearest the model's own when calibrate chooses.
The curves are flat at the low end (0.2–0.4 within 0.003 for the shipped models), and a real movie's
artefacts (hot pixels, out-of-focus light) turn a low threshold's extra detections into false positives that
no simulation shows."""


def _best(surface: dict[Key, float], frames: int, prefer_p: float = 0.6,
          prefer_residual: float = 0.5) -> ThresholdChoice:
    top = max(surface.values())
    cand, p, floor, residual = min((k for k in surface if surface[k] >= top - JACCARD_TOLERANCE),
                                   key=lambda k: (k[2], k[3] != prefer_residual, abs(k[0] - DEFAULT_CANDIDATE),
                                                  abs(k[1] - prefer_p)))
    curve = {t: j for (c, t, f, r), j in surface.items() if (c, f, r) == (cand, floor, residual)}
    return ThresholdChoice(p, cand, surface[(cand, p, floor, residual)], curve, frames, surface, floor, residual)


BROAD_CONDITIONS: tuple[dict, ...] = (
    {"camera": {"model": "emccd", "pixel_size_nm": 100.0}, "psf": {"sigma_nm": 130.0},
     "sim": {"bg_photons": 30.0, "density": 1.0, "photons_mean": 2000.0}},
    {"camera": {"model": "emccd", "pixel_size_nm": 160.0}, "psf": {"sigma_nm": 150.0},
     "sim": {"bg_photons": 150.0, "density": 0.5, "photons_mean": 3000.0}},
    {"camera": {**SCMOS_PRESET, "pixel_size_nm": 108.0}, "psf": {"sigma_nm": 140.0},
     "sim": {"bg_photons": 10.0, "density": 2.0, "photons_mean": 1000.0, "photons_sigma": 500.0}},
    {"camera": {**SCMOS_PRESET, "pixel_size_nm": 65.0}, "psf": {"sigma_nm": 110.0},
     "sim": {"bg_photons": 300.0, "density": 1.0, "photons_mean": 5000.0, "photons_sigma": 2000.0}},
)
"""The conditions a broad model's own threshold is chosen on (its training covers many cameras, so one
threshold must serve them all): EMCCD and sCMOS, pixels 65–160 nm, σ 0.9–1.7 px, background 10–300
photons/px, 0.5–2 emitters/µm². None is a camera of the accuracy benchmarks."""


def choose_for_model(checkpoint: str, cfg: Config, *, frames: int = 100, backend_cfg=None) -> dict:
    """The model's own detection threshold (stored in its metadata by ``rtsmlm train``): the p threshold
    with the best Jaccard on its training conditions, simulated — ``cfg``'s camera, PSF and sample for a
    model of one camera, the mean curve over :data:`BROAD_CONDITIONS` for a broad one (``train.broad``)."""
    from rtsmlm.core import config as config_mod

    if cfg.train.broad:
        base = config_mod.to_dict(cfg)
        conditions = []
        for k, cond in enumerate(BROAD_CONDITIONS):
            data = {**base, "camera": {**config_mod.to_dict(config_mod.CameraConfig()), **cond["camera"]},
                    "psf": {**config_mod.to_dict(config_mod.PSFConfig()), **cond["psf"]},
                    "sim": {**base["sim"], "seed": 7000 + k, **cond["sim"]}}
            conditions.append(config_mod.from_dict(data, "threshold conditions"))
        names = [f"{c.camera.model} {c.camera.pixel_size_nm:g} nm px, σ {c.psf.sigma_nm:g} nm, bg {c.sim.bg_photons:g}, "
                 f"{c.sim.density:g}/µm²" for c in conditions]
    else:
        conditions = [config_mod.replace(cfg, sim=config_mod.to_dict(config_mod.replace(cfg.sim, seed=cfg.sim.seed + 7000)))]
        names = [f"training config: {cfg.camera.model} {cfg.camera.pixel_size_nm:g} nm px, σ {cfg.psf.sigma_nm:g} nm, "
                 f"bg {cfg.sim.bg_photons:g}, {cfg.sim.density:g}/µm²"]
    curves = [threshold_curve(c, checkpoint, frames=frames, backend_cfg=backend_cfg) for c in conditions]
    residual = cfg.model.residual_threshold
    mean = {(DEFAULT_CANDIDATE, t, 0.0, residual): float(np.mean([c[t] for c in curves])) for t in curves[0]}
    choice = _best(mean, frames, prefer_residual=residual)
    return {"p_threshold": choice.p_threshold, "jaccard": round(choice.jaccard, 4), "frames": frames,
            "conditions": names}


def threshold_curve(cfg: Config, checkpoint: str, *, frames: int = 100, size: int = 64,
                    tolerance_nm: float = 250.0, backend_cfg=None,
                    candidate: float = DEFAULT_CANDIDATE) -> dict[float, float]:
    """Jaccard over all true emitters at each p threshold of :data:`GRID` with one candidate threshold (the
    run default unless given): :func:`threshold_surface`'s row."""
    surface = threshold_surface(cfg, checkpoint, frames=frames, size=size, tolerance_nm=tolerance_nm,
                                backend_cfg=backend_cfg, candidates=(candidate,))
    return {t: j for (_, t, _, _), j in surface.items()}


def threshold_surface(cfg: Config, checkpoint: str, *, frames: int = 100, size: int = 64,
                      tolerance_nm: float = 250.0, backend_cfg=None,
                      candidates: tuple[float, ...] = CANDIDATE_GRID,
                      floors: tuple[float, ...] = (0.0,),
                      residuals: tuple[float, ...] | None = None) -> dict[Key, float]:
    """Jaccard over all true emitters at each (candidate, p, floor, residual) point (``candidates`` ×
    :data:`GRID` × ``floors``, the floors in photons, × ``residuals``, default ``cfg.model.residual_threshold``
    alone) on ``frames`` simulated frames of ``size``² of ``cfg``'s camera, PSF and sample (its brightness,
    background and density; emitters spread evenly). The network runs once; its maps are post-processed at
    each point as a run at those settings would (candidate threshold at most the p threshold)."""
    import torch

    from rtsmlm.core import config as config_mod
    from rtsmlm.core.locs import concat
    from rtsmlm.localization.backends import open_backend
    from rtsmlm.localization.brightness_floor import CONFIRM_RADIUS_PX, kept_by_floor
    from rtsmlm.localization.localizer import StreamingLocalizer, localize_movie
    from rtsmlm.sim import Simulator

    # Emitters spread evenly, whatever the config's sample: a threshold (and calibrate's choice of model) is
    # the model's and the camera's, not one structure's.
    sim_cfg = config_mod.replace(cfg, sim=config_mod.to_dict(config_mod.replace(cfg.sim, size=size,
                                                                                structure="uniform")))
    sim = Simulator(sim_cfg)
    movie, truth_table = sim.movie(frames)
    if backend_cfg is None:
        backend_cfg = config_mod.replace(cfg.backend, name="torch", device="cpu")
    backend, meta = open_backend(backend_cfg, checkpoint)
    maps: list[tuple[torch.Tensor, list[int]]] = []
    localizer = StreamingLocalizer(backend, meta, sim.camera, movie.shape[1:], min(GRID), min(GRID),
                                   residual_threshold=cfg.model.residual_threshold,
                                   psf_sigma_px=sim_cfg.psf.sigma_nm / sim.camera.pixel_size_nm,
                                   maps_sink=lambda out, idx: maps.append((out.detach().float().cpu(), list(idx))))
    localize_movie(localizer, movie)
    radius_nm = CONFIRM_RADIUS_PX * sim.camera.pixel_size_nm
    surface = {}
    for residual in (cfg.model.residual_threshold,) if residuals is None else residuals:
        for cand in candidates:
            for t in GRID:
                post = localizer.postprocessor.with_thresholds(float(t), min(float(cand), float(t)), float(residual))
                locs = concat([post(out, idx) for out, idx in maps])
                for floor in floors:
                    # As a run's floor: waived where an adjacent frame confirms the detection.
                    kept = locs[kept_by_floor(locs, floor, radius_nm)] if floor > 0 else locs
                    surface[(float(cand), float(t), float(floor), float(residual))] = float(
                        evaluate(kept, truth_table, tolerance_nm=tolerance_nm)["jaccard"])
    return surface
