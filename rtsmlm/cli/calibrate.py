"""``rtsmlm calibrate MOVIE``: measure the camera, PSF and sample from the movie; write a config for
``rtsmlm run``/``rtsmlm train`` and a PNG report."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def _read_frames(path: str, max_frames: int, middle: bool = False) -> tuple[np.ndarray, Any, int]:
    """Up to ``max_frames`` consecutive frames of ``path``, the movie and the first frame's index: from the
    start, or with ``middle`` from the middle of a longer movie (a dSTORM movie's first hundreds of frames are
    crowded while the dyes are switched off, and its background is still bleaching fast: the density, brightness
    and background a model is fitted to are those of the rest)."""
    from rtsmlm.io.movies import open_movie

    with open_movie(path) as movie:
        n = min(movie.n_frames, max_frames)
        start = (movie.n_frames - n) // 2 if middle else 0
        frames = (np.stack([movie.read(i) for i in range(start, start + n)]) if n
                  else np.zeros((0, *movie.shape)))
        return frames, movie, start


def calibrate_main(args: Any, cfg: Any) -> int:
    """Run the calibration the parsed ``args`` ask for; ``cfg`` gives the prior camera (pixel size, read
    noise) where the movie does not say."""
    from rtsmlm.analysis.calibrate import calibrate, config_toml, write_report
    from rtsmlm.core.camera import CameraModel

    frames, movie, start = _read_frames(args.movie, args.frames, middle=True)
    if start:
        print(f"rtsmlm calibrate: frames {start}–{start + len(frames) - 1} of {movie.n_frames} (the middle of the "
              "movie: its first frames may be crowded while the dyes switch off)", file=sys.stderr)
    pixel_nm = args.pixel_size_nm or movie.pixel_size_nm
    if not pixel_nm:
        pixel_nm = cfg.camera.pixel_size_nm
        print(f"rtsmlm calibrate: {args.movie} does not record its pixel size; using camera.pixel_size_nm = "
              f"{pixel_nm:g} nm (give --pixel-size-nm)", file=sys.stderr)
    # A known baseline replaces the dark movie's (it is then not read).
    dark = _read_frames(args.dark, args.frames)[0] if args.dark and args.baseline_adu is None else None
    prior = CameraModel.from_config(cfg.camera)
    cal = calibrate(frames, pixel_size_nm=float(pixel_nm), dark=dark, camera_model=args.camera, prior=prior,
                    baseline_adu=args.baseline_adu)
    out = Path(args.out)
    em_gain = args.em_gain or (cfg.camera.em_gain if cal.camera_model == "emccd" else None)
    maps_file = None
    if cal.camera_model == "scmos" and cal.pixel_maps is not None:
        from rtsmlm.core.camera import save_maps

        maps_file = out.with_name(out.stem + "_maps.npz").resolve()
        save_maps(maps_file, *cal.pixel_maps)  # each pixel's own offset and response: the run corrects both
    text = config_toml(cal, exposure_ms=cfg.camera.exposure_ms, em_gain=em_gain, maps_file=maps_file)
    choice = None
    if args.models:
        flips = cfg.backend.test_time_flips
        choice = _choose_model(text, args.models.split(","), args.threshold_frames, flips)
        if flips > 1:  # the thresholds belong to the flip-averaged maps: the run must average them too
            text += ("\n[backend]\n# The thresholds below were chosen on maps averaged over this many mirror "
                     f"images (--set backend.test_time_flips).\ntest_time_flips = {flips}\n")
        text += (f"\n[model]\n# Chosen by simulating the calibrated conditions ({choice['frames']} frames): "
                 f"Jaccard {choice['jaccard']:.3f}. The thresholds and floor below are this checkpoint's\n"
                 "# (thresholds_for): a run of another model (one fine-tuned on this config carries its own, chosen on\n"
                 "# the same conditions) uses that model's own threshold and no floor.\n"
                 f"checkpoint = \"{choice['model']}\"\nthresholds_for = \"{choice['model']}\"\n"
                 f"p_threshold = {choice['p_threshold']:.2f}\ncandidate_threshold = {choice['candidate_threshold']:.2f}\n"
                 "# Detections the network reads out dimmer than this are dropped (0: none; chosen on the same\n"
                 "# simulation, where noise blobs pass as dim emitters of a broad model), unless a brighter one lies\n"
                 "# within a pixel in the frame before or after (a molecule switching on or off mid-frame). A sample\n"
                 "# with many more dim emitters than the measured brightness spread would lose some: set 0 to keep\n"
                 "# every one.\n"
                 f"min_photons = {choice['min_photons']:.4g}\n"
                 "# The second detection pass (close pairs; 0 = off): off where it reported emitters of a wide PSF\n"
                 "# twice on the same simulation.\n"
                 f"residual_threshold = {choice['residual_threshold']:.2f}\n")
    out.write_text(text)
    report = Path(args.report) if args.report else out.with_suffix(".png")
    write_report(cal, report)
    summary = cal.to_json()
    summary.pop("ptc")
    if choice is not None:
        summary["model_choice"] = choice
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        b, g = cal.baseline_adu, cal.gain_adu_per_e
        print(f"camera {cal.camera_model} ({cal.camera_model_method}); baseline {b.value:.2f} ± "
              f"{b.uncertainty or 0:.2f} ADU ({b.method}); gain {g.value:.4g} ± {g.uncertainty or 0:.2g} ADU/e⁻")
        if cal.psf_sigma_nm is not None:
            print(f"PSF sigma {cal.psf_sigma_nm.value:.1f} nm; background {cal.background_photons['median']:.1f} "
                  f"photons/px; {cal.spots_fitted} spots fitted")
        if cal.sample is not None:
            s = cal.sample
            print(f"sample: {s.density_per_um2:.3g} emitters/µm² per frame ({cal.spots.density_per_um2:.3g} found as "
                  f"isolated spots), {s.photons_mean:.0f} ± {s.photons_sigma:.0f} photons, on {s.mean_on_frames:.2g} "
                  f"frames{', switching with the frames' if s.frame_locked else ''}")
    if choice is not None:
        print(f"model {choice['model']} with p_threshold {choice['p_threshold']:.2f}, candidate_threshold "
              f"{choice['candidate_threshold']:.2f}, min_photons {choice['min_photons']:.4g}, residual_threshold "
              f"{choice['residual_threshold']:.2f}: Jaccard {choice['jaccard']:.3f} on "
              f"the calibrated conditions simulated (" + ", ".join(f"{m} {j:.3f}" for m, j in choice['by_model'].items())
              + ")")
    for w in cal.warnings:
        print(f"rtsmlm calibrate: warning: {w}", file=sys.stderr)
    init = fine_tune_init(cal.background_photons["median"])
    print(f"wrote {out} and {report}; next: rtsmlm run --config {out} --source {args.movie}, or fine-tune a "
          f"model: rtsmlm train --config {out} --init {init} --steps {FINE_TUNE_STEPS} --out MODEL")
    return 0


FINE_TUNE_STEPS = 1500
"""Steps of the fine-tune calibrate suggests (train.steps' 15,000 is for a model from scratch): from default,
as good as 2000 steps on the cameras measured (benchmarks/bench_finetune.py; README, "Fine-tuning for your
camera") and 7.7 min wall on a 2-core CPU with both cores (the calibrated config's train.threads = 0)."""


def fine_tune_init(background_photons: float) -> str:
    """The shipped model a fine-tune for this camera should start from: the default model, unless the
    background is beyond what its range guard lets pass (then the broad model, which saw 1–1000 photons/px).
    Measured (benchmarks/bench_finetune.py, 2000 steps each, Jaccard at 0.1 / 1 / 3 emitters/µm²): from
    default vs from broad_2d, EMCCD 107 nm at background 200: 0.878 / 0.861 / 0.784 vs 0.860 / 0.841 / 0.754;
    EMCCD 160 nm (σ 1.06 px, outside the default's σ range) at 20: 0.925 / 0.857 / 0.716 vs 0.909 / 0.840 / 0.692;
    sCMOS 108 nm (σ 0.93 px) at 5: 0.956 / 0.908 / 0.849 vs 0.945 / 0.893 / 0.818. Beyond the default's range
    it is the other way (1500 steps each), sCMOS 65 nm at background 800: from default 0.731 / 0.783 / 0.746,
    lateral RMSE 21.9 / 24.5 / 34.2 nm, vs from broad_2d 0.782 / 0.799 / 0.738, 19.9 / 18.8 / 27.5 nm (the
    default's background output is a sigmoid times its bg_scale, 300 photons/px, and a fine-tune keeps the
    initial model's scales: training loss ~3,600 at step 1500 against 0.34 from broad_2d)."""
    from rtsmlm.localization.checkpoint import load_meta
    from rtsmlm.localization.range_guard import SLACK, trained_ranges

    top = trained_ranges(load_meta("default")).get("background_photons", [0.0, float("inf")])[1]
    return "default" if background_photons <= top * SLACK["background_photons"][1] else "broad_2d"


def _choose_model(config_text: str, models: list[str], frames: int, flips: int = 1) -> dict[str, Any]:
    """The model, detection thresholds and brightness floor with the best Jaccard on the calibrated conditions,
    simulated, with ``flips`` test-time flips (backend.test_time_flips) as the run will use."""
    from rtsmlm.analysis.thresholds import choose_thresholds
    from rtsmlm.core import config as config_mod

    # The config's [sim] is the sample fitted to the movie's spots (analysis.sample_model); another seed than
    # the fit's simulation.
    cfg = config_mod.loads(config_text, ["sim.bg_structured=false"], "the calibrated config")
    cfg = config_mod.replace(cfg, sim=config_mod.to_dict(config_mod.replace(cfg.sim, seed=cfg.sim.seed + 1)),
                             backend=config_mod.to_dict(config_mod.replace(cfg.backend, test_time_flips=flips)))
    results = {m: choose_thresholds(cfg, m, frames=frames) for m in models}
    best = max(results, key=lambda m: results[m].jaccard)
    return {"model": best, "p_threshold": results[best].p_threshold,
            "candidate_threshold": min(results[best].candidate_threshold, results[best].p_threshold),
            "min_photons": results[best].min_photons,
            "residual_threshold": results[best].residual_threshold,
            "jaccard": results[best].jaccard,
            "frames": results[best].frames, "by_model": {m: r.jaccard for m, r in results.items()},
            "curves": {m: r.curve for m, r in results.items()}}
