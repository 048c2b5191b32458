"""The drift stage of a run: one listener owns the online drift estimate and its final refinement.

Each localization batch feeds :class:`~rtsmlm.analysis.drift.OnlineDrift` on this listener's own thread
(a block update costs tens of ms, which no longer delays the image). The render listener reads the same
estimator (its methods are thread-safe) to correct what it draws and redraws what an update moved. At the
end of the run the drift is refined over every localization — for a 3D run the axial drift too
(:mod:`rtsmlm.analysis.drift_z`, ``dz``) — written to ``drift.csv`` and handed to the listeners that end
after this one (``RunEnd.drift``: the files add ``x_dc``, ``y_dc`` with it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rtsmlm.analysis.drift import OnlineDrift
from rtsmlm.core.config import Config
from rtsmlm.core.locs import LocBatch, LocSpill, in_field
from rtsmlm.io.tables import DriftTrajectory, write_drift_csv

DRIFT_CSV = "drift.csv"
EDGE_MARGIN_SIGMAS = 3.0
"""The axial drift pairs only localizations at least this many in-focus PSF σ (``psf.sigma_nm``) inside the
frame: a spot the edge cuts reads as the wrong ellipse, so its depth is off by an amount that changes as the
sample drifts across the edge (3 σ is about 1.5 × the widest spot of an astigmatic PSF over ±500 nm). Measured
on tests/test_drift_z.py's 64² run with the 3D model shipped then (before its edge-target retraining) over seeds
21–28 (a scratch loop over the test's run): RMS error 2.81 / 2.45 / 2.74 / 2.47 / 2.77 / 1.63 / 1.85 / 3.00 nm
(mean 2.47) with every localization, 1.03 / 2.81 / 2.19 / 1.08 / 2.03 / 2.27 / 1.51 / 1.81 nm (mean 1.84) with
this margin (390 nm, 3.9 px); the retrained astig_3d, which finds more of the cut spots, 2.32 nm mean with it."""
_XY_DTYPE = np.dtype([("frame", "<i8"), ("x", "<f4"), ("y", "<f4"), ("z", "<f4")])


@dataclass(frozen=True)
class DriftSummary:
    """The drift stage's section of summary.json (``drift``)."""

    fiducials: dict[str, Any]
    max_abs_nm: float | None = None
    file: str | None = None
    max_abs_dz_nm: float | None = None  # a 3D run: the largest axial drift (drift.csv's dz column)


class DriftListener:
    """Listener: online drift estimation (``estimator``) and the final ``drift.csv``."""

    name = "drift"
    critical = False  # drift.csv can be recomputed from the saved localizations
    max_lag_batches = None  # the final refinement needs every localization

    def __init__(self, cfg: Config, out_dir: Path | None, extent_nm: tuple[float, float]) -> None:
        self.estimator = OnlineDrift(cfg.drift, extent_nm)
        self.out_dir = out_dir
        self.extent_nm = extent_nm
        self.edge_margin_nm = EDGE_MARGIN_SIGMAS * cfg.psf.sigma_nm
        # frame, x, y of every localization (16 bytes each) on an anonymous spill file, for the refinement.
        self._xy = LocSpill(tail_locs=0, dtype=_XY_DTYPE)
        self._final: DriftTrajectory | None = None

    def on_batch(self, batch: LocBatch) -> None:
        locs = batch.locs
        if len(locs):
            xy = np.empty(len(locs), _XY_DTYPE)
            xy["frame"], xy["x"], xy["y"], xy["z"] = locs["frame"], locs["x"], locs["y"], locs["z"]
            self._xy.append(xy)
        if not batch.late:
            # Catch-up batches (old frames, after the acquisition) are corrected with the estimate the live
            # frames built; the final drift is refined over every localization in on_run_end.
            self.estimator.add(locs, batch.last_frame)

    def on_run_end(self, end: Any) -> dict[str, DriftSummary]:
        locs = self._xy.all()
        max_abs = file = max_dz = None
        if len(locs):
            n_frames = int(locs["frame"].max()) + 1
            traj = self.estimator.finalize(locs, n_frames)
            if np.any(np.isfinite(locs["z"]) & (locs["z"] != 0)):  # a 3D model's run: the axial drift too
                from rtsmlm.analysis.drift_z import estimate_z_drift

                dz = None
                # Whole spots only (raw positions: the edge is the camera's); all of them when the frame is
                # too small for that to leave enough.
                for use in (in_field(locs, self.extent_nm, self.edge_margin_nm), slice(None)):
                    sub = locs[use]
                    dx, dy = np.asarray(traj.dx)[sub["frame"]], np.asarray(traj.dy)[sub["frame"]]
                    dz = estimate_z_drift(sub["frame"], sub["x"] - dx, sub["y"] - dy, sub["z"], n_frames)
                    if dz is not None:
                        break
                if dz is not None:
                    traj = traj._replace(dz=dz)
                    max_dz = float(np.max(np.abs(dz)))
            self._final = traj
            max_abs = float(np.max(np.hypot(traj.dx, traj.dy))) if len(traj.dx) else 0.0
            if self.out_dir is not None:
                write_drift_csv(self.out_dir / DRIFT_CSV, traj.frames, traj.dx, traj.dy, dz=traj.dz)
                file = DRIFT_CSV
        self._xy.close()
        return {"drift": DriftSummary(self.estimator.fiducials.describe(), max_abs, file, max_dz)}

    def final_drift(self) -> DriftTrajectory | None:
        """The run's final drift (after :meth:`on_run_end`)."""
        return self._final
