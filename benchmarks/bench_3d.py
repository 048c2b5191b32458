"""3D localization with the shipped astigmatic model: Jaccard, lateral and axial RMSE against the CRLB.

Run: python benchmarks/bench_3d.py [--checkpoint astig_3d] [--frames 200] [--size 64] [--refine off,fuse,mle]
     [--json out.json]

The default simulated camera (EMCCD, 100 nm pixels) with the astigmatic PSF the model was trained for
(``configs/train_astig_3d.toml``: σ0 130 nm, foci at ∓300 nm, depth 400 nm), emitters uniform in
z ∈ [−500, 500] nm, fresh seeds:

1. Low density, 0.1 emitters/µm², background 50 photons/px: Jaccard over all true emitters (3D matching:
   250 nm lateral, 500 nm axial) and of the bright ones (≥ 1000 photons in the frame); lateral (per axis)
   and axial RMSE per photon bin beside √CRLB of the astigmatic PSF (numerical Fisher information,
   :func:`rtsmlm.analysis.metrics.crlb_fisher_3d_nm`, EMCCD excess noise 2, averaged over the z range), over
   all matched emitters and over the isolated interior ones (no other true emitter within 1 µm in the frame,
   ≥ 600 nm from the edges), the population whose bound that is; and over all matched emitters, each against
   its own bound where it is (``crlb_in_frame_nm``: its neighbours within 1.5 µm estimated with it, the frame's
   edges cutting its spot, at its true depth).
2. High density, 1 emitter/µm²: Jaccard and RMSE, all emitters and bright ones.
3. Speed: frames per CPU second of the whole localization (one thread).
   ``--refine``: each of the given ``model.refine`` modes in turn on the same movies (``mle``/``fuse``: the
   astigmatic maximum-likelihood fit of x, y, z, photons and background, :mod:`rtsmlm.localization.refine`).

4. With ``--picasso`` (picassosr installed): Picasso's 3D astigmatic workflow on the same movies, as a user
   runs it: its z calibration (``picasso.zfit.calibrate_z``: 6th-order polynomials of the mean spot width and
   height) from a simulated bead stack of the same PSF and camera (8 beads, ±800 nm in 20 nm steps, given to
   Picasso top slice first as its stage convention expects), then ``localize_frames`` (net gradient +
   ``gausslq`` elliptical fit, box 9) and ``zfit`` (magnification factor 1: no refractive-index mismatch in
   the simulation; its default RMSD filter). The minimum net gradient is tuned per density on a separate movie
   (fresh seed) for the best 3D Jaccard, as bench_accuracy.py tunes the 2D one.

Targets (issue 17): low density Jaccard ≥ 0.95 and lateral/axial RMSE ≤ 1.2 × √CRLB per photon bin (≥ 1000
photons); high density Jaccard ≥ 0.8 (beside Picasso's 3D fit); ≥ 100 frames/s at 64² on this CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rtsmlm.analysis.metrics import crlb_fisher_3d_nm, crlb_in_frame_nm, match, metrics_from_match  # noqa: E402
from rtsmlm.core import config as rconfig  # noqa: E402
from rtsmlm.core.jsonio import to_jsonable  # noqa: E402
from rtsmlm.sim import Simulator  # noqa: E402
from rtsmlm.sim.psf import AstigmaticPSF  # noqa: E402

TRAIN_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train_astig_3d.toml"
Z_EVAL_NM = 500.0


def simulate(density: float, seed: int, frames: int, size: int, bg: float, beyond_field_px: float = 0.0
             ) -> tuple[rconfig.Config, np.ndarray, np.ndarray, object]:
    """``beyond_field_px``: the sample continues this far beyond the field (``sim.beyond_field_px``)."""
    cfg = rconfig.load(TRAIN_CONFIG, [f"sim.seed={seed}", f"sim.size={size}", f"sim.density={density}", "sim.structure='uniform'",
                                      f"sim.bg_photons={bg}", f"psf.z_range_nm={Z_EVAL_NM}",
                                      f"sim.beyond_field_px={beyond_field_px}"])
    sim = Simulator(cfg)
    movie, truth = sim.movie(frames)
    return cfg, movie, truth, sim.camera


def score(pred: np.ndarray, truth: np.ndarray, min_photons: float = 0.0) -> dict:
    m = match(pred, truth, tolerance_nm=250.0, use_z=True, tolerance_ax_nm=500.0)
    out = {"all": metrics_from_match(m)}
    bright = truth["photons"] >= 1000.0
    tp_bright = int(np.sum(bright[m.truth_index]))
    # Bright population: a prediction matched to a dim emitter counts neither way (as bench_accuracy.py).
    out["bright"] = {"recall": tp_bright / max(int(bright.sum()), 1), "n_true": int(bright.sum()),
                     "jaccard": tp_bright / max(int(bright.sum()) + m.fp, 1)}
    return out, m


ISOLATION_NM = 1000.0
"""An emitter is isolated when no other true emitter of its frame is within this distance (4 × the widest spot)."""
EDGE_NM = 600.0
"""... and interior when at least this far from the frame's edges (2 × the widest spot): the bound holds there."""


