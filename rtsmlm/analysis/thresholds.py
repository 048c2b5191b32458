"""Detection threshold chosen for the conditions at hand: simulate them, localize once with a low
threshold, and keep the ``p_threshold`` that maximises the Jaccard index against the simulated truth.

A threshold tuned for one camera's brightness and background is wrong for another's (a dim sample needs a
lower one, a bright dense one a higher one); this replaces tuning by hand. Filtering one low-threshold table
by its ``p`` column is what a run at each threshold would keep (the detection score is ``p``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rtsmlm.analysis.metrics import evaluate
from rtsmlm.core.config import Config
from rtsmlm.sim.camera import SCMOS_PRESET

__all__ = ["BROAD_CONDITIONS", "ThresholdChoice", "choose_for_model", "choose_p_threshold", "threshold_curve"]

GRID = tuple(np.round(np.arange(0.2, 0.91, 0.05), 2))
"""The p thresholds tried."""


@dataclass(frozen=True)
class ThresholdChoice:
    """The chosen ``p_threshold``, the Jaccard it gave, and the whole curve (threshold → Jaccard)."""

    p_threshold: float
    jaccard: float
    curve: dict[float, float]
    frames: int


def choose_p_threshold(cfg: Config, checkpoint: str, *, frames: int = 100, size: int = 64,
                       tolerance_nm: float = 250.0, backend_cfg=None) -> ThresholdChoice:
    """Simulate ``frames`` frames of ``size``² with ``cfg`` (camera, PSF, sample), localize them with
    ``checkpoint`` and pick the p threshold of :data:`GRID` with the best Jaccard over all true emitters
    (within :data:`JACCARD_TOLERANCE`, the one nearest 0.6)."""
    return _best(threshold_curve(cfg, checkpoint, frames=frames, size=size, tolerance_nm=tolerance_nm,
                                 backend_cfg=backend_cfg), frames)


JACCARD_TOLERANCE = 0.005
"""Thresholds whose simulated Jaccard is this close to the best are as good (the curve's statistical noise
on ~1000 emitters); of those the one nearest the usual 0.6 is kept. The curves are flat at the low end
(0.2–0.4 within 0.003 for the shipped models), and a real movie's artefacts (hot pixels, out-of-focus
light) turn a low threshold's extra detections into false positives that no simulation shows."""


def _best(curve: dict[float, float], frames: int) -> ThresholdChoice:
    top = max(curve.values())
    best = min((t for t in curve if curve[t] >= top - JACCARD_TOLERANCE), key=lambda t: abs(t - 0.6))
    return ThresholdChoice(best, curve[best], curve, frames)


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
    mean = {t: float(np.mean([c[t] for c in curves])) for t in curves[0]}
    choice = _best(mean, frames)
    return {"p_threshold": choice.p_threshold, "jaccard": round(choice.jaccard, 4), "frames": frames,
            "conditions": names}


def threshold_curve(cfg: Config, checkpoint: str, *, frames: int = 100, size: int = 64,
                    tolerance_nm: float = 250.0, backend_cfg=None) -> dict[float, float]:
    """Jaccard over all true emitters at each p threshold of :data:`GRID` on ``frames`` simulated frames
    of ``size``² of ``cfg``'s camera, PSF and sample (its brightness, background and density; emitters
    spread evenly)."""
    from rtsmlm.core import config as config_mod
    from rtsmlm.localization.offline import OfflineLocalizer
    from rtsmlm.sim import Simulator

    # Emitters spread evenly, whatever the config's sample: a threshold (and calibrate's choice of model) is
    # the model's and the camera's, not one structure's.
    sim_cfg = config_mod.replace(cfg, sim=config_mod.to_dict(config_mod.replace(cfg.sim, size=size,
                                                                                structure="uniform")))
    sim = Simulator(sim_cfg)
    movie, truth_table = sim.movie(frames)
    if backend_cfg is None:
        backend_cfg = config_mod.replace(cfg.backend, name="torch", device="cpu")
    loc = OfflineLocalizer(checkpoint, backend_cfg, p_threshold=min(GRID), candidate_threshold=min(GRID))
    locs = loc.localize(movie, sim.camera, psf_sigma_nm=sim_cfg.psf.sigma_nm)
    return {float(t): float(evaluate(locs[locs["p"] > t], truth_table, tolerance_nm=tolerance_nm)["jaccard"])
            for t in GRID}
