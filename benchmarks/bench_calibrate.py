"""Camera calibration from the movie (``rtsmlm calibrate``) on cameras it has never seen.

Run: python benchmarks/bench_calibrate.py [--frames 300] [--size 64] [--density 0.3] [--structure filaments]
[--json out.json]

The six simulated cameras of ``bench_cameras.py`` (EMCCD and sCMOS with per-pixel maps; pixel 65–160 nm;
PSF σ 90–180 nm; background 5–800 photons/px; gain 0.3–5 ADU per photon), fresh seeds, a structured
background (an illumination profile, ±50 %), and a 50-frame dark movie of the same camera; the emitters spread
evenly or (``--structure filaments``) crowded on filaments, as in a cell. Each camera is
calibrated three ways, the camera type (EMCCD or sCMOS) given as a user knows it: with the dark movie;
without it (photon-transfer intercept, read noise taken from the default camera, a wrong prior on purpose);
and without it on a flat background with the baseline unknown (expected to refuse: no photon-transfer
line). The type the noise skewness would have guessed is printed beside (✓/✗, ? when the skewness
tells nothing): advisory only. Then the storm-analysis
test movie (real .dax format, flat background, baseline known from its README).

Printed per camera and mode: camera type detected (✓/✗), baseline error (ADU), gain error (%, ADU per
photo-electron incl. EM gain), PSF σ error (%), background error (%, photo-electrons/px), wall time; and the
sample fitted to the movie's spots (``analysis.sample_model``): emitter density (beside the detected spots'),
brightness (photo-electrons of a whole frame on) and mean on-time, errors in %.
Targets (issue 13): gain and σ within 5 %, baseline within 2 ADU, background within 10 %.

With ``--accuracy``: what the calibration buys. On each camera's movie (the one calibrated, with its ground
truth; all true emitters, 250 nm), Jaccard of (a) the shipped default model with its own threshold (0.6 before 2026-12-03) and
the camera typed in correctly, and (b) the model, p threshold and brightness floor ``rtsmlm calibrate`` chose by
simulating the calibrated conditions (default or broad_2d), run with the calibrated camera. The same on the
storm-analysis movie (real; its 10 frames calibrated with the baseline given), against both shipped 2D models
at their own thresholds with the camera of ``configs/storm_analysis_camera.toml``.
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
from bench_accuracy import STORM_CONFIG  # noqa: E402
from bench_cameras import CAMERAS  # noqa: E402

from rtsmlm.analysis.calibrate import CalibrationError, calibrate, camera_type_from_skew  # noqa: E402
from rtsmlm.core import config as rconfig  # noqa: E402
from rtsmlm.core.camera import CameraModel  # noqa: E402
from rtsmlm.core.jsonio import to_jsonable  # noqa: E402
from rtsmlm.sim import Simulator  # noqa: E402

STORM = Path(__file__).resolve().parents[2] / "shared" / "data" / "storm-analysis-test" / "test.dax"


def simulate(name: str, seed: int, frames: int, size: int, density: float, structured: bool,
             structure: str = "uniform"):
    cam, sigma, bg, photons = CAMERAS[name]
    cfg = rconfig.from_dict({"camera": cam, "psf": {"sigma_nm": sigma},
                             "sim": {"seed": seed, "size": size, "density": density, "bg_photons": bg,
                                     # Filaments: as many per field width as study_filament_choice's 8 in 96².
                                     "structure": structure, "filament_count": max(2, round(8 * size / 96)),
                                     "bg_structured": structured, "photons_mean": photons,
                                     "photons_sigma": 0.4 * photons}})
    sim = Simulator(cfg)
    movie, truth = sim.movie(frames)
    return cfg, sim, movie, truth, sim.dark_frames(50)


def errors(cal, cfg, sim) -> dict:
    cam = sim.camera
    true_gain = cam.em_gain / cam.e_per_adu  # ADU per photo-electron (the sCMOS map's mean for sCMOS)
    true_bg = float(np.median(sim.background)) * cam.qe  # photo-electrons per pixel
    guess = camera_type_from_skew(cal.skew_ratio)
    out = {"type_ok": guess == cam.model, "type_guess": guess, "skew_ratio": cal.skew_ratio,
           "baseline_err_adu": cal.baseline_adu.value - cam.baseline_adu,
           "gain_err_pct": 100 * (cal.gain_adu_per_e.value / true_gain - 1),
           "bg_err_pct": 100 * (cal.background_photons["median"] / true_bg - 1),
           "sigma_err_pct": (100 * (cal.psf_sigma_nm.value / cfg.psf.sigma_nm - 1)
                             if cal.psf_sigma_nm is not None else None)}
    # The sample behind the spots (calibrate's [sim]): emitters per µm² per frame, full-frame brightness in
    # photo-electrons, mean on-time, against the simulator's; and the detected spots' density for contrast.
    s = cal.sample
    out.update({"detected_density_err_pct": 100 * (cal.spots.density_per_um2 / cfg.sim.density - 1),
                "density_err_pct": 100 * (s.density_per_um2 / cfg.sim.density - 1),
                "photons_err_pct": 100 * (s.photons_mean / (cfg.sim.photons_mean * cam.qe) - 1),
                "on_frames_err_pct": 100 * (s.mean_on_frames / cfg.sim.mean_on_frames - 1),
                "frame_locked": s.frame_locked})
    return out


def accuracy(cal, cfg, sim, movie, truth) -> dict:
    """Jaccard on the calibrated movie: the default model as shipped (its own threshold) vs calibrate's choice."""
    from rtsmlm.analysis.metrics import evaluate
    from rtsmlm.localization.checkpoint import detection_threshold
    from rtsmlm.localization.offline import OfflineLocalizer

    backend = rconfig.replace(cfg.backend, name="torch", device="cpu", threads=1)
    shipped = OfflineLocalizer("default", backend)  # its own threshold, as a run without calibrate uses it
    base = shipped.localize(movie, sim.camera)
    p_base = detection_threshold(shipped.meta, shipped.p_threshold)[0]
    j_base = evaluate(base, truth)["jaccard"]
    choice, chosen = run_choice(cal, backend, movie, em_gain=cfg.camera.em_gain)
    j_chosen = evaluate(chosen, truth)["jaccard"]
    print(f"  accuracy on this movie: default model @{p_base:.2f} (its own), camera typed in: Jaccard {j_base:.3f}; calibrate's choice "
          f"{choice['model']} @{choice['p_threshold']:.2f}, floor {choice['min_photons']:.0f} photons, calibrated camera: "
          f"{j_chosen:.3f} ({j_chosen - j_base:+.3f})")
    return {"default_own_threshold": j_base, "default_p_threshold": p_base, "chosen": j_chosen, "choice": choice}


