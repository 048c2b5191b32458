"""``rtsmlm watch`` latency: from a frame written by Micro-Manager to its localizations.

Run: python benchmarks/bench_watch.py [--frames 1000] [--fps 100] [--sizes 64,256]

A writer process appends simulated frames in Micro-Manager's multipage TIFF layout
(:class:`rtsmlm.io.mm_tiff.MMStackWriter`, flushed after each frame, continuation files every 256 MB)
at ``--fps`` and records when each frame was on disk; the watcher (the real ``watch_folder`` with the
default model on this CPU) analyses the growing stack, and a listener records when each frame's
localizations arrive. Printed per size: frames, frames analysed, latency written → localized (p50, p99,
max), the localizer's rate. Target (issue 18): ≤ 1 s at 100 frames/s of 256².
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

WRITER = """
import sys, time
import numpy as np
from rtsmlm.io.mm_tiff import MMStackWriter
frames = np.load(sys.argv[1]); period = 1.0 / float(sys.argv[3]); times = np.zeros(len(frames))
with MMStackWriter(sys.argv[2], frames.shape[1:], planned_frames=len(frames), max_file_bytes=256 * 2**20) as w:
    t0 = time.time()
    for k, f in enumerate(frames):
        delay = t0 + k * period - time.time()
        if delay > 0:
            time.sleep(delay)
        w.append(f)
        times[k] = time.time()
np.save(sys.argv[4], times)
"""


class ArrivalTimes:
    """Listener: wall time at which each frame's localization batch reached the listeners."""

    name = "arrival_times"
    max_lag_batches = None

    def __init__(self) -> None:
        self.times: dict[int, float] = {}

    def on_batch(self, batch) -> None:
        now = time.time()
        for f in range(batch.first_frame, batch.last_frame + 1):
            self.times.setdefault(f, now)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--fps", type=float, default=100.0)
    ap.add_argument("--sizes", default="64,256")
    args = ap.parse_args()
    from rtsmlm.core import config as rconfig
    from rtsmlm.engine.watch import watch_folder
    from rtsmlm.io.movies import open_movie
    from rtsmlm.localization.backends import open_backend

    print(f"load average {os.getloadavg()[0]:.1f}; {args.frames} frames at {args.fps:g} frames/s per size")
    print(f"{'size':>5} {'frames':>6} {'analysed':>8} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
          f"{'first 100 p50':>13} {'last 100 p50':>12}")
    with tempfile.TemporaryDirectory(prefix="rtsmlm-watch-bench-") as tmp_name:
        tmp = Path(tmp_name)
        for size in (int(s) for s in args.sizes.split(",")):
            sim = tmp / f"sim{size}"
            subprocess.run([sys.executable, "-m", "rtsmlm", "simulate", "--frames", str(args.frames), "--size",
                            str(size), "--out", str(sim), "--quiet"], check=True, stdout=subprocess.DEVNULL)
            with open_movie(sim / "movie.tif") as m:
                np.save(tmp / "frames.npy", m.read_range(0, m.n_frames))
            folder = tmp / f"mm{size}"
            first = folder / "acq_1" / "acq_1_MMStack_Pos0.ome.tif"
            first.parent.mkdir(parents=True)
            cfg = rconfig.load(None, ["stream.enabled=false", "source.idle_timeout_s=30"])
            listener = ArrivalTimes()
            # As at the microscope: the watcher is running (model opened) before the acquisition starts.
            opened = open_backend(cfg.backend, cfg.model.checkpoint)
            watcher = threading.Thread(target=lambda: watch_folder(
                cfg, folder, tmp / f"out{size}", max_acquisitions=1, poll_interval_s=0.05,
                extra_listeners=lambda: [listener], backend=opened))
            watcher.start()
            time.sleep(3.0)  # the watcher's warm-up
            times_file = tmp / f"written{size}.npy"
            subprocess.run([sys.executable, "-c", WRITER, str(tmp / "frames.npy"), str(first), str(args.fps),
                            str(times_file)], check=True)
            watcher.join()
            written = np.load(times_file)
            lat = np.array([listener.times[k] - written[k] for k in range(len(written)) if k in listener.times]) * 1e3
            print(f"{size:>5} {len(written):>6} {len(lat):>8} {np.percentile(lat, 50):>7.0f} "
                  f"{np.percentile(lat, 99):>7.0f} {lat.max():>7.0f} {np.median(lat[:100]):>13.0f} "
                  f"{np.median(lat[-100:]):>12.0f}", flush=True)


if __name__ == "__main__":
    main()
