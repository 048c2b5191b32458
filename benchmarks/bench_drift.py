"""Online drift correction on a simulated filament sample, against the simulator's drift.csv and Picasso.

    python benchmarks/bench_drift.py                      # 20,000 frames, ~1.5 M localizations
    python benchmarks/bench_drift.py --frames 4000        # a quicker look
    python benchmarks/bench_drift.py --no-picasso         # skip the Picasso comparison

The sample is the simulator's own physics without the camera: ``rtsmlm.sim.structures.filaments``
labels, ``rtsmlm.sim.photophysics`` blinking and bleaching, ``rtsmlm.sim.drift`` stage drift (random
walk + sinusoid + linear creep, written to drift.csv by ``rtsmlm.io.tables.write_drift_csv`` and read
back through ``rtsmlm.io.tables.read_drift_csv``). Each emitting label becomes a localization displaced by
its Cramér-Rao precision (Mortensen et al. 2010, EMCCD excess noise, the simulator's PSF, photons and
background); dim ones (< 200 photons) are missed, as a detector would. Optional fiducials
(``--fiducials N``) are always-on bright emitters.

Localizations are fed through a real ``LocalizationStream`` in batches of 16 frames, as the localizer
appends them, and the online estimator runs on each batch. Printed figures:

* online: the drift the online estimator holds at the end of the run (causal block estimates,
  interpolated), and "as applied": the drift each batch was corrected with when it arrived.
* final: the global refinement (``OnlineDrift.finalize``).
* Picasso AIM (``picasso.aim.aim``, the offline AIM reference implementation, default segmentation
  and search parameters scaled to nm) on the same localizations, when picassosr is installed.

Offsets: the simulator's drift is 0 at frame 0 and the final trajectory is anchored the same way, so
the final error is reported as is *and* with its constant offset removed. The online estimate is 0 over
the first block (its definition), Picasso's has zero mean: both differ from the simulator's by a
constant by definition, so their errors are reported with the constant offset removed. A constant
offset moves the whole image and does not blur it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from rtsmlm.analysis.drift import OnlineDrift
from rtsmlm.core.config import DriftConfig, load, replace
from rtsmlm.core.locs import LOC_DTYPE, LocalizationStream
from rtsmlm.io.tables import read_drift_csv, write_drift_csv
from rtsmlm.sim import structures
from rtsmlm.sim.drift import SimulatedDrift as SimDrift
from rtsmlm.sim.photophysics import Photophysics, activation_rate_for_density


def crlb_sigma_nm(photons: np.ndarray, bg: float, psf_sigma_nm: float, pixel_nm: float) -> np.ndarray:
    """Lateral localization precision of a Gaussian PSF (Mortensen 2010), EMCCD excess factor sqrt(2)."""
    sa2 = psf_sigma_nm ** 2 + pixel_nm ** 2 / 12
    tau = 2 * math.pi * sa2 * bg / (photons * pixel_nm ** 2)
    return np.sqrt(2 * sa2 / photons * (16 / 9 + 4 * tau))


def simulate_localizations(frames: int, size_px: int, seed: int, fiducials: int, density: float,
                           out_dir: Path) -> tuple[np.ndarray, Path, tuple[float, float]]:
    """Localizations of a drifting filament sample and the path of its drift.csv."""
    cfg = load(None, [f"sim.size={size_px}", f"sim.frames={frames}", f"sim.seed={seed}",
                      "sim.structure='filaments'", f"sim.density={density}", "sim.drift.enabled=true",
                      f"sim.fiducials={fiducials}"])
    sim = cfg.sim
    rng = np.random.default_rng(seed)
    pixel = cfg.camera.pixel_size_nm
    extent = (size_px * pixel, size_px * pixel)
    labels = structures.filaments(rng, extent, sim.filament_count, sim.labels_per_um, sim.label_jitter_nm)
    k = activation_rate_for_density(sim.density, extent[0] * extent[1] / 1e6, len(labels), sim.mean_on_frames)
    phys = Photophysics(len(labels), rng, k_act=k, mean_on_frames=sim.mean_on_frames,
                        bleach_probability=sim.bleach_probability, photons_mean=sim.photons_mean,
                        photons_sigma=sim.photons_sigma)
    fid_xy = rng.uniform(0.1, 0.9, (fiducials, 2)) * np.array(extent[::-1])
    drift = SimDrift(sim.drift, seed + 7919)
    table = np.column_stack([np.arange(frames), drift.at(np.arange(frames))])
    drift_csv = out_dir / "drift.csv"
    write_drift_csv(drift_csv, table[:, 0], table[:, 1], table[:, 2])
    chunks = []
    for f in range(frames):
        idx, photons = phys.step(sim.activation_power)
        xy = labels[idx, :2]
        if fiducials:
            xy = np.concatenate([xy, fid_xy])
            photons = np.concatenate([photons, np.full(fiducials, sim.fiducial_photons)])
        seen = photons >= 200
        xy, photons = xy[seen], photons[seen]
        sig = crlb_sigma_nm(photons, sim.bg_photons, cfg.psf.sigma_nm, pixel)
        loc = np.zeros(len(xy), LOC_DTYPE)
        loc["frame"] = f
        loc["x"] = xy[:, 0] + table[f, 1] + rng.normal(0, 1, len(xy)) * sig
        loc["y"] = xy[:, 1] + table[f, 2] + rng.normal(0, 1, len(xy)) * sig
        loc["photons"] = photons
        loc["bg"] = sim.bg_photons
        loc["sigma_x"] = sig
        loc["sigma_y"] = sig
        loc["p"] = 1.0
        inside = (loc["x"] >= 0) & (loc["x"] < extent[1]) & (loc["y"] >= 0) & (loc["y"] < extent[0])
        chunks.append(loc[inside])
    return np.concatenate(chunks), drift_csv, extent


def rms(ex: np.ndarray, ey: np.ndarray, remove_offset: bool) -> float:
    """2-D RMS error sqrt(mean(ex^2 + ey^2)), optionally after removing the mean offset."""
    if remove_offset:
        ex, ey = ex - ex.mean(), ey - ey.mean()
    return float(np.sqrt(np.mean(ex ** 2 + ey ** 2)))


def run_picasso(locs: np.ndarray, extent: tuple[float, float], pixel: float, n_frames: int,
                segmentation: int) -> tuple[np.ndarray, np.ndarray, float] | None:
    """Picasso AIM drift (nm, per frame) and its run time, or None when picassosr is not installed."""
    try:
        import pandas as pd
        from picasso import aim as picasso_aim
    except ImportError as exc:
        print(f"picasso: skipped (install picassosr for the comparison: {exc})")
        return None
    frame_min = int(locs["frame"].min())
    df = pd.DataFrame({
        "frame": locs["frame"].astype(np.int64),
        # Picasso uses camera pixels with pixel centres at integers
        "x": (locs["x"] / pixel - 0.5).astype(np.float32),
        "y": (locs["y"] / pixel - 0.5).astype(np.float32),
        "photons": locs["photons"], "sx": np.float32(1.3), "sy": np.float32(1.3), "bg": locs["bg"],
        "lpx": (locs["sigma_x"] / pixel).astype(np.float32), "lpy": (locs["sigma_y"] / pixel).astype(np.float32),
    })
    info = [{"Width": int(round(extent[1] / pixel)), "Height": int(round(extent[0] / pixel)),
             "Pixelsize": pixel, "Frames": n_frames - frame_min}]
    picasso_aim.aim(df.iloc[:2000], info, segmentation=segmentation)  # compile numba kernels first
    t0 = time.perf_counter()
    _, _, drift = picasso_aim.aim(df, info, segmentation=segmentation, intersect_d=20 / pixel,
                                  roi_r=60 / pixel)
    elapsed = time.perf_counter() - t0
    dx = np.full(n_frames, np.nan)
    dy = np.full(n_frames, np.nan)
    dx[frame_min:frame_min + len(drift)] = drift["x"].to_numpy() * pixel
    dy[frame_min:frame_min + len(drift)] = drift["y"].to_numpy() * pixel
    return dx, dy, elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=20_000)
    ap.add_argument("--size", type=int, default=128, help="field of view in camera pixels (100 nm)")
    ap.add_argument("--density", type=float, default=0.8, help="emitters per µm² per frame")
    ap.add_argument("--fiducials", type=int, default=0)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--batch-frames", type=int, default=16)
    ap.add_argument("--block-frames", type=int, default=DriftConfig().block_frames)
    ap.add_argument("--min-block-locs", type=int, default=DriftConfig().min_block_locs)
    ap.add_argument("--no-picasso", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        locs, drift_csv, extent = simulate_localizations(args.frames, args.size, args.seed, args.fiducials,
                                                         args.density, Path(tmp))
        truth = read_drift_csv(drift_csv)
        t_sim = time.perf_counter() - t0
    n = args.frames
    print(f"sample: {args.size}x{args.size} px (100 nm), {n} frames, {len(locs):,} localizations "
          f"({len(locs) / n:.1f}/frame), median precision {np.median(locs['sigma_x']):.1f} nm, "
          f"{args.fiducials} fiducials; drift range x {np.ptp(truth.dx):.0f} nm, y {np.ptp(truth.dy):.0f} nm "
          f"(simulated in {t_sim:.1f} s)")

    cfg = replace(DriftConfig(), block_frames=args.block_frames, min_block_locs=args.min_block_locs)
    est = OnlineDrift(cfg, extent_nm=extent)
    stream = LocalizationStream()
    starts = np.searchsorted(locs["frame"], np.arange(0, n + args.batch_frames, args.batch_frames))
    applied_err = []
    t0 = time.perf_counter()
    seq = 0
    for i in range(len(starts) - 1):
        first = i * args.batch_frames
        last = min(n, first + args.batch_frames) - 1
        if first >= n:
            break
        stream.append(first, last, locs[starts[i]:starts[i + 1]])
        for batch in stream.batches_since(seq, timeout=0):
            seq = batch.seq + 1
            est.add(batch.locs, batch.last_frame)
            dc = est.correct(batch.locs)
            f = dc["frame"]
            applied_err.append(np.column_stack([dc["x"] - dc["x_dc"] - truth.dx[f],
                                                dc["y"] - dc["y_dc"] - truth.dy[f]]))
    t_online = time.perf_counter() - t0
    blocks = est.block_estimates()
    frames = np.arange(n)
    odx, ody = est.drift_at(frames)
    online_rms = rms(odx - truth.dx, ody - truth.dy, remove_offset=True)
    ae = np.concatenate(applied_err)
    applied_rms = rms(ae[:, 0], ae[:, 1], remove_offset=True)
    ref_sizes = np.cumsum(blocks.n_locs) - blocks.n_locs  # reference size when each block was scored
    big = ref_sizes >= 1_000_000
    upd = blocks.update_ms[1:]
    cpu = blocks.update_cpu_ms[1:]
    print(f"online: {len(blocks)} blocks (median {np.median(blocks.last_frame - blocks.first_frame + 1):.0f} frames, "
          f"{np.median(blocks.n_locs):.0f} locs); RMS error {online_rms:.2f} nm (offset removed); as applied "
          f"at arrival {applied_rms:.2f} nm; total {t_online:.1f} s for all batches")
    print(f"online per-block update, wall (CPU of the thread): median {np.median(upd):.1f} ({np.median(cpu):.1f}) ms, "
          f"max {np.max(upd):.1f} ({np.max(cpu):.1f}) ms"
          + (f"; with >= 1M localizations in the reference ({big.sum()} blocks): median "
             f"{np.median(blocks.update_ms[big]):.1f} ({np.median(blocks.update_cpu_ms[big]):.1f}) ms, max "
             f"{np.max(blocks.update_ms[big]):.1f} ({np.max(blocks.update_cpu_ms[big]):.1f}) ms"
             if big.any() else "; the reference never reached 1M localizations"))
    print(f"  (load average while running: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")

    t0 = time.perf_counter()
    final = est.finalize(locs, n_frames=n)
    t_final = time.perf_counter() - t0
    final_rms = rms(final.dx - truth.dx, final.dy - truth.dy, remove_offset=False)
    final_rms_off = rms(final.dx - truth.dx, final.dy - truth.dy, remove_offset=True)
    print(f"final refinement: RMS error {final_rms:.2f} nm (both 0 at frame 0), {final_rms_off:.2f} nm "
          f"(offset removed); {t_final:.1f} s")
    fid = est.fiducials
    if fid.n or args.fiducials:
        print(f"fiducials: {fid.describe()}")
    result = {"frames": n, "localizations": int(len(locs)), "online_rms_nm": online_rms,
              "online_applied_rms_nm": applied_rms, "final_rms_nm": final_rms,
              "final_rms_offset_removed_nm": final_rms_off, "block_update_ms_median": float(np.median(upd)),
              "block_update_ms_max": float(np.max(upd)),
              "block_update_cpu_ms_median": float(np.median(cpu)), "block_update_cpu_ms_max": float(np.max(cpu)), "online_total_s": t_online, "finalize_s": t_final,
              "blocks_with_1M_reference": int(big.sum()),
              "block_update_ms_max_1M": float(np.max(blocks.update_ms[big])) if big.any() else None}
    if not args.no_picasso:
        pic = run_picasso(locs, extent, 100.0, n, segmentation=100)
        if pic is not None:
            pdx, pdy, t_pic = pic
            ok = np.isfinite(pdx)
            pic_rms = rms(pdx[ok] - truth.dx[ok], pdy[ok] - truth.dy[ok], remove_offset=True)
            verdict = "within Picasso's error or better" if online_rms <= pic_rms else "WORSE than Picasso"
            print(f"picasso AIM (offline, 2 rounds, segmentation 100 frames, 20 nm intersection, 60 nm search): "
                  f"RMS error {pic_rms:.2f} nm (offset removed), {t_pic:.1f} s -> online estimate is {verdict}")
            result.update(picasso_aim_rms_nm=pic_rms, picasso_aim_s=t_pic)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
