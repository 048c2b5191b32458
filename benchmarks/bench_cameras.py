"""Accuracy across cameras no shipped model was trained for: the generality matrix.

Run: python benchmarks/bench_cameras.py [--models default,broad_2d,broad_2d+fuse] [--frames 100] [--size 64]
                                        [--densities 0.1,1,3] [--calibrated-thresholds] [--no-picasso] [--no-storm]
                                        [--json out.json]

Six simulated cameras (EMCCD and sCMOS with per-pixel maps; pixel 65–160 nm; PSF σ 90–180 nm; background
5–800 photons/px; gain 0.3–5 ADU per photon), fresh seeds, × densities (emitters/µm²/frame). Each model
runs with the camera described correctly in its config (gain, offset, EM gain, pixel size: what a user
types from the camera's data sheet) and no training; Picasso (net-gradient identification + MLE, its
threshold tuned per cell on a separate movie) when installed. Matching tolerance 250 nm.

Printed per cell: Jaccard and lateral RMSE over **all** true emitters, and Jaccard of the bright ones
(≥ 1000 photons in the frame) beside it.

``--calibrated-thresholds``: each model also at the p threshold ``rtsmlm calibrate`` chooses for the cell's
conditions (:func:`rtsmlm.analysis.thresholds.choose_thresholds`: the cell's camera, PSF, brightness,
background and density simulated on a separate movie, the seed Picasso's threshold is tuned on), as
``MODEL@cal`` — what a user who ran ``calibrate`` gets with no training (printed with its candidate and p
thresholds, its brightness floor in photons and, where calibrate turned the second detection pass off,
"no 2nd pass"). ``--floors 0`` leaves the floor out (as before it existed); ``--no-residual-choice`` keeps each
model spec's second pass (as before calibrate chose it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_accuracy as acc  # noqa: E402  (shares the simulation, scoring and Picasso helpers)

from rtsmlm.core import config as rconfig  # noqa: E402
from rtsmlm.core.jsonio import to_jsonable  # noqa: E402

# name: camera keys, PSF sigma (nm), background (photons/px), photons (mean brightness)
CAMERAS = {
    "emccd-160nm-bg20": ({"model": "emccd", "pixel_size_nm": 160.0, "em_gain": 300.0, "e_per_adu": 60.0,
                          "baseline_adu": 200.0, "read_noise_e": 60.0}, 170.0, 20.0, 2000.0),
    "emccd-107nm-bg200": ({"model": "emccd", "pixel_size_nm": 107.0, "em_gain": 50.0, "e_per_adu": 12.0,
                           "baseline_adu": 500.0, "read_noise_e": 40.0}, 140.0, 200.0, 4000.0),
    "scmos-65nm-bg800": ({"model": "scmos", "pixel_size_nm": 65.0, "em_gain": 1.0, "e_per_adu": 0.5,
                          "baseline_adu": 100.0, "read_noise_e": 1.6, "qe": 0.8}, 120.0, 800.0, 6000.0),
    "scmos-108nm-bg5": ({"model": "scmos", "pixel_size_nm": 108.0, "em_gain": 1.0, "e_per_adu": 3.0,
                         "baseline_adu": 100.0, "read_noise_e": 1.2, "qe": 0.9}, 100.0, 5.0, 800.0),
    "scmos-130nm-bg100": ({"model": "scmos", "pixel_size_nm": 130.0, "em_gain": 1.0, "e_per_adu": 0.25,
                           "baseline_adu": 400.0, "read_noise_e": 2.0, "qe": 0.75}, 180.0, 100.0, 3000.0),
    "emccd-100nm-sigma90-bg50": ({"model": "emccd", "pixel_size_nm": 100.0, "em_gain": 150.0,
                                  "e_per_adu": 30.0, "baseline_adu": 100.0, "read_noise_e": 70.0},
                                 90.0, 50.0, 1500.0),
}


def camera_config(name: str, seed: int, size: int, density: float) -> rconfig.Config:
    cam, sigma, bg, photons = CAMERAS[name]
    return rconfig.from_dict({"camera": cam, "psf": {"sigma_nm": sigma},
                              "sim": {"seed": seed, "size": size, "density": density, "bg_photons": bg,
                                      "structure": "uniform",
                                      "photons_mean": photons, "photons_sigma": 0.4 * photons}})


def set_calibrated_thresholds(loc, spec_residual: float, name: str, density: float, frames: int, size: int,
                              candidates: tuple[float, ...] | None = None, floors: tuple[float, ...] | None = None,
                              choose_residual: bool = True):
    """Give ``loc`` (an OfflineLocalizer) the thresholds, brightness floor and second detection pass ``rtsmlm
    calibrate`` chooses for the cell (camera ``name`` at ``density``), simulated on the cell's separate tuning
    seed and run on ``loc``'s own backend settings (test-time flips included). ``spec_residual``: the second
    pass of ``loc``'s model spec (0 for ``+no-residual``) — calibrate starts from it, not from an earlier cell's
    choice that ``loc`` now holds; ``choose_residual`` False keeps it. Returns the
    :class:`rtsmlm.analysis.thresholds.ThresholdChoice`."""
    from rtsmlm.analysis.thresholds import CANDIDATE_GRID, FLOOR_FRACTIONS, choose_thresholds

    k = list(CAMERAS).index(name)
    cfg = camera_config(name, 9000 + 10 * k, size, density)
    cfg = rconfig.replace(cfg, model=rconfig.to_dict(rconfig.replace(cfg.model, residual_threshold=spec_residual)))
    choice = choose_thresholds(cfg, loc.checkpoint, frames=frames,
                               size=size, backend_cfg=loc.backend_cfg, candidates=candidates or CANDIDATE_GRID,
                               floors=floors or FLOOR_FRACTIONS, residuals=None if choose_residual else (spec_residual,))
    loc.p_threshold, loc.candidate_threshold = choice.p_threshold, choice.candidate_threshold
    loc.min_photons, loc.residual_threshold = choice.min_photons, choice.residual_threshold
    return choice


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="default,broad_2d")
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--densities", default="0.1,1,3")
    ap.add_argument("--calibrated-thresholds", action="store_true",
                    help="also score each model at the threshold rtsmlm calibrate would choose per cell")
    ap.add_argument("--candidates", default="",
                    help="with --calibrated-thresholds: the candidate thresholds calibrate may choose from "
                         "(comma-separated; default its grid; 0.3 alone = the p threshold only, as before)")
    ap.add_argument("--floors", default="",
                    help="with --calibrated-thresholds: the brightness floors calibrate may choose from, as "
                         "fractions of the cell's brightness (comma-separated; default its grid; 0 = no floor)")
    ap.add_argument("--no-residual-choice", action="store_true",
                    help="with --calibrated-thresholds: keep each model spec's second detection pass")
    ap.add_argument("--no-picasso", action="store_true")
    ap.add_argument("--no-storm", action="store_true", help="skip the storm-analysis test movie")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    models = args.models.split(",")
    densities = [float(d) for d in args.densities.split(",")]
    base, backend_cfg = acc.reference_backend()
    localizers = acc.open_model_specs(models, backend_cfg, base.model)  # MODEL[+mle|+fuse][+no-residual]
    models = list(localizers)
    calibrated = {}  # MODEL@cal: the same model at the thresholds calibrate chooses for each cell
    if args.calibrated_thresholds:
        # Empty: calibrate's own grids (set_calibrated_thresholds' defaults).
        candidates = tuple(float(c) for c in args.candidates.split(",")) if args.candidates else None
        floors = tuple(float(f) for f in args.floors.split(",")) if args.floors else None
        calibrated = {label + "@cal": acc.open_model_spec(m, backend_cfg, base.model)[1]
                      for m, label in zip(args.models.split(","), models)}
    spec_residual = {label: loc.residual_threshold for label, loc in calibrated.items()}
    columns = models + list(calibrated)
    picasso = None if args.no_picasso else acc.picasso_available()
    use_picasso = not args.no_picasso and picasso is None
    print(f"load average {os.getloadavg()[0]:.1f}; {args.frames} frames of {args.size}² per cell; "
          f"Picasso: {'yes' if use_picasso else 'no (' + (picasso or '--no-picasso') + ')'}")
    header = f"{'camera':28s} {'dens':>5s} " + " ".join(f"{m[:18]:>24s}" for m in columns)
    if use_picasso:
        header += f" {'picasso':>24s}"
    print(header)
    print(f"{'':28s} {'':>5s} " + " ".join(f"{'JI all / RMSE / JI bright':>24s}" for _ in
                                          range(len(columns) + use_picasso)))
    results = []
    for k, name in enumerate(CAMERAS):
        for density in densities:
            cfg = camera_config(name, 5000 + 10 * k, args.size, density)
            movie = acc.simulate_movie(cfg, name, args.frames)
            row = {"camera": name, "density": density, "models": {}}
            cells = []
            for m in models:
                pred, _ = acc.run_model(localizers[m], movie.frames, movie.camera, cfg.psf.sigma_nm)
                s, _, _ = acc.score(pred, movie.truth, 250.0, 1000.0)
                row["models"][m] = s
                cells.append(f"{s['all']['jaccard']:.3f} / {s['all']['rmse_lat_nm']:5.1f} / "
                             f"{s['population']['jaccard']:.3f}")
            for label, loc in calibrated.items():
                choice = set_calibrated_thresholds(loc, spec_residual[label], name, density, args.frames, args.size,
                                                   candidates, floors, not args.no_residual_choice)
                pred, _ = acc.run_model(loc, movie.frames, movie.camera, cfg.psf.sigma_nm)
                s, _, _ = acc.score(pred, movie.truth, 250.0, 1000.0)
                s["thresholds"] = {"p": choice.p_threshold, "candidate": choice.candidate_threshold,
                                   "min_photons": choice.min_photons, "residual": choice.residual_threshold}
                row["models"][label] = s
                cells.append(f"{s['all']['jaccard']:.3f} / {s['all']['rmse_lat_nm']:5.1f} / "
                             f"{s['population']['jaccard']:.3f} ({choice.candidate_threshold:.2f}, "
                             f"{choice.p_threshold:.2f}, {choice.min_photons:.0f}"
                             f"{'' if choice.residual_threshold else ', no 2nd pass'})")
            if use_picasso:
                tune_cfg = camera_config(name, 9000 + 10 * k, args.size, density)
                tune = acc.simulate_movie(tune_cfg, name, max(20, args.frames // 3))
                ng, _ = acc.tune_picasso(tune, 250.0, 1000.0, 7)
                pred = acc.run_picasso(movie.frames, movie.camera, ng)
                s, _, _ = acc.score(pred, movie.truth, 250.0, 1000.0)
                row["models"]["picasso"] = s
                cells.append(f"{s['all']['jaccard']:.3f} / {s['all']['rmse_lat_nm']:5.1f} / "
                             f"{s['population']['jaccard']:.3f}")
            print(f"{name:28s} {density:5.1f} " + " ".join(f"{c:>24s}" for c in cells), flush=True)
            results.append(row)
    storm = None
    if not args.no_storm:
        # The real storm-analysis test movie (160 nm pixels, its own camera), each model with no training.
        ns = argparse.Namespace(storm_dir=acc.STORM_DIR, storm_tolerance_nm=160.0)
        storm = acc.storm_movie(ns, localizers, log=lambda *a: None)
        for label, m in storm.get("models", {}).items():
            if "jaccard" in m:
                print(f"storm-analysis test.dax, {label}: Jaccard {m['jaccard']:.3f}, RMSE {m['rmse_lat_nm']:.1f} nm "
                      f"(3D-DAOSTORM {acc.STORM_REFERENCE['jaccard']}, {acc.STORM_REFERENCE['rmse_lat_nm']} nm)")
        if "skipped" in storm:
            print(f"storm-analysis test.dax: {storm['skipped']}")
    if args.json:
        Path(args.json).write_text(json.dumps(to_jsonable({"results": results, "storm": storm, "time": time.time()}),
                                              indent=1))


if __name__ == "__main__":
    main()