def isolated_interior(truth: np.ndarray, frame_nm: float) -> np.ndarray:
    """Which true emitters have no other within ISOLATION_NM in their frame and are EDGE_NM inside the frame:
    the population for which the single-emitter bound is the bound (near an edge the spot is cut off, beside
    a neighbour the spots overlap, and both raise the true bound above the one computed)."""
    import bench_accuracy as acc

    alone = acc.nearest_neighbour_px(truth, 1.0) > ISOLATION_NM  # pixel 1 nm: distances in nm
    return alone & acc.interior_mask(truth, (frame_nm, frame_nm), 1.0, EDGE_NM)


NEIGHBOUR_NM = 1500.0
"""True emitters this close to a matched one enter its bound in the frame (farther ones do not overlap it)."""


def bounds_in_frame(m, truth: np.ndarray, psf: AstigmaticPSF, bg: float, pixel_nm: float, size: int) -> np.ndarray:
    """(n_matched, 3) per-axis √CRLB (x, y, z nm) of each matched emitter where it is: its neighbours estimated
    with it and the frame's edges cutting its spot (:func:`rtsmlm.analysis.metrics.crlb_in_frame_nm`)."""
    out = np.zeros((len(m.truth_index), 3))
    for k, i in enumerate(m.truth_index):
        same = np.flatnonzero(truth["frame"] == truth["frame"][i])
        near = same[(np.hypot(truth["x"][same] - truth["x"][i], truth["y"][same] - truth["y"][i]) < NEIGHBOUR_NM)
                    & (same != i)]
        group = np.concatenate([[i], near])
        out[k] = crlb_in_frame_nm(truth["x"][group] / pixel_nm, truth["y"][group] / pixel_nm, truth["z"][group],
                                  np.maximum(truth["photons"][group], 1.0), bg, psf.sigmas, (size, size), pixel_nm, 2.0)
    return out


def per_bin(m, truth: np.ndarray, psf: AstigmaticPSF, bg: float, pixel_nm: float, frame_nm: float) -> list[dict]:
    """Lateral (per axis) and axial RMSE per photon bin against √CRLB, over all matched emitters and over the
    isolated interior ones (:func:`isolated_interior`), and over all matched emitters against each one's own
    bound in its frame (``all_in_frame``: the root mean square of :func:`bounds_in_frame` over the bin)."""
    photons = truth["photons"][m.truth_index]
    quiet = isolated_interior(truth, frame_nm)[m.truth_index]
    own = bounds_in_frame(m, truth, psf, bg, pixel_nm, int(round(frame_nm / pixel_nm)))
    edges = [1000, 1500, 2000, 3000, 5000, 1e9]
    rows = []
    zs = np.linspace(-Z_EVAL_NM, Z_EVAL_NM, 11)
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (photons >= lo) & (photons < hi)
        if in_bin.sum() < 20:
            continue
        n_mid = float(np.median(photons[in_bin]))
        bounds = np.array([crlb_fisher_3d_nm(n_mid, bg, psf.sigmas, z, pixel_nm, 2.0) for z in zs])
        crlb_lat = float(np.sqrt(np.mean(bounds[:, :2] ** 2)))
        crlb_ax = float(np.sqrt(np.mean(bounds[:, 2] ** 2)))
        row = {"photons": f"{lo:.0f}-{hi:.0f}" if hi < 1e8 else f">={lo:.0f}", "crlb_lat_nm": crlb_lat,
               "crlb_ax_nm": crlb_ax}
        for name, sel in (("all", in_bin), ("isolated", in_bin & quiet)):
            rmse_lat = float(np.sqrt(np.mean(np.concatenate([m.dx[sel], m.dy[sel]]) ** 2))) if sel.any() else np.nan
            rmse_ax = float(np.sqrt(np.nanmean(m.dz[sel] ** 2))) if sel.any() else np.nan
            row[name] = {"n": int(sel.sum()), "rmse_lat_nm": rmse_lat, "ratio_lat": rmse_lat / crlb_lat,
                         "rmse_ax_nm": rmse_ax, "ratio_ax": rmse_ax / crlb_ax}
        own_lat = float(np.sqrt(np.mean(own[in_bin, :2] ** 2)))
        own_ax = float(np.sqrt(np.mean(own[in_bin, 2] ** 2)))
        row["all_in_frame"] = {"crlb_lat_nm": own_lat, "crlb_ax_nm": own_ax,
                               "ratio_lat": row["all"]["rmse_lat_nm"] / own_lat,
                               "ratio_ax": row["all"]["rmse_ax_nm"] / own_ax}
        rows.append(row)
    return rows


