"""Calibrate + fine-tune for one camera no shipped model was trained for, against the shipped models.

Run: python benchmarks/bench_finetune.py --finetuned PREFIX [PREFIX …] [--reference PREFIX …] [--camera scmos-65nm-bg800]
                                        [--frames 100] [--calibrated-thresholds]

The fine-tuned model is made the way a user would: simulate (or record) the camera's movie and a dark
movie, ``rtsmlm calibrate movie.tif --dark dark.tif --camera scmos --models "" --out camera.toml``, then
``rtsmlm train --config camera.toml --init broad_2d --steps 2000 --out PREFIX`` (the command and its wall time
go in the README). ``--reference`` adds a model trained from scratch for the same calibrated camera
(``rtsmlm train --config camera.toml --steps 15000 --out PREFIX``), issue 13's yardstick. Scored here on the cells of ``bench_cameras.py`` for that camera (same seeds, 100 frames of
64², densities 0.1 / 1 / 3 per µm², all true emitters, 250 nm), every model given the true camera.
``--calibrated-thresholds``: every model also as ``MODEL@cal``, at the thresholds and brightness floor
``rtsmlm calibrate`` chooses for the cell (as ``bench_cameras.py --calibrated-thresholds``).
Every model is a spec as in ``bench_cameras.py`` (``PREFIX+no-residual``: the first detection pass only).
With ``--reference`` each cell also prints every other model's Jaccard minus the reference's (the reference
with the same ``+`` options where one is given, at its own
thresholds, and ``@cal`` against the reference ``@cal``) with a 95 % interval from a paired bootstrap over
10-frame blocks: at 0.1/µm² 100 frames hold ~200 emitters, too few to tell 0.01 apart, so ``--densities 0.1
--frames 1000`` is the run that can.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_accuracy as acc  # noqa: E402
from bench_cameras import CAMERAS, camera_config, set_calibrated_thresholds  # noqa: E402


def _options(spec: str) -> str:
    """The ``+option`` part of a model spec (``acc.split_model_spec``), for its label."""
    return "".join("+" + o for o in acc.split_model_spec(spec)[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--finetuned", required=True, metavar="PREFIX", nargs="+",
                    help="fine-tuned models (several: e.g. from different --init models)")
    ap.add_argument("--reference", metavar="PREFIX", nargs="+", help="a from-scratch model for the same camera")
    ap.add_argument("--camera", default="scmos-65nm-bg800", choices=sorted(CAMERAS))
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--densities", default="0.1,1,3", help="emitters/µm² (same seeds per density)")
    ap.add_argument("--calibrated-thresholds", action="store_true",
                    help="also score each model at the thresholds and floor calibrate chooses per cell")
    ap.add_argument("--models", default="default,broad_2d", help="shipped models beside the fine-tunes")
    args = ap.parse_args()
    base, backend = acc.reference_backend()
    # Every model is a benchmark spec (bench_accuracy.open_model_spec: PATH[+mle|+fuse][+no-residual]).
    models = {m: m for m in args.models.split(",") if m}
    for spec in args.finetuned:
        name = f"fine-tuned {Path(acc.split_model_spec(spec)[0]).name}" if len(args.finetuned) > 1 else "fine-tuned"
        models[name + _options(spec)] = spec
    for spec in args.reference or []:
        models["from scratch" + _options(spec)] = spec
    localizers = {label: acc.open_model_spec(spec, backend, base.model)[1] for label, spec in models.items()}
    if args.calibrated_thresholds:
        localizers.update({label + "@cal": acc.open_model_spec(spec, backend, base.model)[1]
                           for label, spec in models.items()})
    spec_residual = {label: loc.residual_threshold for label, loc in localizers.items()}
    k = list(CAMERAS).index(args.camera)
    print(f"load average {os.getloadavg()[0]:.1f}; camera {args.camera}; {args.frames} frames of {args.size}² per "
          f"cell (bench_cameras.py seeds); Jaccard all / lateral RMSE nm / Jaccard ≥1000 photons")
    for density in (float(d) for d in args.densities.split(",")):
        cfg = camera_config(args.camera, 5000 + 10 * k, args.size, density)
        movie = acc.simulate_movie(cfg, args.camera, args.frames)
        cells, counts = [], {}
        for label, loc in localizers.items():
            shown = label
            if label.endswith("@cal"):
                choice = set_calibrated_thresholds(loc, spec_residual[label], args.camera, density, args.frames, args.size)
                shown += (f" ({choice.p_threshold:.2f}, {choice.min_photons:.0f}"
                          f"{'' if choice.residual_threshold else ', no 2nd pass'})")
            pred, _ = acc.run_model(loc, movie.frames, movie.camera, cfg.psf.sigma_nm)
            s, m_all, _ = acc.score(pred, movie.truth, 250.0, 1000.0)
            counts[label] = acc.frame_counts(pred, movie.truth, m_all, args.frames)
            cells.append(f"{shown} {s['all']['jaccard']:.3f} / {s['all']['rmse_lat_nm']:.1f} / "
                         f"{s['population']['jaccard']:.3f}")
        print(f"  density {density:3.1f} ({len(movie.truth)} true emitters): " + "   ".join(cells), flush=True)
        if args.reference:
            diffs = []
            for label, c in counts.items():
                # Against the reference with the same options (+no-residual) where there is one.
                cal = "@cal" if label.endswith("@cal") else ""
                ref = "from scratch" + _options(label.removesuffix("@cal")) + cal
                ref = ref if ref in counts else "from scratch" + cal
                if not label.startswith("from scratch"):
                    d, low, high = acc.jaccard_difference_interval(c, counts[ref])
                    diffs.append(f"{label} {d:+.3f} [{low:+.3f}, {high:+.3f}]")
            print("    Jaccard minus the from-scratch model's, 95 % interval: " + "   ".join(diffs), flush=True)


if __name__ == "__main__":
    main()
