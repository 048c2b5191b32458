"""When is a movie's background out of a model's range? Jaccard of the default model (trained on 20–150
photons/px) and broad_2d against the background, the evidence behind the range guard's background slack.

Run: python benchmarks/bench_range_guard.py [--frames 60] [--density 1.0]

Two cameras: the default simulated EMCCD (100 nm pixels, σ 130 nm) and bench_cameras.py's EMCCD with 107 nm
pixels; backgrounds 75–700 photons/px; 64², emitters spread evenly, fresh seeds (900 + background); every
model at its own detection threshold, given the true camera. Printed: Jaccard over all true emitters /
Jaccard of the emitters ≥ 1000 photons (250 nm).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_accuracy as acc  # noqa: E402
from bench_cameras import camera_config  # noqa: E402

from rtsmlm.core import config as rconfig  # noqa: E402

BACKGROUNDS = (75, 150, 200, 300, 450, 700)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--density", type=float, default=1.0)
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # the range guard's own warnings: the table is the point here
    base, backend = acc.reference_backend()
    models = {m: acc.open_model(m, backend, base.model) for m in ("default", "broad_2d")}
    print(f"load average {os.getloadavg()[0]:.1f}; {args.frames} frames of 64², {args.density:g} emitters/µm²; "
          "Jaccard all / ≥ 1000 photons")
    for camera in ("default", "emccd-107nm-bg200"):
        for bg in BACKGROUNDS:
            if camera == "default":
                cfg = rconfig.from_dict({"sim": {"seed": 900 + bg, "size": 64, "density": args.density,
                                                 "bg_photons": bg, "structure": "uniform"}})
            else:
                c = camera_config(camera, 900 + bg, 64, args.density)
                cfg = rconfig.replace(c, sim=rconfig.to_dict(rconfig.replace(c.sim, bg_photons=float(bg))))
            movie = acc.simulate_movie(cfg, camera, args.frames)
            cells = []
            for name, loc in models.items():
                pred, _ = acc.run_model(loc, movie.frames, movie.camera, cfg.psf.sigma_nm)
                s, _, _ = acc.score(pred, movie.truth, 250.0, 1000.0)
                cells.append(f"{name} {s['all']['jaccard']:.3f} / {s['population']['jaccard']:.3f}")
            print(f"{camera:18s} background {bg:4d}: " + "   ".join(cells), flush=True)


if __name__ == "__main__":
    main()