def run_choice(cal, backend, movie: np.ndarray, em_gain: float | None = None) -> tuple[dict, np.ndarray]:
    """What ``rtsmlm calibrate`` makes of ``cal`` and a run of its config gives on ``movie``: the choice (model,
    thresholds, brightness floor; without the curves) and the localizations, with the calibrated camera (its
    pixel maps when it is an sCMOS calibrated with dark frames; ``em_gain`` of an EMCCD as given) and PSF."""
    import tempfile

    from rtsmlm.analysis.calibrate import config_toml
    from rtsmlm.cli.calibrate import _choose_model
    from rtsmlm.localization.offline import OfflineLocalizer

    with tempfile.TemporaryDirectory() as tmp:
        maps = None
        if cal.camera_model == "scmos" and cal.pixel_maps is not None:
            from rtsmlm.core.camera import save_maps

            maps = Path(tmp) / "maps.npz"
            save_maps(maps, *cal.pixel_maps)
        text = config_toml(cal, em_gain=em_gain if cal.camera_model == "emccd" else None, maps_file=maps)
        choice = _choose_model(text, ["default", "broad_2d"], 100)
        calibrated = rconfig.loads(text)
        camera = CameraModel.from_config(calibrated.camera)  # reads the maps file: inside the temporary folder
    p = choice["p_threshold"]
    locs = OfflineLocalizer(choice["model"], backend, p_threshold=p, candidate_threshold=min(0.3, p),
                            min_photons=choice["min_photons"]).localize(movie, camera,
                                                                        psf_sigma_nm=calibrated.psf.sigma_nm)
    return {k: v for k, v in choice.items() if k != "curves"}, locs