def _picasso_gausslq(frames: np.ndarray, camera, net_gradient: float):
    """Picasso's identification + elliptical least-squares fit (box 9), and the movie info its z tools take."""
    import bench_accuracy as acc
    from picasso import localize as plocalize

    with acc.picasso_quiet():
        df = plocalize.localize_frames(frames, None, {"Min. Net Gradient": float(net_gradient), "Box Size": 9},
                                       camera_info=acc.picasso_camera_info(camera), fitting_method="gausslq")
    info = [{"Frames": len(frames), "Width": frames.shape[2], "Height": frames.shape[1],
             "Pixelsize": camera.pixel_size_nm}]
    return df, info


def picasso_calibration(psf: AstigmaticPSF, camera, seed: int = 31100, step: float = 20.0) -> dict:
    """Picasso's z calibration from a simulated bead stack of ``psf`` on ``camera``."""
    import bench_accuracy as acc
    import matplotlib

    matplotlib.use("Agg")
    from picasso import zfit

    from rtsmlm.sim.beads import bead_stack

    stack = bead_stack(psf, camera, n_beads=8, size=96, z_range_nm=800.0, z_step_nm=step, seed=seed)
    frames = stack.frames[::-1].copy()  # Picasso: the first frame is the stage's top (+z) position
    locs, info = _picasso_gausslq(frames, camera, 5000.0)
    with acc.picasso_quiet():
        return zfit.calibrate_z(locs, info, step, 1.0)


