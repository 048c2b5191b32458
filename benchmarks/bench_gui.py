"""Live-view costs: pyqtgraph image updates, and what the window costs the localizer and the event loop.

Part 1 — one image update on the GUI thread (``setImage`` + repaint of a 1000×900 view), for a 2048×2048
SR canvas shown the naive way (float32, pyqtgraph computes levels), float32 with fixed levels, uint8 with
a 256-entry lookup table, and the live view's way (pooled to 1024² and coloured by the display worker,
so the GUI thread uploads RGB pixels). CPU time of the GUI thread and wall time, median of N updates;
and the display worker's CPU time to prepare one 2048² SR canvas or camera frame (off the GUI thread).

Part 2 — the same run with and without the live window, alternating (ABBA) to cancel drifts in machine
load: a simulated filament movie (written once) replayed as fast as the file reader goes into a ring
that holds it all, so the localizer (the shipped model) is the bottleneck and its throughput (frames/s
over the run) is what the display could slow down; and the delay of events posted to the GUI thread every
10 ms while the run goes (a bare Qt event loop without the window is the baseline).

    QT_QPA_PLATFORM=offscreen python benchmarks/bench_gui.py [--frames 400] [--repeats 2] [--size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def _update_costs(n: int) -> list[tuple[str, float, float]]:
    import pyqtgraph as pg
    from PyQt5 import QtWidgets

    from rtsmlm.gui.display import percentile_levels, pool, to_uint8
    from rtsmlm.gui.widgets import lookup_table

    pg.setConfigOptions(imageAxisOrder="row-major")
    app = QtWidgets.QApplication.instance()
    widget = pg.GraphicsLayoutWidget()
    widget.resize(1000, 900)
    view = widget.addViewBox(lockAspect=True, invertY=True)
    item = pg.ImageItem()
    view.addItem(item)
    widget.show()
    app.processEvents()
    rng = np.random.default_rng(0)
    canvas = np.zeros((2048, 2048), np.float32)
    idx = rng.integers(0, 2048, size=(2, 400_000))
    np.add.at(canvas, tuple(idx), rng.exponential(1.0, idx.shape[1]).astype(np.float32))
    lut = lookup_table("inferno")
    _, white = percentile_levels(canvas, 0, 99.5, nonzero=True)
    u8 = to_uint8(canvas, 0.0, white)
    pooled, _ = pool(canvas, 1024, "sum")
    _, pwhite = percentile_levels(pooled, 0, 99.5, nonzero=True)
    rgb = lut[to_uint8(pooled, 0.0, pwhite)]
    cases = [
        ("2048² float32, levels by pyqtgraph", lambda: item.setImage(canvas, autoLevels=True, lut=lut)),
        ("2048² float32, fixed levels", lambda: item.setImage(canvas, autoLevels=False, levels=(0, white), lut=lut)),
        ("2048² uint8 + 256-entry LUT", lambda: item.setImage(u8, autoLevels=False, levels=(0, 255), lut=lut)),
        ("1024² RGB from the display worker", lambda: item.setImage(rgb, autoLevels=False, levels=None, lut=None)),
    ]
    out = []
    view.setRange(xRange=(0, 2048), yRange=(0, 2048), padding=0)
    for label, update in cases:
        cpu, wall = [], []
        for _ in range(n):
            t0, c0 = time.perf_counter(), time.thread_time()
            update()
            app.processEvents()
            widget.viewport().repaint()
            cpu.append(time.thread_time() - c0)
            wall.append(time.perf_counter() - t0)
        out.append((label, 1e3 * statistics.median(cpu), 1e3 * statistics.median(wall)))
    widget.close()
    return out


def _worker_costs(n: int) -> list[tuple[str, float]]:
    """CPU time the display worker spends preparing one 2048² image (off the GUI thread)."""
    from rtsmlm.gui.display import percentile_levels, pool, to_uint8
    from rtsmlm.gui.widgets import lookup_table

    rng = np.random.default_rng(1)
    canvas = np.zeros((2048, 2048), np.float32)
    idx = rng.integers(0, 2048, size=(2, 400_000))
    np.add.at(canvas, tuple(idx), 1.0)
    camera = rng.poisson(120.0, size=(2048, 2048)).astype(np.uint16)
    lut = lookup_table("inferno")

    def sr() -> None:
        pooled, _ = pool(canvas, 1024, "sum")
        _, white = percentile_levels(pooled, 0.0, 99.5, nonzero=True)
        np.take(lut, to_uint8(pooled, 0.0, white), axis=0)

    def cam() -> None:
        pooled, _ = pool(camera, 1024, "mean")
        to_uint8(pooled, *percentile_levels(pooled, 0.5, 99.9))

    out = []
    for label, fn in (("2048² SR canvas -> 1024² RGB", sr), ("2048² camera frame -> 1024² uint8", cam)):
        cpu = []
        for _ in range(n):
            c0 = time.thread_time()
            fn()
            cpu.append(time.thread_time() - c0)
        out.append((label, 1e3 * statistics.median(cpu)))
    return out


def _simulate(frames: int, size: int) -> Path:
    from rtsmlm.cli.simulate import simulate_to_dir
    from rtsmlm.core import config

    out = Path(tempfile.mkdtemp(prefix="bench_gui_movie_"))
    cfg = config.load(None, ['sim.structure="filaments"', "sim.density=1.0", f"sim.size={size}",
                             f"sim.frames={frames}", "sim.seed=3"])
    simulate_to_dir(cfg, out, overwrite=True)
    return next(p for p in out.iterdir() if p.name.startswith("movie"))


def _one_run(mode: str, movie: Path, frames: int, refresh_hz: float) -> dict:
    from PyQt5 import QtCore

    from rtsmlm.core import config
    from rtsmlm.gui.probe import EventDelayProbe

    out = Path(tempfile.mkdtemp(prefix=f"bench_gui_{mode}_")) / "run"
    cfg = config.load(None, ['source.kind="file"', f"source.path={json.dumps(str(movie))}", "source.fps=0",
                             f"pipeline.ring_frames={frames + 64}", "stream.enabled=false", f"gui.refresh_hz={refresh_hz}",
                             f"output.dir={json.dumps(str(out))}"])
    loop = QtCore.QEventLoop()
    if mode == "window":
        from rtsmlm.gui.app import open_live_window

        window = open_live_window(cfg, autostart=False)
        window.grab()  # first paint before the run
        session = window.session
        window.run_finished.connect(loop.quit)
        start = window.start_acquisition
    else:
        from rtsmlm.engine.run import build_run
        from rtsmlm.gui.session import LiveSession

        session = LiveSession(cfg, run=build_run(cfg))
        timer = QtCore.QTimer()
        timer.timeout.connect(lambda: session.active or loop.quit())
        timer.start(50)
        start = session.start
    probe = EventDelayProbe(0.01)
    probe.start()
    start()
    loop.exec_()
    delays = probe.stop() * 1e3
    summary = session.summary
    if mode == "window":
        window.close()
    return {"fps": summary["localized_fps"], "p50": float(np.percentile(delays, 50)),
            "p99": float(np.percentile(delays, 99)), "max": float(delays.max()), "n_events": len(delays),
            "lost": summary["frames_lost_localizer"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=400, help="frames per run")
    ap.add_argument("--repeats", type=int, default=2, help="ABBA pairs of runs")
    ap.add_argument("--size", type=int, default=64, help="simulated frame size (pixels)")
    ap.add_argument("--updates", type=int, default=15, help="image updates per part-1 case")
    ap.add_argument("--refresh-hz", type=float, default=20.0, help="gui.refresh_hz of the live window")
    ap.add_argument("--skip-updates", action="store_true", help="only part 2")
    args = ap.parse_args(argv)

    from rtsmlm.gui.app import ensure_app

    ensure_app(offscreen=True)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; python {sys.version.split()[0]}")
    if not args.skip_updates:
        print("\n1) one image update on the GUI thread (setImage + repaint of a 1000x900 view), median")
        print(f"   {'image':40s} {'GUI CPU ms':>10s} {'wall ms':>9s}")
        for label, cpu, wall in _update_costs(args.updates):
            print(f"   {label:40s} {cpu:10.1f} {wall:9.1f}")
        print("   display worker thread, per prepared image (camera <= 10/s, SR <= 5/s):")
        for label, cpu in _worker_costs(args.updates):
            print(f"   {label:40s} {cpu:10.1f}")

    movie = _simulate(args.frames, args.size)
    print(f"\n2) {args.frames}-frame runs ({args.size}x{args.size} px simulated filaments replayed from {movie.name} "
          "as fast as it reads), with and without the live window")
    results: dict[str, list[dict]] = {"headless": [], "window": []}
    order = []
    for r in range(args.repeats):
        order += ["headless", "window"] if r % 2 == 0 else ["window", "headless"]
    for i, mode in enumerate(order):
        res = _one_run(mode, movie, args.frames, args.refresh_hz)
        results[mode].append(res)
        print(f"   run {i + 1}: {mode:8s} localizer {res['fps']:6.1f} frames/s | posted-event delay p50 "
              f"{res['p50']:5.1f} p99 {res['p99']:6.1f} max {res['max']:6.1f} ms ({res['n_events']} events) | "
              f"lost {res['lost']}")
    med = {m: statistics.median(r["fps"] for r in v) for m, v in results.items()}
    p99 = {m: statistics.median(r["p99"] for r in v) for m, v in results.items()}
    print(f"\n   median localizer throughput: headless {med['headless']:.1f}, with window {med['window']:.1f} "
          f"frames/s -> the window costs {100 * (1 - med['window'] / med['headless']):+.1f} %")
    print(f"   median p99 posted-event delay: bare event loop {p99['headless']:.1f} ms, live window "
          f"{p99['window']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