def storm_accuracy(cal, movie: np.ndarray) -> dict:
    """The storm-analysis movie (real): each shipped 2D model at its own threshold with the camera as its
    README gives it (configs/storm_analysis_camera.toml) against calibrate's choice on the calibrated camera;
    Jaccard over all 2000 true emitters at the 250 nm tolerance of the other benchmarks."""
    from rtsmlm.analysis.metrics import evaluate
    from rtsmlm.io.locfiles import read_locs
    from rtsmlm.localization.offline import OfflineLocalizer

    truth = read_locs(STORM.with_name("truth.csv"))
    typed = rconfig.load(STORM_CONFIG)
    backend = rconfig.replace(typed.backend, name="torch", device="cpu", threads=1)
    out = {}
    for model in ("default", "broad_2d"):
        locs = OfflineLocalizer(model, backend).localize(movie, CameraModel.from_config(typed.camera),
                                                        psf_sigma_nm=typed.psf.sigma_nm)
        out[model] = evaluate(locs, truth, tolerance_nm=250.0)["jaccard"]
    choice, locs = run_choice(cal, backend, movie)
    out["chosen"] = evaluate(locs, truth, tolerance_nm=250.0)["jaccard"]
    out["choice"] = choice
    print(f"  accuracy (Jaccard, all 2000 emitters, 250 nm): default {out['default']:.3f}, broad_2d "
          f"{out['broad_2d']:.3f} (own thresholds, camera typed in); calibrate's choice {choice['model']} "
          f"@{choice['p_threshold']:.2f}, floor {choice['min_photons']:.0f} photons, calibrated camera: {out['chosen']:.3f}")
    return out