def run_picasso_3d(frames: np.ndarray, camera, net_gradient: float, calibration: dict) -> np.ndarray:
    """Picasso's 3D astigmatic localization (gausslq + zfit) as a LOC_DTYPE table in nm."""
    import bench_accuracy as acc
    from picasso import zfit

    from rtsmlm.core.locs import LOC_DTYPE

    df, info = _picasso_gausslq(frames, camera, net_gradient)
    with acc.picasso_quiet():
        df, _ = zfit.zfit(df, info, calibration=dict(calibration), magnification_factor=1.0,
                          pixelsize=float(camera.pixel_size_nm), fitting_method="gausslq")
    out = np.zeros(len(df), LOC_DTYPE)
    px = camera.pixel_size_nm
    out["frame"] = df["frame"].to_numpy()
    out["x"] = (df["x"].to_numpy(np.float64) + 0.5) * px  # Picasso: pixel centres at integers
    out["y"] = (df["y"].to_numpy(np.float64) + 0.5) * px
    out["z"] = df["z"].to_numpy(np.float64)
    out["photons"] = df["photons"].to_numpy()
    out["p"] = 1.0
    return out[np.isfinite(out["x"]) & np.isfinite(out["z"])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="astig_3d")
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--json", default=None)
    ap.add_argument("--picasso", action="store_true", help="also run Picasso's 3D astigmatic workflow")
    ap.add_argument("--beyond-field-px", type=float, default=0.0,
                    help="the sample continues this far beyond the field, as a real one does (sim.beyond_field_px)")
    ap.add_argument("--refine", default="off", help="comma-separated model.refine modes to run: off, fuse, mle")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from rtsmlm.localization.offline import OfflineLocalizer

    backend = rconfig.replace(rconfig.load(None).backend, name="torch", device="cpu", threads=1)
    modes = [m.strip() for m in args.refine.split(",") if m.strip()]
    localizers = {mode: OfflineLocalizer(args.checkpoint, backend, refine=mode) for mode in modes}
    loc = localizers[modes[0]]
    print(f"load average {os.getloadavg()[0]:.1f}; model {args.checkpoint} (step {loc.step}); {args.frames} frames "
          f"of {args.size}², z in ±{Z_EVAL_NM:.0f} nm, 3D matching 250 nm lateral / 500 nm axial")
    result: dict = {}
    calibration = None
    if args.picasso:
        import bench_accuracy as acc

        why = acc.picasso_available()
        if why:
            print(why)
        else:
            cfg, _, _, camera = simulate(0.1, 31009, 1, args.size, 50.0)
            calibration = picasso_calibration(AstigmaticPSF(cfg.psf.sigma_nm / cfg.camera.pixel_size_nm,
                                                            cfg.psf.astig_focal_offset_nm, cfg.psf.astig_depth_nm),
                                              camera)
    for name, density, seed in (("low density 0.1/µm²", 0.1, 31001), ("high density 1/µm²", 1.0, 31002)):
        cfg, movie, truth, camera = simulate(density, seed, args.frames, args.size, 50.0, args.beyond_field_px)
        result[name] = {}
        for mode, loc in localizers.items():
            c0 = time.process_time()
            pred = loc.localize(movie, camera)
            cpu = time.process_time() - c0
            s, m = score(pred, truth)
            a = s["all"]
            print(f"{name}, refine {mode}: Jaccard {a['jaccard']:.3f} (bright ≥1000 ph: Jaccard {s['bright']['jaccard']:.3f}, "
                  f"recall {s['bright']['recall']:.3f}), lateral RMSE "
                  f"{a['rmse_lat_nm']:.1f} nm, axial RMSE {a['rmse_ax_nm']:.1f} nm, {a['n_true']} true, {a['n_pred']} "
                  f"found; {args.frames / cpu:.0f} frames per CPU second")
            key = mode if len(modes) > 1 else "rtsmlm"
            result[name][key] = {"score": s, "frames_per_cpu_s": args.frames / cpu}
            if density < 0.5:
                psf = AstigmaticPSF(cfg.psf.sigma_nm / cfg.camera.pixel_size_nm, cfg.psf.astig_focal_offset_nm,
                                    cfg.psf.astig_depth_nm)
                rows = per_bin(m, truth, psf, cfg.sim.bg_photons, cfg.camera.pixel_size_nm,
                               args.size * cfg.camera.pixel_size_nm)
                result[name][key]["per_bin"] = rows
                for r in rows:
                    a, q = r["all"], r["isolated"]
                    print(f"   photons {r['photons']:>10s} (√CRLB {r['crlb_lat_nm']:.1f} / {r['crlb_ax_nm']:.1f} nm): "
                          f"all n={a['n']:4d} lateral {a['rmse_lat_nm']:5.1f} nm = {a['ratio_lat']:.2f}×, axial "
                          f"{a['rmse_ax_nm']:5.1f} nm = {a['ratio_ax']:.2f}×; isolated interior n={q['n']:4d} "
                          f"{q['ratio_lat']:.2f}× / {q['ratio_ax']:.2f}×; all, each at its bound in the frame "
                          f"({r['all_in_frame']['crlb_lat_nm']:.1f} / {r['all_in_frame']['crlb_ax_nm']:.1f} nm): "
                          f"{r['all_in_frame']['ratio_lat']:.2f}× / {r['all_in_frame']['ratio_ax']:.2f}×")
        if calibration is not None:
            # The net gradient tuned for this density on a separate movie (fresh seed), as a user would.
            _, tune_movie, tune_truth, _ = simulate(density, seed + 100, args.frames, args.size, 50.0,
                                                    args.beyond_field_px)
            scan = {ng: score(run_picasso_3d(tune_movie, camera, ng, calibration), tune_truth)[0]["all"]["jaccard"]
                    for ng in acc.PICASSO_NET_GRADIENTS}
            best = max(scan, key=lambda k: scan[k])
            c0 = time.process_time()
            ps, pm = score(run_picasso_3d(movie, camera, best, calibration), truth)
            pcpu = time.process_time() - c0
            pa = ps["all"]
            print(f"   Picasso 3D (net gradient {best:g}, tuned: " + ", ".join(f"{k:g} → {v:.3f}" for k, v in scan.items())
                  + f"): Jaccard {pa['jaccard']:.3f} (bright: {ps['bright']['jaccard']:.3f}), lateral RMSE "
                  f"{pa['rmse_lat_nm']:.1f} nm, axial RMSE {pa['rmse_ax_nm']:.1f} nm, {pa['n_pred']} found; "
                  f"{args.frames / pcpu:.0f} frames per CPU second")
            result[name]["picasso"] = {"score": ps, "frames_per_cpu_s": args.frames / pcpu, "net_gradient": best,
                                       "tuning": scan}
    if args.json:
        Path(args.json).write_text(json.dumps(to_jsonable(result), indent=2))


if __name__ == "__main__":
    main()
