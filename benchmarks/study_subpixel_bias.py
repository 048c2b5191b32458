"""Where a model's excess over the Cramér–Rao bound comes from: a sub-pixel bias, or scatter (issue 14).

Run: python benchmarks/study_subpixel_bias.py [--models broad_2d,default] [--frames 2000]

The movies of ``bench_broad.py``'s precision section (single-frame emitters, 0.1/µm², σ 130 nm on 100 nm pixels,
3000 ± 2500 photons) on its EMCCD at background 20 and its sCMOS at background 100, with other seeds (41000+
by default, ``--seed``).
Kept: matched emitters ≥ 1000 photons, single-frame, ≥ 6 px from any other in the frame, ≥ 4 px from the edges.
Per camera and axis, each error (prediction − truth, nm) is binned by the emitter's sub-pixel phase (0 = a pixel
edge, 0.5 = its centre; 10 bins) and printed:

- the mean error per bin (a bias that depends on where in the pixel the emitter sits: what a sub-pixel offset
  parametrisation that favours pixel centres would show);
- the RMSE before and after subtracting that bias curve, cross-validated (curve from half the emitters,
  applied to the other half): if it falls, the bias is real and correctable;
- the RMSE per bin, and within 0.1 px of a pixel edge against the rest (an emitter on an edge is claimed by
  either of two pixels, each with an offset near ±0.5);
- the model's own uncertainty against its error: the RMS of error / predicted σ (1 when the σ columns are
  calibrated).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_accuracy as acc  # noqa: E402
import bench_broad as broad  # noqa: E402

from rtsmlm.analysis.metrics import match  # noqa: E402

PHASE_BINS = 10
EDGE_PX = 0.1


def phase_rows(err: np.ndarray, pos_px: np.ndarray) -> dict[str, object]:
    """The bias curve, its cross-validated removal, and the scatter by sub-pixel phase of one axis."""
    phase = pos_px % 1.0
    b = np.minimum((phase * PHASE_BINS).astype(int), PHASE_BINS - 1)
    bias = np.array([err[b == i].mean() for i in range(PHASE_BINS)])
    halves = np.arange(len(err)) % 2
    debiased = np.empty_like(err)
    for part in (0, 1):
        fit = halves == part
        curve = np.array([err[fit & (b == i)].mean() for i in range(PHASE_BINS)])
        debiased[~fit] = err[~fit] - curve[b[~fit]]
    edge = np.minimum(phase, 1.0 - phase) < EDGE_PX
    return {"n": len(err), "mean": float(err.mean()), "rmse": float(np.sqrt(np.mean(err**2))),
            "rmse_debiased_cv": float(np.sqrt(np.mean(debiased**2))), "bias_by_phase": bias,
            "rmse_by_phase": np.array([np.sqrt(np.mean(err[b == i] ** 2)) for i in range(PHASE_BINS)]),
            "rmse_edge": float(np.sqrt(np.mean(err[edge] ** 2))), "n_edge": int(edge.sum()),
            "rmse_inner": float(np.sqrt(np.mean(err[~edge] ** 2)))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="broad_2d")
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=41000, help="the EMCCD movie's seed; the sCMOS's is one more")
    args = ap.parse_args()
    base, backend = acc.reference_backend()
    localizers = acc.open_model_specs(args.models.split(","), backend, base.model)
    for k, (camera, bg) in enumerate((("emccd", 20.0), ("scmos", 100.0))):
        cfg = broad.movie_config(camera=camera, seed=args.seed + k, size=64, density=0.1, bg=bg, single_frame=True,
                                 photons=(3000.0, 2500.0))
        movie = acc.simulate_movie(cfg, camera, args.frames)
        truth, px = movie.truth, movie.pixel_size_nm
        keep = (acc.interior_mask(truth, movie.frames.shape[1:], px, 4.0) & acc.single_frame_mask(truth)
                & (acc.nearest_neighbour_px(truth, px) >= broad.ISOLATION_PX) & (truth["photons"] >= 1000.0))
        for label, loc in localizers.items():
            pred, _ = acc.run_model(loc, movie.frames, movie.camera, cfg.psf.sigma_nm)
            m = acc.restrict_match(match(pred, truth, tolerance_nm=250.0), keep)
            t, p = truth[keep][m.truth_index], pred[m.pred_index]
            print(f"{camera}, background {bg:g}, {label}: {len(t)} emitters")
            for axis, err, pos, sigma in (("x", m.dx, t["x"], p["sigma_x"]), ("y", m.dy, t["y"], p["sigma_y"])):
                r = phase_rows(np.asarray(err, np.float64), np.asarray(pos, np.float64) / px)
                z = float(np.sqrt(np.mean((np.asarray(err) / np.asarray(sigma, np.float64)) ** 2)))
                print(f"  {axis}: mean {r['mean']:+.2f} nm, RMSE {r['rmse']:.2f} nm, after removing the phase bias "
                      f"(cross-validated) {r['rmse_debiased_cv']:.2f} nm; within {EDGE_PX:g} px of an edge "
                      f"{r['rmse_edge']:.2f} nm (n {r['n_edge']}) vs the rest {r['rmse_inner']:.2f} nm; "
                      f"RMS error / predicted σ {z:.2f}")
                print("     bias by phase (edge … centre … edge): " + " ".join(f"{v:+.1f}" for v in r["bias_by_phase"]))
                print("     RMSE by phase:                        " + " ".join(f"{v:.1f}" for v in r["rmse_by_phase"]),
                      flush=True)


if __name__ == "__main__":
    main()
