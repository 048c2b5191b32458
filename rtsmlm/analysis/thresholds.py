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

__all__ = ["ThresholdChoice", "choose_p_threshold"]

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
    ``checkpoint`` and pick the p threshold of :data:`GRID` with the best Jaccard over all true emitters."""
    from rtsmlm.core import config as config_mod
    from rtsmlm.localization.offline import OfflineLocalizer
    from rtsmlm.sim import Simulator

    sim_cfg = config_mod.replace(cfg, sim=config_mod.to_dict(config_mod.replace(cfg.sim, size=size)))
    sim = Simulator(sim_cfg)
    movie, truth_table = sim.movie(frames)
    if backend_cfg is None:
        backend_cfg = config_mod.replace(cfg.backend, name="torch", device="cpu")
    loc = OfflineLocalizer(checkpoint, backend_cfg, p_threshold=min(GRID), candidate_threshold=min(GRID))
    locs = loc.localize(movie, sim.camera, psf_sigma_nm=sim_cfg.psf.sigma_nm)
    curve = {float(t): float(evaluate(locs[locs["p"] > t], truth_table, tolerance_nm=tolerance_nm)["jaccard"])
             for t in GRID}
    best = max(curve, key=lambda t: (curve[t], -abs(t - 0.6)))  # ties: the one nearer the usual 0.6
    return ThresholdChoice(best, curve[best], curve, frames)
