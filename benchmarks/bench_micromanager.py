#!/usr/bin/env python3
"""Sustained frame rate and CPU cost of the Micro-Manager source alone, at 256x256 uint16.

    python benchmarks/bench_micromanager.py [--seconds 4] [--size 256] [--baseline]

A real headless Micro-Manager core (pycromanager Python backend) loads this project's device adapter
(built first with plugins/micromanager/build.py), which plays a 256x256 movie through MMCore's
sequence acquisition and circular buffer. The source's consumer only counts frames, so the figures are
the source's own cost:

* free-running: the camera inserts frames as fast as it can (Exposure 0); frames/s delivered to the
  consumer, frames lost in the circular buffer, CPU of the consuming thread;
* paced: the camera runs at a fixed rate (Exposure = 1000/rate ms); CPU of the consuming thread in % of
  one core (``time.thread_time``), plus the whole process (which includes the simulated camera's own
  thread, i.e. what a real camera's driver would cost), and frames lost;
* drain: the camera first fills the buffer (3,000 frames), then the source empties it; CPU time per
  frame of the consuming thread, i.e. the source's capacity on one core independent of how fast this
  machine's camera thread can produce (and of other load on the machine), for the native pop and for
  the tagged pop the Java bridge uses;
* ``--baseline``: the same paced runs with a busy-polling consumer (how pycromanager's own Python
  acquisition engine waits), for comparison.

Targets: >= 5,000 frames/s free-running, <= 15 % of one core at 100 frames/s.
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

REPO = Path(__file__).resolve().parent.parent
PLUGIN = REPO / "plugins" / "micromanager"


def build_adapter() -> Path:
    proc = subprocess.run([sys.executable, str(PLUGIN / "build.py")], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"building the adapter failed:\n{proc.stdout}\n{proc.stderr}")
    return Path(proc.stdout.strip().splitlines()[-1]).parent


def write_movie(folder: Path, size: int, frames: int) -> Path:
    rng = np.random.default_rng(0)
    movie = rng.integers(90, 400, size=(frames, size, size), dtype=np.uint16)
    path = folder / "bench.raw"
    movie.tofile(path)
    path.with_suffix(".yaml").write_text(
        f"Byte Order: <\nData Type: uint16\nFrames: {frames}\nHeight: {size}\nWidth: {size}\n")
    return path


def write_cfg(folder: Path, movie: Path) -> Path:
    cfg = folder / "bench.cfg"
    cfg.write_text((PLUGIN / "rtsmlm_sim.cfg").read_text() +
                   f"Property,Camera,Mode,Movie\nProperty,Camera,MovieFile,{movie}\nProperty,Camera,Loop,Yes\n")
    return cfg


def consume(source, seconds: float) -> dict[str, float]:
    """Iterate the source's frames for ``seconds`` in this thread; return rate and CPU figures."""
    stop_timer = threading.Timer(seconds, source.stop)
    n = 0
    source.start()
    t_cpu, p_cpu, t0 = time.thread_time(), time.process_time(), time.perf_counter()
    stop_timer.start()
    for frame in source.frames():
        n += 1
    wall = time.perf_counter() - t0
    thread_cpu = time.thread_time() - t_cpu
    process_cpu = time.process_time() - p_cpu
    stop_timer.cancel()
    source.close()
    return {"frames": n, "wall_s": wall, "fps": n / wall, "thread_cpu_pct": 100 * thread_cpu / wall,
            "process_cpu_pct": 100 * process_cpu / wall, "lost": source.lost_frames,
            "idle_polls_per_s": source.empty_polls / wall}


def drain(source, core) -> dict[str, float]:
    """Let the camera fill the buffer with ``source.max_frames`` frames, then time the source emptying it."""
    source.start()
    idle = threading.Event()
    while core.isSequenceRunning():
        idle.wait(0.01)
    t_cpu, t0 = time.thread_time(), time.perf_counter()
    n = sum(1 for _ in source.frames())
    cpu, wall = time.thread_time() - t_cpu, time.perf_counter() - t0
    source.close()
    return {"frames": n, "cpu_us": 1e6 * cpu / n, "wall_us": 1e6 * wall / n}