def row(label: str, e: dict | str, seconds: float) -> str:
    if isinstance(e, str):
        return f"  {label:34s} refused: {e[:110]}"
    sig = f"{e['sigma_err_pct']:+6.1f} %" if e["sigma_err_pct"] is not None else "    n/a"
    ok = lambda good: "" if good else " ✗"  # noqa: E731
    return (f"  {label:34s} type guess {'✓' if e['type_ok'] else '?' if e['type_guess'] is None else '✗'} ({e['skew_ratio'] or float('nan'):.2f})  "
            f"baseline {e['baseline_err_adu']:+6.2f} ADU{ok(abs(e['baseline_err_adu']) <= 2)}  "
            f"gain {e['gain_err_pct']:+6.1f} %{ok(abs(e['gain_err_pct']) <= 5)}  "
            f"σ {sig}{ok(e['sigma_err_pct'] is None or abs(e['sigma_err_pct']) <= 5)}  "
            f"bg {e['bg_err_pct']:+6.1f} %{ok(abs(e['bg_err_pct']) <= 10)}  {seconds:5.1f} s  sample: density "
            f"{e['density_err_pct']:+4.0f} % (spots {e['detected_density_err_pct']:+3.0f} %), brightness "
            f"{e['photons_err_pct']:+4.0f} %, on-time {e['on_frames_err_pct']:+4.0f} %"
            f"{', switching with the frames' if e['frame_locked'] else ''}"
            + (f"  (baseline stated ±{e['baseline_sd_adu']:.1f})" if e.get("baseline_sd_adu") else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--density", type=float, default=0.3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--accuracy", action="store_true", help="also score the chosen model/threshold (slower)")
    ap.add_argument("--cameras", default=",".join(CAMERAS), help="comma-separated subset of the cameras")
    ap.add_argument("--structure", default="uniform", choices=("uniform", "filaments"),
                    help="the sample: emitters spread evenly, or on filaments (crowded on a few lines, as in cells)")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f}; {args.frames} frames of {args.size}², density {args.density}/µm², "
          f"sample {args.structure}, "
          "fresh seeds; ✗ marks a miss of the target (gain/σ 5 %, baseline 2 ADU, background 10 %)")
    prior = CameraModel()  # the default EMCCD: deliberately not the camera calibrated
    results: dict = {}
    for i, name in enumerate(CAMERAS):
        if name not in args.cameras.split(","):
            continue
        print(name)
        cfg, sim, movie, truth, dark = simulate(name, 9000 + i, args.frames, args.size, args.density, True,
                                                args.structure)
        px = cfg.camera.pixel_size_nm
        for label, kw in (("with dark movie", {"dark": dark}), ("no dark (PTC intercept)", {})):
            t0 = time.perf_counter()
            try:
                cal = calibrate(movie, pixel_size_nm=px, prior=prior, camera_model=cfg.camera.model, **kw)
                e = errors(cal, cfg, sim)
                e["baseline_sd_adu"] = cal.baseline_adu.uncertainty
            except CalibrationError as err:
                e = str(err)
            results[f"{name}/{label}"] = e
            print(row(label, e, time.perf_counter() - t0))
            if args.accuracy and "dark" in kw and not isinstance(e, str):
                results[f"{name}/accuracy"] = accuracy(cal, cfg, sim, movie, truth)
        cfg, sim, movie, _, _ = simulate(name, 9100 + i, args.frames, args.size, args.density, False, args.structure)
        t0 = time.perf_counter()
        try:
            cal = calibrate(movie, pixel_size_nm=px, prior=prior, camera_model=cfg.camera.model)
            e = errors(cal, cfg, sim)
        except CalibrationError as err:
            e = str(err)
        results[f"{name}/flat, no dark"] = e
        print(row("flat background, no dark, no baseline", e, time.perf_counter() - t0))
    if STORM.exists():
        from rtsmlm.io.movies import open_movie

        with open_movie(STORM) as m:
            movie = np.stack([m.read(i) for i in range(m.n_frames)])
        # Without dark frames the read noise is the prior camera's (its variance is subtracted from the pixels'):
        # the default EMCCD's 1.65 ADU, and the data set's own camera (configs/storm_analysis_camera.toml, 1 ADU).
        for label, storm_prior in (("default camera's read noise", prior),
                                   ("the data set's camera as prior", CameraModel.from_config(rconfig.load(STORM_CONFIG).camera))):
            t0 = time.perf_counter()
            cal = calibrate(movie, pixel_size_nm=160.0, prior=storm_prior, camera_model="scmos", baseline_adu=100.0)
            s = cal.psf_sigma_nm.value if cal.psf_sigma_nm else float("nan")
            print(f"storm-analysis test.dax (10 frames, baseline 100 ADU given; {label}): gain "
                  f"{cal.gain_adu_per_e.value:.3f} ADU/e⁻ (README: 1), PSF σ {s:.0f} nm (README: about 1 px = 160 nm), "
                  f"background {cal.background_photons['median']:.1f} photons/px (truth: 50), {cal.spots_fitted} spots "
                  f"fitted, {time.perf_counter() - t0:.1f} s")
            results[f"storm-analysis ({label})"] = cal.to_json()
        if args.accuracy:  # with the second calibration: what a user of that data set would run
            results["storm-analysis/accuracy"] = storm_accuracy(cal, movie)
    if args.json:
        Path(args.json).write_text(json.dumps(to_jsonable(results), indent=2))


if __name__ == "__main__":
    main()
