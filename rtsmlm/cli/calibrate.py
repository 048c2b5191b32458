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


def _read_frames(path: str, max_frames: int) -> tuple[np.ndarray, Any]:
    from rtsmlm.io.movies import open_movie

    with open_movie(path) as movie:
        n = min(movie.n_frames, max_frames)
        frames = np.stack([movie.read(i) for i in range(n)]) if n else np.zeros((0, *movie.shape))
        return frames, movie


def calibrate_main(args: Any, cfg: Any) -> int:
    """Run the calibration the parsed ``args`` ask for; ``cfg`` gives the prior camera (pixel size, read
    noise) where the movie does not say."""
    from rtsmlm.analysis.calibrate import calibrate, config_toml, write_report
    from rtsmlm.core.camera import CameraModel

    frames, movie = _read_frames(args.movie, args.frames)
    pixel_nm = args.pixel_size_nm or movie.pixel_size_nm
    if not pixel_nm:
        pixel_nm = cfg.camera.pixel_size_nm
        print(f"rtsmlm calibrate: {args.movie} does not record its pixel size; using camera.pixel_size_nm = "
              f"{pixel_nm:g} nm (give --pixel-size-nm)", file=sys.stderr)
    dark = _read_frames(args.dark, args.frames)[0] if args.dark else None
    if args.baseline_adu is not None:
        dark = None
    prior = CameraModel.from_config(cfg.camera)
    cal = calibrate(frames, pixel_size_nm=float(pixel_nm), dark=dark, camera_model=args.camera, prior=prior,
                    baseline_adu=args.baseline_adu)
    out = Path(args.out)
    out.write_text(config_toml(cal, exposure_ms=cfg.camera.exposure_ms,
                               em_gain=args.em_gain or (cfg.camera.em_gain if cal.camera_model == "emccd" else None)))
    report = Path(args.report) if args.report else out.with_suffix(".png")
    write_report(cal, report)
    summary = cal.to_json()
    summary.pop("ptc")
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        b, g = cal.baseline_adu, cal.gain_adu_per_e
        print(f"camera {cal.camera_model} ({cal.camera_model_method}); baseline {b.value:.2f} ± "
              f"{b.uncertainty or 0:.2f} ADU ({b.method}); gain {g.value:.4g} ± {g.uncertainty or 0:.2g} ADU/e⁻")
        if cal.psf_sigma_nm is not None:
            print(f"PSF sigma {cal.psf_sigma_nm.value:.1f} nm; background {cal.background_photons['median']:.1f} "
                  f"photons/px; {cal.spots_fitted} spots fitted")
    for w in cal.warnings:
        print(f"rtsmlm calibrate: warning: {w}", file=sys.stderr)
    print(f"wrote {out} and {report}; next: rtsmlm run --config {out} --source {args.movie}, or fine-tune a "
          f"model: rtsmlm train --config {out} --init broad_2d --out MODEL")
    return 0