def busy_poll(core, seconds: float) -> dict[str, float]:
    """The consumer pycromanager's Python engine uses: spin on getRemainingImageCount."""
    import pymmcore

    core.startContinuousSequenceAcquisition(0)
    n = 0
    t_cpu, t0 = time.thread_time(), time.perf_counter()
    md = pymmcore.Metadata()
    while time.perf_counter() - t0 < seconds:
        if core.getRemainingImageCount() > 0:
            core.popNextImageMD(md)
            n += 1
    wall = time.perf_counter() - t0
    core.stopSequenceAcquisition()
    return {"frames": n, "fps": n / wall, "thread_cpu_pct": 100 * (time.thread_time() - t_cpu) / wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="duration of each measurement")
    parser.add_argument("--size", type=int, default=256, help="frame width and height")
    parser.add_argument("--rates", default="100,1000,5000", help="paced camera rates (frames/s)")
    parser.add_argument("--baseline", action="store_true", help="also measure a busy-polling consumer")
    args = parser.parse_args()

    from rtsmlm.acquisition.micromanager import MicroManagerSource

    adapter = build_adapter()
    load = os.getloadavg()[0]
    print(f"Micro-Manager source benchmark: {args.size}x{args.size} uint16, {args.seconds:g} s per run, "
          f"{os.cpu_count()} CPU(s), load average {load:.1f} at start")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cfg = write_cfg(folder, write_movie(folder, args.size, 64))
        with MicroManagerSource.headless(adapter, cfg, buffer_mb=512) as opened:
            core = opened.core
            ctl = opened.control
            print(f"{'mode':<22}{'frames/s':>10}{'lost':>8}{'source CPU %':>14}{'process CPU %':>15}"
                  f"{'idle polls/s':>14}")

            ctl.set_property("Camera", "Exposure", 0.0)
            r = consume(MicroManagerSource(core, buffer_mb=512), args.seconds)
            produced = int(ctl.get_property("Camera", "FramesProduced"))
            print(f"{'free-running':<22}{r['fps']:>10.0f}{r['lost']:>8d}{r['thread_cpu_pct']:>14.1f}"
                  f"{r['process_cpu_pct']:>15.1f}{r['idle_polls_per_s']:>14.0f}"
                  f"   (camera inserted {produced / r['wall_s']:.0f} frames/s)")

            for rate in (float(v) for v in args.rates.split(",")):
                ctl.set_property("Camera", "Exposure", 1000.0 / rate)
                r = consume(MicroManagerSource(core, buffer_mb=512), args.seconds)
                print(f"{f'paced {rate:g} fps':<22}{r['fps']:>10.0f}{r['lost']:>8d}{r['thread_cpu_pct']:>14.1f}"
                      f"{r['process_cpu_pct']:>15.1f}{r['idle_polls_per_s']:>14.0f}")

            ctl.set_property("Camera", "Exposure", 0.0)
            for transfer in ("native", "tagged"):
                d = drain(MicroManagerSource(core, max_frames=3000, buffer_mb=512, transfer=transfer), core)
                print(f"{f'drain ({transfer})':<22}{1e6 / d['wall_us']:>10.0f}{'':>8}"
                      f"   source CPU {d['cpu_us']:.1f} us/frame = capacity {1e6 / d['cpu_us']:.0f} "
                      "frames/s on one core")

            if args.baseline:
                for rate in (float(v) for v in args.rates.split(",")):
                    ctl.set_property("Camera", "Exposure", 1000.0 / rate)
                    b = busy_poll(core, args.seconds)
                    print(f"{f'busy-poll {rate:g} fps':<22}{b['fps']:>10.0f}{'':>8}{b['thread_cpu_pct']:>14.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
