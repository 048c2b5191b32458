"""Replaying recorded movies loses no frame, at any pace and frame size.

Run: python benchmarks/bench_replay.py [--frames 3000] [--sizes 64,128,256]

For each size a movie is simulated (``rtsmlm simulate``) and replayed through ``rtsmlm run --source``
as fast as possible and paced at 2× the localizer's measured rate (the producer must then wait), with a
small ring (64 frames) so that every pace overruns it. Printed per case: frames in the movie, frames
localized, frames lost, wall time and frames/s. Target: 0 lost in every case.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def rtsmlm(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "rtsmlm", *args], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=3000)
    ap.add_argument("--sizes", default="64,128,256")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'size':>5} {'pace':>22} {'movie':>6} {'localized':>9} {'lost':>5} {'wall s':>7} {'frames/s':>8}")
    with tempfile.TemporaryDirectory(prefix="rtsmlm-replay-") as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            sim = Path(tmp) / f"sim{size}"
            rtsmlm("simulate", "--frames", str(args.frames), "--size", str(size), "--out", str(sim), "--quiet")
            rate = 0.0
            for pace in ("as fast as possible", "paced"):
                out = Path(tmp) / f"run{size}-{pace[:4]}"
                extra = ["--fps", f"{rate:.0f}"] if pace == "paced" else []
                t0 = time.perf_counter()
                rtsmlm("run", "--source", str(sim / "movie.tif"), "--out", str(out), "--no-stream", "--quiet",
                       "--set", "pipeline.ring_frames=64", "--set", "backend.threads=1", *extra)
                wall = time.perf_counter() - t0
                s = json.loads((out / "summary.json").read_text())
                label = pace if pace != "paced" else f"paced at {rate:.0f}/s"
                rate = 2 * s["localized_fps"]  # the paced replay outruns the localizer 2x
                print(f"{size:>5} {label:>22} {args.frames:>6} {s['frames_localized']:>9} "
                      f"{s['frames_lost_localizer']:>5} {wall:>7.1f} {s['localized_fps']:>8.0f}")


if __name__ == "__main__":
    main()
