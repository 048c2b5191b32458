"""Soak: a long ``rtsmlm run`` at the camera's pace, watching memory.

Run: python benchmarks/bench_soak.py [--frames 100000] [--size 64] [--fps 150] [--set KEY=VALUE ...]

The simulated camera runs at ``--fps`` (its exposure set to match) through the pipeline exactly as
``rtsmlm run`` builds it (files, raw recording, render + drift, ZeroMQ publisher on loopback). Every
``--sample-s`` seconds the process's resident memory (current, not peak) is sampled.

Printed: frames acquired / recorded / localized live / skipped live / caught up / missing from the final
results; RSS at the start (after the first 1,000 frames: model and buffers loaded), the middle and the end,
and the growth (target ≤ 50 MB over 100,000 frames); latency p50/p99; the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

from rtsmlm.core.config import load


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--fps", type=float, default=150.0)
    ap.add_argument("--sample-s", type=float, default=5.0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()

    from rtsmlm.engine.run import build_run

    with tempfile.TemporaryDirectory(prefix="rtsmlm-soak-") as tmp:
        out = Path(tmp) / "run"
        cfg = load(None, [f"source.max_frames={args.frames}", f"sim.size={args.size}",
                          f"camera.exposure_ms={1000.0 / args.fps}", f"output.dir={json.dumps(str(out))}",
                          f'stream.address="tcp://127.0.0.1:{free_port()}"', "backend.threads=1", *args.set])
        run = build_run(cfg, realtime=True)
        p = run.pipeline
        samples: list[tuple[int, float]] = []
        done = threading.Event()
        at_end_of_acquisition: list[float] = []

        def sample() -> None:
            while not done.wait(args.sample_s):
                samples.append((p.n_acquired, rss_mb()))
                if p.ring.closed and not at_end_of_acquisition:
                    at_end_of_acquisition.append(rss_mb())
                    print(f"acquisition ended at {time.perf_counter() - t0:.0f} s, RSS {rss_mb():.0f} MB",
                          flush=True)
                elif len(samples) % 12 == 0:
                    print(f"{p.n_acquired} frames, RSS {rss_mb():.0f} MB", flush=True)

        t0 = time.perf_counter()
        p.start()
        threading.Thread(target=sample, daemon=True).start()
        while not p.wait(timeout=1.0):
            pass
        done.set()
        summary = run.finish()
        wall = time.perf_counter() - t0

    live = [rss for n, rss in samples if 1000 <= n < args.frames] or [rss for _, rss in samples]
    start, middle = live[0], live[len(live) // 2]
    end = at_end_of_acquisition[0] if at_end_of_acquisition else live[-1]
    after = samples[-1][1] if samples else float("nan")
    print(f"load average {os.getloadavg()[0]:.1f}; {args.frames} frames of {args.size}x{args.size} at "
          f"{args.fps:g} frames/s, {wall:.0f} s")
    print(f"frames acquired {summary['frames_acquired']}, recorded {summary['frames_recorded']} "
          f"(lost {summary['frames_lost_recorder']}), localized live {summary['frames_localized']}, "
          f"skipped live {summary['frames_skipped_live']}, lost by the localizer "
          f"{summary['frames_lost_localizer']}, caught up {summary['frames_caught_up']}, missing from the "
          f"results {summary['frames_missing_final']}")
    print(f"localizations {summary['n_locs']}; latency p50 {summary['latency_ms_p50']:.1f} ms, "
          f"p99 {summary['latency_ms_p99']:.1f} ms")
    print(f"RSS start {start:.0f} MB, middle {middle:.0f} MB, end of acquisition {end:.0f} MB: growth "
          f"{end - start:+.0f} MB (target <= 50 MB over 100,000 frames); during the catch-up and finish "
          f"{after:.0f} MB")


if __name__ == "__main__":
    main()
