"""``rtsmlm calibrate-psf BEADS --z-step NM``: the astigmatic PSF from a z-stack of beads; writes the ``[psf]``
table a 3D config takes, the full calibration (JSON) and a PNG report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["add_calibrate_psf_parser", "calibrate_psf_main"]


def add_calibrate_psf_parser(sub: argparse._SubParsersAction, add_config_args: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("calibrate-psf", help="astigmatic 3D PSF from a z-stack of beads; write the [psf] config",
                       description="Fit σx(z) and σy(z) of every isolated bead of a z-stack (TIFF/OME-TIFF, one "
                                   "slice per focus step), align the beads at their σx = σy crossing and fit the "
                                   "astigmatic focus curves; write psf.toml (the [psf] table for --config), "
                                   "psf.json (the full fit) and psf.png (the report).")
    add_config_args(p)
    p.add_argument("stack", help="the bead z-stack")
    p.add_argument("--z-step", type=float, required=True, metavar="NM", help="focus step between slices, nm")
    p.add_argument("--pixel-size-nm", type=float, default=None, help="camera pixel size (default: the stack's)")
    p.add_argument("--out", default="psf.toml", metavar="TOML", help="config to write (default psf.toml)")
    return p


def calibrate_psf_main(args: argparse.Namespace, cfg: Any) -> int:
    from rtsmlm.acquisition.file import camera_from_metadata
    from rtsmlm.analysis.psf_calibration import PsfCalibrationError, calibrate_astigmatic, write_report
    from rtsmlm.core.camera import CameraModel
    from rtsmlm.io.movies import open_movie

    with open_movie(args.stack) as movie:
        frames = movie.read_range(0, movie.n_frames)
        camera = camera_from_metadata(movie.metadata, movie.pixel_size_nm, CameraModel.from_config(cfg.camera),
                                      args.stack)[0]
    pixel_nm = args.pixel_size_nm or camera.pixel_size_nm
    if frames.dtype.kind in "ui":
        saturated = int((frames == np.iinfo(frames.dtype).max).sum())
        if saturated:
            raise PsfCalibrationError(f"{args.stack}: {saturated} pixels are saturated ({np.iinfo(frames.dtype).max}); "
                                      "take the stack with less light or a shorter exposure")
    cal = calibrate_astigmatic(camera.to_photons(frames), args.z_step, pixel_nm, where=args.stack)
    out = Path(args.out)
    psf = cal.psf_config()
    lines = [f"# Written by rtsmlm calibrate-psf from {args.stack}: {cal.beads} beads, {cal.slices} slices "
             f"{cal.z_step_nm:g} nm apart.",
             f"# Per axis (σ0 px, focus nm, depth nm, A, B) in {out.with_suffix('.json').name}; "
             f"residual {cal.residual_pct:.1f} %.", "[psf]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in psf.items()]
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(cal.to_json(), indent=2))
    write_report(cal, out.with_suffix(".png"))
    print(f"{cal.beads} beads; σ0 {psf['sigma_nm']:.1f} nm; foci at ∓{psf['astig_focal_offset_nm']:.0f} nm; depth "
          f"{psf['astig_depth_nm']:.0f} nm; residual {cal.residual_pct:.1f} %")
    print(f"wrote {out}, {out.with_suffix('.json')} and {out.with_suffix('.png')}; train a 3D model with it: "
          f"rtsmlm train --config {out} --out MODEL", file=sys.stdout)
    return 0
